"""More σ-space samplers (the k-diffusion set A1111 and ComfyUI offer), each a plain function over a Grid.

Same conventions as samplers.py (VP-scale x in and out, `noise(x)` for fresh N(0, I), `callback(i, n, x, x0)`,
the denoiser's `project` hook before every model call): each is an update rule handed to `samplers._k_loop`.
A second model call inside a step goes through `_x0_at`, which applies the hook too and places a σ between the
grid's levels on the training schedule (`Grid.t_at`). The stochastic ones take their noise from `noise`, the
per-sample seeded stream, where k-diffusion defaults to a Brownian tree for the SDE samplers.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from ldmcli.sampling.noise import Noise
from ldmcli.sampling.samplers import _k_loop, _project, _t
from ldmcli.sampling.schedules import Grid


def _x0_at(model, grid: Grid) -> Callable[[Tensor, float], Tuple[Tensor, Tensor]]:
    """(x, σ) -> (hooked x, D(x, σ)): the x0 prediction at any σ, t from the grid where σ is one of its levels."""
    levels = dict(zip(grid.sigmas.tolist()[:-1], grid.t.tolist()))

    def x0_at(x: Tensor, s: float):
        t = levels[s] if s in levels else grid.t_at(s)
        x = _project(model, x, 1.0, s)
        return x, x - s * model(x / math.sqrt(1 + s ** 2), _t(x, t))
    return x0_at


def _ancestral(s: float, s_next: float, eta: float = 1.0) -> Tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step from σ to σ_next (k-diffusion `get_ancestral_step`)."""
    if not eta:
        return s_next, 0.0
    s_up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
    return math.sqrt(s_next ** 2 - s_up ** 2), s_up


