"""Read a shapes-world image back: which objects it shows, where, what colour, shape and size.

Works from an RGB image alone (what a generated sample gives):
1. background model: a per-channel plane (c + a x + b y) fitted to the border pixels near their median colour,
   then refitted twice to every pixel not yet called foreground; a plane absorbs the gradient texture exactly
   and leaves only the mild noise texture, well under `FG_THRESHOLD`;
2. foreground: RGB distance from that plane > `FG_THRESHOLD`; 8-connected components (union-find below);
   components under `MIN_AREA_SHARE` of the smallest object's area are ignored, at most `MAX_DETECTIONS` largest kept;
3. per component: colour = median of its interior pixels, named by the nearest palette colour in CIELAB;
   soft coverage alpha = projection of each pixel onto the background -> object colour line (sub-pixel);
4. shape: for each of the six shapes, the unit outline is fitted to alpha's centroid and second moments
   (per-axis scale, so a stretched blob still fits) and rendered like the world renders; the shape whose
   coverage differs least from alpha (normalised L1) wins. Box = the fitted outline's box; size class from
   its area-equivalent radius; cell from the box centre.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Tuple

import numpy as np
from PIL import Image

from .render import polygon_coverage
from .scenes import UNIT_POLYGONS, Placed, cell_of, half_extent, polygon_moments
from .vocab import COLOUR_RGB, COLOURS, GRID, SHAPES, SIZE_RADIUS, SIZES

FG_THRESHOLD = 40.0      # RGB distance from the background plane (palette pairs are >= ~70 apart)
MIN_AREA_SHARE = 0.5     # components under this share of the smallest object the world draws are noise
MAX_DETECTIONS = 8
CORE_PIXELS = 9          # fewer interior pixels than this: the colour is unmixed from the edge blend
_UNIT_MOMENTS = {s: polygon_moments(p) for s, p in UNIT_POLYGONS.items()}
_SIZE_EDGES = np.sqrt(np.array(SIZE_RADIUS[:-1]) * np.array(SIZE_RADIUS[1:]))  # geometric midpoints
# area of the smallest shape at the smallest size, as a share of the image
_SMALLEST = min(m[0] for m in _UNIT_MOMENTS.values()) * (SIZE_RADIUS[0] / GRID) ** 2


@dataclass(frozen=True)
class Detected(Placed):
    """One object read back. `box` (x0, y0, x1, y1) and `centroid` (x, y) are in pixels; `fit` is the
    normalised L1 mismatch of the chosen outline (0 = perfect); `scores` that of every shape."""
    colour: str
    shape: str
    size: str
    cell: int
    box: Tuple[float, float, float, float]
    centroid: Tuple[float, float]
    area: float
    rgb: Tuple[float, float, float]
    fit: float
    image_size: Tuple[int, int]  # (width, height)
    scores: Tuple[float, ...] = ()

    @property
    def box01(self) -> Tuple[float, float, float, float]:
        w, h = self.image_size
        x0, y0, x1, y1 = self.box
        return (x0 / w, y0 / h, x1 / w, y1 / h)


@dataclass(frozen=True)
class Reading:
    """Everything read from one image: background colour name, objects, and the per-pixel class map."""
    background: str
    objects: List[Detected]
    class_map: np.ndarray


def as_rgb(img) -> np.ndarray:
    """A PIL image or an (H, W, 3) array in 0-255 as a float64 (H, W, 3) array."""
    if isinstance(img, Image.Image):
        img = img.convert("RGB")
    arr = np.asarray(img, np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {arr.shape}")
    return arr


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0-255, (..., 3)) to CIELAB under D65."""
    c = np.asarray(rgb, np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ m.T / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_PALETTE_LAB = _lab(np.array(COLOUR_RGB))


def colour_name(rgb) -> str:
    """The palette colour nearest to an sRGB triple in CIELAB."""
    return COLOURS[int(np.argmin(((_PALETTE_LAB - _lab(rgb)) ** 2).sum(-1)))]


def _fit_plane(img: np.ndarray, select: np.ndarray) -> np.ndarray:
    """Least-squares c + a x + b y per channel over the selected pixels, evaluated everywhere: (H, W, 3)."""
    h, w = select.shape
    yy, xx = np.mgrid[0:h, 0:w]
    basis = np.stack([np.ones((h, w)), (xx + 0.5) / w, (yy + 0.5) / h], -1)  # (H, W, 3)
    coef, *_ = np.linalg.lstsq(basis[select], img[select], rcond=None)   # (3 basis, 3 channels)
    return basis @ coef


def background_model(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(field, foreground): the background plane (H, W, 3) and the pixels farther than FG_THRESHOLD from it."""
    h, w, _ = img.shape
    b = max(1, min(h, w) // 32)
    border = np.ones((h, w), bool)
    border[b:h - b, b:w - b] = False
    near = border & (np.linalg.norm(img - np.median(img[border], 0), axis=-1) < 2 * FG_THRESHOLD)
    field = _fit_plane(img, near if near.sum() >= 3 else border)
    for _ in range(2):
        background = np.linalg.norm(img - field, axis=-1) <= FG_THRESHOLD
        if background.sum() < 0.1 * h * w:  # hardly any background: keep the border fit
            break
        field = _fit_plane(img, background)
    return field, np.linalg.norm(img - field, axis=-1) > FG_THRESHOLD


def label_components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """8-connected components of a boolean mask: (labels int32, 0 = off, 1..n), n. Union-find by hooking
    each root onto the smaller root across every edge, then pointer jumping, until no edge joins two roots."""
    h, w = mask.shape
    node = np.full(h * w, -1, np.int64)
    on = np.flatnonzero(mask)
    node[on] = np.arange(on.size)
    src, dst = [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        lo, hi = max(0, -dx), max(0, dx)
        ys, xs = np.nonzero(mask[:h - dy, lo:w - hi] & mask[dy:, lo + dx:w - hi + dx])
        src.append(ys * w + xs + lo)
        dst.append((ys + dy) * w + xs + lo + dx)
    u, v = node[np.concatenate(src)], node[np.concatenate(dst)]
    parent = np.arange(on.size)
    while True:
        pu, pv = parent[u], parent[v]
        apart = pu != pv
        if not apart.any():
            break
        np.minimum.at(parent, np.maximum(pu, pv)[apart], np.minimum(pu, pv)[apart])
        while not np.array_equal(parent[parent], parent):
            parent = parent[parent]
    roots, index = np.unique(parent, return_inverse=True)
    labels = np.zeros(h * w, np.int32)
    labels[on] = index + 1
    return labels.reshape(h, w), roots.size


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
        mask[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
    return out


def _neighbours(mask: np.ndarray, combine) -> np.ndarray:
    """Combine a mask with its 4 one-pixel shifts (np.logical_and: erode, np.logical_or: dilate)."""
    out = mask.copy()
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        out = combine(out, _shift(mask, dy, dx))
    return out


class _Fit(NamedTuple):
    shape: str
    centre: np.ndarray    # of the outline's box, window pixels (x, y)
    scale: np.ndarray     # per-axis scale of the unit outline
    coverage: np.ndarray  # the fitted outline rendered in the window
    scores: Tuple[float, ...]
    mean: np.ndarray      # alpha's centroid


def _fit_shape(alpha: np.ndarray) -> _Fit:
    """Fit each unit outline to alpha's centroid and second moments; keep the one that matches alpha best."""
    h, w = alpha.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    total = alpha.sum()
    mean = np.array([(alpha * xx).sum(), (alpha * yy).sum()]) / total
    # box-filtered coverage adds a pixel's own variance, 1/12, to each axis
    var = np.array([(alpha * (xx - mean[0]) ** 2).sum(), (alpha * (yy - mean[1]) ** 2).sum()]) / total - 1 / 12
    fits = []
    for shape in SHAPES:
        _, unit_centroid, unit_var = _UNIT_MOMENTS[shape]
        scale = np.sqrt(np.maximum(var, 0.05) / unit_var)
        centre = mean - scale * unit_centroid
        fits.append((shape, centre, scale, polygon_coverage(UNIT_POLYGONS[shape] * scale + centre, h, w)))
    scores = tuple(float(np.abs(alpha - f[3]).sum() / (total + f[3].sum())) for f in fits)
    return _Fit(*fits[int(np.argmin(scores))], scores, mean)


def _alpha(pixels: np.ndarray, background: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Soft coverage: where each pixel lies on the line from its background colour to the object colour."""
    towards = rgb - background
    return np.clip(((pixels - background) * towards).sum(-1) / np.maximum((towards ** 2).sum(-1), 1.0), 0, 1)


def _unmix(pixels: np.ndarray, background: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Least-squares object colour c of pixels = coverage * c + (1 - coverage) * background."""
    mixed = pixels - (1 - coverage[..., None]) * background
    return np.clip((coverage[..., None] * mixed).sum((0, 1)) / max((coverage ** 2).sum(), 1e-6), 0, 255)


def _measure(img, field, labels, k) -> Tuple[Detected, tuple, np.ndarray]:
    """Read component k: the Detected, its window (row, column slices) and its soft coverage in the window."""
    h, w, _ = img.shape
    ys, xs = np.nonzero(labels == k)
    win = (slice(max(ys.min() - 2, 0), min(ys.max() + 3, h)), slice(max(xs.min() - 2, 0), min(xs.max() + 3, w)))
    pixels, background, comp = img[win], field[win], labels[win] == k
    core = _neighbours(comp, np.logical_and)
    region = _neighbours(comp, np.logical_or) & ((labels[win] == 0) | comp)  # the component and its rim
    rgb = np.median(pixels[core if core.sum() >= 3 else comp], 0)
    alpha = _alpha(pixels, background, rgb) * region
    if alpha.sum() < 1:  # no pixel leans towards the median colour (a mottled blob): fall back to the mask
        alpha = comp.astype(np.float64)
    fit = _fit_shape(alpha)
    if core.sum() < CORE_PIXELS:  # too few pure pixels to trust their colour: unmix it with the fitted outline
        rgb = _unmix(pixels, background, fit.coverage * region)
        alpha = _alpha(pixels, background, rgb) * region
        fit = _fit_shape(alpha)
    offset = np.array([win[1].start, win[0].start])
    half = fit.scale * half_extent(fit.shape)
    box = tuple(float(v) for v in np.concatenate([fit.centre - half, fit.centre + half]) + np.tile(offset, 2))
    radius = np.sqrt(np.prod(fit.scale)) / (np.sqrt(h * w) / GRID)  # area-equivalent, in cell sides
    centroid = fit.mean + offset
    detected = Detected(colour_name(rgb), fit.shape, SIZES[int(np.searchsorted(_SIZE_EDGES, radius))],
                        cell_of((box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h), box,
                        (float(centroid[0]), float(centroid[1])), float(alpha.sum()),
                        tuple(float(v) for v in rgb), min(fit.scores), (w, h), fit.scores)
    return detected, win, alpha


def read_image(img) -> Reading:
    """Background colour, objects (largest first) and class map of an RGB image (PIL or uint8 array)."""
    arr = as_rgb(img)
    h, w, _ = arr.shape
    field, foreground = background_model(arr)
    labels, n = label_components(foreground)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = [k + 1 for k in np.argsort(-areas, kind="stable")
            if areas[k] >= max(3, MIN_AREA_SHARE * _SMALLEST * h * w)][:MAX_DETECTIONS]
    objects, classes = [], np.zeros((h, w), np.uint8)
    for k in keep:
        detected, win, alpha = _measure(arr, field, labels, k)
        objects.append(detected)
        classes[win][alpha >= 0.5] = SHAPES.index(detected.shape) + 1
    return Reading(colour_name(field[~foreground].mean(0) if (~foreground).any() else field.mean((0, 1))),
                   objects, classes)


def read_objects(img) -> List[Detected]:
    """The objects an RGB image shows, largest first."""
    return read_image(img).objects


def read_class_map(img) -> np.ndarray:
    """Per-pixel class read from an RGB image: 1 + SHAPES index of the detected object covering it, else 0."""
    return read_image(img).class_map
