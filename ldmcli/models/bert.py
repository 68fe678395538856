"""LDM condition encoder τθ: `BERTEmbedder`, an x-transformers pre-norm encoder (MODELS.md §6.1, §6.4, §7.4).

Attribute names are the checkpoint keys below `cond_stage_model.`: `transformer.token_emb.weight`,
`transformer.pos_emb.emb.weight`, `transformer.attn_layers.layers.{j}.{0,1}.*`, `transformer.norm.*`,
`transformer.to_logits.*`. Layer j is `[norm, block, residual]`: even j self-attention, odd j feed-forward;
the parameter-free `Residual` at index 2 is just the `x +` in `forward`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ldmcli.models.config import BERTConfig
from ldmcli.models.clip_text import TextEncoder
from ldmcli.models.layers import multihead_attention


class Attention(nn.Module):
    """heads × dim_head self-attention (inner 512 for 8×64 whatever the model width), no mask, bidirectional."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = multihead_attention(self.to_q(x), self.to_k(x), self.to_v(x), self.heads)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(
            nn.Sequential(nn.Linear(dim, mult * dim), nn.GELU()),   # net.0.0
            nn.Identity(),                                          # net.1: Dropout slot, keeps net.2 aligned
            nn.Linear(mult * dim, dim),                             # net.2
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AbsolutePositionalEmbedding(nn.Module):
    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(self, n: int, device: torch.device) -> torch.Tensor:
        return self.emb(torch.arange(n, device=device))  # [n, dim], unscaled in LDM's vendored copy


class AttentionLayers(nn.Module):
    """x-transformers `Encoder`: depth × (pre-norm attention, pre-norm feed-forward), residual after each."""

    def __init__(self, cfg: BERTConfig):
        super().__init__()
        dim = cfg.n_embed
        self.layers = nn.ModuleList()
        for _ in range(cfg.n_layer):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), Attention(dim, cfg.heads, cfg.dim_head)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block in self.layers:
            x = x + block(norm(x))
        return x


class TransformerWrapper(nn.Module):
    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.n_embed)
        self.pos_emb = AbsolutePositionalEmbedding(cfg.n_embed, cfg.max_seq_len)
        self.attn_layers = AttentionLayers(cfg)
        self.norm = nn.LayerNorm(cfg.n_embed)
        self.to_logits = nn.Linear(cfg.n_embed, cfg.vocab_size)  # in the weights, unused (return_embeddings=True)

    def forward(self, tokens: torch.Tensor, vectors: Optional[torch.Tensor] = None) -> torch.Tensor:
        vectors = self.token_emb(tokens) if vectors is None else vectors
        x = vectors + self.pos_emb(tokens.shape[1], tokens.device)
        return self.norm(self.attn_layers(x))


class BERTEmbedder(TextEncoder):
    """τθ(y) of LDM txt2img / layout2img: token ids [b, L] → context [b, L, n_embed].

    txt2img feeds WordPiece ids of the prompt (`encode`); layout2img (tokenizer "none") feeds the 92 bbox
    tokens of MODELS.md §6.4 straight to `forward`.
    """

    TOKEN_EMBEDDING = "transformer.token_emb"

    def __init__(self, cfg: BERTConfig):
        super().__init__(cfg)
        self.transformer = TransformerWrapper(cfg)

    def forward(self, tokens: torch.Tensor, vectors: Optional[torch.Tensor] = None,
                n_blocks: Optional[int] = None) -> torch.Tensor:
        if n_blocks is not None:
            raise ValueError("a BERT text encoder has no clip skip")
        return self.transformer(tokens, vectors)
