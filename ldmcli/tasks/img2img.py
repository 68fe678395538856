"""img2img: SDEdit (Meng et al. 2022) on a text model — encode the image, noise its latent to the strength's point
of the schedule, and sample from there with classifier-free guidance (the reference `scripts/img2img.py`).

Size rule (A1111's "Just resize"): the image is resized (Lanczos) to --height x --width when given, else to its own
size rounded down to the model's multiple (64 px for SD: tasks/geometry.check_size), as diffusers' image processor
floors to its multiple; nothing is cropped. The encoding is a seeded posterior sample of the first stage, one per
seed (diffusers' `retrieve_latents(sample_mode="sample", generator)`, the reference's `get_first_stage_encoding`).
Strength 0 returns that encoding decoded (no step runs); strength 1 walks the whole grid, from x0 noised to the
first level (at ᾱ of t = 981 a trace of x0 remains, as in the reference and diffusers).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch

from ldmcli.errors import UsageError
from ldmcli.sampling.noise import side_generator
from ldmcli.sampling.pipeline import decode, sample_latents
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.geometry import check_size, latent_multiple
from ldmcli.tasks.inpaint import text_condition

_ENCODE_STREAM = 0x1A21   # the posterior sample of sample k comes from seeds[k] + this (noise.side_generator)


def target_size(model, image, height: Optional[int] = None, width: Optional[int] = None):
    """(width, height) the image is resized to: the requested size, else its own rounded down to the model's
    multiple; a UsageError when the image is smaller than one multiple."""
    m = model.cfg.first_stage.downsample_factor * latent_multiple(model)
    w, h = image.size
    width, height = width or w - w % m, height or h - h % m
    if width <= 0 or height <= 0:
        raise UsageError(f"the image is {w}x{h}; img2img needs at least {m}x{m} px for this model "
                         f"(or give --height/--width)")
    check_size(model, height, width)
    return width, height


def encode(model, image, seeds: List[int]) -> torch.Tensor:
    """One seeded posterior sample scale·E(x) per seed, [n, C, h, w] (VQ first stages are deterministic)."""
    from ldmcli.io.images import pil_to_tensor
    x = pil_to_tensor(image).to(model.device)
    with torch.inference_mode():
        return torch.cat([model.encode_first_stage(x, generator=side_generator(s, _ENCODE_STREAM)).float()
                          for s in seeds])


def img2img(model, image, prompt: str = "", negative_prompt: str = "", *, strength: float = 0.75,
            seeds: List[int], height: Optional[int] = None, width: Optional[int] = None,
            settings: SamplerSettings = SamplerSettings(), callback: Optional[Callable] = None):
    """One image per seed: `image` (PIL) redrawn toward `prompt`; strength in [0, 1] is the fraction of the
    sampler's grid that runs (A1111 "Denoising strength"). Returns a list of PIL images."""
    if model.cfg.task != "txt2img" or model.cond_stage_model is None:
        raise UsageError(f"{model.cfg.name} is a {model.cfg.task} model; img2img needs a text-to-image model")
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0 <= strength <= 1):
        raise UsageError(f"--strength must be between 0 and 1, got {strength}")
    from PIL import Image
    size = target_size(model, image, height, width)
    image = image.convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.LANCZOS)
    x0 = encode(model, image, seeds)
    if strength == 0:
        return decode(model, x0)
    with torch.inference_mode():
        cond, uncond = text_condition(model, prompt, negative_prompt, {})
    z = sample_latents(model, cond, uncond, tuple(x0.shape[1:]), seeds, settings, callback=callback,
                       start=(x0, float(strength)))
    return decode(model, z)


__all__ = ["img2img", "encode", "target_size"]
