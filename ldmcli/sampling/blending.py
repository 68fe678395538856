"""Latent inpainting with any text-to-image or unconditional model, as a denoiser wrapper (MODELS.md §9.2).

The reference DDIM's `x0`/`mask` blending (also RePaint's known-region update, Lugmayr et al. 2022, without its
resampling): before every step the known region of the sampler state is replaced by the known latent noised to the
state's level, q_sample(x0, t) = scale·x0 + std·n, and the known latent is pasted back at the end. This changes the
sampler *state*, not the model output, so it is the `project` hook that every sampler calls (samplers.py), not a
plain denoiser wrapper.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ldmcli.errors import UsageError
from ldmcli.sampling.noise import Noise


class KnownRegion:
    """The denoiser `model(x, t)` unchanged, plus `project`, which keeps the region where mask = 1 equal to `x0`.

    noise: the sampler's own `noise(x)` (pass the same callable to both), so the re-noising draws come from the
    sampler's stream in its order. Wrap last: the samplers look for `project` on the denoiser they are given.
    """

    def __init__(self, model, x0: Optional[Tensor], mask: Optional[Tensor], noise: Optional[Noise] = None):
        if x0 is None or mask is None:
            raise UsageError("latent inpainting needs both x0_known and mask")
        self.model, self.x0, self.mask = model, x0, mask
        self.noise = noise or torch.randn_like

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model(x, t)

    def project(self, x: Tensor, scale: float, std: float) -> Tensor:
        """x ← mask·(scale·x0 + std·n) + (1−mask)·x: VP samplers pass (√ᾱ_t, √(1−ᾱ_t)), σ-space ones (1, σ), the
        same blend in the VE scale. std = 0 is the final paste-back, mask·x0 + (1−mask)·x, and draws no noise."""
        if std == 0:
            return self.mask * self.x0 + (1 - self.mask) * x
        return self.mask * (scale * self.x0 + std * self.noise(x)) + (1 - self.mask) * x


__all__ = ["KnownRegion"]
