"""Noise schedules and the grids samplers walk: ᾱ_t of the reference "linear" schedule, σ ↔ t conversions, and
the schedule functions `(alphas_cumprod, steps) -> Grid` (MODELS.md §3.3, §9.2).

Two parametrisations of one diffusion process are used:
  VP (the model's own):  x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε
  VE (k-diffusion's):    x_σ = x_t/√ᾱ_t = x0 + σ·ε,   σ_t = √((1−ᾱ_t)/ᾱ_t)
Fractional timesteps t ∈ [0, T−1] are defined by interpolating log σ linearly between integer timesteps, as
k-diffusion's `DiscreteSchedule.sigma_to_t/t_to_sigma` and diffusers' `_sigma_to_t` do; every conversion in
ldmcli (σ → t for the model call, t → ᾱ for v → ε) goes through the two functions below, so they agree.

A `Grid` holds both parametrisations of every noise level, each computed in float64 from the schedule's own one
(ᾱ for the DDIM/DDPM grids, σ for Karras), so a VP sampler reads ᾱ and a σ-space sampler reads σ without a
round trip. A new schedule is one function here and one entry in `SCHEDULES`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import Tensor


def linear_betas(linear_start: float, linear_end: float, timesteps: int = 1000) -> Tensor:
    """`make_beta_schedule("linear")`: β = linspace(√start, √end, T)², float64 (a *squared* linspace)."""
    return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2


def alphas_cumprod_from(linear_start: float, linear_end: float, timesteps: int = 1000) -> Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s) of the "linear" schedule, float64, shape (T,)."""
    return torch.cumprod(1.0 - linear_betas(linear_start, linear_end, timesteps), dim=0)


def _f64(alphas_cumprod) -> Tensor:
    """ᾱ as a float64 CPU tensor: step coefficients are computed in double precision, off the device."""
    return torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)


def ddim_timesteps(steps: int, timesteps: int = 1000) -> Tensor:
    """The reference DDIM 'uniform' grid, ascending: c = T // S, t = arange(0, T, c) + 1 (MODELS.md §9.2).

    S=50 → 1, 21, …, 981; a non-divisor S gives len(arange(0, T, c)) steps (S=30 → 31), as the reference does.
    Quirk fixed: when c divides T − 1 (S = 3, 9, 27, 36, 37, 100–111, 250–333, > 500 for T = 1000) the grid's last
    point is t = T and the reference indexes ᾱ[T] (IndexError); we drop that point (S = 3 → 1, 334, 667).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ts = torch.arange(0, timesteps, max(timesteps // steps, 1)) + 1
    return ts[ts < timesteps]


def trailing_timesteps(steps: int, timesteps: int = 1000) -> Tensor:
    """diffusers' timestep_spacing="trailing" (Lin et al. 2023, Table 2): round(T − i·T/S) − 1, i = 0…S−1.

    Descending integer timesteps that start at T−1 (σ_max, where k-diffusion starts too) and end near T/S − 1.
    The arithmetic is numpy's `arange(T, 0, -T/S)` (T + i·δ, δ = (T − T/S) − T; round half to even), so the values
    equal diffusers'; for a few S (61, 103, 121, …) that arange yields one extra element (t = −1), which we drop.
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be between 1 and {timesteps}, got {steps}")
    delta = (timesteps - timesteps / steps) - timesteps
    return torch.tensor([round(timesteps + i * delta) - 1 for i in range(steps)], dtype=torch.float64)


