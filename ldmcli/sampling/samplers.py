"""The shared latent sampler (LDM §3.3): plain sampler functions over a denoiser `model(x, t) -> eps`.

Conventions (every sampler):
- `model(x, t)` returns ε for x in the VP scale (x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε); t is a (b,) float tensor of
  (possibly fractional) timestep indices in [0, T−1]. Samplers only ever see ε: CFG and v → ε live in guidance.py.
- `x` (x_T) is unit-variance noise, taken as the VP-scale latent at the first timestep for every sampler (the
  k-style samplers rescale it to x_σ = x·√(1+σ_max²) internally, as diffusers' pipelines start them).
- `noise(x)` draws fresh N(0, I) shaped like x (default torch.randn_like); see `seeded_noise`.
- `callback(i, total, x, x0)` after step i, with the VP-scale state and the current x0 prediction.
- `x0_known`/`mask` (inpainting with a txt2img model): before each step x ← mask·q_sample(x0_known, t) + (1−mask)·x
  (mask = 1 keeps the known region; the reference DDIM's blending), and the known latent is pasted back at the end.
  This changes the sampler *state*, so it cannot be a denoiser wrapper: each loop calls `_blend` once per step.
Schedules and σ grids are in schedules.py; step coefficients are computed in float64 on the CPU.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor

from ldmcli.errors import UsageError
from ldmcli.sampling.schedules import _f64, ddim_timesteps, k_sigmas
from ldmcli.sampling.schedules import alphas_cumprod_from, linear_betas  # noqa: F401  (re-exported: part of the contract)

SAMPLERS = ("ddim", "plms", "ddpm", "dpmpp_2m", "euler", "euler_a")
K_SAMPLERS = ("dpmpp_2m", "euler", "euler_a")   # sigma-space samplers: the ones that take karras=True

Noise = Callable[[Tensor], Tensor]


# -- seeded noise ---------------------------------------------------------------------------------------------
def initial_noise(shape: Sequence[int], seeds: List[int], device=None, dtype=torch.float32,
                  noise_device=None) -> Tensor:
    """x_T with sample k drawn from its own `torch.Generator().manual_seed(seeds[k])`.

    A sample therefore does not depend on its batch (sample k of a batch == the same seed alone). With
    noise_device="cpu" the draw happens on the CPU and is moved, so the same seed gives the same x_T on any device
    (CPU and CUDA generators produce different streams).
    """
    shape = tuple(shape)
    if shape[0] != len(seeds):
        raise ValueError(f"batch size {shape[0]} != {len(seeds)} seeds")
    gen_device = torch.device(noise_device if noise_device is not None else device or "cpu")
    xs = [torch.randn(shape[1:], generator=torch.Generator(gen_device).manual_seed(int(s)), device=gen_device,
                      dtype=dtype) for s in seeds]
    return torch.stack(xs).to(device or gen_device)


def seeded_noise(seeds: List[int], device=None, dtype=torch.float32, noise_device=None) -> Noise:
    """A `noise(x)` callable drawing sample k from a persistent generator seeded with seeds[k].

    Successive calls continue each stream, so the ancestral noise of sample k is the same whatever the batch.
    Its first draw equals `initial_noise` for the same seeds: give it different seeds (e.g. seed + offset) when
    it is used alongside `initial_noise`, or the first ancestral noise repeats x_T.
    """
    gen_device = torch.device(noise_device if noise_device is not None else device or "cpu")
    gens = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]

    def noise(x: Tensor) -> Tensor:
        if x.shape[0] != len(gens):
            raise ValueError(f"batch size {x.shape[0]} != {len(gens)} seeds")
        xs = [torch.randn(x.shape[1:], generator=g, device=gen_device, dtype=dtype) for g in gens]
        return torch.stack(xs).to(x.device, x.dtype)
    return noise


# -- shared step helpers ----------------------------------------------------------------------------------------
def _t(x: Tensor, t: float) -> Tensor:
    """The (b,) timestep tensor for the model: float64 for float64 x (tests), else float32 (fp16 cannot hold t)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=dtype)


def _check_inpaint(x0_known: Optional[Tensor], mask: Optional[Tensor]) -> None:
    if (x0_known is None) != (mask is None):
        raise UsageError("latent inpainting needs both x0_known and mask")


