"""superres: ×4 super-resolution, p(z | low-res image) (LDM §4.4; MODELS.md §6.6).

Two families, which differ only in the condition they build:
- LDM `bsr_sr` (concat, identity condition): the low-res image itself in [−1, 1] is concatenated to the 3-channel
  VQ-f4 latent of the same spatial size; no text, no guidance; decoding re-quantizes the latent (§11 #21).
- SD x4 upscaler (hybrid-adm): the low-res image, noise-augmented in pixel space on its own schedule, is
  concatenated to the 4-channel latent; `y` = the noise level; OpenCLIP text with classifier-free guidance.
Latents larger than one tile are sampled by overlapping tiles (sampling/tiling.py) and decoded by tiles, except
with a purely convolutional UNet (no attention, as the embedded default), which runs in one pass while it fits.

`ensemble` > 1 averages views: the input flipped and rotated (the eight symmetries of a square), each upscaled with
its own noise and turned back (the geometric self-ensemble of Lim et al. 2017, EDSR+). A super-resolution model's
output is an estimate of the picture given its low-res input; the views' errors differ in orientation and noise,
so their mean is a better estimate in PSNR (docs/RESULTS.md, "Photographs"), at the cost of one pass per view.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional

import numpy as np
import torch
from PIL import Image

from ldmcli.errors import UsageError
from ldmcli.sampling.schedules import alphas_cumprod_from
from ldmcli.sampling.noise import side_generator
from ldmcli.sampling.pipeline import Cond, decode, sample_latents
from ldmcli.sampling.memory import unet_fits
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.geometry import latent_multiple, pad_to_multiple, plan_tiling
from ldmcli.prompts import encode as encode_prompts

DEFAULT_NOISE_LEVEL = 20   # the x4 demos' default (gradio, streamlit); the README suggests ~100 for synthetic input
_AUG_STREAM = 0xA06        # the noise-augmentation ε of sample k comes from seeds[k] + this (noise.side_generator)
# the ensemble's views, in the order they are added: the first four keep the picture's width and height
_T = Image.Transpose
VIEWS = (None, _T.FLIP_LEFT_RIGHT, _T.FLIP_TOP_BOTTOM, _T.ROTATE_180, _T.TRANSPOSE, _T.TRANSVERSE, _T.ROTATE_90,
         _T.ROTATE_270)
_UNDO = {_T.ROTATE_90: _T.ROTATE_270, _T.ROTATE_270: _T.ROTATE_90}   # every other view undoes itself
_VIEW_STREAM = 0x9E3779B97F4A7C15   # view k of seed s samples with seed s + k·this: far from the batch's s + 1, ...
# a model's default ensemble is spent in full up to this many output pixels, and in proportion above: the cost of a
# view grows with its pixels, so a large picture keeps about the time 8 views take at 512 x 512; the user's
# --ensemble is always taken as given
ENSEMBLE_PIXELS = 512 * 512


def superres_family(cfg) -> str:
    """"bsr" (LDM bsr_sr) or "x4" (SD x4 upscaler), from the config's conditioning structure."""
    if cfg.conditioning_key == "hybrid-adm" and cfg.unet.num_classes:
        if cfg.cond_stage is None or isinstance(cfg.cond_stage, str):
            raise UsageError(f"{cfg.name}: an x4-upscaler config needs its text encoder (OpenCLIP) as cond_stage")
        return "x4"
    if cfg.conditioning_key == "concat" and cfg.cond_stage == "identity":
        return "bsr"
    raise UsageError(f"{cfg.name} is a {cfg.task} model, not a super-resolution model "
                     f"(use ldm-bsr-sr or sd-x4-upscaler)")


def bsr_condition(lr: torch.Tensor) -> Cond:
    """LDM bsr_sr: c_concat = the low-res image in [−1, 1] (`cond_stage_config: torch.nn.Identity`)."""
    return {"c_concat": [lr]}


