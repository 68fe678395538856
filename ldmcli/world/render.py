"""Pixels of the shapes world: anti-aliased renders, class maps, super-resolution pairs, inpainting masks.

Everything is sampled from the resolution-free scene at `supersample` x `supersample` points per pixel and
box-averaged down (PIL `BOX` for images, a block mean for coverages), so a scene looks the same at 32, 64 or
128 px and the x4 pair is consistent: the low-res image is the exact 1x render of the scene (not a resize of
the high-res one), the high-res image the exact 4x render.

Textures are smooth functions of 0-1 image coordinates (so they too are resolution-free) and one-sided, so
they never clip: "gradient" darkens the background linearly by up to `GRADIENT_DEPTH` along a random
direction; "noise" is two octaves of value noise that moves the colour up to `NOISE_AMPLITUDE` levels away
from the nearer end of the 0-255 range.
"""
from __future__ import annotations

import itertools
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from .scenes import Scene, box_polygon, caption, layout, scene_from_seed, scene_seeds
from .vocab import SHAPES, rgb

GRADIENT_DEPTH = 0.12
NOISE_AMPLITUDE = 18.0
NOISE_OCTAVES = ((4, 0.6), (10, 0.4))  # (lattice cells across the image, weight)
CAPTION_DROP = 0.3  # chance that a caption leaves out each object's size, each position, the background
MASK_PAD = 0.05  # the object inpainting mask extends the object's box by this much (0-1 units) on each side


def _value_noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, cells: int) -> np.ndarray:
    """Smoothstep-interpolated lattice noise in [0, 1] at points (u, v) of the unit square."""
    lattice = rng.random((cells + 1, cells + 1))
    x, y = u * cells, v * cells
    i, j = np.minimum(x.astype(int), cells - 1), np.minimum(y.astype(int), cells - 1)
    fx, fy = x - i, y - j
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = lattice[j, i] * (1 - fx) + lattice[j, i + 1] * fx
    bottom = lattice[j + 1, i] * (1 - fx) + lattice[j + 1, i + 1] * fx
    return top * (1 - fy) + bottom * fy


def background_field(scene: Scene, n: int) -> np.ndarray:
    """The textured background sampled at the pixel centres of an n x n grid: float (n, n, 3) in 0-255."""
    base = np.array(rgb(scene.background), np.float64)
    t = (np.arange(n) + 0.5) / n
    u, v = np.meshgrid(t, t)  # u: x (columns), v: y (rows)
    rng = np.random.default_rng([scene.seed, 7])
    if scene.texture == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        ramp = ((u - 0.5) * c + (v - 0.5) * s) / (abs(c) + abs(s)) + 0.5  # 0..1 across the image
        return base * (1 - GRADIENT_DEPTH * ramp)[..., None]
    field = np.broadcast_to(base, (n, n, 3)).copy()
    if scene.texture == "noise":
        noise = sum(w * _value_noise(rng, u, v, cells) for cells, w in NOISE_OCTAVES)
        sign = -1.0 if base.mean() > 127.5 else 1.0
        field += sign * NOISE_AMPLITUDE * noise[..., None]
    return field


