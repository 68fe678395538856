"""SD1 condition encoder τθ: CLIP ViT-L/14 text transformer in HF `CLIPTextModel` layout (MODELS.md §6.2, §7.5).

Attribute names are the checkpoint keys below `cond_stage_model.`:
`transformer.text_model.embeddings.token_embedding.weight`, `...encoder.layers.{i}.self_attn.q_proj.weight`, ...
The `position_ids` buffer that transformers < 4.31 saved is deliberately absent: positions are `arange(L)`
(community merges carry corrupted copies, MODELS.md §7.8); the checkpoint loader drops that key.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.models.config import CLIPTextConfig
from ldmcli.models.layers import multihead_attention
from ldmcli.errors import UsageError
from ldmcli.tokenizers import tokenizer_for

LAYER_CHOICES = ("last", "penultimate")


def blocks_to_run(layer: str, depth: int) -> int:
    """"last" runs every block; "penultimate" stops before the last one (the hidden state of layer -2)."""
    if layer not in LAYER_CHOICES:
        raise UsageError(f"text encoder layer must be one of {LAYER_CHOICES}, got {layer!r}")
    return depth - (layer == "penultimate")


class TextEncoder(nn.Module):
    """Base of the text encoders: `encode(texts)` tokenizes with `self.tokenizer`, then runs `forward(tokens)`.

    `tokenizer` is a plain attribute (not a module), chosen from `self.cfg` on first use unless the caller
    attached one (e.g. a WordPiece tokenizer built from a user-supplied vocab.txt).
    `forward(tokens, vectors=None, n_blocks=None)`: `vectors` [b, L, width], when given, are the input token
    embeddings to use instead of looking `tokens` up (textual inversion replaces some of them); `n_blocks` overrides
    how many blocks run (clip skip; CLIP families only). `prompt_setup` is the run's ldmcli.prompts.PromptSetup
    (embeddings, clip skip, syntax), a plain attribute like the tokenizer; None means the defaults.
    """
    cfg: object
    tokenizer: Optional[object] = None
    prompt_setup: Optional[object] = None
    TOKEN_EMBEDDING = ""      # where each encoder keeps its token embedding (its checkpoint key, less `.weight`)

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.get_submodule(self.TOKEN_EMBEDDING)

    def get_tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = tokenizer_for(self.cfg)
        return self.tokenizer

    def encode(self, texts: List[str]) -> torch.Tensor:
        return self(self.get_tokenizer()(texts).to(next(self.parameters()).device))


def pre_norm_block(x: torch.Tensor, norm1: nn.Module, attn: nn.Module, norm2: nn.Module,
                   mlp: nn.Module) -> torch.Tensor:
    """The residual block of CLIP and open_clip text towers: x + attn(norm1(x)), then x + mlp(norm2(x))."""
    x = x + attn(norm1(x))
    return x + mlp(norm2(x))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU (`hidden_act="quick_gelu"`)."""
    return x * torch.sigmoid(1.702 * x)


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position_embedding = nn.Embedding(cfg.max_length, cfg.width)

    def forward(self, tokens: torch.Tensor, vectors: Optional[torch.Tensor] = None) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        vectors = self.token_embedding(tokens) if vectors is None else vectors
        return vectors + self.position_embedding(positions)


class CLIPAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = multihead_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, causal=True)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, width: int, mlp_dim: int, activation: str):
        super().__init__()
        if activation not in ("quick_gelu", "gelu"):
            raise UsageError(f"CLIP text activation must be quick_gelu or gelu, got {activation!r}")
        self.act = quick_gelu if activation == "quick_gelu" else F.gelu
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """HF CLIP's `pre_norm_block` with its own key names."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg.width, cfg.heads)
        self.layer_norm1 = nn.LayerNorm(cfg.width)
        self.mlp = CLIPMLP(cfg.width, cfg.mlp_dim, cfg.activation)
        self.layer_norm2 = nn.LayerNorm(cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pre_norm_block(x, self.layer_norm1, self.self_attn, self.layer_norm2, self.mlp)


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.layers))


class CLIPTextTransformer(nn.Module):
    """HF `CLIPTextModel.text_model`: embeddings → causal encoder layers → final_layer_norm."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.width)

    def forward(self, tokens: torch.Tensor, n_blocks: int, vectors: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.embeddings(tokens, vectors)
        for layer in self.encoder.layers[:n_blocks]:
            x = layer(x)
        return self.final_layer_norm(x)


class FrozenCLIPEmbedder(TextEncoder):
    """τθ(y) of SD1: tokens [b, L] → context [b, L, width] (last hidden state after final_layer_norm).

    `cfg.layer == "penultimate"` takes the hidden state of layer -2 and still applies final_layer_norm
    (the "CLIP skip" variant).
    """

    TOKEN_EMBEDDING = "transformer.text_model.embeddings.token_embedding"

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__(cfg)
        self.n_blocks = blocks_to_run(cfg.layer, cfg.layers)
        # `transformer` mirrors the HF CLIPTextModel wrapper, whose only child is `text_model`
        self.transformer = nn.ModuleDict({"text_model": CLIPTextTransformer(cfg)})

    def forward(self, tokens: torch.Tensor, vectors: Optional[torch.Tensor] = None,
                n_blocks: Optional[int] = None) -> torch.Tensor:
        return self.transformer["text_model"](tokens, n_blocks or self.n_blocks, vectors)
