"""Make a result agree with the picture it came from, in pixel space, after decoding (`--match-input`).

A small autoencoder reconstructs a photograph with errors that are mostly low-frequency (a colour cast, a shifted
shade), exactly what the eye sees first and bicubic resizing gets right. So:
- superres, `back_project`: iterative back-projection (Irani & Peleg 1991). The output is corrected by the bicubic
  upscale of (input − shrink(output)) until its ÷4 shrink reproduces the low-res input: the low frequencies come
  from the input, what the model adds is the detail above them.
- inpaint, `seamless_fill`: the fill is shifted by a smooth field that is, on the known pixels, the difference
  between the original and the decoded image, spread into the hole by push-pull interpolation (a pyramid of
  weighted averages; Gortler et al. 1996): the fill then meets the known pixels without a step in colour, as
  Poisson image editing (Pérez et al. 2003) makes it, at a cost linear in the pixels.
- a grey picture gives a grey result (superres; inpaint without a prompt, which restores rather than paints):
  each pixel's channels are averaged, as the model adds faint colour a grey picture never has.
Both are on by default for models whose config says so (`ModelConfig.default_match_input`: the embedded defaults
trained on photographs); public checkpoints keep the reference pipelines' output unless asked.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

BACK_PROJECTIONS = 6     # iterations; the correction shrinks ~4x per pass on photos (docs/RESULTS.md, "Photographs")


def _resize(a: np.ndarray, size) -> np.ndarray:
    """Pillow's bicubic resize (antialiased when shrinking) of a float [H, W, C] array, channel by channel."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), "F")
                                .resize(size, Image.Resampling.BICUBIC)) for c in range(a.shape[-1])], -1)


def _project(y: np.ndarray, lr: np.ndarray, iterations: int) -> np.ndarray:
    size, lr_size = (y.shape[1], y.shape[0]), (lr.shape[1], lr.shape[0])
    for _ in range(iterations):
        y = y + _resize(lr - _resize(y, lr_size), size)
    return y


def back_project(output: Image.Image, lowres: Image.Image, iterations: int = BACK_PROJECTIONS,
                 detail: float = 1.0) -> Image.Image:
    """`output` corrected so that its bicubic shrink to `lowres`' size reproduces `lowres`; with `detail` < 1, what
    the model adds over the back-projected bicubic upscale is scaled by it (both agree with the input, and so
    does their blend). A shrinkage of the model's detail toward the smooth estimate: where the model's detail is
    partly wrong, a share of it is closer to the truth in PSNR than all or none (docs/RESULTS.md, "Photographs").
    A grey `lowres` gives a grey result."""
    lr = np.asarray(lowres.convert("RGB"), np.float32)
    y = _project(np.asarray(output.convert("RGB"), np.float32), lr, iterations)
    if detail != 1.0:
        smooth = np.asarray(lowres.convert("RGB").resize(output.size, Image.Resampling.BICUBIC), np.float32)
        base = _project(smooth, lr, iterations)
        y = base + detail * (y - base)
    if is_grey(lowres):     # the mean of the channels still shrinks to the input: the shrink is linear
        y = np.repeat(y.mean(-1, keepdims=True), 3, -1)
    return Image.fromarray(np.clip(np.rint(y), 0, 255).astype(np.uint8))


def kept_error(error: torch.Tensor, factor: int = 4, iterations: int = BACK_PROJECTIONS) -> torch.Tensor:
    """What `back_project` keeps of an output's error: (I − U·D)^iterations applied to `error` [N, C, H, W], D the
    antialiasing bicubic ÷factor shrink and U the bicubic upscale (torch's antialiased bicubic is Pillow's kernel).
    For a truth whose shrink is the input, back_project(y) − truth is this of y − truth: the low frequencies of an
    error are thrown away, so a model tuned for the back-projected result need not spend itself on them."""
    h, w = error.shape[-2:]
    for _ in range(iterations):
        down = F.interpolate(error, size=(h // factor, w // factor), mode="bicubic", antialias=True,
                             align_corners=False)
        error = error - F.interpolate(down, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return error


def push_pull(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """values [C, H, W] known where weight [H, W] is 1, filled smoothly where it is 0 (weights in [0, 1])."""
    h, w = weight.shape
    if min(h, w) < 2 or bool((weight >= 1).all()):
        if bool((weight > 0).any()):
            mean = (values * weight).sum((1, 2), keepdim=True) / weight.sum()
            return values * weight + mean * (1 - weight)
        return values * 0
    pad = (0, w % 2, 0, h % 2)
    v = F.pad(values * weight, pad, mode="replicate")
    wt = F.pad(weight[None], pad, mode="replicate")
    total = F.avg_pool2d(wt, 2) * 4
    coarse = push_pull(F.avg_pool2d(v, 2) * 4 / total.clamp_min(1e-8), total[0].clamp(max=1))
    up = F.interpolate(coarse[None], size=(h + h % 2, w + w % 2), mode="bilinear", align_corners=False)[0]
    return values * weight + up[:, :h, :w] * (1 - weight)


def seamless_fill(original: Image.Image, generated: Image.Image, hole: np.ndarray) -> Image.Image:
    """`generated` shifted inside `hole` ([H, W], ≥ 0.5 = filled) by the smooth interpolation of
    original − generated from the known pixels; outside the hole it is left as it is (the paste-back follows)."""
    o = torch.from_numpy(np.asarray(original.convert("RGB"), np.float32)).permute(2, 0, 1)
    g = torch.from_numpy(np.asarray(generated.convert("RGB"), np.float32)).permute(2, 0, 1)
    known = torch.from_numpy((np.asarray(hole) < 0.5).astype(np.float32))
    shift = push_pull(o - g, known)
    out = torch.where(known.bool()[None], g, g + shift)
    return Image.fromarray(out.clamp(0, 255).round().byte().permute(1, 2, 0).numpy())


def is_grey(img: Image.Image, where: np.ndarray | None = None) -> bool:
    """Whether every pixel of `img` (those where `where` [H, W] is true, when given) has R = G = B."""
    a = np.asarray(img.convert("RGB"))
    if where is not None:
        a = a[np.asarray(where, bool)]
    return bool(a.size) and bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def grey(img: Image.Image) -> Image.Image:
    """Each pixel's channels replaced by their mean: the closest grey picture in PSNR. A model trained on colour
    pictures adds faint colour to a grey one (0.3-0.5 levels RMS on the photos), which no grey picture has."""
    a = np.asarray(img.convert("RGB"), np.float32).mean(-1, keepdims=True)
    return Image.fromarray(np.repeat(np.clip(np.rint(a), 0, 255).astype(np.uint8), 3, -1))


def wanted(model, match_input) -> bool:
    """Whether to match: the option when given, else the model's default."""
    return bool(model.cfg.default_match_input) if match_input is None else bool(match_input)


def detail_share(model, detail) -> float:
    """superres's detail share: the option when given (0 to 1), else the model's default."""
    return check_detail(model.cfg.default_detail if detail is None else detail)


def check_detail(value, name: str = "detail") -> float:
    """A detail share, checked (0 to 1); `name` is how the message calls the option."""
    from ldmcli.errors import UsageError
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise UsageError(f"{name} must be a number between 0 and 1, got {value!r}")
    return float(value)


__all__ = ["back_project", "kept_error", "push_pull", "seamless_fill", "is_grey", "grey", "wanted", "detail_share",
           "check_detail", "BACK_PROJECTIONS"]