def polygon_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Even-odd point-in-polygon test at the pixel centres (j + 0.5, i + 0.5) of a height x width grid.

    `poly` is (k, 2) in pixel units (x, y); only rows and columns inside its bounding box are tested.
    """
    mask = np.zeros((height, width), bool)
    (x_lo, y_lo), (x_hi, y_hi) = poly.min(0), poly.max(0)
    c0, c1 = max(0, int(np.floor(x_lo))), min(width, int(np.ceil(x_hi)) + 1)
    r0, r1 = max(0, int(np.floor(y_lo))), min(height, int(np.ceil(y_hi)) + 1)
    if c0 >= c1 or r0 >= r1:
        return mask
    xs, ys = np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5
    inside = mask[r0:r1, c0:c1]
    for (xa, ya), (xb, yb) in zip(poly, np.roll(poly, -1, 0)):
        rows = np.nonzero((ya > ys) != (yb > ys))[0]  # rows whose centre line this edge crosses
        if rows.size:
            x_cross = xa + (ys[rows] - ya) * (xb - xa) / (yb - ya)
            inside[rows] ^= xs[None, :] < x_cross[:, None]
    return mask


def polygon_coverage(poly: np.ndarray, height: int, width: int, supersample: int = 4) -> np.ndarray:
    """Fraction of each pixel inside `poly` (pixel units), from supersample^2 samples per pixel: float32."""
    fine = polygon_mask(poly * supersample, height * supersample, width * supersample)
    return fine.reshape(height, supersample, width, supersample).mean((1, 3), dtype=np.float32)


def render(scene: Scene, size: int, supersample: int = 4) -> Image.Image:
    """The scene as an anti-aliased size x size RGB image (painted at supersample x, box-filtered down by PIL)."""
    n = size * supersample
    canvas = background_field(scene, n)
    for obj in scene.objects:
        canvas[polygon_mask(box_polygon(obj.shape, obj.box) * n, n, n)] = rgb(obj.colour)
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    return image.resize((size, size), Image.Resampling.BOX) if supersample > 1 else image


def object_coverage(scene: Scene, size: int, supersample: int = 4) -> np.ndarray:
    """Per-object pixel coverage, (k, size, size) float32 in [0, 1], on the same samples as `render`."""
    out = np.zeros((len(scene.objects), size, size), np.float32)
    for k, obj in enumerate(scene.objects):
        out[k] = polygon_coverage(box_polygon(obj.shape, obj.box) * size, size, size, supersample)
    return out


def class_map(scene: Scene, size: int, supersample: int = 4) -> np.ndarray:
    """Per-pixel class, uint8 (size, size): 1 + SHAPES index where an object covers >= half the pixel, else 0."""
    out = np.zeros((size, size), np.uint8)
    for obj, coverage in zip(scene.objects, object_coverage(scene, size, supersample)):
        out[coverage >= 0.5] = SHAPES.index(obj.shape) + 1
    return out


def superres_pair(scene: Scene, size: int, factor: int = 4) -> tuple:
    """(low, high): the exact renders at `size` and at `factor * size` (low is not a resize of high)."""
    return render(scene, size), render(scene, size * factor)


def object_mask(scene: Scene, index: int, size: int, pad: float = MASK_PAD) -> np.ndarray:
    """Inpainting hole (uint8, 1 = to fill) over the object's box grown by `pad` (0-1 units), whole pixels."""
    x0, y0, x1, y1 = scene.objects[index].box
    mask = np.zeros((size, size), np.uint8)
    c0, r0 = (max(0, int(np.floor((v - pad) * size))) for v in (x0, y0))
    c1, r1 = (min(size, int(np.ceil((v + pad) * size))) for v in (x1, y1))
    mask[r0:r1, c0:c1] = 1
    return mask


def random_mask(rng: np.random.Generator, size: int, max_rects: int = 3) -> np.ndarray:
    """Inpainting hole (uint8, 1 = to fill): the union of 1..max_rects rectangles of 15-50 % of the side."""
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, max_rects + 1))):
        w, h = (int(round(rng.uniform(0.15, 0.5) * size)) for _ in range(2))
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        mask[y:y + h, x:x + w] = 1
    return mask


def example(scene_seed: int, size: int = 64, drop_prob: float = CAPTION_DROP, extras: Sequence[str] = ()) -> dict:
    """One training/eval example of the scene with this seed; see `dataset` for the keys."""
    scene = scene_from_seed(scene_seed)
    rng = np.random.default_rng([scene_seed, 1])  # caption dropout, then the inpainting masks
    ex = {"seed": scene_seed, "scene": scene, "objects": list(scene.objects), "image": render(scene, size),
          "caption": caption(scene, rng, drop_prob), "class_map": class_map(scene, size), **layout(scene)}
    ex["boxes_px"] = ex["boxes"] * size
    if "superres" in extras:
        ex["lowres"], ex["highres"] = ex["image"], render(scene, 4 * size)
    if "inpaint" in extras:
        ex["mask_object_index"] = int(rng.integers(len(scene.objects)))
        ex["mask_object"] = object_mask(scene, ex["mask_object_index"], size)
        ex["mask_random"] = random_mask(rng, size)
    return ex


def dataset(split: str, n: Optional[int] = None, size: int = 64, seed: Optional[int] = None,
            drop_prob: float = CAPTION_DROP, extras: Sequence[str] = ()) -> Iterator[dict]:
    """Examples of a split ("train" | "val" | "eval"), `n` of them (None: endless), deterministic in (split, seed).

    Each example: image (PIL RGB, size x size), caption (size/position/background each dropped with
    `drop_prob`), boxes (k, 4) float32 in 0-1 and boxes_px in pixels (x0, y0, x1, y1, tight on the outline),
    labels ("red circle"), shape_labels ("circle"), class_map (uint8, 0 = background, 1..6 = SHAPES), objects,
    scene, seed. extras "superres": lowres (= image) and highres (4x render); "inpaint": mask_object (over
    object mask_object_index) and mask_random, uint8 with 1 = hole. The eval stream's base seed is fixed
    (`EVAL_SEED`), and its scene seeds can never occur in train (`scenes.split_of`).
    """
    seeds = scene_seeds(split, seed)
    for scene_seed in (seeds if n is None else itertools.islice(seeds, n)):
        yield example(scene_seed, size, drop_prob, extras)
