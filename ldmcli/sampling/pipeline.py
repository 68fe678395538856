"""What every task shares: sampler settings, seeded noise → guided sampling → decoding.

A task only builds its condition (`c_concat`, `c_crossattn`, `y`) and calls `generate`; this is the paper's
"one shared latent sampler" (LDM §3.3): encode condition → denoiser → seeded noise → sample → decode.

Robustness lives here too, once for every task: a run whose estimated peak memory cannot fit is refused before
sampling (`check_memory`), and `decode` falls back to float32 (NaN/Inf pixels from a half-precision first stage)
and to tiles (out of memory). Fallbacks are logged as warnings on the "ldmcli" logger; the CLI shows them.
"""
from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ldmcli.errors import LdmError, UsageError

Cond = Dict[str, object]   # {"c_concat": [Tensor], "c_crossattn": [Tensor], "y": Tensor}
_log = logging.getLogger("ldmcli")
NOISE_DEVICES = ("auto", "cpu")


@dataclass(frozen=True)
class SamplerSettings:
    """The sampling knobs shared by every subcommand; None means "the model family's reference default"."""
    sampler: str = "ddim"
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    eta: Optional[float] = None
    karras: bool = False
    noise_device: Optional[str] = None   # "cpu": noise drawn on the CPU, identical across devices; "auto"/None: the
                                         # model's device

    def resolved(self, cfg) -> "SamplerSettings":
        from ldmcli.sampling.samplers import SAMPLERS
        if self.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        steps = cfg.default_steps if self.steps is None else self.steps
        if not 1 <= steps <= cfg.timesteps:
            raise UsageError(f"--steps must be between 1 and {cfg.timesteps}, got {steps}")
        # the family's default η is a DDIM setting (e.g. η=1 for the LDM super-resolution helper); other
        # samplers get η only when the user passes one (PLMS then refuses a non-zero value)
        eta = self.eta if self.eta is not None else (cfg.default_eta if self.sampler == "ddim" else 0.0)
        if self.noise_device not in (None, *NOISE_DEVICES):
            raise UsageError(f"--noise-device must be auto or cpu, got {self.noise_device!r}")
        return SamplerSettings(self.sampler, steps,
                               cfg.default_guidance if self.guidance_scale is None else self.guidance_scale,
                               eta, self.karras, None if self.noise_device == "auto" else self.noise_device)


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
                   x0_known: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run the shared sampler on εθ with classifier-free guidance; one latent per seed."""
    from ldmcli.sampling.guidance import cfg_model, eps_model
    from ldmcli.sampling.samplers import initial_noise, sample, seeded_noise

    s = settings.resolved(model.cfg)
    device = model.device
    n = len(seeds)
    cond = repeat_cond(cond, n)
    uncond = repeat_cond(uncond, n) if uncond is not None else None

    def apply(x, t, c):
        return model.apply_model(x, t, **c)

    check_memory(model, shape[-2], shape[-1], n, guided=uncond is not None and s.guidance_scale != 1)
    guided = cfg_model(apply, cond, uncond, s.guidance_scale)
    eps = eps_model(guided, model.cfg.parameterization, model.alphas_cumprod)
    x_T = initial_noise((n, *shape), seeds, device=device, dtype=torch.float32, noise_device=s.noise_device)
    # ancestral noise: a second, independent stream per sample, so a sample never depends on its batch
    noise = seeded_noise([(sd + 0x5EED) % 2**64 for sd in seeds], device=device, dtype=torch.float32,
                         noise_device=s.noise_device)
    with torch.inference_mode():
        return sample(s.sampler, eps, x_T, model.alphas_cumprod, s.steps, eta=s.eta, karras=s.karras,
                      noise=noise, callback=callback, x0_known=x0_known, mask=mask)


def decode(model, z: torch.Tensor, tiles: Optional[Tuple[int, int]] = None):
    """Latents → list of PIL images (clamp((x+1)/2)·255, truncated to uint8 as the reference scripts do).

    tiles: (tile, overlap) in latent pixels to decode by overlapping tiles from the start (the caller sampled by
    tiles, so the image is large); None decodes in one piece when that fits.
    Two fallbacks, each logged once per model:
    - out of memory (or a one-piece decode the memory estimate says cannot fit): overlapping latent tiles
      (`vae_tiling.decode_tiled`), halving the tile while memory still runs out;
    - NaN/Inf pixels from a float16/bfloat16 first stage (its activations overflow): the first stage is cast to
      float32 for good, so later images decode in float32 directly, and the latents are decoded again.
    Non-finite latents, or NaN/Inf pixels from a float32 decode, are an LdmError (no garbage image is written).
    """
    from ldmcli.io.images import tensor_to_pil
    z = z.to(model.device)
    if not bool(torch.isfinite(z).all()):
        hint = "broken UNet weights?" if model.dtype == torch.float32 else "overflow? try --dtype float32"
        raise LdmError(f"the sampled latents hold NaN/Inf values ({hint})")
    x = _decode_fitting(model, z, tiles)
    fs = model.first_stage_model
    dtype = next(fs.parameters()).dtype
    if not bool(torch.isfinite(x).all()) and dtype != torch.float32:
        _warn_once(model, "fp32", f"the {str(dtype)[6:]} first stage decoded NaN/Inf pixels; decoding in float32 "
                                  f"from now on")
        fs.float()
        x = _decode_fitting(model, z, tiles)
    if not bool(torch.isfinite(x).all()):
        raise LdmError("the float32 first stage decoded NaN/Inf pixels (broken first-stage weights?)")
    return tensor_to_pil(x.float().cpu())


def _decode_fitting(model, z: torch.Tensor, tiles: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """D(z) in one piece when it fits (or by the caller's `tiles`), else by overlapping tiles, halved after each
    out-of-memory failure."""
    from ldmcli.sampling.tiles import decode_tiled
    f = model.cfg.first_stage.downsample_factor
    side = max(z.shape[-2:])
    if tiles is not None:
        (tile, overlap), announce = tiles, False   # asked for: nothing to warn about
    else:
        tile, overlap, announce = (None if _decode_fits(model, z) else min(model.cfg.latent_size, side)), None, True
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
    """Log `message` on the "ldmcli" logger the first time `key` happens with this model."""
    seen = model.__dict__.setdefault("_ldm_warned", set())
    if key not in seen:
        seen.add(key)
        _log.warning(message)


def check_size(model, height: int, width: int) -> None:
    """Sizes must be multiples of f·2^(levels−1) (the first stage's factor times the UNet's down-sampling) and at
    most MAX_SIDE pixels; whether they fit in memory is `check_memory`'s business, once the batch is known."""
    m = model.cfg.first_stage.downsample_factor * latent_multiple(model)
    for name, v in (("height", height), ("width", width)):
        if v > MAX_SIDE:
            raise UsageError(f"--{name} {v} is over the {MAX_SIDE} px limit")
        if v <= 0 or v % m:
            raise UsageError(f"--{name} must be a positive multiple of {m} for this model, got {v}")


def latent_multiple(model) -> int:
    """Latent sides must be multiples of 2^(levels−1): the UNet halves them that often and joins skips by size."""
    return 2 ** (len(model.cfg.unet.channel_mult) - 1)


def pad_to_multiple(x: torch.Tensor, multiple: int, value: Optional[float] = None) -> torch.Tensor:
    """Pad [B, C, H, W] at the bottom and right up to multiples of `multiple`: mirror the image (reflect) where it
    is large enough, else repeat its edge; a constant `value` instead when given (masks). Callers crop back."""
    import torch.nn.functional as F
    h, w = x.shape[-2:]
    pad = (0, -w % multiple, 0, -h % multiple)   # (left, right, top, bottom)
    if not any(pad):
        return x
    if value is not None:
        return F.pad(x, pad, mode="constant", value=value)
    return F.pad(x, pad, mode="reflect" if pad[1] < w and pad[3] < h else "replicate")


def side_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for a sample's other randomness (posterior sample, noise augmentation), on its own stream:
    drawn from `seed` itself it would repeat the numbers of x_T, which has the same seed and often the same shape."""
    return torch.Generator().manual_seed((int(seed) + stream) % 2**64)


def job_option(job, name: str, default, kind: type):
    """A task option from a batch job's `extra` dict, checked: kind is bool, int or float (an int passes as float)."""
    value = job.extra.get(name, default)
    if value is None or (kind is float and type(value) is int):
        return value if value is None else float(value)
    if type(value) is not kind:
        raise UsageError(f"option {name!r} should be {kind.__name__}, got {value!r}")
    return value


# -- memory: refuse what cannot fit before sampling starts ------------------------------------------------------
MAX_SIDE = 16384        # px: the hard cap on a requested side, whatever the memory
_IMAGE_BYTES = 48       # per output pixel: the float32 RGB image and its copies on the way to uint8


def unet_bytes(cfg, h: int, w: int, batch: int, itemsize: int) -> int:
    """Peak activation memory of one UNet forward on a [batch, C, h, w] latent without autograd (openaimodel §4):

        bytes ≈ batch·(itemsize·Σ_skips C_i·N_i + max_l work_l),   N_l = h·w/4^l positions at level l, C_l = mc·mult_l
    - skips: every input block's output (conv_in, num_res_blocks per level, each Downsample) waits for its
      output block;
    - work_l = itemsize·α·C_l·N_l, the level being computed: α = 24 where it attends (the SpatialTransformer's
      GEGLU feed-forward holds its 8C projection, 4C gelu(gate) and 4C product beside the block input, residual
      and float32 GroupNorm copy), 12 elsewhere (a ResBlock on cat(h, skip)). SDPA's fused kernels (flash /
      memory-efficient on CUDA, flash on CPU) never form the N×N scores, so attention is linear in N (the ADM
      AttentionBlock hands SDPA contiguous q/k/v for that reason; its copies fit inside α).
    Measured on CPU (float32/bfloat16, peak RSS): within 20 % for latents of 64–192 cells.
    """
    mult, mc = cfg.channel_mult, cfg.model_channels
    n = [h * w / 4 ** lvl for lvl in range(len(mult))]
    skips = mc * n[0] + sum(cfg.num_res_blocks * m * mc * n[lvl] for lvl, m in enumerate(mult)) \
        + sum(m * mc * n[lvl + 1] for lvl, m in enumerate(mult[:-1]))
    work = 0.0
    for lvl, m in enumerate(mult):
        attends = 2 ** lvl in cfg.attention_resolutions or lvl == len(mult) - 1   # the middle block always attends
        work = max(work, (24 if attends else 12) * itemsize * m * mc * n[lvl])
    return int(batch * (itemsize * skips + work))


def decoder_bytes(cfg, h: int, w: int, batch: int, itemsize: int) -> int:
    """Peak activation memory of the first-stage decoder on a [batch, z, h, w] latent (image buffers excluded):

        bytes ≈ batch·max_i C_in,i·P_i·(2·itemsize + 6)
    P_i = h·w·4^(L−1−i) pixels at decoder level i, entered by C_in,i channels (the level below, upsampled): the
    upsampled input and its conv output in the model dtype, and the ResnetBlock's float32 GroupNorm copy (fitted
    to CPU peak-RSS measurements). The AttnBlock gives SDPA contiguous q/k/v, so its fused kernels run without
    N×N scores (measured on CPU: a 512-channel block on 128² = 16384 tokens peaks at +236 MB, where the scores
    alone would take 1 GiB); its q/k/v copies are smaller than a conv level's buffers.
    """
    widths = [cfg.ch * m for m in cfg.ch_mult]
    top = len(widths) - 1
    pixels = [h * w * 4 ** (top - i) for i in range(top + 1)]
    conv = max(widths[min(i + 1, top)] * pixels[i] for i in range(top + 1)) * (2 * itemsize + 6)
    return int(batch * conv)


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):   # absent, or "max" (no cgroup limit)
        return None


