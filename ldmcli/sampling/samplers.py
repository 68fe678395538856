"""The shared latent sampler (LDM §3.3): plain sampler functions over a denoiser `model(x, t) -> eps` and a grid.

Conventions (every sampler is `sample_x(model, x, grid, noise=None, callback=None, **its_own_params)`):
- `model(x, t)` returns ε for x in the VP scale (x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε); t is a (b,) float tensor of
  (possibly fractional) timestep indices in [0, T−1]. Samplers only ever see ε: CFG and v → ε live in guidance.py.
- `grid` (schedules.Grid) holds the model timesteps and the noise levels, noisiest first; samplers build no grid,
  so any sampler runs on any schedule, and a partial start (img2img) is a shorter grid (`Grid.tail`).
- `x` is the VP-scale latent at the grid's first level (x_T: unit-variance noise for a full grid). The σ-space
  samplers rescale it to x_σ = x·√(1+σ_0²) internally, as diffusers' pipelines start them, and return the VP-scale
  latent of the last level.
- `noise(x)` draws fresh N(0, I) shaped like x (default torch.randn_like); see noise.seeded_noise.
- `callback(i, total, x, x0)` after step i, with the VP-scale state and the current x0 prediction.
- A denoiser may carry `project(x, scale, std)`, a hook on the sampler *state*: each sampler calls it before every
  model call with the state's noise level ((√ᾱ, √(1−ᾱ)) in VP, (1, σ) in σ space) and once at the end with std 0.
  Latent inpainting (blending.KnownRegion) is that hook, so no sampler has an inpainting parameter.
Step coefficients are computed in float64 on the CPU (the grid's values as Python floats).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor

from ldmcli.errors import UsageError
from ldmcli.sampling.noise import Noise
from ldmcli.sampling.schedules import SCHEDULES, Grid
from ldmcli.sampling.table import check_sampler, schedule_name


# -- shared step helpers ----------------------------------------------------------------------------------------
def _t(x: Tensor, t: float) -> Tensor:
    """The (b,) timestep tensor for the model: float64 for float64 x (tests), else float32 (fp16 cannot hold t)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=dtype)


def _project(model, x: Tensor, scale: float, std: float) -> Tensor:
    """The denoiser's `project` hook on the state at noise level (scale, std), if it has one."""
    project = getattr(model, "project", None)
    return x if project is None else project(x, scale, std)


