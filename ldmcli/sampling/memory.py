"""Memory: refuse what cannot fit before sampling starts, and tell `decode` when to tile.

The peak of a run is the larger of one UNet forward's activations (twice the batch under classifier-free guidance)
and the first-stage decode; both estimates are closed forms in the latent size, checked against what the device
has (`available_memory`). A tiled run (tiling.py) is counted by its tile.

Self-attention is linear in memory (SDPA's fused kernels, on the CPU as on CUDA) but quadratic in time: on the CPU
a run whose attention alone would take more than MAX_CPU_ATTENTION_SECONDS per image, at an optimistic
CPU_ATTENTION_FLOPS per thread, is refused with the figure (`attention_flops`).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Tuple

from ldmcli.errors import UsageError

if TYPE_CHECKING:
    import torch

MAX_SIDE = 16384        # px: the hard cap on a requested side, whatever the memory
MAX_CPU_ATTENTION_SECONDS = 3600   # per image: past an hour of attention alone, a CPU run is refused
CPU_ATTENTION_FLOPS = 100e9        # per thread and second: above what a fused CPU kernel reaches, so only the
                                   # hopeless is refused
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
    tests/test_memory.py checks it against the measured peak RSS of a forward.
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


def attention_flops(cfg, h: int, w: int) -> float:
    """Floating-point operations of the self-attention of one UNet forward on one h×w latent: 4·N²·C per attention
    (q·kᵀ and the weighted sum of v, a multiply and an add each), N = h·w/4^l positions and C = mc·mult_l channels
    at level l; input blocks attend num_res_blocks times per attending level, output blocks num_res_blocks + 1
    times, the middle block once; transformer_depth layers each. Cross-attention (N×77 scores) and convolutions
    are linear in N and left out."""
    mult, mc = cfg.channel_mult, cfg.model_channels
    total = 0.0
    for lvl, m in enumerate(mult):
        n = h * w / 4 ** lvl
        blocks = (2 * cfg.num_res_blocks + 1) * (2 ** lvl in cfg.attention_resolutions) + (lvl == len(mult) - 1)
        total += blocks * cfg.transformer_depth * 4 * n * n * m * mc
    return total


def decoder_attention_flops(cfg, h: int, w: int) -> float:
    """The first-stage decoder's mid-block attention on an h×w latent: 4·N²·C, N = h·w, C = ch·ch_mult[-1]."""
    return 0.0 if cfg.attn_type == "none" else 4.0 * (h * w) ** 2 * cfg.ch * cfg.ch_mult[-1]


def decoder_bytes(cfg, h: int, w: int, batch: int, itemsize: int) -> int:
    """Peak activation memory of the first-stage decoder on a [batch, z, h, w] latent (image buffers excluded):

        bytes ≈ batch·max_i C_in,i·P_i·(2·itemsize + 6)
    P_i = h·w·4^(L−1−i) pixels at decoder level i, entered by C_in,i channels (the level below, upsampled): the
    upsampled input and its conv output in the model dtype, and the ResnetBlock's float32 GroupNorm copy (fitted
    to CPU peak-RSS measurements, which tests/test_memory.py repeats). The AttnBlock gives SDPA contiguous q/k/v,
    so its fused kernels run without N×N scores; its q/k/v copies are smaller than a conv level's buffers.
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
        import torch   # here: the CLI's early checks read MAX_SIDE from this module without paying for torch
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


def _check_cpu_time(model, h: int, w: int, forwards: int, what: str) -> None:
    """UsageError when the attention of `forwards` UNet forwards and a decode of one h×w latent (a tile's, when
    tiled) would take more than MAX_CPU_ATTENTION_SECONDS at CPU_ATTENTION_FLOPS per thread."""
    import torch
    flops = forwards * attention_flops(model.cfg.unet, h, w) + decoder_attention_flops(model.cfg.first_stage, h, w)
    seconds = flops / (CPU_ATTENTION_FLOPS * max(1, torch.get_num_threads()))
    if seconds > MAX_CPU_ATTENTION_SECONDS:
        raise UsageError(f"{what}: self-attention alone would take at least {seconds / 3600:.1f} h per image on "
                         f"this CPU ({flops / 1e12:,.0f} TFLOP; quadratic in the area; the limit is "
                         f"{MAX_CPU_ATTENTION_SECONDS // 60} min): try a smaller size, tiles or a GPU")


def _tiles(side: int, tiling) -> int:
    """Tiles along a side of `side` cells: tiles of `tiling.tile` cells sharing at least `tiling.overlap`."""
    return 1 if side <= tiling.tile else -(-(side - tiling.overlap) // (tiling.tile - tiling.overlap))


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def decode_fits(model, z: torch.Tensor) -> bool:
    """Whether decoding `z` in one piece fits in the memory of its device (True when unknown)."""
    have = available_memory(z.device)
    itemsize = next(model.first_stage_model.parameters()).element_size()
    need = decoder_bytes(model.cfg.first_stage, z.shape[-2], z.shape[-1], z.shape[0], itemsize)
    return have is None or need <= have[0]


def unet_fits(model, h: int, w: int, batch: int, guided: bool = False) -> bool:
    """Whether the UNet activations of `batch` latents of h×w cells fit in the device's memory (True when unknown)."""
    have = available_memory(model.device)
    need = unet_bytes(model.cfg.unet, h, w, batch * (2 if guided else 1), model.dtype.itemsize)
    return have is None or need <= have[0]


def check_memory(model, h: int, w: int, batch: int, guided: bool = True, tiling=None,
                 steps: Optional[int] = None) -> None:
    """Refuse (UsageError) sampling `batch` latents of h×w cells when the estimated peak memory exceeds what the
    device has: max(UNet activations, first-stage decode), the decode counted by tiles of the native latent size
    when one piece cannot fit (`decode` then tiles). With a `tiling.Tiling`, both are counted by its tile.
    Given the `steps`, a CPU run is refused too when its attention would take too long (module docstring)."""
    have = available_memory(model.device)
    if have is None:
        return
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
    if steps and model.device.type == "cpu":
        tiles = 1 if tiling is None else _tiles(h, tiling) * _tiles(w, tiling)
        _check_cpu_time(model, th, tw, tiles * steps * (2 if guided else 1), f"{w * f}x{h * f} px")


__all__ = ["MAX_SIDE", "MAX_CPU_ATTENTION_SECONDS", "attention_flops", "decoder_attention_flops", "unet_bytes",
           "decoder_bytes", "available_memory", "decode_fits", "unet_fits", "check_memory"]
