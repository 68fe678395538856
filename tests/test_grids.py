"""Grids and the hooks around the samplers: schedules as functions, the partial start, the sampler table, and the
known-region hook of latent inpainting against the loop it replaced (CPU, seconds)."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from ldmcli.errors import UsageError
from ldmcli.sampling.blending import KnownRegion
from ldmcli.sampling.noise import seeded_noise
from ldmcli.sampling.samplers import grid_for, sample, sample_ddim, sample_euler_ancestral
from ldmcli.sampling.schedules import SCHEDULES, Grid, ddpm, karras, sigmas_from, trailing, uniform
from ldmcli.sampling.table import SAMPLERS
from test_sampling import AC, SHAPE, toy, x_T


# -- schedules ------------------------------------------------------------------------------------------------------
def _consistent(grid: Grid, steps: int) -> None:
    assert len(grid) == steps and grid.t.shape == (steps,) and grid.alphas.shape == grid.sigmas.shape == (steps + 1,)
    assert grid.t.dtype == grid.alphas.dtype == grid.sigmas.dtype == torch.float64
    assert torch.allclose(grid.sigmas, ((1 - grid.alphas) / grid.alphas).sqrt(), rtol=1e-12, atol=0)
    assert (grid.t.diff() < 0).all() and (grid.alphas.diff() > 0).all()   # noisiest first


def test_uniform_is_the_reference_ddim_grid():
    grid = uniform(AC, 50)
    _consistent(grid, 50)
    assert grid.t.tolist() == list(range(981, 0, -20))
    assert torch.equal(grid.alphas[:-1], AC[grid.t.long()])
    assert grid.alphas[-1] == AC[0]                          # the last step goes to ᾱ[0], not to 1


def test_ddpm_grid_full_and_respaced():
    full = ddpm(AC, None)
    _consistent(full, 1000)
    assert full.t[0] == 999 and full.t[-1] == 0 and torch.equal(full.alphas[:-1], AC.flip(0))
    assert full.alphas[-1] == 1 and full.sigmas[-1] == 0     # a clean sample at the end
    assert len(ddpm(AC, 1000)) == len(ddpm(AC, 5000)) == 1000
    respaced = ddpm(AC, 25)
    _consistent(respaced, 25)
    assert torch.equal(respaced.t, uniform(AC, 25).t) and respaced.alphas[-1] == 1


def test_trailing_grid():
    grid = trailing(AC, 25)
    _consistent(grid, 25)
    assert grid.t[0] == 999 and grid.t[-1] == 39
    assert torch.equal(grid.sigmas[:-1], sigmas_from(AC)[grid.t.long()]) and grid.sigmas[-1] == 0


def test_karras_grid():
    grid, all_sigmas = karras(AC, 10), sigmas_from(AC)
    _consistent(grid, 10)
    assert grid.sigmas[0].item() == pytest.approx(all_sigmas[-1].item(), rel=1e-12)   # σ_max = σ(T−1)
    assert grid.sigmas[-2].item() == pytest.approx(all_sigmas[0].item(), rel=1e-12)   # σ_min = σ(0)
    assert grid.sigmas[-1] == 0 and grid.alphas[-1] == 1
    assert grid.t[0].item() == pytest.approx(999) and grid.t[-1].item() == pytest.approx(0, abs=1e-9)
    assert torch.equal(grid.alphas, 1 / (1 + grid.sigmas ** 2))   # computed from σ, its own parametrisation


def test_schedule_table_and_grid_checks():
    assert set(SCHEDULES) == {"uniform", "ddpm", "trailing", "karras", "exponential", "normal", "sgm_uniform"}
    assert all(spec.schedule in SCHEDULES for spec in SAMPLERS.values())
    assert all(callable(spec.sampler()) for spec in SAMPLERS.values())
    with pytest.raises(ValueError, match="a grid of 2 steps needs 3 alphas and sigmas"):
        Grid(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), torch.ones(3))
    with pytest.raises(UsageError, match="unknown schedule 'cosine'; choose one of uniform, ddpm, trailing, karras, exponential"):
        grid_for("ddim", AC, 10, schedule="cosine")
    assert grid_for("euler", AC, 10, karras=True).t[0].item() == pytest.approx(999)
    assert torch.equal(grid_for("ddim", AC, 10, schedule="uniform").t, uniform(AC, 10).t)
    # A1111's "Uniform" for the σ-space samplers: t = linspace(999, 0, n), then σ = 0
    assert grid_for("euler", AC, 10, schedule="uniform").t.tolist() == torch.linspace(999, 0, 10).double().tolist()


def test_table_and_settings_import_no_torch():
    code = ("import sys, ldmcli.sampling.table, ldmcli.sampling.settings; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("schedule", ["uniform", "trailing", "karras", "exponential", "normal", "sgm_uniform"])
def test_any_sampler_runs_on_any_schedule(name, schedule):
    grid = SCHEDULES[schedule](AC, 6)
    out = sample(name, toy(1), x_T(), grid, noise=seeded_noise([1, 2]))
    assert out.shape == SHAPE and torch.isfinite(out).all()


# -- partial start --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 7, 10, 50])
def test_tail_keeps_the_last_floor_strength_steps(steps):
    """As diffusers' img2img (`int(num_inference_steps * strength)`) and A1111 count them."""
    grid = uniform(AC, steps)
    n = len(grid)
    for strength in (0.01, 0.25, 0.3, 0.5, 0.75, 0.999, 1.0):
        tail = grid.tail(strength)
        m = math.floor(round(strength * n, 9))
        assert len(tail) == m == int(strength * n + 1e-9)
        assert torch.equal(tail.t, grid.t[n - m:]) and torch.equal(tail.alphas, grid.alphas[n - m:])
        assert torch.equal(tail.sigmas, grid.sigmas[n - m:])
    assert len(uniform(AC, 10).tail(0.3)) == 3                  # 0.3·10 is 3.0000000000000004 in floating point
    assert torch.equal(grid.tail(1.0).t, grid.t)
    assert len(grid.tail(0)) == 0 and len(uniform(AC, 10).tail(0.75)) == 7
    for bad in (-0.5, 1.5):
        with pytest.raises(ValueError, match="strength must be in"):
            grid.tail(bad)


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_partial_start_continues_a_full_run(name):
    """Restarting on the tail from the full run's state at that level reproduces the rest of the full run."""
    model, grid = toy(2, torch.float64), grid_for(name, AC, 10)
    states = []
    full = sample(name, model, x_T(torch.float64), grid, callback=lambda i, n, x, x0: states.append(x))
    tail = grid.tail(0.4)                                        # the last 4 steps start from the state after step 6
    rest = sample(name, model, states[len(grid) - len(tail) - 1], tail)
    torch.testing.assert_close(rest, full, rtol=0, atol=1e-12)


