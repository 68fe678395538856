"""Scenes of the shapes world: what is where, its geometry, its captions, and the train/eval split.

A scene is 1-3 flat-coloured shapes, each alone inside its own cell of a 3x3 grid (so objects never overlap
and never touch), on a background colour that no object shares, optionally with a gradient or a smooth noise
texture. Geometry is resolution-free: an object's `box` is in 0-1 image coordinates (x0, y0, x1, y1), and its
outline is the shape's unit polygon mapped onto that box, so a scene renders alike at any size.

Split: every scene comes from an integer scene seed; `split_of(seed)` hashes it (BLAKE2b) and sends 1 seed in 16
to "eval", the rest to "train", so no seed can be in both splits whatever stream produced it. The eval split is
the stream `scene_seeds("eval")` (base seed `EVAL_SEED`), filtered by that hash. "val" is a stream of train-split
seeds of its own (base `VAL_SEED`, hashed under another name than any training stream), for tuning settings
without looking at eval: no training run draws it (its seeds meet a training pool only by a 63-bit hash collision).
"""
from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

from .vocab import (COLOURS, GRID, MAX_OBJECTS, POSITION_PHRASES, POSITIONS, SHAPES, SIZE_RADIUS, SIZES,
                    TEXTURE_PROBS, TEXTURES)

EVAL_SEED = 20231  # base seed of the eval stream: `dataset("eval", ...)` always yields the same scenes
EVAL_ONE_IN = 16   # share of the seed space that belongs to eval
VAL_SEED = 7919    # base seed of the val stream (train-split scenes that training pools never draw)
SPLITS = ("train", "val", "eval")
CELL_MARGIN = 0.06  # gap kept between a shape and its cell's edge, as a fraction of the cell's side

Box = Tuple[float, float, float, float]


class Placed:
    """The names of an object with a `colour`, a `shape` and a grid `cell` (drawn, or read back from an image)."""

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@dataclass(frozen=True)
class Obj(Placed):
    """One shape: `cell` indexes `POSITIONS` (row-major), `box` is (x0, y0, x1, y1) in 0-1 image coordinates."""
    shape: str
    colour: str
    size: str
    cell: int
    box: Box


@dataclass(frozen=True)
class Scene:
    """Objects (a tuple of `Obj`), the background colour name, its texture, and the seed of the texture."""
    objects: Tuple[Obj, ...]
    background: str
    texture: str = "flat"
    seed: int = 0


@dataclass(frozen=True)
class Request:
    """One object as a caption asks for it; `size` and `cell` are None where the caption left them out."""
    shape: str
    colour: str
    size: Optional[str] = None
    cell: Optional[int] = None


@dataclass(frozen=True)
class Prompt:
    """A parsed caption: the requested objects, and the background colour / texture if named."""
    objects: Tuple[Request, ...]
    background: Optional[str] = None
    texture: Optional[str] = None


# ---- geometry -------------------------------------------------------------------------------------------

def _normalise(points: np.ndarray) -> np.ndarray:
    """Centre a polygon on its bounding box and scale its larger half-extent to 1 (y points down)."""
    lo, hi = points.min(0), points.max(0)
    return (points - (lo + hi) / 2) / ((hi - lo).max() / 2)


def _regular(n: int, phase: float, radii=(1.0,)) -> np.ndarray:
    k = np.arange(n * len(radii))
    angle = phase + 2 * np.pi * k / (n * len(radii))
    r = np.asarray(radii)[k % len(radii)]
    return np.stack([r * np.cos(angle), r * np.sin(angle)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 80, endpoint=False)  # the classic sin^3 heart curve, flipped for y-down
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], 1)


UNIT_POLYGONS = {
    "circle": _normalise(_regular(64, 0.0)),
    "square": _normalise(np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])),
    "triangle": _normalise(_regular(3, -np.pi / 2)),
    "star": _normalise(_regular(5, -np.pi / 2, radii=(1.0, 0.45))),
    "hexagon": _normalise(_regular(6, 0.0)),
    "heart": _normalise(_heart()),
}


def half_extent(shape: str) -> np.ndarray:
    """(ax, ay): the unit polygon's half width and half height; the larger is 1."""
    return UNIT_POLYGONS[shape].max(0)


