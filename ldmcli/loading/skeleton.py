"""Build modules as shapes only: the meta device with PyTorch's parameter initialisers switched off.

On the meta device an initialiser computes nothing, but some still cost: `init.normal_` on a meta tensor is routed
through torch._refs, whose first use imports torch._dynamo (≈1-2 s on a 2-core machine, every process start).
Every weight is assigned from a checkpoint right after, so the initialisers are replaced by the identity while the
skeleton is built.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.nn import init

_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


def _identity(tensor, *args, **kwargs):
    return tensor


@contextmanager
def meta_skeleton() -> Iterator[None]:
    """`with meta_skeleton(): m = Model(cfg)` gives a module whose parameters are uninitialised meta tensors."""
    saved = {name: getattr(init, name) for name in _INITIALISERS if hasattr(init, name)}
    try:
        for name in saved:
            setattr(init, name, _identity)
        with torch.device("meta"):
            yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


__all__ = ["meta_skeleton"]
