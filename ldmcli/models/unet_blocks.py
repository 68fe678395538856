"""Building blocks of the ADM-style UNet (openaimodel.py of CompVis/latent-diffusion; MODELS.md §7.2).

Attribute names and `nn.Sequential` slot indices are the checkpoint keys (`in_layers.2`, `emb_layers.1`,
`out_layers.3`, `op`, `conv`), so a CompVis state dict loads with `strict=True`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GroupNorm32


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of ADM: `[cos(t·f), sin(t·f)]` (cos first), `f_i = max_period^(−i/half)`.

    `t` is (b,) and may be fractional (DPM-Solver and k-samplers pass continuous t). Always float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                        # (b, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)    # (b, 2·half)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def normalization(channels: int) -> GroupNorm32:
    """The UNet's norm: 32 groups, eps 1e-5 (`openaimodel.normalization`)."""
    return GroupNorm32(32, channels)


class TimestepBlock(nn.Module):
    """A layer whose forward takes the timestep embedding: `forward(x, emb)`."""


class ContextBlock(nn.Module):
    """A layer whose forward takes the cross-attention context: `forward(x, context)`."""


class TimestepEmbedSequential(nn.Sequential):
    """`nn.Sequential` that hands `emb` to TimestepBlocks and `context` to ContextBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, ContextBlock):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class Downsample(nn.Module):
    """Halve H and W: conv3×3 stride 2 pad 1 (`conv_resample`), else parameter-free 2×2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            assert channels == out_channels, "average-pool downsampling cannot change the channel count"
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour ×2, then conv3×3 when `use_conv` (`conv_resample`)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(TimestepBlock):
    """ADM residual block: `skip(x) + out_layers(in_layers(x) + emb_layers(emb))`.

    `use_scale_shift_norm` (FiLM): `GN(h)·(1+scale) + shift` replaces the addition. `up`/`down`
    (`resblock_updown`): after GN+SiLU, both h and x are resampled (nearest / avg-pool, no parameters)
    before `in_layers`' conv.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: Optional[int] = None,
                 use_scale_shift_norm: bool = False, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            nn.SiLU(),
            nn.Dropout(p=0.0),  # slot kept so the conv stays at index 3 (dropout is 0 in every released config)
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.h_upd(in_rest(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]     # (b, C or 2C, 1, 1)
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h
