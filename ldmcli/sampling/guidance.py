"""Denoiser closures between a model and the samplers: classifier-free guidance and v → ε (MODELS.md §9.5, §0.4).

A sampler only ever calls `model(x, t) -> eps`. The tasks build that callable from the LDM's
`apply_model` by composition, e.g. `eps_model(cfg_model(apply, cond, uncond, scale), parameterization, ᾱ)`.
No model imports here: `apply(x, t, cond)` is any callable.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ldmcli.sampling.schedules import _f64, t_to_alpha

Denoiser = Callable[[Tensor, Tensor], Tensor]


def _cat_cond(uncond, cond):
    """Batch [uncond, cond] along dim 0: tensors directly, dicts per key, lists/tuples per element (§9.5)."""
    if cond is None and uncond is None:
        return None
    if isinstance(cond, Tensor) and isinstance(uncond, Tensor):
        return torch.cat([uncond, cond])
    if isinstance(cond, dict) and isinstance(uncond, dict):
        if cond.keys() != uncond.keys():
            raise ValueError(f"cond and uncond have different keys: {sorted(cond)} vs {sorted(uncond)}")
        return {k: _cat_cond(uncond[k], cond[k]) for k in cond}
    if isinstance(cond, (list, tuple)) and isinstance(uncond, (list, tuple)) and len(cond) == len(uncond):
        return [_cat_cond(u, c) for u, c in zip(uncond, cond)]
    raise TypeError(f"cannot batch uncond {type(uncond).__name__} with cond {type(cond).__name__}")


def cfg_model(apply: Callable, cond, uncond, scale: float) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022; MODELS.md §9.5): out = out_u + s·(out_c − out_u), raw output.

    One batched forward as the reference does: x_in = cat([x, x]), t_in = cat([t, t]), c_in = cat([uncond, cond])
    (uncond first). cond/uncond are tensors or dicts of tensors / lists of tensors (c_concat, c_crossattn, y), with
    the same structure; `apply(x, t, c)` receives the batched structure. scale == 1 or uncond None: one plain
    forward on cond. The batched condition is built once here, not at every step.
    """
    if uncond is None or scale == 1:
        return lambda x, t: apply(x, t, cond)
    both = _cat_cond(uncond, cond)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        out_u, out_c = apply(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return out_u + scale * (out_c - out_u)
    return guided


def _alpha_at(t, x: Tensor, alphas_cumprod) -> Tensor:
    """ᾱ_t broadcast against x, interpolated for fractional t as the samplers do (`schedules.t_to_alpha`)."""
    t = torch.as_tensor(t).detach().to("cpu", torch.float64).reshape(-1)
    a = t_to_alpha(t, alphas_cumprod)
    return a.reshape(-1, *([1] * (x.dim() - 1))).to(x.device)


def eps_model(apply: Denoiser, parameterization: str, alphas_cumprod) -> Denoiser:
    """The ε denoiser of an ε- or v-model (MODELS.md §0.4): for v, ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t (Salimans & Ho 2022).

    This is how every sampler (PLMS and DDPM included, unlike the reference) supports SD 2.x 768-v models.
    """
    if parameterization == "eps":
        return apply
    if parameterization != "v":
        raise ValueError(f"unknown parameterization {parameterization!r} (expected 'eps' or 'v')")
    ac = _f64(alphas_cumprod)

    def eps(x: Tensor, t: Tensor) -> Tensor:
        v = apply(x, t)
        a = _alpha_at(t, x, ac)
        return a.sqrt().to(x.dtype) * v + (1 - a).sqrt().to(x.dtype) * x
    return eps


def predict_x0(eps: Tensor, x: Tensor, t, alphas_cumprod) -> Tensor:
    """x0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t (DDPM eq. 15 inverted), t a scalar or (b,) possibly fractional timestep."""
    a = _alpha_at(t, x, alphas_cumprod)
    return (x - (1 - a).sqrt().to(x.dtype) * eps) / a.sqrt().to(x.dtype)

