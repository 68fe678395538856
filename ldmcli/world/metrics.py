"""Per-task scores of generated images against the shapes world's exact ground truth.

Every function returns a plain dict of floats (nan where a score has no sample); images are PIL images or
(H, W, 3) uint8 arrays. Requests for txt2img are what was asked: a `Scene`, a `Prompt` (from `parse_caption`,
so attributes a caption left out are not scored), or a list of objects with shape / colour / size / cell.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image

from .readback import Detected, as_rgb, read_image, read_objects
from .scenes import Prompt, Scene
from .vocab import SHAPES

PSNR_CAP = 100.0  # identical images have infinite PSNR; averages count them as this many dB


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _requested(item):
    """(objects, background or None) of a Scene, a Prompt or a plain list of objects."""
    if isinstance(item, (Scene, Prompt)):
        return list(item.objects), item.background
    return list(item), None


def match(requests: Sequence, detections: Sequence[Detected]) -> List[Optional[Detected]]:
    """Greedy matching, best pair first: colour counts most, then shape, then cell, then size.

    Returns, per request, its detection or None; a pair that agrees on nothing is never made."""
    def score(r, d):
        return (4 * (r.colour == d.colour) + 2 * (r.shape == d.shape)
                + (r.cell is not None and r.cell == d.cell) + 0.5 * (r.size is not None and r.size == d.size))
    pairs = sorted((-score(r, d), i, j) for i, r in enumerate(requests) for j, d in enumerate(detections))
    out: List[Optional[Detected]] = [None] * len(requests)
    used = set()
    for negative, i, j in pairs:
        if negative < 0 and out[i] is None and j not in used:
            out[i] = detections[j]
            used.add(j)
    return out


def txt2img_metrics(requests: Iterable, images: Iterable) -> dict:
    """Accuracy per requested attribute (over requests naming it), count, and two-object colour binding."""
    hits = {key: [] for key in ("colour", "shape", "position", "size", "object", "count", "two_colours",
                                "background")}
    for item, image in zip(requests, images, strict=True):
        wanted, background = _requested(item)
        reading = read_image(image)
        found = match(wanted, reading.objects)
        for r, d in zip(wanted, found):
            right = {"colour": d is not None and d.colour == r.colour, "shape": d is not None and d.shape == r.shape}
            if r.cell is not None:
                right["position"] = d is not None and d.cell == r.cell
            if r.size is not None:
                right["size"] = d is not None and d.size == r.size
            for key, ok in right.items():
                hits[key].append(ok)
            hits["object"].append(all(right.values()))
        hits["count"].append(len(reading.objects) == len(wanted))
        if len(wanted) == 2:
            hits["two_colours"].append(all(d is not None and d.colour == r.colour for r, d in zip(wanted, found)))
        if background is not None:
            hits["background"].append(reading.background == background)
    out = {f"{key}_acc": _mean(v) for key, v in hits.items()}
    out["n_objects"] = float(len(hits["colour"]))
    out["n_images"] = float(len(hits["count"]))
    return out


def box_iou(a, b) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _label_ok(label: str, d: Detected) -> bool:
    """"red circle" needs colour and shape right, a bare "circle" only the shape."""
    words = label.split()
    return words[-1] == d.shape and (len(words) == 1 or words[0] == d.colour)


def layout2img_metrics(layouts: Iterable, images: Iterable) -> dict:
    """Per requested box: IoU with the best-overlapping detection (0 if none), and that detection's label."""
    ious, labels_ok = [], []
    for lay, image in zip(layouts, images, strict=True):
        if isinstance(lay, Scene):
            lay = {"boxes": [o.box for o in lay.objects], "labels": [o.label for o in lay.objects]}
        found = read_objects(image)
        for box, label in zip(lay["boxes"], lay["labels"]):
            overlaps = [box_iou(box, d.box01) for d in found]
            best = int(np.argmax(overlaps)) if overlaps else -1
            ious.append(overlaps[best] if found else 0.0)
            labels_ok.append(bool(found) and overlaps[best] > 0 and _label_ok(label, found[best]))
    return {"iou": _mean(ious), "iou50_acc": _mean(np.array(ious) >= 0.5), "label_acc": _mean(labels_ok),
            "n_boxes": float(len(ious))}


def semantic2img_metrics(class_maps: Iterable[np.ndarray], images: Iterable) -> dict:
    """Pixel accuracy, the same over requested-object pixels only (plain pixel accuracy is dominated by the
    background: a blank image scores ~0.95), and mean IoU over classes present in either map, over the set."""
    k = len(SHAPES) + 1
    confusion = np.zeros((k, k), np.int64)
    for wanted, image in zip(class_maps, images, strict=True):
        got = read_image(image).class_map
        confusion += np.bincount(np.asarray(wanted, np.int64).ravel() * k + got.ravel(),
                                 minlength=k * k).reshape(k, k)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    total, on_objects = confusion.sum(), confusion[1:].sum()  # rows: requested class
    return {"pixel_acc": float(inter.sum() / total) if total else float("nan"),
            "object_pixel_acc": float(inter[1:].sum() / on_objects) if on_objects else float("nan"),
            "miou": _mean(inter[union > 0] / union[union > 0]), "n_pixels": float(total)}


