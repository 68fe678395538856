"""Image and latent sizes the model accepts: size checks, the UNet's multiple, padding up to it, and the
tiling of latents larger than the model's own."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ldmcli.errors import UsageError
from ldmcli.sampling.memory import MAX_SIDE
from ldmcli.sampling.tiling import Tiling


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


def plan_tiling(model, latent_hw: Tuple[int, int], tile_size: Optional[int] = None,
                tile_overlap: Optional[int] = None) -> Optional[Tiling]:
    """The tiling for a latent of `latent_hw`, or None when one pass covers it.

    tile_size: latent cells per tile side (default: the model's native latent, `cfg.latent_size`), rounded down to
    the UNet's multiple. tile_overlap: cells shared by neighbours (default: a quarter of the tile).
    """
    step = latent_multiple(model)
    tile = model.cfg.latent_size if tile_size is None else int(tile_size)
    if tile < step:
        raise UsageError(f"tile size must be at least {step} latent cells for this model, got {tile}")
    tile -= tile % step   # every tile must pass through the UNet's down/up-sampling
    overlap = tile // 4 if tile_overlap is None else int(tile_overlap)
    if not 0 <= overlap < tile:
        raise UsageError(f"tile overlap must be between 0 and {tile - 1} latent cells, got {overlap}")
    if max(latent_hw) <= tile:
        return None
    return Tiling(tile, overlap)


__all__ = ["check_size", "latent_multiple", "pad_to_multiple", "plan_tiling"]
