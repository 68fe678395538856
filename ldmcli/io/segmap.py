"""Segmentation maps for semantic2img: index maps, colour maps with a palette, and the one-hot condition
(MODELS.md §6.5: taming's `SegmentationBase` reads an 8-bit map of class ids and takes `np.eye(182)[seg]`, no shift).

A map is either
- an index image (mode L, P, 1 or 16-bit greyscale): pixel value = class id (for P, the palette index, not the
  colour), or
- a colour image with a palette file that maps each colour to a class. Palette formats (chosen by the first
  character that is not whitespace):
  * JSON object:  {"#rrggbb": label, "r,g,b": label, ...}
  * JSON array:   [[colour, label], ...] or [{"colour": colour, "label": label}, ...]  ("color" also accepted),
                  where a colour is "#rrggbb", "r,g,b" or [r, g, b]
  * text lines:   "label r g b" or "label #rrggbb" per line (the label may hold spaces; blank lines and '#'
                  comments skipped)
  A label is a class id or a class name of the model (`--list-labels`). Every colour of the map must be in the
  palette; a colour listed twice with different labels is an error.
Class ids must lie in [0, number of classes); the condition is the one-hot map [1, classes, H, W] in {0, 1}.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

from typing import TYPE_CHECKING

import numpy as np

from ldmcli.data import label_id
from ldmcli.io.paths import read_text_file
from ldmcli.errors import InputError

if TYPE_CHECKING:
    import torch

MAX_PALETTE_BYTES = 2**20
Colour = Tuple[int, int, int]
_HEX = re.compile(r"#([0-9a-fA-F]{6})")


# ---- palettes --------------------------------------------------------------------------------------------------
def parse_colour(value, where: str) -> Colour:
    """"#rrggbb", "r,g,b" / "r g b" or [r, g, b] (integers 0–255) as an (r, g, b) tuple."""
    if isinstance(value, str):
        text = value.strip()
        m = _HEX.fullmatch(text)
        if m:
            h = m.group(1)
            return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
        value = text.replace(",", " ").split()
        try:
            value = [int(v) for v in value]
        except ValueError:
            raise InputError(f"{where}: colour {text!r} is not #rrggbb or 'r,g,b'") from None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        raise InputError(f"{where}: a colour is #rrggbb, 'r,g,b' or [r, g, b] with integers 0-255, got "
                         f"{repr(value)[:60]}")
    return tuple(value)


def _entries(text: str, where: str):
    """(colour, label, where) triples of a palette file's text, in any of the module docstring's formats."""
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:
            msg = f"line {e.lineno} column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else "bad value"
            raise InputError(f"{where}: invalid JSON at {msg}") from None
        if isinstance(obj, dict):
            return [(k, v, f"{where} entry {k!r}") for k, v in obj.items()]
        out = []
        for i, e in enumerate(obj, 1):
            if isinstance(e, dict) and set(e) in ({"colour", "label"}, {"color", "label"}):
                out.append((e.get("colour", e.get("color")), e["label"], f"{where} entry {i}"))
            elif isinstance(e, list) and len(e) == 2:
                out.append((e[0], e[1], f"{where} entry {i}"))
            else:
                raise InputError(f"{where} entry {i}: expected [colour, label] or {{\"colour\": ..., \"label\": ...}}")
        return out
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):      # a label never starts with '#': the line is a comment
            continue
        words = line.split()
        if len(words) >= 2 and _HEX.fullmatch(words[-1]):
            out.append((words[-1], " ".join(words[:-1]), f"{where}:{n}"))
        elif len(words) >= 4:
            out.append((" ".join(words[-3:]), " ".join(words[:-3]), f"{where}:{n}"))
        else:
            raise InputError(f"{where}:{n}: expected 'label r g b' or 'label #rrggbb', got {line[:60]!r}")
    return out


def parse_palette(text: str, names: Sequence[str], count: int, where: str = "palette",
                  no_names: str = "") -> Dict[Colour, int]:
    """{(r, g, b): class id} from a palette file's text; labels resolved against `names` / [0, count)."""
    palette: Dict[Colour, int] = {}
    for colour, label, at in _entries(text, where):
        rgb = parse_colour(colour, at)
        class_id = label_id(label, names, count, at, no_names)
        if palette.get(rgb, class_id) != class_id:
            raise InputError(f"{at}: colour {rgb} is listed twice, as class {palette[rgb]} and {class_id}")
        palette[rgb] = class_id
    if not palette:
        raise InputError(f"{where}: no colours (an empty palette)")
    return palette


def read_palette(path: Union[str, Path], names: Sequence[str], count: int, no_names: str = "") -> Dict[Colour, int]:
    """A palette file (any format of the module docstring) as {(r, g, b): class id}."""
    path = Path(path)
    text = read_text_file(path, "palette", MAX_PALETTE_BYTES)
    return parse_palette(text, names, count, f"palette {path}", no_names)


def check_palette_file(path: Union[str, Path]) -> None:
    """A palette file's format and colours, before the model's class names are known (labels are checked then)."""
    where = f"palette {path}"
    entries = _entries(read_text_file(Path(path), "palette", MAX_PALETTE_BYTES), where)
    for colour, label, at in entries:
        parse_colour(colour, at)
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise InputError(f"{at}: a label is a name or a class number, got {repr(label)[:40]}")
    if not entries:
        raise InputError(f"{where}: no colours (an empty palette)")


# ---- maps ------------------------------------------------------------------------------------------------------
def read_segmap(path: Union[str, Path], palette: Optional[Dict[Colour, int]] = None) -> np.ndarray:
    """A segmentation map file as int64 class ids [H, W]: an index image, or a colour image looked up in
    `palette` (unknown colours are an InputError naming them)."""
    from ldmcli.io.images import load_color_map, load_index_map
    return load_index_map(path) if palette is None else load_color_map(path, palette)


def check_class_ids(seg: np.ndarray, count: int, where: str = "segmentation map") -> None:
    """InputError naming the ids of `seg` outside [0, count)."""
    ids = np.unique(seg)
    bad = [int(i) for i in ids if not 0 <= i < count]
    if bad:
        shown = ", ".join(map(str, bad[:8])) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise InputError(f"{where}: class id(s) {shown} outside 0-{count - 1} (the model has {count} classes)")


def one_hot(seg: Union[np.ndarray, torch.Tensor], count: int, dtype: Optional[torch.dtype] = None,
            device: Optional[torch.device] = None) -> torch.Tensor:
    """Class ids [H, W] → one-hot [1, count, H, W] in {0, 1} (`np.eye(count)[seg]`, channels first); a batch of
    maps [B, H, W] → [B, count, H, W].

    Built by scatter into zeros of `dtype` (float32 by default): F.one_hot would first make an int64 [H, W, count]
    copy, 8× larger."""
    import torch   # here: the CLI checks palettes before a model loads, without paying for torch
    dtype = torch.float32 if dtype is None else dtype
    ids = torch.as_tensor(np.asarray(seg) if isinstance(seg, np.ndarray) else seg, dtype=torch.long).to(device)
    ids = ids.reshape(-1, 1, *ids.shape[-2:])                            # [B, 1, H, W]
    out = torch.zeros(ids.shape[0], count, *ids.shape[-2:], dtype=dtype, device=ids.device)
    return out.scatter_(1, ids, 1.0)


__all__ = ["parse_colour", "parse_palette", "read_palette", "check_palette_file", "read_segmap", "check_class_ids", "one_hot",
           "Colour", "MAX_PALETTE_BYTES"]