def available_memory(device: torch.device) -> Optional[Tuple[int, str]]:
    """(bytes, description) activations may use: on CUDA the free memory plus what torch's cache holds unused
    (`torch.cuda.mem_get_info`); on the CPU the physical RAM (`os.sysconf`), capped by a cgroup memory limit.
    None where unknown (other devices, platforms without sysconf)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free, f"{device} has {_size(free)} free"
    if device.type != "cpu":
        return None
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    limits = [v for v in (_read_int("/sys/fs/cgroup/memory.max"),
                          _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")) if v]
    if limits and min(limits) < ram:
        return min(limits), f"this container may use {_size(min(limits))}"
    return ram, f"this machine has {_size(ram)} of RAM"


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _decode_fits(model, z: torch.Tensor) -> bool:
    have = available_memory(z.device)
    itemsize = next(model.first_stage_model.parameters()).element_size()
    need = decoder_bytes(model.cfg.first_stage, z.shape[-2], z.shape[-1], z.shape[0], itemsize)
    return have is None or need <= have[0]


def unet_fits(model, h: int, w: int, batch: int, guided: bool = False) -> bool:
    """Whether the UNet activations of `batch` latents of h×w cells fit in the device's memory (True when unknown)."""
    have = available_memory(model.device)
    need = unet_bytes(model.cfg.unet, h, w, batch * (2 if guided else 1), model.dtype.itemsize)
    return have is None or need <= have[0]


