"""Attention layers of the LDM UNet: SpatialTransformer (cross-attention, τθ conditioning) and ADM AttentionBlock.

Sources: `ldm/modules/attention.py` (LDM/SD1; SD2 adds `use_linear`, `disable_self_attn`) and the ADM
`AttentionBlock` + `QKVAttentionLegacy` of `openaimodel.py` (MODELS.md §7.2). Attribute names are checkpoint keys.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .layers import GroupNorm32, attention, multihead_attention
from .unet_blocks import ContextBlock, normalization


class CrossAttention(nn.Module):
    """Multi-head attention of x (b, n, query_dim) to `context` (b, m, context_dim); self-attention if None.

    Inside `context_projections_kept` the keys and values of a context are computed once and reused while the same,
    unchanged context tensor comes back (a sampler's every step): `kept` holds them, with what they were made from.
    """

    def __init__(self, query_dim: int, context_dim: Optional[int] = None, heads: int = 8, dim_head: int = 64):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(p=0.0))  # `to_out.0` keeps its index
        self.keeps = False
        self.kept: Optional[tuple] = None

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        if context is None:
            k, v = self.to_k(x), self.to_v(x)
        else:
            k, v = self._context_kv(context, x.dtype)
        return self.to_out(multihead_attention(self.to_q(x), k, v, self.heads))

    def _context_kv(self, context: torch.Tensor, dtype: torch.dtype) -> tuple:
        # a traced (torch.compile) forward computes them each call: a kept tensor would be a guard and a side effect
        keeps = self.keeps and not _is_compiling()
        made_from = (_version(context), dtype, *_autocast(context.device.type)) if keeps else None
        kept = self.kept     # read once: another thread's sampling may replace it meanwhile
        if keeps and kept is not None and kept[0] is context and kept[1] == made_from:
            return kept[2:]
        c = context.to(dtype)
        k, v = self.to_k(c), self.to_v(c)
        if keeps:
            self.kept = (context, made_from, k, v)   # the context itself, so that its id cannot be reused meanwhile
        return k, v


def _dynamo_is_compiling() -> bool:
    """torch < 2.3, which has no torch.compiler.is_compiling: Dynamo's own, imported only there and then."""
    from torch._dynamo import is_compiling
    return is_compiling()


_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or _dynamo_is_compiling


def _autocast(device_type: str) -> tuple:
    """(enabled, dtype) of autocast on `device_type`; torch < 2.4 asks per device kind."""
    if hasattr(torch, "get_autocast_dtype"):
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    if device_type == "cpu":
        return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


def _version(t: torch.Tensor) -> Optional[int]:
    """The in-place write counter of `t`; None for an inference tensor (made under inference_mode), which keeps none:
    such a context is taken as unchanged while it is the same tensor."""
    return None if t.is_inference() else t._version


@contextmanager
def context_projections_kept(module: nn.Module) -> Iterator[None]:
    """Within the block, every CrossAttention of `module` computes a constant context's keys and values once (a
    sampler's condition is the same tensor at every step) instead of at each call; the results are identical. What
    was kept is dropped at the end, so no context outlives its sampling."""
    layers = [m for m in module.modules() if isinstance(m, CrossAttention)]
    for m in layers:
        m.keeps = True
    try:
        yield
    finally:
        for m in layers:
            m.keeps, m.kept = False, None


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): one Linear to 2·dim_out, split in halves (a, gate), return a · gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP `net = [GEGLU(dim → 4·dim), Dropout, Linear(4·dim → dim)]` (keys `ff.net.0.proj`, `ff.net.2`)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(p=0.0), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm block: `x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x))`.

    `disable_self_attn` (SD2 x4 upscaler, `disable_self_attentions[level]`): attn1 attends to the context too,
    so its to_k/to_v are [inner, context_dim].
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None,
                 disable_self_attn: bool = False):
        super().__init__()
        self.disable_self_attn = disable_self_attn
        self.attn1 = CrossAttention(dim, context_dim if disable_self_attn else None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), context if self.disable_self_attn else None)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(ContextBlock):
    """`x + proj_out(blocks(proj_in(norm(x))))` over the (h·w) tokens of a feature map, conditioned on `context`.

    proj_in/proj_out are 1×1 convs (LDM, SD1) or Linear layers applied after flattening (SD2,
    `use_linear_in_transformer`). Every block of a depth>1 stack gets the same context (LDM layout2img, depth 3;
    the SD2 code's per-depth `context[i]` would fail there, MODELS.md §11 item 18). The SD2 code declares its
    linear proj_out as `Linear(in_channels, inner)`, a swap that is harmless because inner == C in its configs.
    """

    def __init__(self, in_channels: int, heads: int, dim_head: int, depth: int = 1,
                 context_dim: Optional[int] = None, disable_self_attn: bool = False, use_linear: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = GroupNorm32(32, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner) if use_linear else nn.Conv2d(in_channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, disable_self_attn) for _ in range(depth))
        self.proj_out = nn.Linear(inner, in_channels) if use_linear else nn.Conv2d(inner, in_channels, 1)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)                  # (b, c, h, w) -> (b, h·w, c)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)        # (b, h·w, c) -> (b, c, h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class AttentionBlock(nn.Module):
    """ADM self-attention over the h·w positions (no context); `QKVAttentionLegacy` channel layout.

    Heads: `num_head_channels == -1` → `num_heads` heads, else `channels // num_head_channels`.
    The 3C output channels of the `qkv` Conv1d are grouped per head as `[q_h, k_h, v_h]` (not all-q, all-k,
    all-v). The reference scales q and k by ch^−1/4 each (= ch^−1/2 on q·kᵀ, SDPA's default) and takes the
    softmax in fp32.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            assert channels % num_head_channels == 0, f"{channels} channels, head width {num_head_channels}"
            self.num_heads = channels // num_head_channels
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)                                          # (b, c, T)
        qkv = self.qkv(self.norm(x))                                     # (b, 3c, T)
        qkv = qkv.reshape(b, self.num_heads, 3, c // self.num_heads, -1)  # (b, H, [q|k|v], ch, T)
        # each (b, H, T, ch), contiguous: SDPA's fused kernels need a unit-stride last dim (else math path, T×T)
        q, k, v = (t.contiguous() for t in qkv.transpose(-1, -2).unbind(2))
        h = attention(q, k, v).transpose(-1, -2).reshape(b, c, -1)       # (b, H·ch, T)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)
