"""Tiling: the UNet and the first stage run on overlapping tiles whose outputs are blended with smooth weights.

Sampling (MultiDiffusion, Bar-Tal et al. 2023; the reference's patch-wise `split_input_params` sampling, MODELS.md
§9.7): at each step the denoiser runs on tiles of the latent (with the matching crop of every `c_concat` map, which
has the latent's spatial size) and the tile outputs are averaged with weights that sum to one everywhere:
    out(p) = Σ_i w_i(p) · εθ(crop_i(x_t), t, crop_i(c_concat))(p),   Σ_i w_i(p) = 1.
`tiled(apply_model, tiling)` is that denoiser, a wrapper of the model's `apply_model`. Text context and `y` are
not spatial and go to every tile unchanged. Units are latent cells.

First stage (`decode_tiled`, `encode_tiled`): the same blend on image or latent tiles. Tiles sit on the latent
grid, so encode tiles start at multiples of the downsampling factor.

The weights ramp linearly across each overlap (`blend_plan`) and are normalised, so neighbouring tiles agree and
no seam forms; one tile covering the whole input gives exactly the untiled output (its weight is exactly 1).
GroupNorm statistics and attention are per tile, so results differ slightly from an untiled pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class Tiling:
    """Latent tile side and the overlap neighbouring tiles share at least, both in latent cells (planned for a
    model and a latent size by `tasks.geometry.plan_tiling`)."""
    tile: int
    overlap: int


def tiled_apply(apply_model: Callable, x: torch.Tensor, t: torch.Tensor, c_concat: Optional[Sequence[torch.Tensor]],
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
            pred = apply_model(x[window], t, crops or None, c_crossattn, y)
            if out is None:
                out = torch.zeros(*pred.shape[:-2], height, width, dtype=pred.dtype, device=pred.device)
            out[window] += pred * (wy[:, None] * wx[None, :]).to(pred.device, pred.dtype)  # [th, tw]
    return out


def tiled(apply_model: Callable, tiling: Optional[Tiling]) -> Callable:
    """`apply_model(x, t, c_concat, c_crossattn, y)` run by tiles (`tiled_apply`); itself when tiling is None."""
    if tiling is None:
        return apply_model

    def apply(x, t, c_concat=None, c_crossattn=None, y=None):
        return tiled_apply(apply_model, x, t, c_concat, c_crossattn, y, tiling)
    return apply


def tile_starts(size: int, tile: int, overlap: int) -> List[int]:
    """Evenly spread starts of tiles of length `tile` covering [0, size), neighbours sharing at least `overlap`."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def blend_plan(size: int, tile: int, overlap: int, unit: int) -> List[Tuple[int, torch.Tensor]]:
    """Tiles along one axis of `size` grid cells: (start cell, weight per output position of the tile).

    One grid cell is `unit` output positions. A tile's raw weight ramps linearly over `overlap·unit` positions at
    each border it shares with a neighbour (not at the image border); dividing by the sum of raw weights makes the
    weights of all tiles add up to 1 at every output position.
    """
    tile = min(tile, size)
    starts = tile_starts(size, tile, overlap)
    ramp = max(overlap * unit, 1)
    pos = torch.arange(tile * unit, dtype=torch.float64) + 0.5  # output-position centres within a tile
    raw = []
    for s in starts:
        w = torch.ones_like(pos)
        if s > 0:
            w = torch.minimum(w, pos / ramp)
        if s + tile < size:
            w = torch.minimum(w, (tile * unit - pos) / ramp)
        raw.append(w)
    total = torch.zeros(size * unit, dtype=torch.float64)
    for s, w in zip(starts, raw):
        total[s * unit:(s + tile) * unit] += w
    return [(s, (w / total[s * unit:(s + tile) * unit]).float()) for s, w in zip(starts, raw)]


def _tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
           in_unit: int, out_unit: int) -> torch.Tensor:
    """Run `fn` on overlapping tiles of x [..., H, W] and blend; one grid cell = in_unit inputs = out_unit outputs."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    height, width = x.shape[-2:]
    if height % in_unit or width % in_unit:
        raise ValueError(f"input size {height}x{width} is not a multiple of {in_unit}")
    grid_h, grid_w = height // in_unit, width // in_unit
    tile_g = max(tile // in_unit, 1)
    overlap_g = min(math.ceil(overlap / in_unit), tile_g - 1)
    if grid_h <= tile_g and grid_w <= tile_g:
        return fn(x)
    rows = blend_plan(grid_h, tile_g, overlap_g, out_unit)
    cols = blend_plan(grid_w, tile_g, overlap_g, out_unit)
    out, result = None, None
    for y0, wy in rows:
        for x0, wx in cols:
            th, tw = len(wy) // out_unit, len(wx) // out_unit
            result = fn(x[..., y0 * in_unit:(y0 + th) * in_unit, x0 * in_unit:(x0 + tw) * in_unit])
            if result.shape[-2:] != (len(wy), len(wx)):
                raise ValueError(f"tile output {tuple(result.shape[-2:])} != expected {(len(wy), len(wx))}: "
                                 f"wrong factor?")
            if out is None:  # accumulate in float32 whatever the model dtype
                out = torch.zeros(*result.shape[:-2], grid_h * out_unit, grid_w * out_unit,
                                  dtype=torch.float32, device=result.device)
            weight = (wy[:, None] * wx[None, :]).to(result.device)  # [th·u, tw·u]
            out[..., y0 * out_unit:y0 * out_unit + len(wy), x0 * out_unit:x0 * out_unit + len(wx)] += \
                result.float() * weight
    return out.to(result.dtype)


def decode_tiled(decode_fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int, overlap: int,
                 factor: int) -> torch.Tensor:
    """D(z) by latent tiles of `tile` cells sharing `overlap` cells; output is `factor` times larger."""
    return _tiled(decode_fn, z, tile, overlap, 1, factor)


def encode_tiled(encode_fn: Callable, x: torch.Tensor, tile: int, overlap: int, factor: int):
    """E(x) by image tiles of `tile` pixels sharing `overlap` pixels (both rounded to the `factor` grid).

    `encode_fn` may return a tensor (VQ pre-quantisation latent) or a posterior with a `parameters` tensor and a
    constructor from it (the KL `DiagonalGaussian`); for the latter the posterior parameters (mean, logvar) are
    blended and a posterior of the same class is returned.
    """
    posterior = None

    def run(crop: torch.Tensor) -> torch.Tensor:
        nonlocal posterior
        out = encode_fn(crop)
        if isinstance(out, torch.Tensor):
            return out
        posterior = type(out)
        return out.parameters

    h = _tiled(run, x, tile, overlap, factor, 1)
    return h if posterior is None else posterior(h)


__all__ = ["Tiling", "tiled_apply", "tiled", "tile_starts", "blend_plan", "decode_tiled",
           "encode_tiled"]