@torch.no_grad()
def sample_heun(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None) -> Tensor:
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Alg. 2, no churn); Euler on the
    final step to σ = 0."""
    x0_at = _x0_at(model, grid)

    def step(x, x0, i, s, s_next):
        d = (x - x0) / s
        if s_next == 0:
            return x + d * (s_next - s)
        x2, x0_2 = x0_at(x + d * (s_next - s), s_next)
        return x + (d + (x2 - x0_2) / s_next) / 2 * (s_next - s)
    return _k_loop(model, x, grid, step, callback)


def _dpm2(x0_at, x: Tensor, x0: Tensor, s: float, s_to: float) -> Tensor:
    """One DPM-Solver-2 step from σ to σ_to (Lu et al. 2022, in Karras' σ form): the slope at the geometric
    midpoint σ_mid = √(σ·σ_to) carries x all the way; Euler when σ_to = 0."""
    d = (x - x0) / s
    if s_to == 0:
        return x + d * (s_to - s)
    s_mid = math.exp((math.log(s) + math.log(s_to)) / 2)
    x2, x0_2 = x0_at(x + d * (s_mid - s), s_mid)
    return x + (x2 - x0_2) / s_mid * (s_to - s)


@torch.no_grad()
def sample_dpm2(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None) -> Tensor:
    """DPM2: Karras et al. 2022 Alg. 2 with DPM-Solver-2 steps (k-diffusion `sample_dpm_2`, no churn)."""
    x0_at = _x0_at(model, grid)
    return _k_loop(model, x, grid, lambda x, x0, i, s, s_next: _dpm2(x0_at, x, x0, s, s_next), callback)


@torch.no_grad()
def sample_dpm2_ancestral(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None,
                          eta: float = 1.0) -> Tensor:
    """DPM2 a: a DPM-Solver-2 step down to σ_down, then noise σ_up (k-diffusion `sample_dpm_2_ancestral`)."""
    noise, x0_at = noise or torch.randn_like, _x0_at(model, grid)

    def step(x, x0, i, s, s_next):
        s_down, s_up = _ancestral(s, s_next, eta)
        x = _dpm2(x0_at, x, x0, s, s_down)
        return x + s_up * noise(x) if s_down > 0 else x
    return _k_loop(model, x, grid, step, callback)


@torch.no_grad()
def sample_lms(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None,
               order: int = 4) -> Tensor:
    """Linear multistep on dx/dσ = (x − D)/σ (k-diffusion `sample_lms`): x += Σ_j c_j·d_{i−j}, c_j the integral
    over [σ_i, σ_{i+1}] of the Lagrange basis polynomial of σ_{i−j} through the last `order` levels."""
    sigmas, ds = grid.sigmas.tolist(), []

    def step(x, x0, i, s, s_next):
        ds.append((x - x0) / s)
        del ds[:-order]
        nodes = sigmas[i + 1 - len(ds):i + 1][::-1]   # σ_i, σ_{i−1}, …
        return x + sum(_lagrange_integral(nodes, j, s, s_next) * d for j, d in enumerate(reversed(ds)))
    return _k_loop(model, x, grid, step, callback)


def _lagrange_integral(nodes: List[float], j: int, a: float, b: float) -> float:
    """∫_a^b ∏_{k≠j} (τ − σ_k)/(σ_j − σ_k) dτ, exactly: 2-point Gauss–Legendre is exact to degree 3 (order ≤ 4)."""
    def basis(tau):
        return math.prod((tau - nk) / (nodes[j] - nk) for k, nk in enumerate(nodes) if k != j)
    mid, half = (a + b) / 2, (b - a) / 2
    offset = half / math.sqrt(3)
    return half * (basis(mid - offset) + basis(mid + offset))


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None,
                              eta: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022, Alg. 1, r = 1/2) down to σ_down, then noise σ_up (k-diffusion
    `sample_dpmpp_2s_ancestral`); Euler when σ_down = 0."""
    noise, x0_at = noise or torch.randn_like, _x0_at(model, grid)

    def step(x, x0, i, s, s_next):
        s_down, s_up = _ancestral(s, s_next, eta)
        if s_down == 0:
            x = x + (x - x0) / s * (s_down - s)
        else:
            h = math.log(s) - math.log(s_down)         # λ = −log σ
            s_mid = math.exp(-(-math.log(s) + h / 2))
            x2, x0_2 = x0_at((s_mid / s) * x - math.expm1(-h / 2) * x0, s_mid)
            x = (s_down / s) * x - math.expm1(-h) * x0_2
        return x + s_up * noise(x) if s_next > 0 else x
    return _k_loop(model, x, grid, step, callback)


@torch.no_grad()
def sample_dpmpp_sde(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None,
                     eta: float = 1.0, r: float = 0.5) -> Tensor:
    """DPM-Solver++ SDE (k-diffusion `sample_dpmpp_sde`): two ancestral DPM-Solver++ substeps per step, to the
    λ-point s = λ + r·h and on to λ_next, each adding its σ_up of noise; Euler on the final step to σ = 0."""
    noise, x0_at = noise or torch.randn_like, _x0_at(model, grid)

    def step(x, x0, i, s, s_next):
        if s_next == 0:
            return x + (x - x0) / s * (s_next - s)
        lam, h = -math.log(s), math.log(s) - math.log(s_next)
        s_mid = math.exp(-(lam + h * r))
        sd, su = _ancestral(s, s_mid, eta)
        x2 = (sd / s) * x - math.expm1(lam + math.log(sd)) * x0
        x2, x0_2 = x0_at(x2 + su * noise(x2), s_mid)
        sd, su = _ancestral(s, s_next, eta)
        fac = 1 / (2 * r)
        x = (sd / s) * x - math.expm1(lam + math.log(sd)) * ((1 - fac) * x0 + fac * x0_2)
        return x + su * noise(x)
    return _k_loop(model, x, grid, step, callback)


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None,
                        eta: float = 1.0) -> Tensor:
    """DPM-Solver++(2M) SDE, midpoint form (k-diffusion `sample_dpmpp_2m_sde`, solver_type="midpoint"): the SDE
    step x ← (σ'/σ)e^{−ηh}x + (1 − e^{−h−ηh})x0 + ½(1 − e^{−h−ηh})(x0 − x0_prev)/r + σ'√(1 − e^{−2ηh})·n."""
    noise, prev = noise or torch.randn_like, {}

    def step(x, x0, i, s, s_next):
        if s_next == 0:
            x = x0
        else:
            h = math.log(s) - math.log(s_next)
            phi = -math.expm1(-h - eta * h)
            x = (s_next / s) * math.exp(-eta * h) * x + phi * x0
            if prev:
                x = x + 0.5 * phi * (h / prev["h"]) * (x0 - prev["x0"])
            if eta:
                x = x + noise(x) * (s_next * math.sqrt(-math.expm1(-2 * eta * h)))
            prev["h"] = h
        prev["x0"] = x0
        return x
    return _k_loop(model, x, grid, step, callback)


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None,
                        eta: float = 1.0) -> Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion `sample_dpmpp_3m_sde`): third-order multistep corrections from the last
    two x0 predictions (φ₂, φ₃ of h(1 + η)), second order on step 2, first on step 1."""
    noise, hist = noise or torch.randn_like, []   # [(x0, h)] of the previous steps, newest first

    def step(x, x0, i, s, s_next):
        if s_next == 0:
            return x0
        h = math.log(s) - math.log(s_next)
        h_eta = h * (eta + 1)
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        x = math.exp(-h_eta) * x - math.expm1(-h_eta) * x0
        if len(hist) >= 2:
            (x0_1, h_1), (x0_2, h_2) = hist[:2]
            r0, r1 = h_1 / h, h_2 / h
            d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
        elif hist:
            x = x + phi_2 * (x0 - hist[0][0]) / (hist[0][1] / h)
        if eta:
            x = x + noise(x) * (s_next * math.sqrt(-math.expm1(-2 * h * eta)))
        hist.insert(0, (x0, h))
        return x
    return _k_loop(model, x, grid, step, callback)


def _unipc_b(h: float, order: int) -> Tuple[List[float], float]:
    """UniPC's right-hand side b_k = k!·φ_{k+1}(h)/B(h) for k = 1…order, with B(h) = e^{−h} − 1 (the "bh2"
    variant; Zhao et al. 2023, Alg. 1 with data prediction); returns (b, B(h))."""
    hh, b_h = -h, math.expm1(-h)
    phi_k, fact, b = math.expm1(hh) / hh - 1, 1, []
    for k in range(1, order + 1):
        b.append(phi_k * fact / b_h)
        fact *= k + 1
        phi_k = phi_k / hh - 1 / fact
    return b, b_h


def _unipc_update(x: Tensor, x0s: List[Tensor], lams: List[float], lam_t: float, order: int,
                  x0_t: Optional[Tensor] = None) -> Tensor:
    """One UniP (predictor, x0_t None) or UniC (corrector, x0_t the new level's prediction) update in σ space, from
    the level of x0s[0] (λ = lams[0]; earlier levels follow) to λ_t, of the given order."""
    h = lam_t - lams[0]
    b, b_h = _unipc_b(h, order)
    x = math.exp(-h) * x - math.expm1(-h) * x0s[0]
    if x0_t is None and order == 1:
        return x
    rks = [(lams[k] - lams[0]) / h for k in range(1, order if x0_t is not None else 2)]
    d1s = [(x0s[k] - x0s[0]) / rk for k, rk in enumerate(rks, start=1)]
    if x0_t is None:                                # predictor of order 2: ρ = 1/2
        return x - b_h * 0.5 * d1s[0]
    if order == 1:
        rhos = [0.5]
    else:                                           # solve [[1, 1], [r, 1]]·ρ = b (order 2)
        rho_0 = (b[0] - b[1]) / (1 - rks[0])
        rhos = [rho_0, b[0] - rho_0]
    res = sum(rho * d for rho, d in zip(rhos[:-1], d1s)) + rhos[-1] * (x0_t - x0s[0])
    return x - b_h * res


@torch.no_grad()
def sample_unipc(model, x: Tensor, grid: Grid, noise: Optional[Noise] = None, callback=None) -> Tensor:
    """UniPC (Zhao et al. 2023), order 2, bh2, data prediction: diffusers' UniPCMultistepScheduler defaults
    (lower_order_final, corrector on every step). Each step first corrects the state it arrived at with the
    new x0 (UniC, no extra model call), then predicts the next level (UniP); first and last steps are order 1."""
    n = len(grid)
    x0s: List[Tensor] = []     # newest first
    lams: List[float] = []
    state = {}

    def step(x, x0, i, s, s_next):
        if x0s:
            x = _unipc_update(state["base"], x0s, lams, -math.log(s), state["order"], x0_t=x0)
        x0s.insert(0, x0)
        lams.insert(0, -math.log(s))
        del x0s[2:], lams[2:]
        order = min(2, n - i, i + 1)
        state.update(base=x, order=order)
        if s_next == 0:
            return x0
        return _unipc_update(x, x0s, lams, -math.log(s_next), order)
    return _k_loop(model, x, grid, step, callback)