def sigmas_from(alphas_cumprod) -> Tensor:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training timestep, float64."""
    a = _f64(alphas_cumprod)
    return ((1 - a) / a).sqrt()


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """np.interp for torch: piecewise-linear through (xp, fp), xp increasing, clamped at both ends."""
    x = x.clamp(xp[0], xp[-1])
    hi = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    lo = hi - 1
    w = (x - xp[lo]) / (xp[hi] - xp[lo])
    return fp[lo] + w * (fp[hi] - fp[lo])


def sigma_to_t(sigma, alphas_cumprod) -> Tensor:
    """Fractional timestep of σ: t linear in log σ between integer timesteps (k-diffusion `sigma_to_t`)."""
    log_sigmas = sigmas_from(alphas_cumprod).log()
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return _interp(sigma.log(), log_sigmas, torch.arange(len(log_sigmas), dtype=torch.float64))


def t_to_sigma(t, alphas_cumprod) -> Tensor:
    """σ at a (fractional) timestep: log σ interpolated linearly in t (k-diffusion `t_to_sigma`)."""
    log_sigmas = sigmas_from(alphas_cumprod).log()
    t = torch.as_tensor(t, dtype=torch.float64)
    return _interp(t, torch.arange(len(log_sigmas), dtype=torch.float64), log_sigmas).exp()


def t_to_alpha(t, alphas_cumprod) -> Tensor:
    """ᾱ at a (fractional) timestep, = 1/(1 + σ(t)²), consistent with σ ↔ t elsewhere; exactly ᾱ[t] at integer t."""
    a = _f64(alphas_cumprod)
    t = torch.as_tensor(t, dtype=torch.float64).clamp(0, len(a) - 1)
    integral = t == t.round()
    return torch.where(integral, a[t.round().long()], 1.0 / (1.0 + t_to_sigma(t, a) ** 2))


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^{1/ρ} + i/(S−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, descending."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def kept_steps(n: int, strength: float) -> int:
    """How many of a grid's n steps a partial start of `strength` runs (`Grid.tail`): int(n·strength), as diffusers
    and A1111 count them, with n·strength rounded to 9 decimals first (0.3 of 10 steps is 3, not 2)."""
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    return math.floor(round(strength * n, 9))


# -- grids ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Grid:
    """The noise levels a sampler walks, noisiest first: step i takes the latent from level i to level i + 1 and
    calls the model at timestep t[i].

    t: (n,) float64 model timesteps (fractional where a σ falls between trained timesteps).
    alphas: (n + 1,) float64 ᾱ of the levels (VP); sigmas: (n + 1,) float64 σ = √((1−ᾱ)/ᾱ) of the same levels (VE).
    A grid whose last level is clean has alphas[-1] = 1 and sigmas[-1] = 0.
    alphas_cumprod: the training schedule's ᾱ (T,), for the model timestep of a σ between levels (the second
    model call of Heun, DPM2, DPM++ 2S/SDE); None for a hand-built grid, which such samplers refuse.
    """
    t: Tensor
    alphas: Tensor
    sigmas: Tensor
    alphas_cumprod: Optional[Tensor] = None

    def __post_init__(self):
        n = len(self.t)
        if tuple(self.alphas.shape) != (n + 1,) or tuple(self.sigmas.shape) != (n + 1,):
            raise ValueError(f"a grid of {n} steps needs {n + 1} alphas and sigmas, got "
                             f"{tuple(self.alphas.shape)} and {tuple(self.sigmas.shape)}")

    def __len__(self) -> int:
        return len(self.t)

    def tail(self, strength: float) -> "Grid":
        """The last ⌊strength·n⌋ steps: a partial start (img2img, SDEdit, Meng et al. 2022). The sampler then starts
        from the input's latent noised to the tail's first level, √ᾱ·x0 + √(1−ᾱ)·ε with ᾱ = tail.alphas[0].

        strength in [0, 1]: 1 keeps every step; the count is diffusers' and A1111's int(steps·strength), so the same
        settings run the same steps there and here (a small strength may keep none: the caller returns the input).
        strength·n is rounded to 9 decimals first, so that 0.3 of 10 steps is 3 steps, not 2.
        """
        first = len(self) - kept_steps(len(self), strength)
        return Grid(self.t[first:], self.alphas[first:], self.sigmas[first:], self.alphas_cumprod)

    def t_at(self, sigma: float) -> float:
        """The model timestep of any σ > 0 (`sigma_to_t`), for model calls between the grid's levels."""
        if self.alphas_cumprod is None:
            raise ValueError("this grid has no training schedule (alphas_cumprod): it cannot place a σ between levels")
        return sigma_to_t(sigma, self.alphas_cumprod).item()


def _vp_grid(ts: Tensor, alphas: Tensor) -> Grid:
    """A grid defined by ᾱ (σ derived from it); ts index the training schedule, so alphas[:-1] are its values."""
    return Grid(ts.to(torch.float64), alphas, ((1 - alphas) / alphas).sqrt())


def _sigma_grid(sigmas: Tensor, alphas_cumprod, ts: Optional[Tensor] = None) -> Grid:
    """A grid defined by σ (descending; σ = 0 appended; ᾱ derived from σ, fractional t from σ unless given)."""
    ts = sigma_to_t(sigmas, alphas_cumprod) if ts is None else ts
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return Grid(ts, 1 / (1 + sigmas ** 2), sigmas, _f64(alphas_cumprod))


