"""Tiled first-stage decode/encode: overlapping tiles blended with normalised linear ramps, so no seams show.

Same idea as the reference's `split_input_params` fold/unfold weighting (MODELS.md §9.7): each tile's output is
weighted by a ramp that falls towards its inner borders, and the weights are normalised to sum to 1 everywhere.
Tiles sit on the latent grid, so encode tiles start at multiples of the downsampling factor. GroupNorm statistics and
attention are per tile, so results differ slightly from the untiled pass; a tile covering the whole input returns
exactly `fn(input)`.
"""
from __future__ import annotations

import math
from typing import Callable, List, Tuple

import torch

from ldmcli.models.autoencoder import DiagonalGaussian


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

    `encode_fn` may return a tensor (VQ pre-quantisation latent) or a `DiagonalGaussian` (KL); for the latter the
    posterior parameters (mean, logvar) are blended and a `DiagonalGaussian` is returned.
    """
    gaussian = False

    def run(crop: torch.Tensor) -> torch.Tensor:
        nonlocal gaussian
        out = encode_fn(crop)
        if isinstance(out, DiagonalGaussian):
            gaussian = True
            return out.parameters
        return out

    h = _tiled(run, x, tile, overlap, factor, 1)
    return DiagonalGaussian(h) if gaussian else h


__all__ = ["tile_starts", "blend_plan", "decode_tiled", "encode_tiled"]
