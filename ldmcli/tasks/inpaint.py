"""inpaint: repaint the masked region of an image, p(z | known pixels [, τθ(prompt)]) (LDM §4.5; MODELS.md §6.7).

Three ways, which differ only in the condition they build (MODELS.md §0 item 6, §11 #15):
- LDM `inpainting_big` (concat): c_concat = [E(masked image), mask], hole painted black (−1), mask in {−1, +1};
  E is the VQ encoder without quantization. No text, no guidance.
- SD 1.5 / SD 2 inpainting (hybrid, 9 input channels): c_concat = [mask, scale·E(masked image)], hole = 0 (grey),
  mask in {0, 1}, E a seeded posterior sample (§11 #22); text with guidance, the unconditional branch keeping
  c_concat.
- any text-to-image (or unconditional) model: the known region's latent is blended into x_t before every step
  (sampling/blending.KnownRegion around the denoiser, §9.2).
In all three, the output has the input's size (mirror-padded to the model's multiple, then cropped back), and every
pixel outside the mask is pasted back from the original, so it is unchanged to the last bit.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ldmcli.models.config import BERTConfig, CLIPTextConfig, OpenCLIPTextConfig
from ldmcli.errors import InputError, UsageError
from ldmcli.sampling.noise import side_generator
from ldmcli.sampling.pipeline import Cond, decode, sample_latents
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.geometry import latent_multiple, pad_to_multiple
from ldmcli.prompts import encode as encode_prompts

_ENCODE_STREAM = 0xE4C   # the posterior sample of sample k comes from seeds[k] + this (noise.side_generator)
_TEXT = (CLIPTextConfig, OpenCLIPTextConfig, BERTConfig)


def inpaint_family(cfg) -> str:
    """"ldm" (inpainting_big), "sd" (SD 1.5/2 inpainting) or "blend" (any text-to-image/unconditional model)."""
    u = cfg.unet
    if cfg.cond_stage == "first_stage" and cfg.conditioning_key == "concat":
        return "ldm"
    if cfg.conditioning_key == "hybrid" and u.in_channels == 2 * cfg.latent_channels + 1:
        return "sd"
    if u.in_channels == cfg.latent_channels and (
            (cfg.conditioning_key == "crossattn" and isinstance(cfg.cond_stage, _TEXT))
            or (cfg.conditioning_key is None and cfg.cond_stage is None)):
        return "blend"
    raise UsageError(f"{cfg.name} is a {cfg.task} model; inpaint needs an inpainting, text-to-image or "
                     f"unconditional model")


def ldm_condition(model, x: torch.Tensor, hole: torch.Tensor) -> Cond:
    """LDM inpainting_big: masked = ((1−m)·img)·2−1 = (1−m)·x − m (hole → −1), c = E(masked) (pre-quantization),
    mask → {−1, +1} nearest-resized to the latent; UNet input [x_t, c, mask]."""
    masked = x * (1 - hole) - hole
    c = model.get_learned_conditioning(masked)             # cond_stage == first stage: VQ encoder + quant_conv
    mask = F.interpolate(hole * 2 - 1, size=c.shape[-2:], mode="nearest")
    return {"c_concat": [c, mask]}


def sd_condition(model, x: torch.Tensor, hole: torch.Tensor, seeds: Optional[List[int]] = None,
                 generator: Optional[torch.Generator] = None) -> Cond:
    """SD inpainting: masked = x·(m < 0.5) (hole → 0), c_concat = [nearest(m) at latent size, scale·sample(E(masked))]
    with one seeded posterior sample per seed (one image x), or without seeds one per row of a batch x drawn from
    `generator` (training); UNet input [z_t, mask, masked latent]."""
    masked = x * (hole < 0.5)
    if seeds is None:
        z = model.encode_first_stage(masked, generator=generator)
    else:
        z = torch.cat([model.encode_first_stage(masked, generator=side_generator(s, _ENCODE_STREAM)) for s in seeds])
    mask = F.interpolate(hole, size=z.shape[-2:], mode="nearest")
    return {"c_concat": [mask, z]}


def known_latent(model, x: torch.Tensor, hole: torch.Tensor):
    """Latent blending: (x0_known, keep) with x0_known = scale·E(image) (the posterior mean: the known region is to
    be reproduced, not resampled) and keep = 1 where a latent cell holds no hole pixel (max-pooled, so a cell
    partly in the hole is repainted whole)."""
    x0 = model.encode_first_stage(x, sample=False)
    f = model.cfg.first_stage.downsample_factor
    return x0, 1 - F.max_pool2d(hole, f)


def text_condition(model, prompt: str, negative_prompt: str, base: Cond):
    """(cond, uncond) with the prompt's and the negative prompt's context added to `base`; (base, None) without a
    text encoder (an unconditional model), where a prompt is an error."""
    if model.cond_stage_model is None or not isinstance(model.cfg.cond_stage, _TEXT):
        if prompt or negative_prompt:
            raise UsageError(f"{model.cfg.name} takes no prompt")
        return base, None
    context, uncond = encode_prompts(model, prompt, negative_prompt)     # ldmcli/prompts: syntax, chunks, TI
    return {**base, "c_crossattn": [context]}, {**base, "c_crossattn": [uncond]}


def check_mask(image, mask) -> np.ndarray:
    """The mask as float32 [H, W] in [0, 1] matching the image, or a one-line InputError."""
    width, height = image.size
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != (height, width):
        shown = "x".join(map(str, mask.shape[::-1]))
        raise InputError(f"mask is {shown} but the image is {width}x{height}; give a mask of the image's size")
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise InputError("mask values must lie in [0, 1] (1 = repaint)")
    if not (mask >= 0.5).any():
        raise InputError("mask selects nothing to repaint (no value >= 0.5; white = repaint, or invert the mask)")
    return mask


def paste_back(original, generated, mask: np.ndarray):
    """out = α·generated + (1−α)·original with α = the (possibly feathered) mask; where α = 0 the original pixels
    are copied, not recomputed, so they are exactly unchanged."""
    from PIL import Image
    o = np.asarray(original.convert("RGB"))
    g = np.asarray(generated.convert("RGB"), dtype=np.float32)
    a = mask[..., None]
    mixed = np.clip(np.rint(a * g + (1 - a) * o), 0, 255).astype(np.uint8)
    return Image.fromarray(np.where(a > 0, mixed, o))


def build_condition(model, family: str, x: torch.Tensor, hole: torch.Tensor, prompt: str, negative_prompt: str,
                    seeds: List[int]):
    """(cond, uncond, blend) for the family; `blend` holds sample_latents' x0_known/mask (latent blending only)."""
    if family == "ldm":
        if prompt or negative_prompt:
            raise UsageError(f"{model.cfg.name} takes no prompt (it is conditioned on the image alone)")
        return ldm_condition(model, x, hole), None, {}
    if family == "sd":
        return (*text_condition(model, prompt, negative_prompt, sd_condition(model, x, hole, seeds)), {})
    x0_known, keep = known_latent(model, x, hole)
    return (*text_condition(model, prompt, negative_prompt, {}), {"x0_known": x0_known, "mask": keep})


