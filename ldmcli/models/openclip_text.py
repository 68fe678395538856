"""SD2 condition encoder τθ: the OpenCLIP ViT-H/14 text tower in open_clip's key layout (MODELS.md §6.2, §7.6).

Attribute names are the checkpoint keys below `cond_stage_model.`: `model.token_embedding.weight`,
`model.positional_embedding`, `model.transformer.resblocks.{i}.attn.in_proj_weight`, ..., `model.ln_final.*`.
The causal `attn_mask` is not a parameter (open_clip keeps it as a non-persistent buffer); SDPA builds it.
Batch-first throughout: the reference permutes to sequence-first for open_clip 2.0.x blocks, an equivalent
layout that newer open_clip releases no longer match (MODELS.md §11 item 19).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.models.config import OpenCLIPTextConfig
from ldmcli.models.clip_text import TextEncoder, blocks_to_run, pre_norm_block
from ldmcli.models.layers import multihead_attention


class PackedSelfAttention(nn.Module):
    """torch `nn.MultiheadAttention` parameter layout: one [3·width, width] in_proj with rows q | k | v."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # each [b, L, width]
        return self.out_proj(multihead_attention(q, k, v, self.heads, causal=True))


class ResidualAttentionBlock(nn.Module):
    """open_clip's `pre_norm_block` with its own key names; exact GELU in the MLP."""

    def __init__(self, width: int, heads: int, mlp_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = PackedSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, mlp_dim)),
            ("gelu", nn.GELU()),
            ("c_proj", nn.Linear(mlp_dim, width)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pre_norm_block(x, self.ln_1, self.attn, self.ln_2, self.mlp)


class OpenCLIPTextTower(nn.Module):
    """open_clip `CLIP` with `visual` deleted, as SD2 saves it."""

    def __init__(self, cfg: OpenCLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.max_length, cfg.width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.width, cfg.heads, cfg.mlp_dim) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(cfg.width)
        # present in the checkpoints, unused by τθ: the projection into the joint image-text space
        # (embed_dim = width for ViT-H/14) and the contrastive temperature
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.width))
        self.logit_scale = nn.Parameter(torch.empty(()))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width ** -0.5)
        nn.init.zeros_(self.logit_scale)


class FrozenOpenCLIPEmbedder(TextEncoder):
    """τθ(y) of SD2: tokens [b, L] → context [b, L, width].

    "penultimate" (the SD2 default) runs resblocks 0 … layers-2 and then `ln_final`; "last" runs all of them.
    """

    TOKEN_EMBEDDING = "model.token_embedding"

    def __init__(self, cfg: OpenCLIPTextConfig):
        super().__init__(cfg)
        self.n_blocks = blocks_to_run(cfg.layer, cfg.layers)
        self.model = OpenCLIPTextTower(cfg)

    def forward(self, tokens: torch.Tensor, vectors: Optional[torch.Tensor] = None,
                n_blocks: Optional[int] = None) -> torch.Tensor:
        m = self.model
        vectors = m.token_embedding(tokens) if vectors is None else vectors
        x = vectors + m.positional_embedding[: tokens.shape[1]]  # [b, L, width]
        for block in m.transformer.resblocks[: n_blocks or self.n_blocks]:
            x = block(x)
        return m.ln_final(x)
