"""Tiled latent sampling: εθ over overlapping latent tiles, blended every step (MultiDiffusion, Bar-Tal et al. 2023;
the reference's patch-wise `split_input_params` sampling, MODELS.md §9.7).

At each step the denoiser runs on tiles of the latent (with the matching crop of every `c_concat` map, which has
the latent's spatial size) and the tile outputs are averaged with smooth weights that sum to one everywhere:
    out(p) = Σ_i w_i(p) · εθ(crop_i(x_t), t, crop_i(c_concat))(p),   Σ_i w_i(p) = 1.
The weights ramp linearly across the overlap (`vae_tiling.blend_plan`), so neighbouring tiles agree at every step
and no seam forms; one tile covering the whole latent gives exactly the untiled output (its weight is exactly 1).
Text context and `y` are not spatial and go to every tile unchanged. Units are latent cells throughout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ldmcli.errors import UsageError
from ldmcli.sampling.tiles import blend_plan
from ldmcli.sampling.pipeline import decode, latent_multiple


@dataclass(frozen=True)
class Tiling:
    """Latent tile side and the overlap neighbouring tiles share at least, both in latent cells."""
    tile: int
    overlap: int


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


def tiled_apply(model, x: torch.Tensor, t: torch.Tensor, c_concat: Optional[Sequence[torch.Tensor]],
                c_crossattn: Optional[Sequence[torch.Tensor]], y: Optional[torch.Tensor],
                tiling: Tiling) -> torch.Tensor:
    """MultiDiffusion step: Σ_i w_i·εθ(crop_i(x), t, crop_i(c_concat)) with the weights of the module docstring."""
    height, width = x.shape[-2:]
    for c in c_concat or ():
        if c.shape[-2:] != (height, width):
            raise ValueError(f"c_concat map {tuple(c.shape[-2:])} does not match the latent {(height, width)}")
    rows = blend_plan(height, tiling.tile, tiling.overlap, 1)
    cols = blend_plan(width, tiling.tile, tiling.overlap, 1)
    out = None
    for y0, wy in rows:
        for x0, wx in cols:
            window = (..., slice(y0, y0 + len(wy)), slice(x0, x0 + len(wx)))
            crops: List[torch.Tensor] = [c[window] for c in c_concat or ()]
            pred = model.apply_model(x[window], t, crops or None, c_crossattn, y)
            if out is None:
                out = torch.zeros(*pred.shape[:-2], height, width, dtype=pred.dtype, device=pred.device)
            out[window] += pred * (wy[:, None] * wx[None, :]).to(pred.device, pred.dtype)  # [th, tw]
    return out


class TiledModel:
    """The model as the sampler sees it, with `apply_model` run by tiles; everything else is the model's own."""

    def __init__(self, model, tiling: Tiling):
        self.model = model
        self.tiling = tiling

    def __getattr__(self, name):
        return getattr(self.model, name)

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, y=None):
        return tiled_apply(self.model, x, t, c_concat, c_crossattn, y, self.tiling)


def tiled(model, tiling: Optional[Tiling]):
    """`model` itself when there is nothing to tile, else its tiled view."""
    return model if tiling is None else TiledModel(model, tiling)


def decode_images(model, z: torch.Tensor, tiling: Optional[Tiling]):
    """D(z) → PIL images; by overlapping latent tiles (`vae_tiling.decode_tiled`) when the sampling was tiled, so a
    large image never goes through the decoder in one piece (with `decode`'s NaN and out-of-memory fallbacks)."""
    return decode(model, z, None if tiling is None else (tiling.tile, tiling.overlap))


__all__ = ["Tiling", "plan_tiling", "tiled_apply", "TiledModel", "tiled", "decode_images"]
