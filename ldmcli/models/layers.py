"""The primitives every part of the LDM shares: the float32 GroupNorm and scaled dot-product attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype; parameters keep their own dtype.

    The reference normalises in the activation dtype; in fp16 the KL decoder's large activations overflow there
    (MODELS.md §11 #4). In float32 this is exactly `nn.GroupNorm`; bf16 on the CPU runs the native kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and x.device.type == "cpu":
            # bf16 has float32's range (no overflow), and the CPU kernel accumulates in float32 and rounds once:
            # the casts would only copy the activations twice
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v over (b, heads, tokens, d_head) with PyTorch SDPA.

    Half-precision safety (SD 2.1 overflows q·kᵀ in fp16, MODELS.md §11 item 3; the reference upcasts to fp32):
    SDPA's fused kernels accumulate q·kᵀ and the softmax in fp32; its math fallback scales q and k by d^−1/4
    each before the product and, while `torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp` is off (the
    default), computes in fp32 as well. No unscaled half-precision logits are ever formed.
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                        causal: bool = False) -> torch.Tensor:
    """`attention` over projections laid out (b, tokens, heads·d_head), as Linear layers emit them."""
    b, n, _ = q.shape
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))   # (b, heads, tokens, d_head)
    return attention(q, k, v, causal).transpose(1, 2).reshape(b, n, -1)         # (b, n, heads·d_head)


__all__ = ["GroupNorm32", "attention", "multihead_attention"]