def check_memory(model, h: int, w: int, batch: int, guided: bool = True) -> None:
    """Refuse (UsageError) sampling `batch` latents of h×w cells when the estimated peak memory exceeds what the
    device has: max(UNet activations, first-stage decode), the decode counted by tiles of the native latent size
    when one piece cannot fit (`decode` then tiles). A tiled model (tasks/tiled.py) is counted by its tile."""
    have = available_memory(model.device)
    if have is None:
        return
    tiling = getattr(model, "tiling", None)
    th, tw = (min(h, tiling.tile), min(w, tiling.tile)) if tiling is not None else (h, w)
    f = model.cfg.first_stage.downsample_factor
    fs_itemsize = next(model.first_stage_model.parameters()).element_size()
    unet = unet_bytes(model.cfg.unet, th, tw, batch * (2 if guided else 1), model.dtype.itemsize)
    image = _IMAGE_BYTES * batch * h * w * f * f
    decoder = decoder_bytes(model.cfg.first_stage, th, tw, batch, fs_itemsize) + image
    if decoder > have[0]:
        side = model.cfg.latent_size
        decoder = decoder_bytes(model.cfg.first_stage, min(h, side), min(w, side), batch, fs_itemsize) + image
    need = max(unet, decoder)
    if need > have[0]:
        raise UsageError(f"{w * f}x{h * f} px with a batch of {batch} needs about {_size(need)} (UNet "
                         f"activations {_size(unet)}, VAE decode {_size(decoder)}); {have[1]}: try a smaller "
                         f"size or --batch-size 1")