def noise_augment(lr: torch.Tensor, noise_level: int, cfg, eps: torch.Tensor) -> torch.Tensor:
    """`ImageConcatWithNoiseAugmentation`: x_aug = √ᾱ_n·lr + √(1−ᾱ_n)·ε in pixel space, ᾱ of the augmentation's own
    1000-step "linear" schedule (noise_aug_linear_start/end), n = noise_level (MODELS.md §6.6)."""
    a = alphas_cumprod_from(cfg.noise_aug_linear_start, cfg.noise_aug_linear_end, 1000)[noise_level].item()
    return math.sqrt(a) * lr + math.sqrt(1 - a) * eps.to(lr.device, lr.dtype)


def x4_condition(model, lr: torch.Tensor, prompt: str, negative_prompt: str, noise_level: int,
                 seeds: List[int]):
    """SD x4: c_concat = x_aug (one ε per seed), y = noise_level, context = OpenCLIP(prompt); the unconditional
    branch keeps x_aug and y and takes the negative prompt's context. Returns (cond, uncond)."""
    eps = torch.stack([torch.randn(lr.shape[1:], generator=side_generator(s, _AUG_STREAM)) for s in seeds])
    x_aug = noise_augment(lr, noise_level, model.cfg, eps)          # [n, 3, h, w]
    y = torch.full((len(seeds),), noise_level, dtype=torch.long, device=lr.device)
    context, uncond_context = encode_prompts(model, prompt, negative_prompt)
    return ({"c_concat": [x_aug], "c_crossattn": [context], "y": y},
            {"c_concat": [x_aug], "c_crossattn": [uncond_context], "y": y})


def _check_options(model, family: str, scale: int, prompt: str, negative_prompt: str, noise_level) -> int:
    """Validate the options against the model; returns the noise level to use (x4) or 0 (bsr)."""
    factor = model.cfg.first_stage.downsample_factor
    if scale != factor:
        raise UsageError(f"{model.cfg.name} upscales by exactly {factor}, not {scale}; resize the result yourself "
                         f"for other factors")
    if family == "bsr":
        if prompt or negative_prompt:
            raise UsageError(f"{model.cfg.name} takes no prompt (it is conditioned on the image alone)")
        if noise_level is not None:
            raise UsageError(f"noise_level applies to the SD x4 upscaler only, not {model.cfg.name}")
        return 0
    level = DEFAULT_NOISE_LEVEL if noise_level is None else noise_level
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= model.cfg.max_noise_level:
        raise UsageError(f"noise_level must be an integer between 0 and {model.cfg.max_noise_level}, got {level!r}")
    return level