# -- VP samplers ----------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_ddim(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None,
                eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12; the reference `DDIMSampler`, MODELS.md §9.2), from ᾱ_t to ᾱ_prev per step:

    x_prev = √a_prev·x0 + √(1 − a_prev − σ²)·ε + σ·n,  σ = η·√((1−a_prev)/(1−a_t)·(1 − a_t/a_prev)).
    Its default grid is `schedules.uniform` (the reference's, whose last step goes to ᾱ[0]).
    """
    noise = noise or torch.randn_like
    a, ts, n = grid.alphas.tolist(), grid.t.tolist(), len(grid)
    for i in range(n):
        at, ap = a[i], a[i + 1]
        sigma = eta * math.sqrt((1 - ap) / (1 - at) * (1 - at / ap))
        x = _project(model, x, math.sqrt(at), math.sqrt(1 - at))
        eps = model(x, _t(x, ts[i]))
        x0 = (x - math.sqrt(1 - at) * eps) / math.sqrt(at)
        x = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma ** 2) * eps
        if sigma > 0:
            x = x + sigma * noise(x)
        if callback is not None:
            callback(i, n, x, x0)
    return _project(model, x, 1.0, 0.0)


def _plms_eps(e: Tensor, old: List[Tensor]) -> Tensor:
    """Adams–Bashforth combination of ε with up to three previous ε (orders 2, 3, 4)."""
    if len(old) == 1:
        return (3 * e - old[-1]) / 2
    if len(old) == 2:
        return (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
    return (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24


@torch.no_grad()
def sample_plms(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None) -> Tensor:
    """PLMS (Liu et al. 2022; the reference `PLMSSampler`, MODELS.md §9.3, η = 0), default grid `uniform`.

    Step 1 is pseudo improved Euler (ε averaged over t and the next t at the provisional x_prev, two model calls);
    then AB2/AB3/AB4 on the ε history, each applied through the DDIM update. Unlike the reference, a v-model
    works: the sampler sees ε from `guidance.eps_model` (Stability-AI/stablediffusion#45 is not reproduced).
    """
    a, ts, n = grid.alphas.tolist(), grid.t.tolist(), len(grid)

    def ddim_step(x, e, i):
        at, ap = a[i], a[i + 1]
        x0 = (x - math.sqrt(1 - at) * e) / math.sqrt(at)
        return math.sqrt(ap) * x0 + math.sqrt(1 - ap) * e, x0

    old: List[Tensor] = []
    for i in range(n):
        x = _project(model, x, math.sqrt(a[i]), math.sqrt(1 - a[i]))
        e = model(x, _t(x, ts[i]))
        if not old:   # pseudo improved Euler; for the final step t_next is t itself, as in the reference
            x_next, _ = ddim_step(x, e, i)
            e_prime = (e + model(x_next, _t(x, ts[min(i + 1, n - 1)]))) / 2
        else:
            e_prime = _plms_eps(e, old)
        x, x0 = ddim_step(x, e_prime, i)
        old = (old + [e])[-3:]
        if callback is not None:
            callback(i, n, x, x0)
    return _project(model, x, 1.0, 0.0)


@torch.no_grad()
def sample_ddpm(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, eqs. 6–7; `p_sample_loop`, MODELS.md §9.1; no x0 clipping).

    The posterior between consecutive levels, β = 1 − ᾱ_t/ᾱ_prev: on its default grid `schedules.ddpm` (all T
    steps, or the respaced DDIM grid, ending at ᾱ = 1) this is the reference posterior, respaced as diffusers'
    DDPMScheduler does. Noise is not added on the last step (its posterior variance is 0).
    """
    noise = noise or torch.randn_like
    a, ts, n = grid.alphas.tolist(), grid.t.tolist(), len(grid)
    for i in range(n):
        at, ap = a[i], a[i + 1]
        beta = 1 - at / ap
        x = _project(model, x, math.sqrt(at), math.sqrt(1 - at))
        eps = model(x, _t(x, ts[i]))
        x0 = (x - math.sqrt(1 - at) * eps) / math.sqrt(at)
        x = (math.sqrt(ap) * beta / (1 - at)) * x0 + (math.sqrt(1 - beta) * (1 - ap) / (1 - at)) * x
        if i < n - 1:
            x = x + math.sqrt(beta * (1 - ap) / (1 - at)) * noise(x)
        if callback is not None:
            callback(i, n, x, x0)
    return _project(model, x, 1.0, 0.0)


# -- k-diffusion-style samplers in σ space ---------------------------------------------------------------------
def _denoiser(model):
    """D(x_σ, σ) = x_σ − σ·ε(x_σ/√(1+σ²), t(σ)): the x0 prediction (k-diffusion `DiscreteEpsDDPMDenoiser`)."""
    def denoise(x: Tensor, sigma: float, t: float) -> Tensor:
        return x - sigma * model(x / math.sqrt(1 + sigma ** 2), _t(x, t))
    return denoise


def _k_loop(model, x: Tensor, grid: Grid, step, callback) -> Tensor:
    """The loop every σ-space sampler shares; a sampler is its update `step(x, x0, i, σ, σ_next) -> x_next`.

    x (VP scale) moves to x_σ = x·√(1+σ_0²); each step applies the denoiser's hook at σ, predicts x0 = D(x_σ, σ) and
    updates; the result is moved back to the VP scale of the last level (the identity for σ = 0) and projected.
    """
    sigmas, ts = grid.sigmas.tolist(), grid.t.tolist()
    denoise, n = _denoiser(model), len(ts)
    x = x * math.sqrt(1 + sigmas[0] ** 2)
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        x = _project(model, x, 1.0, s)
        x0 = denoise(x, s, ts[i])
        x = step(x, x0, i, s, s_next)
        if callback is not None:
            callback(i, n, x / math.sqrt(1 + s_next ** 2), x0)
    return _project(model, x / math.sqrt(1 + sigmas[-1] ** 2), 1.0, 0.0)


@torch.no_grad()
def sample_euler(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None) -> Tensor:
    """Euler on the probability-flow ODE dx/dσ = (x − D(x, σ))/σ (Karras et al. 2022, Alg. 1, no churn).

    Default grid `schedules.trailing` (diffusers EulerDiscreteScheduler timestep_spacing="trailing"); with Karras
    σs, diffusers' use_karras_sigmas with timestep_spacing="linspace", whose end points are σ(0), σ(T−1).
    """
    def step(x, x0, i, s, s_next):
        return x + (x - x0) / s * (s_next - s)
    return _k_loop(model, x, grid, step, callback)


@torch.no_grad()
def sample_euler_ancestral(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None,
                           eta: float = 1.0) -> Tensor:
    """Ancestral Euler (k-diffusion `sample_euler_ancestral`): an Euler step down to σ_down, then noise σ_up, with
    σ_up = min(σ_next, η·√(σ_next²(σ² − σ_next²)/σ²)), σ_down = √(σ_next² − σ_up²).

    Default grid as `sample_euler`; η = 1 is diffusers' EulerAncestralDiscreteScheduler (timestep_spacing="trailing").
    """
    noise = noise or torch.randn_like

    def step(x, x0, i, s, s_next):
        s_up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
        x = x + (x - x0) / s * (math.sqrt(s_next ** 2 - s_up ** 2) - s)
        return x + s_up * noise(x) if s_next > 0 else x
    return _k_loop(model, x, grid, step, callback)


@torch.no_grad()
def sample_dpmpp_2m(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; MODELS.md §9.4), data prediction, λ = −log σ, in σ space:
    x ← (σ_next/σ)·x − (e^{−h} − 1)·D, with D = (1 + 1/2r)·x0 − (1/2r)·x0_prev, r = h_prev/h (first order on the
    first step and on the final step to σ = 0).

    Default grid as `sample_euler`: diffusers DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=2, timestep_spacing="trailing", final_sigmas_type="zero"), or use_karras_sigmas=True.
    """
    sigmas, x0_prev = grid.sigmas.tolist(), None

    def step(x, x0, i, s, s_next):
        nonlocal x0_prev
        if s_next == 0:
            x = x0
        else:
            h = math.log(s) - math.log(s_next)
            d = x0
            if x0_prev is not None:
                r = (math.log(sigmas[i - 1]) - math.log(s)) / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (s_next / s) * x - math.expm1(-h) * d
        x0_prev = x0
        return x
    return _k_loop(model, x, grid, step, callback)


# -- dispatch ------------------------------------------------------------------------------------------------
def grid_for(name: str, alphas_cumprod, steps: Optional[int], karras: bool = False,
             schedule: Optional[str] = None) -> Grid:
    """The grid sampler `name` runs on (`table.schedule_name`): its default schedule, Karras σs for karras=True
    (σ-space samplers only), or any schedule of `schedules.SCHEDULES` by name."""
    which = schedule_name(name, karras, schedule)
    if which not in SCHEDULES:
        raise UsageError(f"unknown schedule {which!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[which](alphas_cumprod, steps)


def sample(name: str, model, x_T: Tensor, grid: Grid, *, eta: float = 0.0, noise: Optional[Noise] = None,
           callback=None) -> Tensor:
    """Run sampler `name` (a key of table.SAMPLERS) from x_T over `grid`; returns the VP-scale x0 latent.

    eta is DDIM's η (PLMS requires 0; the others ignore it: ddpm and euler_a are fully ancestral, euler and
    dpmpp_2m deterministic).
    """
    spec = check_sampler(name, eta)
    own = {"eta": eta} if spec.eta else {}
    return spec.sampler()(model, x_T, grid, noise=noise, callback=callback, **own)