# -- the known-region hook against the loops it replaced ----------------------------------------------------------
def _blend(x, known, mask, scale, sigma, noise):
    return mask * (scale * known + sigma * noise(x)) + (1 - mask) * x


def ddim_with_blending(model, x, ac, steps, eta, noise, known, mask):
    """The DDIM loop as it was with the blend inside it (reference DDIM `x0`/`mask`), transcribed."""
    from ldmcli.sampling.schedules import ddim_timesteps
    ts = ddim_timesteps(steps, len(ac))
    a, a_prev = ac[ts], torch.cat([ac[:1], ac[ts[:-1]]])
    for i in reversed(range(len(ts))):
        at, ap = a[i].item(), a_prev[i].item()
        sigma = eta * math.sqrt((1 - ap) / (1 - at) * (1 - at / ap))
        x = _blend(x, known, mask, math.sqrt(at), math.sqrt(1 - at), noise)
        eps = model(x, torch.full((x.shape[0],), float(ts[i]), dtype=torch.float64 if x.dtype == torch.float64
                                  else torch.float32))
        x0 = (x - math.sqrt(1 - at) * eps) / math.sqrt(at)
        x = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sigma ** 2) * eps
        if sigma > 0:
            x = x + sigma * noise(x)
    return mask * known + (1 - mask) * x