def inpaint(model, image, mask, prompt: str = "", negative_prompt: str = "", mask_blur: Optional[float] = 0.0,
            match_input: Optional[bool] = None, *, seeds: List[int], settings: SamplerSettings = SamplerSettings(),
            callback: Optional[Callable] = None):
    """Repaint where `mask` (float [H, W] in [0, 1], 1 = repaint) is set; one image of the input's size per seed.
    Returns a list of PIL images.

    The model always sees the mask thresholded at 0.5 (the reference scripts). The paste-back uses it thresholded
    too, so grey mask values do not blend (as the reference does), unless `mask_blur` > 0 says the mask was
    feathered on purpose (--mask-blur): then its soft values are the paste-back's alpha. match_input (None: the
    model's default): shift the fill to meet the known pixels without a seam, and without a prompt keep a grey
    picture's fill grey (tasks/match_input.py). Without a
    prompt, settings the caller left unset take the model's unprompted defaults (`SamplerSettings.unprompted`)."""
    from ldmcli.io.images import pil_to_tensor
    from ldmcli.tasks.match_input import grey, is_grey, seamless_fill, wanted
    family = inpaint_family(model.cfg)
    if not prompt.strip():
        settings = settings.unprompted(model.cfg)
    mask = check_mask(image, mask)
    if not mask_blur:
        mask = (mask >= 0.5).astype(np.float32)
    width, height = image.size
    f = model.cfg.first_stage.downsample_factor
    multiple = f * latent_multiple(model)
    x = pad_to_multiple(pil_to_tensor(image), multiple).to(model.device)                # [1, 3, H', W']
    hole = torch.from_numpy((mask >= 0.5).astype(np.float32))[None, None]               # [1, 1, H, W] in {0, 1}
    hole = pad_to_multiple(hole, multiple, value=0.0).to(model.device)      # the padding is kept, not repainted
    with torch.inference_mode():
        cond, uncond, blend = build_condition(model, family, x, hole, prompt, negative_prompt, seeds)
    shape = (model.cfg.latent_channels, x.shape[-2] // f, x.shape[-1] // f)
    z = sample_latents(model, cond, uncond, shape, seeds, settings, callback=callback, **blend)
    out = [g.crop((0, 0, width, height)) for g in decode(model, z)]
    if wanted(model, match_input):
        out = [seamless_fill(image, g, mask) for g in out]
        if not prompt.strip() and is_grey(image, mask < 0.5):     # restoring a grey picture: a grey fill
            out = [grey(g) for g in out]
    return [paste_back(image, g, mask) for g in out]


__all__ = ["inpaint", "inpaint_family", "ldm_condition", "sd_condition", "known_latent", "text_condition",
           "build_condition", "check_mask", "paste_back"]