def psnr(a, b, mask=None) -> float:
    """Peak signal-to-noise ratio in dB for 0-255 images (inside `mask` [H, W] only, when given); inf where they
    are identical."""
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = float(np.mean(d[np.asarray(mask, bool)] if mask is not None else d))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _luminance(img) -> np.ndarray:
    return as_rgb(img) @ np.array([0.299, 0.587, 0.114])


def _blur(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """Separable Gaussian filter, 'valid' region only (the SSIM window of Wang et al. 2004: 11 taps, 1.5)."""
    radius = min(radius, (min(x.shape) - 1) // 2)
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    n = 2 * radius
    rows = sum(t * x[i:x.shape[0] - n + i] for i, t in enumerate(taps))
    return sum(t * rows[:, i:x.shape[1] - n + i] for i, t in enumerate(taps))


def ssim(a, b) -> float:
    """Structural similarity on luminance (Gaussian window sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255)."""
    x, y = _luminance(a), _luminance(b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _blur(x), _blur(y)
    vx, vy, cov = _blur(x * x) - mx * mx, _blur(y * y) - my * my, _blur(x * y) - mx * my
    return float(np.mean((2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))))


def superres_metrics(outputs: Iterable, highs: Iterable, lows: Iterable) -> dict:
    """PSNR / SSIM of the outputs against the exact high-res renders, beside PIL bicubic upsampling."""
    got = {"psnr": [], "ssim": [], "bicubic_psnr": [], "bicubic_ssim": []}
    for out, high, low in zip(outputs, highs, lows, strict=True):
        high = Image.fromarray(as_rgb(high).astype(np.uint8))
        bicubic = Image.fromarray(as_rgb(low).astype(np.uint8)).resize(high.size, Image.Resampling.BICUBIC)
        for prefix, img in (("", out), ("bicubic_", bicubic)):
            got[prefix + "psnr"].append(min(psnr(img, high), PSNR_CAP))
            got[prefix + "ssim"].append(ssim(img, high))
    return {key: _mean(v) for key, v in got.items()} | {"n_images": float(len(got["psnr"]))}


def diffusion_fill(image, mask: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Baseline inpainting: the hole starts at the mean colour of its rim, then Jacobi steps of Laplace's
    equation (each hole pixel becomes the mean of its 4 neighbours). Returns uint8 (H, W, 3)."""
    img = as_rgb(image).copy()
    hole = np.asarray(mask) > 0
    rim = np.zeros_like(hole)
    rim[1:] |= hole[:-1]; rim[:-1] |= hole[1:]; rim[:, 1:] |= hole[:, :-1]; rim[:, :-1] |= hole[:, 1:]
    rim &= ~hole
    img[hole] = img[rim].mean(0) if rim.any() else img[~hole].mean(0) if (~hole).any() else 127.5
    for _ in range(iterations):
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img[hole] = ((p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]) / 4)[hole]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _object_in_hole(image, hole: np.ndarray, wanted) -> bool:
    """A detection of the wanted colour and shape whose centroid lies in the hole."""
    return any(d.colour == wanted.colour and d.shape == wanted.shape
               and hole[min(int(d.centroid[1]), hole.shape[0] - 1), min(int(d.centroid[0]), hole.shape[1] - 1)]
               for d in read_objects(image))


def inpaint_metrics(outputs: Iterable, originals: Iterable, masks: Iterable,
                    wanted: Optional[Iterable] = None) -> dict:
    """Change outside the hole (0 for a correct inpainter), PSNR inside it, and whether the wanted object
    (one per image, or None) appears in the hole; each beside the `diffusion_fill` baseline."""
    wanted = [] if wanted is None else list(wanted)
    got = {"max_abs_outside": [], "psnr_hole": [], "baseline_psnr_hole": [], "object_in_hole": [],
           "baseline_object_in_hole": []}
    for i, (out, truth, mask) in enumerate(zip(outputs, originals, masks, strict=True)):
        out, truth, hole = as_rgb(out), as_rgb(truth), np.asarray(mask) > 0
        baseline = diffusion_fill(np.where(hole[..., None], 0, truth), hole)
        got["max_abs_outside"].append(float(np.abs(out - truth)[~hole].max(initial=0.0)))
        for prefix, img in (("", out), ("baseline_", baseline)):
            got[prefix + "psnr_hole"].append(min(psnr(img[hole], truth[hole]), PSNR_CAP) if hole.any() else PSNR_CAP)
            if i < len(wanted) and wanted[i] is not None:
                got[prefix + "object_in_hole"].append(_object_in_hole(img.astype(np.uint8), hole, wanted[i]))
    out = {key: _mean(v) for key, v in got.items()}
    out["max_abs_outside"] = max(got["max_abs_outside"], default=float("nan"))
    return out | {"n_images": float(len(got["psnr_hole"]))}


HEADLINES = {
    "txt2img": ("colour_acc", "shape_acc", "position_acc", "count_acc", "two_colours_acc"),
    "layout2img": ("iou", "label_acc"),
    "semantic2img": ("pixel_acc", "object_pixel_acc", "miou"),
    "superres": ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"),
    "inpaint": ("max_abs_outside", "psnr_hole", "baseline_psnr_hole", "object_in_hole"),
}


def summarize(results: dict) -> dict:
    """Per-task table {task: {metric: value}}: the headline metrics of each task's metric dict, in order."""
    return {task: {key: float(metrics[key]) for key in HEADLINES.get(task, tuple(metrics)) if key in metrics}
            for task, metrics in results.items()}