def euler_a_with_blending(model, x, grid_sigmas, ts, noise, known, mask):
    """Ancestral Euler in σ space with the blend inside its loop (the σ-space form: scale 1, std σ), transcribed."""
    sigmas, ts = grid_sigmas.tolist(), ts.tolist()
    x = x * math.sqrt(1 + sigmas[0] ** 2)
    for i in range(len(ts)):
        s, s_next = sigmas[i], sigmas[i + 1]
        x = _blend(x, known, mask, 1.0, s, noise)
        t = torch.full((x.shape[0],), ts[i], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        x0 = x - s * model(x / math.sqrt(1 + s ** 2), t)
        s_up = min(s_next, math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
        x = x + (x - x0) / s * (math.sqrt(s_next ** 2 - s_up ** 2) - s)
        if s_next > 0:
            x = x + s_up * noise(x)
    return mask * known + (1 - mask) * x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_known_region_hook_equals_the_blending_loops(dtype):
    known, mask = x_T(dtype, seed=5), torch.zeros(SHAPE, dtype=dtype)
    mask[..., :4] = 1
    model = toy(3, dtype)
    ref = ddim_with_blending(model, x_T(dtype), AC, 10, 1.0, seeded_noise([3, 4], dtype=dtype), known, mask)
    noise = seeded_noise([3, 4], dtype=dtype)
    ours = sample_ddim(KnownRegion(model, known, mask, noise), x_T(dtype), uniform(AC, 10), noise=noise, eta=1.0)
    assert torch.equal(ours, ref)
    grid = karras(AC, 10)
    ref = euler_a_with_blending(model, x_T(dtype), grid.sigmas, grid.t, seeded_noise([3, 4], dtype=dtype), known,
                                mask)
    noise = seeded_noise([3, 4], dtype=dtype)
    ours = sample_euler_ancestral(KnownRegion(model, known, mask, noise), x_T(dtype), grid, noise=noise)
    assert torch.equal(ours, ref)


def test_final_projection_draws_no_noise():
    known, mask = x_T(seed=5), torch.ones(SHAPE)
    region = KnownRegion(toy(0), known, mask, noise=lambda x: pytest.fail("noise drawn"))
    assert torch.equal(region.project(x_T(), 1.0, 0.0), known)


def test_warnings_are_kept_beside_the_model():
    import logging

    from ldmcli.sampling import pipeline

    class Model:
        pass
    model, records = Model(), []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("ldmcli").addHandler(handler)
    try:
        pipeline._warn_once(model, "k", "once")
        pipeline._warn_once(model, "k", "once")
        pipeline._warn_once(Model(), "k", "once")
    finally:
        logging.getLogger("ldmcli").removeHandler(handler)
    assert [r.getMessage() for r in records] == ["once", "once"] and vars(model) == {}


def test_settings_resolve_once_per_model_config():
    """The runner resolves a job's settings once; the task and the pipeline get the same object back, and
    another model's config resolves afresh."""
    from ldmcli.loading.presets import preset
    from ldmcli.sampling.settings import SamplerSettings
    sd1, ldm = preset("sd1"), preset("ldm-bsr-sr")
    s = SamplerSettings(sampler="ddim").resolved(sd1)
    assert s.resolved(sd1) is s
    assert (s.steps, s.guidance_scale) == (sd1.default_steps, sd1.default_guidance)
    again = SamplerSettings(sampler="ddim").resolved(ldm)
    assert again.eta == ldm.default_eta and again.resolved(ldm) is again and again.resolved(sd1) is not again
