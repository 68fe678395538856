"""What every task shares: seeded noise → guided denoiser → sampler over a grid → decoding.

A task only builds its condition (`c_concat`, `c_crossattn`, `y`) and calls `sample_latents` and `decode`; this is
the paper's "one shared latent sampler" (LDM §3.3): encode condition → denoiser → seeded noise → sample → decode.

Robustness lives here too, once for every task: a run whose estimated peak memory cannot fit is refused before
sampling (memory.check_memory), and `decode` falls back to float32 (NaN/Inf pixels from a half-precision first
stage) and to tiles (out of memory). Fallbacks are logged as warnings on the "ldmcli" logger; the CLI shows them.
"""
from __future__ import annotations

import gc
import logging
import weakref
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ldmcli.errors import LdmError
from ldmcli.sampling import memory
from ldmcli.sampling.precision import runs_bf16, work_precision
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.sampling.tiling import Tiling, decode_tiled, tiled

Cond = Dict[str, object]   # {"c_concat": [Tensor], "c_crossattn": [Tensor], "y": Tensor}
_log = logging.getLogger("ldmcli")
_ANCESTRAL_STREAM = 0x5EED   # the ancestral noise of sample k comes from seeds[k] + this
_warned: "weakref.WeakKeyDictionary[object, set]" = weakref.WeakKeyDictionary()   # model -> warning keys logged


def repeat_cond(cond: Cond, n: int) -> Cond:
    """Tile a batch-1 condition to n samples (tensors along dim 0, lists element-wise)."""
    def rep(v):
        if isinstance(v, torch.Tensor):
            return v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v
        if isinstance(v, (list, tuple)):
            return [rep(e) for e in v]
        return v
    return {k: rep(v) for k, v in cond.items()}


def sample_latents(model, cond: Cond, uncond: Optional[Cond], shape: Sequence[int], seeds: List[int],
                   settings: SamplerSettings, callback: Optional[Callable] = None,
                   x0_known: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                   tiling: Optional[Tiling] = None,
                   start: Optional[Tuple[torch.Tensor, float]] = None) -> torch.Tensor:
    """Run the shared sampler on εθ with classifier-free guidance; one latent per seed.

    x0_known/mask: latent inpainting (blending.KnownRegion; mask = 1 keeps x0_known). tiling: εθ by overlapping
    tiles (tiling.tiled), for latents larger than the model's own.
    start: (x0 latent [1 or n, *shape], strength in (0, 1]) for a partial start (img2img, SDEdit): the sampler walks
    only `Grid.tail(strength)` of its grid, from x0 noised to the tail's first level with each seed's x_T as ε,
    √ᾱ·x0 + √(1−ᾱ)·ε (what diffusers' `scheduler.add_noise` does at `timesteps[t_start]`).
    """
    from ldmcli.models.attention import context_projections_kept
    from ldmcli.sampling.blending import KnownRegion
    from ldmcli.sampling.guidance import cfg_model, eps_model
    from ldmcli.sampling.noise import initial_noise, seeded_noise
    from ldmcli.sampling.samplers import grid_for, sample

    s = settings.resolved(model.cfg)
    device, n = model.device, len(seeds)
    cond = repeat_cond(cond, n)
    uncond = repeat_cond(uncond, n) if uncond is not None else None
    apply_model = tiled(model.apply_model, tiling)

    def apply(x, t, c):
        return apply_model(x, t, **c)

    memory.check_memory(model, shape[-2], shape[-1], n, guided=uncond is not None and s.guidance_scale != 1,
                        tiling=tiling, steps=s.steps)
    eps = eps_model(cfg_model(apply, cond, uncond, s.guidance_scale), model.cfg.parameterization,
                    model.alphas_cumprod)
    x_T = initial_noise((n, *shape), seeds, device=device, dtype=torch.float32, noise_device=s.noise_device)
    # ancestral noise: a second, independent stream per sample, so a sample never depends on its batch
    noise = seeded_noise([(sd + _ANCESTRAL_STREAM) % 2**64 for sd in seeds], device=device, dtype=torch.float32,
                         noise_device=s.noise_device)
    if x0_known is not None or mask is not None:
        eps = KnownRegion(eps, x0_known, mask, noise)
    grid = grid_for(s.sampler, model.alphas_cumprod, s.steps, schedule=s.schedule)
    if start is not None:
        x0, strength = start
        grid = grid.tail(strength)
        if len(grid) == 0:          # no step to run: the input's latent, as diffusers and A1111 return it
            return x0.to(x_T).expand_as(x_T).clone()
        a = grid.alphas[0].item()
        x_T = a ** 0.5 * x0.to(x_T) + (1 - a) ** 0.5 * x_T
    f = model.cfg.first_stage.downsample_factor
    with torch.inference_mode(), work_precision(model, model.model, shape[-2] * shape[-1] * f * f), \
            context_projections_kept(model.model):
        return sample(s.sampler, eps, x_T, grid, eta=s.eta, noise=noise, callback=callback)


