"""Build modules as shapes only: the meta device, with parameter initialisers skipped.

On the meta device an initialiser computes nothing, but some still cost: `init.normal_` on a meta tensor is routed
through torch._refs, whose first use imports torch._dynamo (seconds of start-up on a small machine). Every weight is
assigned from a checkpoint right after, so while the skeleton is built the initialisers return their tensor as it
is. The switch is a TorchFunctionMode: it lives on this thread's mode stack for the `with` block only, so other
threads and code outside the block initialise as usual, and it touches meta tensors only.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.nn import init
from torch.overrides import TorchFunctionMode

# init functions that dispatch through __torch_function__ themselves; the others reach the in-place tensor methods
_INIT_FUNCTIONS = {getattr(init, name) for name in ("uniform_", "normal_", "constant_", "kaiming_uniform_")}
_INPLACE_FILLS = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_,
                  torch.Tensor.exponential_, torch.Tensor.log_normal_, torch.Tensor.cauchy_,
                  torch.Tensor.geometric_, torch.Tensor.random_, torch.Tensor.bernoulli_, torch.Tensor.erfinv_}
_SKIPPED = _INIT_FUNCTIONS | _INPLACE_FILLS


class _SkipMetaInit(TorchFunctionMode):
    """Return the target unchanged when an initialiser or in-place fill is applied to a meta tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SKIPPED:
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


@contextmanager
def meta_skeleton() -> Iterator[None]:
    """`with meta_skeleton(): m = Model(cfg)` gives a module whose parameters are uninitialised meta tensors."""
    with torch.device("meta"), _SkipMetaInit():
        yield


__all__ = ["meta_skeleton"]
