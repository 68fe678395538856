"""Class-name lists shipped as package data, and looking a label up by name or number (layout2img, semantic2img).

A list file holds one name per line; line k, counting only lines that are neither blank nor '#' comments, names
class k. `openimages_labels.txt` (layout2img-openimages256) and `cocostuff_labels.txt` (semantic synthesis) hold
only comments: MODELS.md §6.4/§6.5/§12 say how those label spaces were built but do not list their names, so with
the public checkpoints labels are given as class numbers. A model whose config carries `labels` (the embedded
defaults) uses those names instead.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Sequence, Tuple, Union

from ldmcli.errors import UsageError, close_matches

OPENIMAGES = "openimages_labels.txt"
COCOSTUFF = "cocostuff_labels.txt"


@lru_cache(maxsize=None)
def read_label_file(name: str) -> Tuple[str, ...]:
    """The class names of a shipped list file, in class order (comments and blank lines skipped)."""
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def normalise_name(name: str) -> str:
    """Case and runs of whitespace do not tell labels apart ("Red  Circle" is "red circle")."""
    return " ".join(name.lower().split())


def label_id(label: Union[str, int], names: Sequence[str], count: int, what: str, no_names: str = "") -> int:
    """The class number of `label`: an int or a string of digits is the number itself (checked against
    [0, count)); any other string is looked up in `names` (case-insensitive), an unknown one is a UsageError that
    suggests the nearest names. `what` names the label in messages; `no_names` says why `names` is empty."""
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise UsageError(f"{what}: a label is a name or a class number, got {label!r}")
    text = label.strip() if isinstance(label, str) else str(label)
    if isinstance(label, int) or (text.isascii() and text.isdigit()):
        if len(text.lstrip("-")) > 9:   # int() refuses 4300+ digits with a ValueError; no label space is this big
            raise UsageError(f"{what}: class number {text[:20]}... is out of range 0-{count - 1}")
        number = int(text)
        if not 0 <= number < count:
            raise UsageError(f"{what}: class number {number} is out of range 0-{count - 1}")
        return number
    if not names:
        raise UsageError(f"{what}: label {text!r} is a name, but this model's class names are not known here"
                         f"{'; ' + no_names if no_names else ''}; give class numbers 0-{count - 1}")
    keys = [normalise_name(n) for n in names]
    key = normalise_name(text)
    if key in keys:
        return keys.index(key)
    near = close_matches(key, keys)
    hint = (f"; did you mean {', '.join(repr(names[keys.index(k)]) for k in near)}?" if near
            else "; see --list-labels")
    raise UsageError(f"{what}: unknown label {text!r}{hint}")


__all__ = ["OPENIMAGES", "COCOSTUFF", "read_label_file", "normalise_name", "label_id"]
