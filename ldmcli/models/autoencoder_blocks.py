"""Encoder and decoder of the LDM first stage (`ldm.modules.diffusionmodules.model`, MODELS.md §5, §7.3).

Attribute names are the CompVis checkpoint keys (`down.{i}.block.{j}.norm1`, `mid.attn_1.q`, `up.{i}.upsample.conv`,
`norm_out`, `conv_out`), so a `first_stage_model.*` state dict loads with `strict=True` and no rename table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.models.config import AutoencoderConfig
from ldmcli.models.layers import GroupNorm32, attention

# "vanilla-xformers" is the SD2 memory-efficient block: same keys and math as "vanilla".
ATTN_TYPES = ("vanilla", "vanilla-xformers", "none")


def normalize(channels: int) -> GroupNorm32:
    """The reference's `Normalize`: 32 groups, eps 1e-6, affine."""
    return GroupNorm32(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GN → swish → conv3×3 → GN → swish → conv3×3, plus a 1×1 `nin_shortcut` when the width changes.

    The reference's `temb_proj` is absent (temb_ch = 0 in the first stage) and its dropout (p = 0) is omitted.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = normalize(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = normalize(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention, x + proj_out(softmax(q kᵀ / √c) v), with 1×1-conv projections.

    pool_side > 0 (AutoencoderConfig.attn_pool_side; 0, the reference, for every public family): on a map whose
    longer side is over pool_side, keys and values come from the map average-pooled to at most pool_side cells a
    side, so the cost grows with the pixels instead of their square. The 1×1 projections are linear, so pooling
    before them is pooling k and v; equal windows add the same log(window) to every score, which the softmax
    cancels. Every query still sees the whole picture, at a coarser grain.
    """

    def __init__(self, ch: int, pool_side: int = 0):
        super().__init__()
        self.pool_side = pool_side
        self.norm = normalize(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        # [b, c, h, w] -> [b, 1 head, h·w tokens, c]; contiguous, because SDPA's fused (flash / memory-efficient)
        # kernels need a unit-stride last dim and would otherwise fall back to the math path with N×N scores
        kv = h
        if self.pool_side and max(height, width) > self.pool_side:
            step = -(-max(height, width) // self.pool_side)
            kv = F.adaptive_avg_pool2d(h, (-(-height // step), -(-width // step)))
        q = self.q(h).reshape(b, 1, c, height * width).transpose(-1, -2).contiguous()
        k, v = (proj(kv).reshape(b, 1, c, -1).transpose(-1, -2).contiguous() for proj in (self.k, self.v))
        h = attention(q, k, v)  # default scale c^-0.5, as the reference
        h = h.transpose(-1, -2).reshape(b, c, height, width)
        return x + self.proj_out(h)


def make_attn(ch: int, attn_type: str, pool_side: int = 0) -> nn.Module:
    """The reference's `make_attn`: attn_type "none" gives a parameter-free identity (no keys)."""
    if attn_type not in ATTN_TYPES:
        raise ValueError(f"unsupported first-stage attn_type {attn_type!r}; expected one of {ATTN_TYPES}")
    return nn.Identity() if attn_type == "none" else AttnBlock(ch, pool_side)


class Downsample(nn.Module):
    """Asymmetric zero pad (0,1,0,1), then conv3×3 stride 2 without padding (`resamp_with_conv=True`)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then conv3×3."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: `block.{j}` ResnetBlocks, each followed by `attn.{j}` where the level has attention.

    Encoder and decoder attach `downsample` / `upsample` to every level but the last / first.
    """

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, with_attn: bool, attn_type: str, pool_side: int = 0):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(in_ch if j == 0 else out_ch, out_ch) for j in range(n_blocks))
        self.attn = nn.ModuleList(make_attn(out_ch, attn_type, pool_side) for _ in range(n_blocks) if with_attn)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[j](h)
        return h


class Mid(nn.Module):
    """block_1 → attn_1 → block_2 at the lowest resolution."""

    def __init__(self, ch: int, attn_type: str, pool_side: int = 0):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch)
        self.attn_1 = make_attn(ch, attn_type, pool_side)
        self.block_2 = ResnetBlock(ch, ch)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """x [B, in_channels, H, W] → [B, 2·z_channels (KL) or z_channels (VQ), H/f, W/f].

    Attention sits at levels whose nominal size (measured from `cfg.resolution`, not the input) is listed in
    `attn_resolutions`.
    """

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        ch, res = cfg.ch, cfg.resolution
        for i, width in enumerate(widths):
            level = Level(ch, width, cfg.num_res_blocks, res in cfg.attn_resolutions, cfg.attn_type,
                          cfg.attn_pool_side)
            if i != len(widths) - 1:
                level.downsample = Downsample(width)
                res //= 2
            self.down.append(level)
            ch = width
        self.mid = Mid(ch, cfg.attn_type, cfg.attn_pool_side)
        self.norm_out = normalize(ch)
        z_out = 2 * cfg.z_channels if cfg.kind == "kl" else cfg.z_channels  # KL: mean and logvar (double_z)
        self.conv_out = nn.Conv2d(ch, z_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z [B, z_channels, h, w] → x [B, out_ch, h·f, w·f]; `up.0` is the highest resolution and runs last."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        ch, res = widths[-1], cfg.resolution // 2 ** (len(widths) - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = Mid(ch, cfg.attn_type, cfg.attn_pool_side)
        levels = []
        for i in reversed(range(len(widths))):
            level = Level(ch, widths[i], cfg.num_res_blocks + 1, res in cfg.attn_resolutions, cfg.attn_type,
                          cfg.attn_pool_side)
            if i != 0:
                level.upsample = Upsample(widths[i])
                res *= 2
            levels.insert(0, level)
            ch = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = normalize(ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = self.up[i](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