def decode(model, z: torch.Tensor, tiling: Optional[Tiling] = None):
    """Latents → list of PIL images (clamp((x+1)/2)·255, truncated to uint8 as the reference scripts do).

    tiling: decode by these overlapping latent tiles from the start (the caller sampled by tiles, so the image is
    large); None decodes in one piece when that fits.
    Two fallbacks, each logged once per model:
    - out of memory (or a one-piece decode the memory estimate says cannot fit): overlapping latent tiles
      (`tiling.decode_tiled`), halving the tile while memory still runs out;
    - NaN/Inf pixels from a float16/bfloat16 first stage (its activations overflow): the first stage is cast to
      float32 for good, so later images decode in float32 directly, and the latents are decoded again; likewise
      from a float32 first stage run in bfloat16 for a large image (sampling/precision.py), which then stops.
    Non-finite latents, or NaN/Inf pixels from a float32 decode, are an LdmError (no garbage image is written).
    """
    from ldmcli.io.images import tensor_to_pil
    z = z.to(model.device)
    f = model.cfg.first_stage.downsample_factor
    pixels = z.shape[-2] * z.shape[-1] * f * f
    if not bool(torch.isfinite(z).all()):
        exact = model.dtype == torch.float32 and not runs_bf16(model, pixels)
        hint = "broken UNet weights?" if exact else "overflow? try --dtype float32"
        raise LdmError(f"the sampled latents hold NaN/Inf values ({hint})")
    fs = model.first_stage_model
    with work_precision(model, fs, pixels) as bf16_work:
        x = _decode_fitting(model, z, tiling)
    if bf16_work and not bool(torch.isfinite(x).all()):
        _warn_once(model, "bf16-work", "the first stage decoded NaN/Inf pixels in bfloat16; large images decode "
                                       "in float32 from now on")
        model.bf16_work = False
        x = _decode_fitting(model, z, tiling)
    dtype = next(fs.parameters()).dtype
    if not bool(torch.isfinite(x).all()) and dtype != torch.float32:
        _warn_once(model, "fp32", f"the {str(dtype)[6:]} first stage decoded NaN/Inf pixels; decoding in float32 "
                                  f"from now on")
        fs.float()
        x = _decode_fitting(model, z, tiling)
    if not bool(torch.isfinite(x).all()):
        raise LdmError("the float32 first stage decoded NaN/Inf pixels (broken first-stage weights?)")
    return tensor_to_pil(x.float().cpu())


def _decode_fitting(model, z: torch.Tensor, tiling: Optional[Tiling] = None) -> torch.Tensor:
    """D(z) in one piece when it fits (or by the caller's `tiling`), else by overlapping tiles, halved after each
    out-of-memory failure."""
    f = model.cfg.first_stage.downsample_factor
    side = max(z.shape[-2:])
    if tiling is not None:
        tile, overlap, announce = tiling.tile, tiling.overlap, False   # asked for: nothing to warn about
    else:
        tile = None if memory.decode_fits(model, z) else min(model.cfg.latent_size, side)
        overlap, announce = None, True
    while True:
        if tile is not None and announce:
            _warn_once(model, "tiles", f"decoding {z.shape[-1] * f}x{z.shape[-2] * f} images by overlapping tiles "
                                       f"to fit in memory (pixels differ slightly at the seams)")
        try:
            with torch.inference_mode():
                if tile is None:
                    return model.decode_first_stage(z)
                return decode_tiled(model.decode_first_stage, z, tile, tile // 4 if overlap is None else overlap, f)
        except RuntimeError as e:   # torch.OutOfMemoryError is a RuntimeError, as is the CPU allocator's failure
            if not (isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)):
                raise
        # retried here, after the handler, so the failed attempt's tensors (held by the traceback) are freed
        gc.collect()
        if z.device.type == "cuda":
            torch.cuda.empty_cache()
        if tile is not None and tile // 2 < 8:
            raise LdmError(f"out of memory decoding {z.shape[-1] * f}x{z.shape[-2] * f} images, even by tiles "
                           f"of {tile * f} px; try a smaller size or --batch-size 1")
        tile = min(model.cfg.latent_size, side // 2) if tile is None else tile // 2
        overlap, announce = None, True


def _warn_once(model, key: str, message: str) -> None:
    """Log `message` on the "ldmcli" logger the first time `key` happens with this model (kept beside the model,
    not on it: the set lives as long as the model does)."""
    seen = _warned.setdefault(model, set())
    if key not in seen:
        seen.add(key)
        _log.warning(message)


__all__ = ["Cond", "repeat_cond", "sample_latents", "decode"]
