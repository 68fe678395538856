"""Layouts for layout2img: reading boxes, and the bounding-box token sequence of taming-transformers'
`ObjectsBoundingBoxConditionalBuilder` with `encode_crop=True`, which the LDM layout2img model was trained on
(MODELS.md §6.4).

A layout is a list of boxes `{"label": ..., "box": [x0, y0, x1, y1]}` (x to the right, y down, (x0, y0) the top-left
corner) from a JSON file, or `--box "label x0 y0 x1 y1"` strings (the label may hold spaces: the last four words
are the numbers). A label is a class name or a class number.

Coordinates are fractions of the image when every coordinate of every box of the layout lies in [0, 1], and pixels
of the output image (--height × --width, default the model's native size) otherwise; the rule applies to the
layout as a whole, so one layout never mixes the two.

Token sequence, for vocabulary size V (8192) and sequence length L (92):
    sections  n = int(√V) = 90;  padding id = V − 1 = 8191;  objects at most (L − 2) / 3 = 30
    token(x, y) = round(y·(n−1))·n + round(x·(n−1))           (x, y ∈ [0, 1]; Python's round, half to even)
    [cat_1, token(x0_1, y0_1), token(x1_1, y1_1), …, cat_k, …,  8191 × 3·(30 − k),  token(0, 0), token(1, 1)]
The last two tokens encode the crop, which is the whole image here (0 and 8099); the category token is the class
number (no group/occluded/depiction/inside modifier bits). Objects keep the order they were given in: the reference
shuffled them during training, so their order carries no meaning.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from ldmcli.errors import InputError, UsageError
from ldmcli.io.paths import read_text_file

MAX_LAYOUT_BYTES = 2**20   # a layout is a few kilobytes; refuse to parse something that is obviously not one
Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class LayoutBox:
    """One object of a layout as given: a label (name or class number) and x0, y0, x1, y1 (pixels or 0–1)."""
    label: Union[str, int]
    box: Box
    where: str = ""            # how messages name it, e.g. "layout.json box 2" or "--box 1"

    def describe(self) -> str:
        coords = ", ".join(f"{v:g}" for v in self.box)
        return f"{self.where} ({self.label!r} [{coords}])"


# ---- reading -------------------------------------------------------------------------------------------------
def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where}: box coordinates must be finite numbers, got {value!r}")
    return float(value)


def box_from_object(obj, where: str) -> LayoutBox:
    """A `{"label": name-or-number, "box": [x0, y0, x1, y1]}` object as a LayoutBox (InputError otherwise)."""
    if not isinstance(obj, dict):
        shown = repr(obj)[:100]
        raise InputError(f"{where}: expected an object {{\"label\": ..., \"box\": [x0, y0, x1, y1]}}, got {shown}")
    unknown = sorted(set(obj) - {"label", "box"})
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (a box has 'label' and 'box')")
    label, box = obj.get("label"), obj.get("box")
    if isinstance(label, bool) or not isinstance(label, (str, int)) or label == "":
        raise InputError(f"{where}: 'label' must be a class name or number, got {label!r}")
    if not isinstance(box, list) or len(box) != 4:
        raise InputError(f"{where}: 'box' must be [x0, y0, x1, y1], got {repr(box)[:100]}")
    return LayoutBox(label, tuple(_number(v, where) for v in box), where)


def parse_box(text: str, where: str = "--box") -> LayoutBox:
    """`"label x0 y0 x1 y1"`: the last four words are the numbers, everything before them is the label."""
    words = text.split()
    if len(words) < 5:
        raise UsageError(f"{where} {text!r}: expected 'label x0 y0 x1 y1'")
    try:
        coords = tuple(float(w) for w in words[-4:])
    except ValueError:
        raise UsageError(f"{where} {text!r}: the last four words must be numbers x0 y0 x1 y1") from None
    if not all(math.isfinite(v) for v in coords):
        raise UsageError(f"{where} {text!r}: box coordinates must be finite numbers")
    return LayoutBox(" ".join(words[:-4]), coords, where)


def boxes_from_option(values: Optional[Sequence]) -> List[LayoutBox]:
    """The `--box` strings of a job (or, in a JSONL job's `extra.boxes`, strings or box objects)."""
    if values is None:
        return []
    if isinstance(values, (str, dict)) or not isinstance(values, (list, tuple)):
        values = [values]
    return [parse_box(v, f"--box {i}") if isinstance(v, str) else box_from_object(v, f"--box {i}")
            for i, v in enumerate(values, 1)]


def read_layout(path: Union[str, Path]) -> List[LayoutBox]:
    """The boxes of a layout JSON file (a list of box objects); every problem is one InputError line."""
    path = Path(path)
    text = read_text_file(path, "layout", MAX_LAYOUT_BYTES)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"layout {path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (ValueError, RecursionError):
        raise InputError(f"layout {path}: invalid JSON") from None
    if not isinstance(obj, list):
        raise InputError(f"layout {path}: expected a JSON list of boxes [{{\"label\": ..., \"box\": [x0, y0, x1, "
                         f"y1]}}, ...], got {type(obj).__name__}")
    return [box_from_object(o, f"layout {path.name} box {i}") for i, o in enumerate(obj, 1)]


# ---- checking and normalising ----------------------------------------------------------------------------------
def normalised_boxes(boxes: Sequence[LayoutBox], width: int, height: int) -> List[Box]:
    """Every box as fractions of the image (the value-range rule of the module docstring), checked: inside the
    image and not empty. Errors name the offending box."""
    fractions = all(0.0 <= v <= 1.0 for b in boxes for v in b.box)
    out = []
    for b in boxes:
        x0, y0, x1, y1 = b.box
        if not fractions:
            if min(x0, x1) < 0 or max(x0, x1) > width or min(y0, y1) < 0 or max(y0, y1) > height:
                raise UsageError(f"{b.describe()} lies outside the {width}x{height} image (pixel coordinates, "
                                 f"since not every coordinate of the layout is in [0, 1])")
            x0, y0, x1, y1 = x0 / width, y0 / height, x1 / width, y1 / height
        if x1 <= x0 or y1 <= y0:
            raise UsageError(f"{b.describe()} is empty: need x0 < x1 and y0 < y1 (x0 y0 = top left)")
        out.append((x0, y0, x1, y1))
    return out


def check_boxes(boxes: Sequence[LayoutBox], width: Optional[int] = None, height: Optional[int] = None) -> None:
    """What needs no model: class numbers that are not negative or absurdly long (names need the model's list),
    and, when the output size is given, `normalised_boxes`; otherwise the size-free part of it (no box is empty
    or has a negative coordinate)."""
    for b in boxes:
        text = b.label.strip() if isinstance(b.label, str) else str(b.label)
        if isinstance(b.label, int) and b.label < 0 or text.isascii() and text.isdigit() and len(text) > 9:
            raise UsageError(f"{b.where}: class number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    if width and height:
        normalised_boxes(boxes, width, height)
        return
    for b in boxes:
        x0, y0, x1, y1 = b.box
        if min(b.box) < 0:
            raise UsageError(f"{b.describe()} lies outside the image (a negative coordinate)")
        if x1 <= x0 or y1 <= y0:
            raise UsageError(f"{b.describe()} is empty: need x0 < x1 and y0 < y1 (x0 y0 = top left)")


# ---- tokens (MODELS.md §6.4) -------------------------------------------------------------------------------------
def sections(vocab_size: int) -> int:
    """Quantisation steps per axis: int(√V) (90 for V = 8192)."""
    return math.isqrt(vocab_size)


def max_objects(seq_len: int) -> int:
    """Objects per sequence: (L − 2) / 3, three tokens each plus two crop tokens (30 for L = 92)."""
    if seq_len < 2 or (seq_len - 2) % 3:
        raise UsageError(f"a layout sequence holds 3 tokens per object plus 2 crop tokens; length {seq_len} is not "
                         f"of that form")
    return (seq_len - 2) // 3


def coordinate_token(x: float, y: float, n: int) -> int:
    """round(y·(n−1))·n + round(x·(n−1)) for a point (x, y) in [0, 1]² (taming `tokenize_coordinates`)."""
    return round(y * (n - 1)) * n + round(x * (n - 1))


def layout_tokens(objects: Sequence[Tuple[int, Box]], vocab_size: int = 8192, seq_len: int = 92) -> List[int]:
    """[cat, token(x0, y0), token(x1, y1)] per object, padding triples (V−1) up to the object limit, then the
    crop tokens of the whole image, token(0, 0) and token(1, 1). Boxes are fractions of the image."""
    limit, n, pad = max_objects(seq_len), sections(vocab_size), vocab_size - 1
    if len(objects) > limit:
        raise UsageError(f"the layout has {len(objects)} boxes; this model takes at most {limit}")
    tokens: List[int] = []
    for category, (x0, y0, x1, y1) in objects:
        if not 0 <= category < pad:
            raise UsageError(f"category {category} is not a token below the padding id {pad}")
        tokens += [category, coordinate_token(x0, y0, n), coordinate_token(x1, y1, n)]
    tokens += [pad] * 3 * (limit - len(objects))
    return tokens + [coordinate_token(0.0, 0.0, n), coordinate_token(1.0, 1.0, n)]


def unconditional_tokens(vocab_size: int = 8192, seq_len: int = 92) -> List[int]:
    """The empty layout: all padding, the two crop tokens kept (the unconditional input for guidance, §6.4)."""
    return layout_tokens([], vocab_size, seq_len)


__all__ = ["LayoutBox", "Box", "box_from_object", "parse_box", "boxes_from_option", "read_layout",
           "normalised_boxes", "check_boxes", "sections", "max_objects", "coordinate_token", "layout_tokens",
           "unconditional_tokens", "MAX_LAYOUT_BYTES"]