def polygon_moments(poly: np.ndarray) -> Tuple[float, np.ndarray, np.ndarray]:
    """Area, centroid (x, y) and central second moments (var_x, var_y) of a simple polygon (shoelace sums)."""
    x, y = poly[:, 0], poly[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    centroid = np.array([((x + xn) * cross).sum(), ((y + yn) * cross).sum()]) / (6 * area)
    second = np.array([((x * x + x * xn + xn * xn) * cross).sum(), ((y * y + y * yn + yn * yn) * cross).sum()])
    return abs(area), centroid, second / (12 * area) - centroid ** 2


def box_polygon(shape: str, box: Box) -> np.ndarray:
    """The shape's outline fitted to `box` (same units as the box)."""
    x0, y0, x1, y1 = box
    scale = np.array([x1 - x0, y1 - y0]) / (2 * half_extent(shape))
    return UNIT_POLYGONS[shape] * scale + np.array([x0 + x1, y0 + y1]) / 2


def cell_of(x: float, y: float) -> int:
    """The grid cell holding a point given in 0-1 coordinates."""
    col, row = (min(GRID - 1, max(0, int(v * GRID))) for v in (x, y))
    return row * GRID + col


# ---- sampling -------------------------------------------------------------------------------------------

def _place(rng: np.random.Generator, shape: str, size: int, cell: int) -> Box:
    """A box for the shape in its cell: centred on the cell, jittered as far as the cell margin allows."""
    side = 1 / GRID
    half = half_extent(shape) * SIZE_RADIUS[size] * side
    slack = np.maximum(side / 2 - CELL_MARGIN * side - half, 0)
    centre = (np.array([cell % GRID, cell // GRID]) + 0.5) * side + rng.uniform(-slack, slack)
    return tuple(float(v) for v in np.concatenate([centre - half, centre + half]))


def sample_scene(rng: np.random.Generator, n_objects: Optional[int] = None, seed: Optional[int] = None) -> Scene:
    """A random scene: distinct cells, distinct object colours, a background colour no object shares."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= GRID * GRID:
        raise ValueError(f"n_objects must be in 1..{GRID * GRID}, got {n}")
    cells = rng.choice(GRID * GRID, n, replace=False)
    colours = rng.choice(len(COLOURS), n + 1, replace=False)  # [background, objects...]: 12 colours > 9 cells
    objects = []
    for cell, colour in zip(cells, colours[1:]):
        shape, size = SHAPES[rng.integers(len(SHAPES))], int(rng.integers(len(SIZES)))
        objects.append(Obj(shape, COLOURS[colour], SIZES[size], int(cell), _place(rng, shape, size, int(cell))))
    texture = TEXTURES[rng.choice(len(TEXTURES), p=TEXTURE_PROBS)]
    seed = int(rng.integers(2 ** 62)) if seed is None else seed
    return Scene(tuple(objects), COLOURS[colours[0]], texture, seed)


def _hash63(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def split_of(scene_seed: int) -> str:
    """"eval" for one scene seed in `EVAL_ONE_IN`, "train" for the rest (a hash, so fixed forever)."""
    return "eval" if _hash63(f"split:{scene_seed}") % EVAL_ONE_IN == 0 else "train"


def scene_seeds(split: str, seed: Optional[int] = None) -> Iterator[int]:
    """The endless stream of scene seeds of a split; the base seed defaults to `EVAL_SEED` (eval), `VAL_SEED` (val)
    or 0 (train). Val seeds are train-split seeds from a stream of their own."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    base = {"train": 0, "val": VAL_SEED, "eval": EVAL_SEED}[split] if seed is None else seed
    member = "eval" if split == "eval" else "train"
    for i in itertools.count():
        candidate = _hash63(f"{split}:{base}:{i}")
        if split_of(candidate) == member:
            yield candidate


def scene_from_seed(scene_seed: int, n_objects: Optional[int] = None) -> Scene:
    return sample_scene(np.random.default_rng(scene_seed), n_objects, seed=scene_seed)


# ---- captions and layouts -------------------------------------------------------------------------------

def _article(text: str) -> str:
    return ("an " if text[0] in "aeiou" else "a ") + text


def _join(phrases) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def background_phrase(colour: str, texture: str) -> str:
    words = {"flat": colour, "gradient": f"{colour} gradient", "noise": f"noisy {colour}"}[texture]
    return f"on {_article(words)} background"


def caption(scene: Scene, rng: Optional[np.random.Generator] = None, drop_prob: float = 0.0) -> str:
    """"a large blue star at the top left and a small yellow square in the center on a gray background".

    Colour and shape are always said; each object's size and position, and the background, are each left
    out with probability `drop_prob` (drawn from `rng`, in a fixed order, so a seeded rng gives one caption).
    """
    keep = (lambda: True) if rng is None or drop_prob <= 0 else (lambda: rng.random() >= drop_prob)
    phrases = []
    for obj in scene.objects:
        words = ([obj.size] if keep() else []) + [obj.colour, obj.shape]
        position = [POSITION_PHRASES[obj.cell]] if keep() else []
        phrases.append(" ".join([_article(" ".join(words))] + position))
    text = _join(phrases)
    return text + " " + background_phrase(scene.background, scene.texture) if keep() else text


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_OBJECT_RE = re.compile(rf"an? (?:({_alternatives(SIZES)}) )?({_alternatives(COLOURS)}) "
                        rf"({_alternatives(SHAPES)})(?: ({_alternatives(POSITION_PHRASES)}))?")
_BACKGROUND_RE = re.compile(rf" on an? (?:(noisy) )?({_alternatives(COLOURS)})(?: (gradient))? background$")


def parse_caption(text: str) -> Prompt:
    """Invert `caption`: the objects a caption requests (None for what it left out). ValueError if off-grammar."""
    text = " ".join(text.lower().strip().rstrip(".").split())
    background = texture = None
    match = _BACKGROUND_RE.search(text)
    if match:
        noisy, background, gradient = match.groups()
        texture = "noise" if noisy else "gradient" if gradient else "flat"
        text = text[:match.start()]
    head, _, last = text.rpartition(" and ")
    pieces = (head.split(", ") if head else []) + [last]
    objects = []
    for piece in pieces:
        m = _OBJECT_RE.fullmatch(piece)
        if m is None:
            raise ValueError(f"not a shapes-world object phrase: {piece!r}")
        size, colour, shape, where = m.groups()
        objects.append(Request(shape, colour, size, POSITION_PHRASES.index(where) if where else None))
    return Prompt(tuple(objects), background, texture)


def layout(scene: Scene) -> dict:
    """Layout conditioning: boxes (k, 4) in 0-1 coordinates, labels ("red circle") and shape labels ("circle")."""
    return {"boxes": np.array([o.box for o in scene.objects], np.float32).reshape(-1, 4),
            "labels": [o.label for o in scene.objects],
            "shape_labels": [o.shape for o in scene.objects]}