def uniform(alphas_cumprod, steps: int) -> Grid:
    """The reference DDIM grid (MODELS.md §9.2): `ddim_timesteps` (981, 961, …, 1 for S=50), and the last step goes
    to ᾱ[0], not to 1 (diffusers' DDIMScheduler with timestep_spacing="leading", steps_offset=1,
    set_alpha_to_one=False, where S divides T)."""
    ac = _f64(alphas_cumprod)
    ts = ddim_timesteps(steps, len(ac)).flip(0)
    return _with_schedule(_vp_grid(ts, torch.cat([ac[ts], ac[:1]])), ac)


def ddpm(alphas_cumprod, steps: Optional[int] = None) -> Grid:
    """The DDPM grid (Ho et al. 2020; `p_sample_loop`): all T timesteps when steps ≥ T (or None), else the DDIM
    grid *respaced*, as diffusers' DDPMScheduler does with timestep_spacing="leading", steps_offset=1; either way
    the last step goes to ᾱ = 1 (a clean sample)."""
    ac = _f64(alphas_cumprod)
    T = len(ac)
    ts = (torch.arange(T) if steps is None or steps >= T else ddim_timesteps(steps, T)).flip(0)
    return _with_schedule(_vp_grid(ts, torch.cat([ac[ts], ac.new_ones(1)])), ac)


def trailing(alphas_cumprod, steps: int) -> Grid:
    """σ at the "trailing" timesteps (`trailing_timesteps`: integer t from T−1, so the model sees trained timesteps),
    then σ = 0: diffusers' k-style schedulers with timestep_spacing="trailing"."""
    ac = _f64(alphas_cumprod)
    ts = trailing_timesteps(steps, len(ac))
    return _with_schedule(_vp_grid(ts, torch.cat([ac[ts.long()], ac.new_ones(1)])), ac)


def karras(alphas_cumprod, steps: int) -> Grid:
    """Karras σs (ρ = 7) between σ(0) and σ(T−1) of the full schedule, then σ = 0: k-diffusion's
    `get_sigmas_karras(n, model.sigma_min, model.sigma_max)` and diffusers' `use_karras_sigmas`, with fractional
    t = sigma_to_t(σ) (diffusers' DPM-Solver rounds these t; we do not)."""
    all_sigmas = sigmas_from(alphas_cumprod)
    return _sigma_grid(karras_sigmas(steps, all_sigmas[0].item(), all_sigmas[-1].item()), alphas_cumprod)


def exponential(alphas_cumprod, steps: int) -> Grid:
    """σ geometric from σ(T−1) down to σ(0), then σ = 0: k-diffusion's `get_sigmas_exponential` (A1111/ComfyUI
    "Exponential")."""
    all_sigmas = sigmas_from(alphas_cumprod)
    log_sigmas = torch.linspace(all_sigmas[-1].log().item(), all_sigmas[0].log().item(), steps, dtype=torch.float64)
    return _sigma_grid(log_sigmas.exp(), alphas_cumprod)


def normal(alphas_cumprod, steps: int) -> Grid:
    """σ at timesteps linspace(T−1, 0, S), then σ = 0: k-diffusion's `DiscreteSchedule.get_sigmas`, A1111's
    "Uniform" and ComfyUI's "normal" (what `--schedule uniform` means for the σ-space samplers)."""
    ac = _f64(alphas_cumprod)
    ts = torch.linspace(len(ac) - 1, 0, steps, dtype=torch.float64)
    return _sigma_grid(t_to_sigma(ts, ac), ac, ts)


def sgm_uniform(alphas_cumprod, steps: int) -> Grid:
    """σ at timesteps linspace(T−1, 0, S + 1)[:-1], then σ = 0: ComfyUI's "sgm_uniform" (A1111 "SGM Uniform"),
    the spacing of Stability's sgm discretisation, which never calls the model at t = 0."""
    ac = _f64(alphas_cumprod)
    ts = torch.linspace(len(ac) - 1, 0, steps + 1, dtype=torch.float64)[:-1]
    return _sigma_grid(t_to_sigma(ts, ac), ac, ts)


def _with_schedule(grid: Grid, alphas_cumprod: Tensor) -> Grid:
    return Grid(grid.t, grid.alphas, grid.sigmas, alphas_cumprod)


Schedule = Callable[..., Grid]
SCHEDULES: Dict[str, Schedule] = {"uniform": uniform, "ddpm": ddpm, "trailing": trailing, "karras": karras,
                                  "exponential": exponential, "normal": normal, "sgm_uniform": sgm_uniform}
