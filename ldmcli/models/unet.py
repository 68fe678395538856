"""The denoising UNet ε_θ(x_t, t, τ_θ(y)) of LDM (Rombach et al. 2022, Fig. 3) on the ADM backbone.

Mirrors `ldm.modules.diffusionmodules.openaimodel.UNetModel` (MODELS.md §4, §7.2); module names are the
`model.diffusion_model.*` checkpoint keys. For L levels and N = num_res_blocks:

    input_blocks   x → conv3×3 → level 0: N × [ResBlock, (attn)] → Downsample → … → level L−1: N × [ResBlock, (attn)]
                   (every input block's output is kept as a skip)
    middle_block   ResBlock → attn → ResBlock
    output_blocks  level L−1 … level 0: (N+1) × [ResBlock(cat(h, skip)), (attn)], + Upsample above level 0
    out            GroupNorm → SiLU → conv3×3

"(attn)" sits at the levels whose downsampling factor ds ∈ attention_resolutions: a SpatialTransformer
(cross-attention to `context`) or an ADM AttentionBlock (self-attention). The middle block always attends.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ldmcli.models.config import UNetConfig
from .attention import AttentionBlock, SpatialTransformer
from .unet_blocks import (Downsample, ResBlock, TimestepEmbedSequential, Upsample, normalization,
                          timestep_embedding)


def attention_heads(cfg: UNetConfig, ch: int) -> Tuple[int, int]:
    """(heads, d_head) for an attention layer on `ch` channels: openaimodel's rule, `legacy` included (MODELS.md §4).

    For an AttentionBlock under `legacy`, d_head is the config's num_head_channels, possibly −1 (→ use `heads`).
    """
    if cfg.num_head_channels == -1:
        heads, d_head = cfg.num_heads, ch // cfg.num_heads
    else:
        heads, d_head = ch // cfg.num_head_channels, cfg.num_head_channels
    if cfg.legacy:
        d_head = ch // heads if cfg.use_spatial_transformer else cfg.num_head_channels
    return heads, d_head


class UNetModel(nn.Module):
    """ADM UNet with SpatialTransformer cross-attention: `forward(x, timesteps, context, y) -> ε or v`."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, mult = cfg.model_channels, cfg.channel_mult
        self.time_embed = nn.Sequential(nn.Linear(mc, 4 * mc), nn.SiLU(), nn.Linear(4 * mc, 4 * mc))
        if cfg.num_classes is not None:               # class id, or the x4 upscaler's noise level
            self.label_emb = nn.Embedding(cfg.num_classes, 4 * mc)

        # Encoder: conv_in, then per level N × [ResBlock, (attn)], and a Downsample after all but the last level.
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, m in enumerate(mult):
            for _ in range(cfg.num_res_blocks):
                layers = [self._resblock(ch, m * mc)]
                ch = m * mc
                if ds in cfg.attention_resolutions:
                    layers.append(self._attention(ch, level))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(self._downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            self._resblock(ch, ch), self._attention(ch, level=None), self._resblock(ch, ch))

        # Decoder: levels in reverse, N+1 × [ResBlock on cat(h, skip), (attn)]; the last block of each level
        # above 0 ends with an Upsample (index .1, or .2 after an attention layer).
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [self._resblock(ch + skip_channels.pop(), m * mc)]
                ch = m * mc
                if ds in cfg.attention_resolutions:
                    layers.append(self._attention(ch, level))
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(self._upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    def _resblock(self, ch_in: int, ch_out: int, up: bool = False, down: bool = False) -> ResBlock:
        cfg = self.cfg
        return ResBlock(ch_in, 4 * cfg.model_channels, ch_out, cfg.use_scale_shift_norm, up=up, down=down)

    def _downsample(self, ch: int) -> nn.Module:
        """`resblock_updown`: a ResBlock(down=True) (avg-pool inside); else conv3×3 stride 2 (`op`) or avg-pool."""
        return self._resblock(ch, ch, down=True) if self.cfg.resblock_updown else Downsample(ch, self.cfg.conv_resample)

    def _upsample(self, ch: int) -> nn.Module:
        """`resblock_updown`: a ResBlock(up=True) (nearest inside); else nearest ×2 + conv3×3 (`conv`)."""
        return self._resblock(ch, ch, up=True) if self.cfg.resblock_updown else Upsample(ch, self.cfg.conv_resample)

    def _attention(self, ch: int, level: Optional[int]) -> nn.Module:
        """SpatialTransformer or ADM AttentionBlock; `level=None` is the middle block (self-attention kept)."""
        cfg = self.cfg
        heads, d_head = attention_heads(cfg, ch)
        if not cfg.use_spatial_transformer:
            return AttentionBlock(ch, num_heads=heads, num_head_channels=d_head)
        disable_sa = bool(cfg.disable_self_attentions and level is not None and cfg.disable_self_attentions[level])
        return SpatialTransformer(ch, heads, d_head, depth=cfg.transformer_depth, context_dim=cfg.context_dim,
                                  disable_self_attn=disable_sa, use_linear=cfg.use_linear_in_transformer)

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Optional[torch.Tensor] = None,
                y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (b, in_channels, H, W); timesteps (b,) int or fractional float; context (b, tokens, context_dim);
        y (b,) class ids / noise levels. Runs in the weights' dtype; returns (b, out_channels, H, W) in x's dtype."""
        cfg = self.cfg
        if (y is not None) != (cfg.num_classes is not None):
            raise ValueError(f"y must be given exactly when the UNet has num_classes (num_classes={cfg.num_classes})")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"latent size {tuple(x.shape[-2:])} is not a multiple of {factor}")
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels).to(self.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x.to(self.dtype)
        context = context.to(self.dtype) if context is not None else None

        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h).to(x.dtype)