def _blend(x: Tensor, x0_known: Optional[Tensor], mask: Optional[Tensor], scale: float, sigma: float,
           noise: Noise) -> Tensor:
    """x ← mask·(scale·x0 + sigma·n) + (1−mask)·x: the known region re-noised to the current level (q_sample).

    VP samplers pass (√ᾱ_t, √(1−ᾱ_t)); the σ-space samplers pass (1, σ) — the same blend in the VE scale.
    """
    if mask is None:
        return x
    return mask * (scale * x0_known + sigma * noise(x)) + (1 - mask) * x


def _paste(x: Tensor, x0_known: Optional[Tensor], mask: Optional[Tensor]) -> Tensor:
    """Final paste-back of the known latent (mask = 1 keeps it)."""
    return x if mask is None else mask * x0_known + (1 - mask) * x


# -- VP samplers on the reference DDIM grid --------------------------------------------------------------------
@torch.no_grad()
def sample_ddim(model, x: Tensor, alphas_cumprod, steps: int, eta: float = 0.0, noise: Optional[Noise] = None,
                callback=None, x0_known=None, mask=None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12; the reference `DDIMSampler`, MODELS.md §9.2) on the 'uniform' grid.

    Grid: `ddim_timesteps` (1, 21, …, 981 for S=50); the last step goes to ᾱ[0], not 1. For S dividing T this is
    diffusers' DDIMScheduler(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False); for other S the
    reference (and we) take len(arange(0, T, T//S)) steps where diffusers takes S.

    x_prev = √a_prev·x0 + √(1 − a_prev − σ²)·ε + σ·n,  σ = η·√((1−a_prev)/(1−a_t)·(1 − a_t/a_prev)).
    """
    noise = noise or torch.randn_like
    _check_inpaint(x0_known, mask)
    ac = _f64(alphas_cumprod)
    ts = ddim_timesteps(steps, len(ac))
    a, a_prev = ac[ts], torch.cat([ac[:1], ac[ts[:-1]]])
    n = len(ts)
    for k, i in enumerate(reversed(range(n))):
        at, ap = a[i].item(), a_prev[i].item()
        sigma = eta * math.sqrt((1 - ap) / (1 - at) * (1 - at / ap))
        x = _blend(x, x0_known, mask, math.sqrt(at), math.sqrt(1 - at), noise)
        eps = model(x, _t(x, ts[i]))
        x0 = (x - math.sqrt(1 - at) * eps) / math.sqrt(at)
        x = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma ** 2) * eps
        if sigma > 0:
            x = x + sigma * noise(x)
        if callback is not None:
            callback(k, n, x, x0)
    return _paste(x, x0_known, mask)


def _plms_eps(e: Tensor, old: List[Tensor]) -> Tensor:
    """Adams–Bashforth combination of ε with up to three previous ε (orders 2, 3, 4)."""
    if len(old) == 1:
        return (3 * e - old[-1]) / 2
    if len(old) == 2:
        return (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
    return (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24


@torch.no_grad()
def sample_plms(model, x: Tensor, alphas_cumprod, steps: int, noise: Optional[Noise] = None, callback=None,
                x0_known=None, mask=None) -> Tensor:
    """PLMS (Liu et al. 2022; the reference `PLMSSampler`, MODELS.md §9.3, η = 0) on the DDIM grid.

    Step 1 is pseudo improved Euler (ε averaged over t and the next t at the provisional x_prev, two model calls);
    then AB2/AB3/AB4 on the ε history, each applied through the DDIM update. Unlike the reference, a v-model
    works: the sampler sees ε from `guidance.eps_model` (Stability-AI/stablediffusion#45 is not reproduced).
    """
    noise = noise or torch.randn_like
    _check_inpaint(x0_known, mask)
    ac = _f64(alphas_cumprod)
    ts = ddim_timesteps(steps, len(ac))
    a, a_prev = ac[ts], torch.cat([ac[:1], ac[ts[:-1]]])
    n = len(ts)

    def ddim_step(x, e, i):
        at, ap = a[i].item(), a_prev[i].item()
        x0 = (x - math.sqrt(1 - at) * e) / math.sqrt(at)
        return math.sqrt(ap) * x0 + math.sqrt(1 - ap) * e, x0

    old: List[Tensor] = []
    for k, i in enumerate(reversed(range(n))):
        at = a[i].item()
        x = _blend(x, x0_known, mask, math.sqrt(at), math.sqrt(1 - at), noise)
        e = model(x, _t(x, ts[i]))
        if not old:   # pseudo improved Euler; for the final step t_next is t itself, as in the reference
            x_next, _ = ddim_step(x, e, i)
            e_prime = (e + model(x_next, _t(x, ts[max(i - 1, 0)]))) / 2
        else:
            e_prime = _plms_eps(e, old)
        x, x0 = ddim_step(x, e_prime, i)
        old = (old + [e])[-3:]
        if callback is not None:
            callback(k, n, x, x0)
    return _paste(x, x0_known, mask)


@torch.no_grad()
def sample_ddpm(model, x: Tensor, alphas_cumprod, steps: Optional[int] = None, noise: Optional[Noise] = None,
                callback=None, x0_known=None, mask=None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, eqs. 6–7; `p_sample_loop`, MODELS.md §9.1; no x0 clipping).

    steps ≥ T (or None): all T steps t = T−1…0 with the reference posterior. steps < T: the same DDIM grid
    (`ddim_timesteps`) with the *respaced* posterior — β_t = 1 − ᾱ_t/ᾱ_prev between consecutive grid points and
    ᾱ_prev = 1 after the last one — as diffusers' DDPMScheduler does with timestep_spacing="leading", steps_offset=1.
    Noise is not added on the last step (its posterior variance is 0).
    """
    noise = noise or torch.randn_like
    _check_inpaint(x0_known, mask)
    ac = _f64(alphas_cumprod)
    T = len(ac)
    ts = torch.arange(T) if steps is None or steps >= T else ddim_timesteps(steps, T)
    a, a_prev = ac[ts], torch.cat([ac.new_ones(1), ac[ts[:-1]]])
    n = len(ts)
    for k, i in enumerate(reversed(range(n))):
        at, ap = a[i].item(), a_prev[i].item()
        beta = 1 - at / ap
        x = _blend(x, x0_known, mask, math.sqrt(at), math.sqrt(1 - at), noise)
        eps = model(x, _t(x, ts[i]))
        x0 = (x - math.sqrt(1 - at) * eps) / math.sqrt(at)
        x = (math.sqrt(ap) * beta / (1 - at)) * x0 + (math.sqrt(1 - beta) * (1 - ap) / (1 - at)) * x
        if i > 0:
            x = x + math.sqrt(beta * (1 - ap) / (1 - at)) * noise(x)
        if callback is not None:
            callback(k, n, x, x0)
    return _paste(x, x0_known, mask)


# -- k-diffusion-style samplers in σ space ---------------------------------------------------------------------
def _denoiser(model):
    """D(x_σ, σ) = x_σ − σ·ε(x_σ/√(1+σ²), t(σ)): the x0 prediction (k-diffusion `DiscreteEpsDDPMDenoiser`)."""
    def denoise(x: Tensor, sigma: float, t: float) -> Tensor:
        return x - sigma * model(x / math.sqrt(1 + sigma ** 2), _t(x, t))
    return denoise


def _k_setup(x: Tensor, alphas_cumprod, steps: int, karras: bool):
    """(σs, ts, x_σ): the σ grid as floats and x_T moved to the VE scale of the first σ."""
    sigmas, ts = k_sigmas(alphas_cumprod, steps, karras)
    return sigmas.tolist(), ts.tolist(), x * math.sqrt(1 + sigmas[0].item() ** 2)


def _k_callback(callback, i, n, x, s_next, x0):
    if callback is not None:
        callback(i, n, x / math.sqrt(1 + s_next ** 2), x0)


@torch.no_grad()
def sample_euler(model, x: Tensor, alphas_cumprod, steps: int, karras: bool = False, noise: Optional[Noise] = None,
                 callback=None, x0_known=None, mask=None) -> Tensor:
    """Euler on the probability-flow ODE dx/dσ = (x − D(x, σ))/σ (Karras et al. 2022, Alg. 1, no churn).

    σ grid: `k_sigmas` — "trailing" timesteps (diffusers EulerDiscreteScheduler timestep_spacing="trailing"), or
    Karras σs (diffusers: use_karras_sigmas with timestep_spacing="linspace", whose end points are σ(0), σ(T−1)).
    """
    noise = noise or torch.randn_like
    _check_inpaint(x0_known, mask)
    sigmas, ts, x = _k_setup(x, alphas_cumprod, steps, karras)
    denoise, n = _denoiser(model), len(ts)
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        x = _blend(x, x0_known, mask, 1.0, s, noise)
        x0 = denoise(x, s, ts[i])
        x = x + (x - x0) / s * (s_next - s)
        _k_callback(callback, i, n, x, s_next, x0)
    return _paste(x, x0_known, mask)


@torch.no_grad()
def sample_euler_ancestral(model, x: Tensor, alphas_cumprod, steps: int, karras: bool = False, eta: float = 1.0,
                           noise: Optional[Noise] = None, callback=None, x0_known=None, mask=None) -> Tensor:
    """Ancestral Euler (k-diffusion `sample_euler_ancestral`): an Euler step down to σ_down, then noise σ_up, with
    σ_up = min(σ_next, η·√(σ_next²(σ² − σ_next²)/σ²)), σ_down = √(σ_next² − σ_up²).

    σ grid as `sample_euler`; η = 1 is diffusers' EulerAncestralDiscreteScheduler (timestep_spacing="trailing").
    """
    noise = noise or torch.randn_like
    _check_inpaint(x0_known, mask)
    sigmas, ts, x = _k_setup(x, alphas_cumprod, steps, karras)
    denoise, n = _denoiser(model), len(ts)
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        x = _blend(x, x0_known, mask, 1.0, s, noise)
        x0 = denoise(x, s, ts[i])
        s_up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
        s_down = math.sqrt(s_next ** 2 - s_up ** 2)
        x = x + (x - x0) / s * (s_down - s)
        if s_next > 0:
            x = x + s_up * noise(x)
        _k_callback(callback, i, n, x, s_next, x0)
    return _paste(x, x0_known, mask)


@torch.no_grad()
def sample_dpmpp_2m(model, x: Tensor, alphas_cumprod, steps: int, karras: bool = False,
                    noise: Optional[Noise] = None, callback=None, x0_known=None, mask=None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; MODELS.md §9.4), data prediction, λ = −log σ, in σ space:
    x ← (σ_next/σ)·x − (e^{−h} − 1)·D, with D = (1 + 1/2r)·x0 − (1/2r)·x0_prev, r = h_prev/h (first order on the
    first step and on the final step to σ = 0).

    σ grid as `sample_euler`: diffusers DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
    timestep_spacing="trailing", final_sigmas_type="zero"), or use_karras_sigmas=True (diffusers rounds the model's
    t for Karras σs; we pass the fractional t = sigma_to_t(σ)).
    """
    noise = noise or torch.randn_like
    _check_inpaint(x0_known, mask)
    sigmas, ts, x = _k_setup(x, alphas_cumprod, steps, karras)
    denoise, n = _denoiser(model), len(ts)
    x0_prev = None
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        x = _blend(x, x0_known, mask, 1.0, s, noise)
        x0 = denoise(x, s, ts[i])
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
        _k_callback(callback, i, n, x, s_next, x0)
    return _paste(x, x0_known, mask)


# -- dispatch ------------------------------------------------------------------------------------------------
def sample(name: str, model, x_T: Tensor, alphas_cumprod, steps: int, *, eta: float = 0.0, karras: bool = False,
           noise: Optional[Noise] = None, callback=None, x0_known=None, mask=None) -> Tensor:
    """Run sampler `name` (one of SAMPLERS) from x_T; returns the VP-scale x0 latent.

    eta is DDIM's η (PLMS requires 0; the others ignore it: ddpm and euler_a are fully ancestral, euler and
    dpmpp_2m deterministic). karras selects Karras σs for the σ-space samplers (dpmpp_2m, euler, euler_a) only.
    """
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if name == "plms" and eta != 0:
        raise UsageError("PLMS is deterministic: eta must be 0")
    if karras and name not in K_SAMPLERS:
        raise UsageError(f"Karras sigmas apply to {', '.join(K_SAMPLERS)} only, not {name}")
    common = dict(noise=noise, callback=callback, x0_known=x0_known, mask=mask)
    if name == "ddim":
        return sample_ddim(model, x_T, alphas_cumprod, steps, eta=eta, **common)
    if name == "plms":
        return sample_plms(model, x_T, alphas_cumprod, steps, **common)
    if name == "ddpm":
        return sample_ddpm(model, x_T, alphas_cumprod, steps, **common)
    k_sampler = {"dpmpp_2m": sample_dpmpp_2m, "euler": sample_euler, "euler_a": sample_euler_ancestral}[name]
    return k_sampler(model, x_T, alphas_cumprod, steps, karras=karras, **common)
