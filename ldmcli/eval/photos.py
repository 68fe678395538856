"""Real photographs for the `ldm eval` photo rows: scikit-image's sample photos (an optional, test-only dependency),
never used for training, and the figures measured on them.

Each photo's centre square is shrunk (Pillow's antialiasing bicubic filter, as a user's resize would) to the
high-res size of a row; its low-res input is the same filter's ÷4 shrink, so bicubic upscaling is the baseline
every super-resolution figure is measured against.

Seams are measured as gradient energy: the squared differences of the output across a set of borders (tile
borders, a hole's border) divided by the ground truth's across the same borders, over the same ratio for every
other pair of neighbouring pixels. 1 is seamless; a visible seam is an excess of gradient exactly where the borders
are.
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ldmcli.errors import UsageError

# colour photographs, then greyscale ones (used as RGB); scikit-image ships these in its wheel (no download)
COLOUR = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")
GREY = ("camera", "brick", "grass", "gravel", "coins", "moon", "clock")
PHOTOS = COLOUR + GREY
# pictures for choosing a default (`ldm eval --split val`), never among the photos above: the other photographs and
# graphics scikit-image ships; the two motorcycle views are cropped at opposite ends (different parts of the scene).
# The motorcycle pair is its only other photograph, so val also takes six native 256 px tiles of it
# (motorcycle_<view>_<x>_<y>: three columns that show different parts of the scene, the right view's shifted past
# the left's, two rows): without them val's 256 row held two photos among five pictures, too few to choose between
# models that the eval photos separate (docs/RESULTS.md, "Photographs")
TILE = 256
TILES = tuple(f"motorcycle_{view}_{x}_{y}" for view, x in (("left", 0), ("left", 242), ("right", 485))
              for y in (0, 244))
VAL = ("motorcycle_left", "motorcycle_right", "cell", "logo", "horse", "page", "text") + TILES
SPLITS = ("eval", "val")
SR_ROWS = ((32, 128), (64, 256))        # (low-res, high-res) side of the super-resolution rows


def available() -> bool:
    """Whether scikit-image (and so its sample photos) is installed; checked without importing it."""
    from importlib.util import find_spec
    return find_spec("skimage") is not None


def photo(name: str, size: int) -> Image.Image:
    """The centre square of scikit-image's `name` photo, shrunk to size × size, RGB."""
    try:
        import skimage.data
    except ImportError:
        raise UsageError("the photo rows need scikit-image's sample photos: pip install scikit-image") from None
    from ldmcli.io.images import centre_square
    return centre_square(Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB"), size)


@lru_cache(maxsize=1)
def _motorcycle() -> Tuple[np.ndarray, np.ndarray]:
    """The motorcycle stereo pair (left, right), read once: eight val pictures come from it."""
    import skimage.data
    left, right, _ = skimage.data.stereo_motorcycle()
    return left, right


def _val_source(name: str) -> Image.Image:
    """The full val picture `name` (VAL), RGB; the motorcycle views as their leftmost / rightmost square, or as the
    TILE-px square at x, y of a tile's name."""
    import skimage.data
    if name.startswith("motorcycle_"):
        left, right = _motorcycle()
        view, *corner = name.split("_")[1:]
        img = Image.fromarray(left if view == "left" else right)
        if corner:
            x, y = map(int, corner)
            return img.crop((x, y, x + TILE, y + TILE))
        side = min(img.size)
        return img.crop((0, 0, side, side) if view == "left" else (img.width - side, 0, img.width, side))
    a = np.asarray(getattr(skimage.data, name)())
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 3 and a.shape[-1] == 4:                      # the logo: its transparent pixels on white
        alpha = a[..., 3:].astype(np.float32) / 255
        a = np.rint(a[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def photos(size: int, names: Optional[Sequence[str]] = None, split: str = "eval") -> List[Tuple[str, Image.Image]]:
    """(name, size × size picture) for `names` (default: the split's: PHOTOS, or VAL where a picture's shorter side
    reaches `size`: a val picture is never enlarged)."""
    if split not in SPLITS:
        raise UsageError(f"--split must be eval or val, got {split!r}")
    if split == "eval":
        return [(n, photo(n, size)) for n in (PHOTOS if names is None else names)]
    if not available():
        raise UsageError("the photo rows need scikit-image's sample photos: pip install scikit-image")
    from ldmcli.io.images import centre_square
    sources = ((n, _val_source(n)) for n in (VAL if names is None else names))
    return [(n, centre_square(img, size)) for n, img in sources if min(img.size) >= size]


def shrink(img: Image.Image, factor: int = 4) -> Image.Image:
    """The low-res input: Pillow's antialiasing bicubic ÷factor."""
    return img.resize((img.width // factor, img.height // factor), Image.Resampling.BICUBIC)


def bicubic(img: Image.Image, factor: int = 4) -> Image.Image:
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC)


def _array(img) -> np.ndarray:
    return np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, np.float64)


def psnr(a, b, mask=None) -> float:
    """world.metrics.psnr over 8-bit RGB (inside `mask` [H, W] only, when given), identical images counted as its
    PSNR_CAP, as the other rows of `ldm eval` count them."""
    from ldmcli.world import metrics as M
    return min(M.psnr(_array(a), _array(b), mask), M.PSNR_CAP)


def _differences(img) -> Tuple[np.ndarray, np.ndarray]:
    """Squared forward differences summed over channels: across columns [H, W-1] and across rows [H-1, W]."""
    a = _array(img)
    return ((a[:, 1:] - a[:, :-1]) ** 2).sum(-1), ((a[1:] - a[:-1]) ** 2).sum(-1)


def seam_index(out, truth, lines) -> float:
    """(output / truth gradient energy across `lines`) / (the same ratio on every other pixel pair). `lines` =
    (across_columns [H, W-1], across_rows [H-1, W]) bool masks of the pixel pairs that straddle a border. Lists of
    outputs, truths and lines pool the energies of all the images (one image's figure is noisy: its content on a
    few lines decides it)."""
    if not isinstance(out, (list, tuple)):
        out, truth, lines = [out], [truth], [lines]
    on_out = off_out = on_true = off_true = 0.0
    for o, t, pair in zip(out, truth, lines, strict=True):
        for e_out, e_true, m in zip(_differences(o), _differences(t), pair):
            m = np.asarray(m, bool)
            on_out, off_out = on_out + e_out[m].sum(), off_out + e_out[~m].sum()
            on_true, off_true = on_true + e_true[m].sum(), off_true + e_true[~m].sum()
    return float((on_out / max(on_true, 1e-9)) / max(off_out / max(off_true, 1e-9), 1e-9))


def grid_lines(size: Tuple[int, int], period: int, offset: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """The pixel pairs across every `period`-th column and row boundary (at k·period + offset), for seam_index."""
    h, w = size
    cols, rows = np.zeros((h, w - 1), bool), np.zeros((h - 1, w), bool)
    cols[:, [x - 1 for x in range(offset + period, w, period)]] = True
    rows[[y - 1 for y in range(offset + period, h, period)], :] = True
    return cols, rows


def border_lines(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The pixel pairs across a hole's border (`mask` [H, W], true inside the hole), for seam_index."""
    m = np.asarray(mask, bool)
    return m[:, :-1] != m[:, 1:], m[:-1] != m[1:]


# ---- the photo rows of `ldm eval` -------------------------------------------------------------------------------
PHOTO_ROWS = "photos"     # its name among the tasks of `ldm eval`
INPAINT_SIZE = 128


def photo_hole(index: int, size: int) -> np.ndarray:
    """The hole of photo `index` ([size, size] float, 1 = repaint): a rectangle of 20-40 % of the side per axis at
    a position drawn from the index, never touching the border."""
    rng = np.random.default_rng([index, 0x401E])
    w, h = (rng.uniform(0.2, 0.4, 2) * size).astype(int)
    x0, y0 = rng.integers(2, size - w - 2), rng.integers(2, size - h - 2)
    m = np.zeros((size, size), np.float32)
    m[y0:y0 + h, x0:x0 + w] = 1
    return m


def superres_rows(model, seed: int = 0, settings=None, progress=None, split: str = "eval",
                  sr_options: Optional[dict] = None) -> dict:
    """PSNR of the model's ×4 and of bicubic on every photo of `split` at each SR_ROWS size; the gain's mean and
    worst case, and the seam index on the tile borders of the model's default tiling (1 where it runs in one pass).
    sr_options: superres's keyword options (detail, ensemble; none: the model's defaults)."""
    from ldmcli.sampling.settings import SamplerSettings
    from ldmcli.tasks.superres import superres
    settings = settings or SamplerSettings()
    out = {}
    for lo, hi in SR_ROWS:
        gains, ours, base, images, truths, smooth = [], [], [], [], [], []
        bar = f"{PHOTO_ROWS} superres {lo}->{hi}"
        pictures = photos(hi, split=split)
        if progress:
            progress(bar, 0, len(pictures))
        for i, (name, hr) in enumerate(pictures):
            lr = shrink(hr)
            img = superres(model, lr, seeds=[seed + i], settings=settings, **(sr_options or {}))[0]
            smooth.append(bicubic(lr))
            ours.append(psnr(img, hr))
            base.append(psnr(smooth[-1], hr))
            gains.append(ours[-1] - base[-1])
            images.append(img)
            truths.append(hr)
            if progress:
                progress(bar, i + 1, len(pictures))
        # the borders of the model's native tiles (with the default quarter overlap), whether or not it tiles
        tile = 4 * model.cfg.latent_size
        lines = [grid_lines((hi, hi), tile - tile // 4)] * len(images)
        out |= {f"n_sr{hi}": float(len(pictures)),       # val's scans are never enlarged: fewer pictures at 256
                f"sr{hi}_gain_db": float(np.mean(gains)), f"sr{hi}_worst_gain_db": float(np.min(gains)),
                f"sr{hi}_psnr": float(np.mean(ours)), f"sr{hi}_bicubic_psnr": float(np.mean(base)),
                f"sr{hi}_seam_index": seam_index(images, truths, lines),
                f"sr{hi}_bicubic_seam_index": seam_index(smooth, truths, lines)}
    return out


def inpaint_rows(model, seed: int = 0, settings=None, progress=None, split: str = "eval") -> dict:
    """Hole PSNR of the model (prompt "") and of a mean-colour fill (the known pixels' mean), and the seam index
    on the hole's border, over every photo of `split` at INPAINT_SIZE."""
    from ldmcli.sampling.settings import SamplerSettings
    from ldmcli.tasks.inpaint import inpaint
    settings = settings or SamplerSettings()
    hole_psnr, mean_psnr, outs, truths, lines = [], [], [], [], []
    pictures = photos(INPAINT_SIZE, split=split)
    if progress:
        progress(f"{PHOTO_ROWS} inpaint", 0, len(pictures))
    for i, (name, img) in enumerate(pictures):
        hole = photo_hole(i, INPAINT_SIZE)
        out = inpaint(model, img, hole, seeds=[seed + i], settings=settings)[0]
        a = np.asarray(img, np.float64)
        fill = a.copy()
        fill[hole > 0.5] = a[hole < 0.5].mean(0)
        hole_psnr.append(psnr(out, img, hole > 0.5))
        mean_psnr.append(psnr(fill, img, hole > 0.5))
        outs.append(out)
        truths.append(img)
        lines.append(border_lines(hole > 0.5))
        if progress:
            progress(f"{PHOTO_ROWS} inpaint", i + 1, len(pictures))
    return {"n_inpaint": float(len(pictures)),
            "inpaint_hole_psnr": float(np.mean(hole_psnr)), "inpaint_mean_fill_psnr": float(np.mean(mean_psnr)),
            "inpaint_seam_index": seam_index(outs, truths, lines),
            "inpaint_worst_seam_index": max(seam_index(*a) for a in zip(outs, truths, lines))}


def autoencoder_rows(model, size: int = 128, split: str = "eval") -> dict:
    """PSNR of the model's first stage (encode, decode: the posterior mode) on every photo of `split` at `size`."""
    from ldmcli.eval.ceiling import reconstruct
    values = [psnr(reconstruct(model, [img])[0], img) for _, img in photos(size, split=split)]
    return {"autoencoder_psnr": float(np.mean(values))}


__all__ = ["PHOTOS", "VAL", "TILES", "COLOUR", "GREY", "SR_ROWS", "PHOTO_ROWS", "available", "photo", "photos",
           "shrink", "bicubic",
           "psnr", "seam_index", "grid_lines", "border_lines", "photo_hole", "superres_rows", "inpaint_rows",
           "autoencoder_rows"]
