"""Condition encoders τθ (LDM paper §3.3): text, class, layout and semantic-map conditions → UNet inputs.

Text encoders live in their own files (`clip_text.py`, `openclip_text.py`, `bert.py`); this module holds the two
small ones and `build_cond_stage`, which picks the encoder from the config type (MODELS.md §6).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.models.config import (BERTConfig, CLIPTextConfig, ClassEmbedderConfig, CondStageConfig, OpenCLIPTextConfig,
                           SpatialRescalerConfig)
from ldmcli.errors import UsageError
from ldmcli.models.bert import BERTEmbedder
from ldmcli.models.clip_text import FrozenCLIPEmbedder
from ldmcli.models.openclip_text import FrozenOpenCLIPEmbedder
from ldmcli.tokenizers import tokenizer_for

__all__ = ["ClassEmbedder", "SpatialRescaler", "FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder", "BERTEmbedder",
           "build_cond_stage", "tokenizer_for"]


class ClassEmbedder(nn.Module):
    """Class ids [b] → one context token [b, 1, embed_dim] for cross-attention (MODELS.md §6.3)."""

    def __init__(self, cfg: ClassEmbedderConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.n_classes, cfg.embed_dim)

    def forward(self, class_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(class_ids[:, None])


class SpatialRescaler(nn.Module):
    """One-hot maps [b, 182, H, W] → n_stages resizes by `multiplier` → 1×1 conv → [b, out, H·mⁿ, W·mⁿ] (§6.5)."""

    def __init__(self, cfg: SpatialRescalerConfig):
        super().__init__()
        self.cfg = cfg
        self.channel_mapper = nn.Conv2d(cfg.in_channels, cfg.out_channels, 1, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.channel_mapper.weight.dtype)
        for _ in range(self.cfg.n_stages):
            # scale_factor, not size=, as the reference: out = floor(H·m) and sampling steps of exactly 1/m,
            # which differ from a size= resize when H·m is not whole
            x = F.interpolate(x, scale_factor=self.cfg.multiplier, mode=self.cfg.method)
        return self.channel_mapper(x)


_ENCODERS = {
    CLIPTextConfig: FrozenCLIPEmbedder,
    OpenCLIPTextConfig: FrozenOpenCLIPEmbedder,
    BERTConfig: BERTEmbedder,
    ClassEmbedderConfig: ClassEmbedder,
    SpatialRescalerConfig: SpatialRescaler,
}


def build_cond_stage(cfg: CondStageConfig) -> Optional[nn.Module]:
    """The learned τθ for a condition config, or None where there is none to build.

    None (unconditional) and the string kinds ("identity": bsr_sr's low-res image itself, "first_stage":
    inpainting_big's autoencoder, "noise_augmentation": the x4 upscaler) have no encoder of their own;
    the `LatentDiffusion` container wires them.
    """
    if cfg is None or isinstance(cfg, str):
        return None
    encoder = _ENCODERS.get(type(cfg))
    if encoder is None:
        raise UsageError(f"unknown condition encoder config {type(cfg).__name__}")
    return encoder(cfg)
