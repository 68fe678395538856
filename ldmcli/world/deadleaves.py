"""Dead-leaves images: procedural pictures with the statistics of photographs, for the defaults that must work on
real pictures (the autoencoder of superres and inpaint, and those two models).

The dead-leaves model (Matheron; Lee, Mumford & Huang 2001) paints occluding shapes whose sizes follow a power law,
p(r) ∝ r^-3 between a pixel and the image: the result is scale invariant, with the 1/f² power spectrum, the
edge statistics and the occlusions of natural images, which is why restoration networks pre-trained on it transfer
to photographs (Achddou, Gousseau & Ladjal 2021; Baradad et al. 2021). On top of the flat leaves of the basic
model each leaf here gets what flat colour lacks and photos have: smooth shading (linear gradients), periodic and
random textures, and the picture as a whole may be defocused, noisy, or grey. With `thin` > 0 that share of the
ellipses and rectangles are strokes (width 0.04-0.3 of their length): the grass blades, twigs, wires and hair of
photographs, which the rounder leaves lack.

Every image is a pure function of (seed, size): it is drawn at 4× the size and shrunk with Pillow's antialiasing
filter, so edges are anti-aliased the way a resized photograph's are.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

SUPERSAMPLE = 4
LEAVES = 300                 # leaves per 32 × 32 pixels (scaled with the area): about four layers deep
SIZE_POWER = 3.0             # p(r) ∝ r^-SIZE_POWER
THIN_ASPECT = (0.04, 0.3)    # a stroke's width over its length, log-uniform


def _radius(rng: np.random.Generator, r_min: float, r_max: float) -> float:
    """A draw from p(r) ∝ r^-3 on [r_min, r_max] (inverse CDF)."""
    a = 1.0 - SIZE_POWER
    u = rng.random()
    return float((r_min ** a + u * (r_max ** a - r_min ** a)) ** (1.0 / a))


def _colour(rng: np.random.Generator, grey: bool) -> np.ndarray:
    """An RGB colour in 0-255: a luminance, then a chroma that is mostly small (most of a photo is muted)."""
    lum = rng.uniform(0, 255)
    if grey:
        return np.full(3, lum)
    chroma = rng.normal(0, 1, 3)
    chroma -= chroma.mean()
    chroma *= rng.exponential(35) / max(np.linalg.norm(chroma), 1e-6)
    return np.clip(lum + chroma, 0, 255)


def _inside(kind: int, dx: np.ndarray, dy: np.ndarray, r: float, rng: np.random.Generator,
            thin: float = 0.0) -> np.ndarray:
    """The leaf's shape on local coordinates (dx, dy) about its centre: disk, ellipse, rectangle or polygon; an
    ellipse or rectangle is a stroke with probability `thin` (drawn only when thin > 0, so that thin = 0 keeps the
    random stream, and the pools, of the generator without strokes)."""
    angle = rng.uniform(0, math.pi)
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if kind == 0:
        return dx * dx + dy * dy <= r * r
    aspect = rng.uniform(0.3, 1.0)
    if thin > 0 and kind in (1, 2) and rng.random() < thin:
        aspect = math.exp(rng.uniform(math.log(THIN_ASPECT[0]), math.log(THIN_ASPECT[1])))
    if kind == 1:
        return (u / r) ** 2 + (v / (r * aspect)) ** 2 <= 1
    if kind == 2:
        return (np.abs(u) <= r) & (np.abs(v) <= r * aspect)
    sides = int(rng.integers(3, 7))        # a convex polygon inscribed in the circle of radius r
    theta = np.sort(rng.uniform(0, 2 * math.pi, sides))
    pts = np.stack([np.cos(theta), np.sin(theta)], 1) * r
    inside = np.ones(dx.shape, bool)
    for k in range(sides):
        (x0, y0), (x1, y1) = pts[k], pts[(k + 1) % sides]
        inside &= (x1 - x0) * (dy - y0) - (y1 - y0) * (dx - x0) >= 0
    return inside


def _fill(dx: np.ndarray, dy: np.ndarray, r: float, rng: np.random.Generator, grey: bool) -> np.ndarray:
    """The leaf's colours [h, w, 3]: flat, shaded (a linear gradient between two colours), striped (a sinusoid) or
    grained (smoothed noise)."""
    base = _colour(rng, grey)
    kind = rng.choice(4, p=(0.45, 0.3, 0.12, 0.13))
    if kind == 0:
        return np.broadcast_to(base, dx.shape + (3,))
    angle = rng.uniform(0, 2 * math.pi)
    t = (math.cos(angle) * dx + math.sin(angle) * dy) / max(r, 1e-6)
    if kind == 1:
        other = _colour(rng, grey)
        w = np.clip((t + 1) / 2, 0, 1)[..., None]
        return base * (1 - w) + other * w
    amplitude = rng.uniform(5, 60)
    if kind == 2:
        period = rng.uniform(2, 12) * SUPERSAMPLE
        wave = np.sin(2 * math.pi * t * r / period + rng.uniform(0, 2 * math.pi))
        tint = _colour(rng, grey) - base if rng.random() < 0.5 else np.ones(3) * amplitude
        return base + wave[..., None] * tint * (0.5 if rng.random() < 0.5 else 1.0)
    h, w = dx.shape
    cell = float(rng.uniform(1, 6)) * SUPERSAMPLE / 2
    coarse = rng.normal(0, 1, (max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)))
    grain = np.asarray(Image.fromarray(coarse.astype(np.float32), "F").resize((w, h), Image.Resampling.BICUBIC))
    channels = grain[..., None] if grey or rng.random() < 0.7 else grain[..., None] * rng.uniform(0.5, 1.5, 3)
    return base + amplitude * channels


def dead_leaves(seed: int, size: int, thin: float = 0.0) -> Image.Image:
    """A size × size RGB dead-leaves image, the same for the same (seed, size, thin); `thin`: the share of
    ellipses and rectangles drawn as strokes."""
    rng = np.random.default_rng([seed, 0xDEAD1EAF])
    big = size * SUPERSAMPLE
    grey = rng.random() < 0.15
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    canvas = _fill(xx - big / 2, yy - big / 2, big / 2, rng, grey).astype(np.float32).copy()
    r_min, r_max = SUPERSAMPLE * 0.75, big * 0.75
    for _ in range(LEAVES * size * size // 1024):      # back to front: each leaf occludes the ones before it
        r = _radius(rng, r_min, r_max)
        cx, cy = rng.uniform(-r / 2, big + r / 2, 2)
        x0, x1 = max(0, int(cx - r)), min(big, int(cx + r) + 1)
        y0, y1 = max(0, int(cy - r)), min(big, int(cy + r) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
        inside = _inside(int(rng.integers(4)), dx, dy, r, rng, thin)
        if inside.any():
            canvas[y0:y1, x0:x1][inside] = _fill(dx, dy, r, rng, grey)[inside]
    img = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8))
    if rng.random() < 0.3:         # defocus: the whole picture, at most a couple of output pixels
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0) * SUPERSAMPLE))
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    if rng.random() < 0.3:         # sensor noise, after the shrink so it is per output pixel
        a = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(1, 4), (size, size, 3 if not grey else 1))
        img = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    return img


__all__ = ["dead_leaves", "LEAVES", "SUPERSAMPLE", "THIN_ASPECT"]