def ensemble_size(model, ensemble, pixels: int = 0) -> int:
    """The number of views to average: the option when given (1 to 8), else the model's default for an output of
    `pixels` pixels (in full up to ENSEMBLE_PIXELS, in proportion above, at least 1)."""
    value = check_ensemble(model.cfg.default_ensemble if ensemble is None else ensemble)
    if ensemble is None and pixels > ENSEMBLE_PIXELS:
        value = max(1, value * ENSEMBLE_PIXELS // pixels)
    return value


def check_ensemble(value, name: str = "ensemble") -> int:
    """A number of views, checked (1 to len(VIEWS)); `name` is how the message calls the option."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= len(VIEWS):
        raise UsageError(f"{name} must be a whole number of views from 1 to {len(VIEWS)}, got {value!r}")
    return value


def _turn(img: Image.Image, view) -> Image.Image:
    return img if view is None else img.transpose(view)


def _every(callback: Optional[Callable], n: int) -> Optional[Callable]:
    """`callback` once per `n` calls: a progress bar of the sampler's steps stays a bar of steps over n views."""
    if callback is None or n == 1:
        return callback
    calls = [0]

    def step(*args):
        calls[0] += 1
        if calls[0] % n == 0:
            callback(*args)
    return step


def superres(model, image, prompt: str = "", negative_prompt: str = "", *, scale: int = 4,
             noise_level: Optional[int] = None, seeds: List[int], settings: SamplerSettings = SamplerSettings(),
             tile_size: Optional[int] = None, tile_overlap: Optional[int] = None,
             match_input: Optional[bool] = None, detail: Optional[float] = None, ensemble: Optional[int] = None,
             callback: Optional[Callable] = None):
    """Upscale `image` (PIL) by the model's factor; one image of exactly scale·W × scale·H per seed.

    scale: must equal the model's factor (4 for both families); any other value is a UsageError rather than a
    silent resize, so the output size is always what the model produced. noise_level: x4 only, in
    [0, cfg.max_noise_level], default 20. tile_size / tile_overlap: latent cells (= low-res pixels for both
    families); a latent larger than tile_size (default cfg.latent_size) is sampled and decoded by overlapping tiles.
    The low-res image is mirror-padded to the UNet's multiple and the result cropped back. match_input (None: the
    model's default): back-project each result onto the input; detail (None: the model's default; 0 to 1, with
    match_input only): the share of the model's detail over the back-projected bicubic (tasks/match_input.py).
    ensemble (None: the model's default, fewer views above ENSEMBLE_PIXELS; 1 to 8): views averaged before the
    back-projection (module docstring); view 0 is the input itself with the seed's own noise, so 1 is the plain
    upscale.
    """
    from ldmcli.tasks.match_input import back_project, detail_share, wanted
    if detail is not None and not wanted(model, match_input):
        raise UsageError("--detail applies with --match-input only")
    share = detail_share(model, detail)
    family = superres_family(model.cfg)
    level = _check_options(model, family, scale, prompt, negative_prompt, noise_level)
    views = ensemble_size(model, ensemble, scale * scale * image.width * image.height)
    step = _every(callback, views)
    total = None
    for k, view in enumerate(VIEWS[:views]):
        view_seeds = [(s + k * _VIEW_STREAM) % 2**64 for s in seeds]
        out = _upscale(model, _turn(image, view), family, prompt, negative_prompt, scale, level, view_seeds,
                       settings, tile_size, tile_overlap, step)
        if views == 1:
            break
        turned = [np.asarray(_turn(img, _UNDO.get(view, view)), np.float64) for img in out]
        total = turned if total is None else [a + b for a, b in zip(total, turned)]
    if views > 1:
        out = [Image.fromarray(np.clip(np.rint(a / views), 0, 255).astype(np.uint8)) for a in total]
    return [back_project(img, image, detail=share) for img in out] if wanted(model, match_input) else out


def _upscale(model, image, family: str, prompt: str, negative_prompt: str, scale: int, level: int,
             seeds: List[int], settings: SamplerSettings, tile_size: Optional[int], tile_overlap: Optional[int],
             callback: Optional[Callable]) -> list:
    """One upscale of `image` per seed (superres without the ensemble and the back-projection)."""
    from ldmcli.io.images import pil_to_tensor
    width, height = image.size
    lr = pad_to_multiple(pil_to_tensor(image), latent_multiple(model)).to(model.device)   # [1, 3, h, w] in [−1, 1]
    if family == "bsr":
        cond, uncond = bsr_condition(lr), None
    else:
        cond, uncond = x4_condition(model, lr, prompt, negative_prompt, level, seeds)
    tiling = plan_tiling(model, lr.shape[-2:], tile_size, tile_overlap)
    if (tiling is not None and not model.cfg.unet.attention_resolutions and tile_size is None
            and tile_overlap is None and unet_fits(model, *lr.shape[-2:], batch=1)):
        tiling = None      # a purely convolutional UNet runs on the whole image: no tiles, no seams
    shape = (model.cfg.latent_channels, *lr.shape[-2:])                # the latent has the low-res image's size
    z = sample_latents(model, cond, uncond, shape, seeds, settings, callback=callback, tiling=tiling)
    return [img.crop((0, 0, scale * width, scale * height)) for img in decode(model, z, tiling)]


__all__ = ["superres", "superres_family", "bsr_condition", "noise_augment", "x4_condition", "ensemble_size",
           "check_ensemble",
           "DEFAULT_NOISE_LEVEL", "VIEWS", "ENSEMBLE_PIXELS"]
