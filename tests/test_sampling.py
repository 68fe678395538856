"""Schedules, samplers and guidance closures on small deterministic toy denoisers (CPU, seconds).

Trajectory parity: each sampler against the diffusers scheduler configured to the same grid, driven with the same
toy model, initial noise and (for ancestral samplers) the same noise stream. `python tests/test_sampling.py` prints
the error table.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from ldmcli.errors import UsageError
from ldmcli.sampling.guidance import cfg_model, eps_model, predict_x0
from ldmcli.sampling.blending import KnownRegion
from ldmcli.sampling.noise import initial_noise, seeded_noise
from ldmcli.sampling.samplers import grid_for, sample, sample_plms
from ldmcli.sampling.schedules import (alphas_cumprod_from, ddim_timesteps, karras, linear_betas, sigma_to_t,
                                       t_to_alpha, trailing_timesteps, uniform)
from ldmcli.sampling.table import SAMPLERS

AC = alphas_cumprod_from(0.00085, 0.012)
SHAPE = (2, 4, 8, 8)
TOL = 1e-4


def toy(seed: int, dtype=torch.float32):
    """A deterministic denoiser: a fixed channel mix of x with a t-dependent scale, plus a mild nonlinearity."""
    g = torch.Generator().manual_seed(seed)
    w = (0.8 * torch.eye(4) + 0.15 * torch.randn(4, 4, generator=g)).to(dtype)

    def model(x, t):
        s = (0.7 + 0.3 * t.to(x.dtype) / 999).view(-1, 1, 1, 1)
        return s * torch.einsum("oc,bchw->bohw", w.to(x.device, x.dtype), x) + 0.1 * torch.tanh(x)
    return model


def x_T(dtype=torch.float32, seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def run(name, model, x, steps, karras=False, x0_known=None, mask=None, noise=None, **kw):
    """Sampler `name` on its default grid (Karras σs for karras=True), blending x0_known/mask when given."""
    if x0_known is not None or mask is not None:
        model = KnownRegion(model, x0_known, mask, noise)
    return sample(name, model, x, grid_for(name, AC, steps, karras=karras), noise=noise, **kw)


def gen_noise(seed):
    """`noise(x)` drawing from one generator exactly as diffusers' randn_tensor does for a CPU generator."""
    g = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)


# -- schedules -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("start,end,last", [(0.00085, 0.012, 0.0046601), (0.0015, 0.0195, 1.423e-4),
                                            (0.0015, 0.0205, 9.691e-5), (0.0015, 0.0155, 6.687e-4),
                                            (1e-4, 0.02, 7.334e-4)])
def test_schedule_values(start, end, last):
    ac = alphas_cumprod_from(start, end)
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    assert ac[-1].item() == pytest.approx(last, rel=1e-4)
    assert linear_betas(start, end)[0].item() == pytest.approx(start)   # squared linspace of the square roots
    assert linear_betas(start, end)[-1].item() == pytest.approx(end)


def test_sd_schedule_first_value():
    assert AC[0].item() == pytest.approx(0.99915, abs=1e-12)


def test_ddim_timesteps():
    assert ddim_timesteps(50).tolist() == list(range(1, 1000, 20))
    assert ddim_timesteps(50)[-1] == 981
    assert len(ddim_timesteps(30)) == 31 and len(ddim_timesteps(70)) == 72   # the reference's step counts
    # where the reference's last point is t = 1000 (it then indexes ᾱ[1000]) we drop that point
    assert ddim_timesteps(3).tolist() == [1, 334, 667]
    assert ddim_timesteps(1000).tolist() == list(range(1, 1000))
    for steps in range(1, 1001):
        ts = ddim_timesteps(steps)
        assert ts[0] == 1 and ts[-1] < 1000 and len(ts) >= min(steps, 999)


def test_sigma_t_round_trip():
    grid = karras(AC, 10)
    sigmas, ts = grid.sigmas, grid.t
    assert torch.allclose(t_to_alpha(ts, AC), 1 / (1 + sigmas[:-1] ** 2), rtol=1e-12)
    assert torch.allclose(sigma_to_t(sigmas[:-1], AC), ts)
    assert torch.equal(t_to_alpha(torch.arange(1000.0), AC), AC)   # exact at integer t
    assert ts[0] == pytest.approx(999) and ts[-1] == pytest.approx(0, abs=1e-9)


# -- parity with diffusers --------------------------------------------------------------------------------------
def _schedulers():
    d = pytest.importorskip("diffusers")
    base = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ddim = dict(base, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    ddpm = dict(base, clip_sample=False, variance_type="fixed_small", timestep_spacing="leading", steps_offset=1)
    dpm = dict(base, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
               final_sigmas_type="zero", timestep_spacing="trailing")
    # name: (our sampler, our kwargs, diffusers class, its config, steps, VP-space scheduler?, extra step kwargs)
    return {
        "ddim": ("ddim", {}, d.DDIMScheduler, ddim, 25, True, {}),
        "ddim_eta1": ("ddim", {"eta": 1.0}, d.DDIMScheduler, ddim, 25, True, {"eta": 1.0}),
        "ddpm_25": ("ddpm", {}, d.DDPMScheduler, ddpm, 25, True, {}),
        "ddpm_1000": ("ddpm", {}, d.DDPMScheduler, dict(ddpm, steps_offset=0), 1000, True, {}),
        "dpmpp_2m": ("dpmpp_2m", {}, d.DPMSolverMultistepScheduler, dpm, 25, True, {}),
        "dpmpp_2m_karras": ("dpmpp_2m", {"karras": True}, d.DPMSolverMultistepScheduler,
                            dict(dpm, use_karras_sigmas=True), 25, True, {}),
        "euler": ("euler", {}, d.EulerDiscreteScheduler, dict(base, timestep_spacing="trailing"), 25, False, {}),
        "euler_karras": ("euler", {"karras": True}, d.EulerDiscreteScheduler,
                         dict(base, timestep_spacing="linspace", use_karras_sigmas=True), 25, False, {}),
        "euler_a": ("euler_a", {}, d.EulerAncestralDiscreteScheduler, dict(base, timestep_spacing="trailing"), 25,
                    False, {}),
    }


def _diffusers_trajectory(sched, out_fn, x, steps, vp, step_kw, frac_t):
    """Drive a diffusers scheduler; returns the VP-scale latent after every step.

    k-style schedulers keep x_σ = x/√ᾱ: we start them at x_T·√(1+σ_max²) (the VP latent x_T; diffusers pipelines
    use init_noise_sigma, = σ_max for "trailing") and read x_σ/√(1+σ_next²) back. frac_t: call the model with the
    unrounded t of each σ (diffusers' DPM-Solver rounds t for Karras σs; ldmcli does not).
    """
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(1)
    sig = getattr(sched, "sigmas", None)
    x = x.clone() if vp else x * math.sqrt(1 + sig[0].item() ** 2)
    log_sigmas = np.log(((1 - sched.alphas_cumprod.numpy()) / sched.alphas_cumprod.numpy()) ** 0.5)
    traj = []
    for i, t in enumerate(sched.timesteps):
        tm = float(sched._sigma_to_t(np.array(sig[i].item()), log_sigmas)) if frac_t else float(t)
        inp = x if vp else sched.scale_model_input(x, t)
        out = out_fn(inp, torch.full((x.shape[0],), tm, dtype=x.dtype))
        gen = {"generator": g} if "generator" in inspect.signature(sched.step).parameters else {}   # not UniPC
        x = sched.step(out, t, x, **gen, **step_kw).prev_sample
        traj.append(x if vp or sig is None else x / math.sqrt(1 + sig[i + 1].item() ** 2))
    return traj


def _float64_schedule(sched):
    """Give a VP diffusers scheduler (DDIM, DDPM) our float64 ᾱ, so its arithmetic runs in double precision."""
    sched.alphas_cumprod = AC.clone()
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    sched.final_alpha_cumprod = AC[0].clone()   # DDIM with set_alpha_to_one=False
    return sched


def parity_errors(case: str, prediction: str, frac_t: bool = True, dtype=torch.float32):
    """(max |Δ| final, max |Δ| over all steps, max |x| final) between ldmcli and diffusers for one case.

    float32: diffusers as configured (its ᾱ is float32). float64 (VP schedulers only): both sides in double
    precision on the same ᾱ, which isolates the algorithm from rounding.
    """
    name, kw, cls, config, steps, vp, step_kw = _schedulers()[case]
    out_fn = toy(1, dtype) if prediction == "epsilon" else toy(2, dtype)
    ours = []
    model = out_fn if prediction == "epsilon" else eps_model(out_fn, "v", AC)
    final = run(name, model, x_T(dtype), steps, noise=gen_noise(1),
                callback=lambda i, n, x, x0: ours.append(x), **kw)
    sched = cls(**config, prediction_type=prediction)
    if dtype == torch.float64:
        sched = _float64_schedule(sched)
    theirs = _diffusers_trajectory(sched, out_fn, x_T(dtype), steps, vp, step_kw, frac_t and kw.get("karras", False))
    assert len(ours) == len(theirs)
    step_err = max((a - b).abs().max().item() for a, b in zip(ours, theirs))
    return (final - theirs[-1]).abs().max().item(), step_err, final.abs().max().item()


# ddpm_1000 is float64 only: over 1000 float32 steps diffusers' β_t = 1 − ᾱ_t/ᾱ_{t−1} (cancellation in float32)
# drifts to ~1.3e-4 from the float64 trajectory; in float64 the two agree to 1e-14.
CASES = ["ddim", "ddim_eta1", "ddpm_25", "dpmpp_2m", "dpmpp_2m_karras", "euler", "euler_karras", "euler_a"]
VP_CASES = ["ddim", "ddim_eta1", "ddpm_25", "ddpm_1000"]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("case", CASES)
def test_parity_with_diffusers(case, prediction):
    final_err, step_err, scale = parity_errors(case, prediction)
    assert final_err <= TOL and step_err <= TOL, (case, prediction, final_err, step_err, scale)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("case", VP_CASES)
def test_parity_with_diffusers_float64(case, prediction):
    """Same algorithm to rounding: 1e-9 (diffusers' DDPM adds 1e-10·noise on its last step, where we add none)."""
    final_err, step_err, scale = parity_errors(case, prediction, dtype=torch.float64)
    assert final_err <= 1e-9 and step_err <= 1e-9, (case, prediction, final_err, step_err, scale)


def test_trailing_timesteps_match_diffusers():
    for steps in (1, 7, 25, 48, 50, 333, 1000):   # 48: a round-half-to-even case
        ref = np.arange(1000, 0, -1000 / steps).round() - 1
        assert trailing_timesteps(steps).tolist() == ref[:steps].tolist()


# -- PLMS ---------------------------------------------------------------------------------------------------------
def plms_transcription(model, x, ac, steps):
    """MODELS.md §9.3 / the reference `PLMSSampler.plms_sampling`, transcribed loop for loop (η = 0)."""
    c = 1000 // steps
    ts = np.arange(0, 1000, c) + 1
    alphas, alphas_prev = ac[ts], torch.cat([ac[:1], ac[ts[:-1]]])
    time_range = np.flip(ts)
    old_eps = []
    for i, step in enumerate(time_range):
        index = len(ts) - i - 1
        t = torch.full((x.shape[0],), float(step), dtype=x.dtype)
        t_next = torch.full((x.shape[0],), float(time_range[min(i + 1, len(time_range) - 1)]), dtype=x.dtype)

        def x_prev_and_pred_x0(e_t, x=x, index=index):
            a_t, a_prev = alphas[index], alphas_prev[index]
            pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
            return a_prev.sqrt() * pred_x0 + (1. - a_prev).sqrt() * e_t, pred_x0

        e_t = model(x, t)
        if len(old_eps) == 0:
            x_prev, _ = x_prev_and_pred_x0(e_t)
            e_t_prime = (e_t + model(x_prev, t_next)) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, _ = x_prev_and_pred_x0(e_t_prime)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
    return x


@pytest.mark.parametrize("steps", [1, 2, 4, 5, 30, 50])   # the reference itself crashes for S=3 (t=1000)
def test_plms_matches_transcription(steps):
    model = toy(3, torch.float64)
    ours = run("plms", model, x_T(torch.float64), steps)
    ref = plms_transcription(model, x_T(torch.float64), AC, steps)
    assert (ours - ref).abs().max().item() < 1e-10


def test_plms_v_model_equals_equivalent_eps_model():
    eps_toy = toy(4, torch.float64)

    def v_toy(x, t):   # the v-model whose ε is eps_toy: v = (ε − √(1−ᾱ)·x)/√ᾱ at integer t
        a = AC[t.long()].view(-1, 1, 1, 1)
        return (eps_toy(x, t) - (1 - a).sqrt() * x) / a.sqrt()
    on_eps = sample_plms(eps_toy, x_T(torch.float64), uniform(AC, 20))
    on_v = sample_plms(eps_model(v_toy, "v", AC), x_T(torch.float64), uniform(AC, 20))
    assert (on_eps - on_v).abs().max().item() < 1e-9
    reference_bug = sample_plms(v_toy, x_T(torch.float64), uniform(AC, 20))   # v fed as ε, as the reference PLMS does
    assert (on_eps - reference_bug).abs().max().item() > 0.1


# -- guidance -------------------------------------------------------------------------------------------------
def _cond_apply(calls):
    base = toy(5, torch.float64)

    def apply(x, t, c):
        calls.append(x.shape[0])
        if isinstance(c, dict):
            h = torch.cat([x] + c["c_concat"], dim=1)[:, :4] + c["c_crossattn"][0].mean((1, 2)).view(-1, 1, 1, 1)
            return base(h, t) * (1 + c["y"].view(-1, 1, 1, 1))
        return base(x, t) + c.view(-1, 1, 1, 1)
    return apply


def test_cfg_batched_equals_two_forwards_tensor_cond():
    calls = []
    apply = _cond_apply(calls)
    x, t = x_T(torch.float64), torch.full((2,), 500.0, dtype=torch.float64)
    cond, uncond = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    out = cfg_model(apply, cond, uncond, 7.5)(x, t)
    assert calls == [4]
    u, c = apply(x, t, uncond), apply(x, t, cond)
    assert torch.allclose(out, u + 7.5 * (c - u), atol=1e-12)


def test_cfg_dict_conditions():
    calls = []
    apply = _cond_apply(calls)
    x, t = x_T(torch.float64), torch.full((2,), 250.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(9)

    def cond_dict():
        return {"c_concat": [torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)],
                "c_crossattn": [torch.randn(2, 77, 16, generator=g, dtype=torch.float64)],
                "y": torch.randn(2, generator=g, dtype=torch.float64)}
    cond, uncond = cond_dict(), cond_dict()
    out = cfg_model(apply, cond, uncond, 3.0)(x, t)
    u, c = apply(x, t, uncond), apply(x, t, cond)
    assert calls[0] == 4
    assert torch.allclose(out, u + 3.0 * (c - u), atol=1e-12)
    with pytest.raises(ValueError):
        cfg_model(apply, cond, {"c_crossattn": uncond["c_crossattn"]}, 3.0)


@pytest.mark.parametrize("scale,uncond", [(1.0, torch.zeros(2)), (5.0, None)])
def test_cfg_single_forward(scale, uncond):
    calls = []
    apply = _cond_apply(calls)
    x, t, cond = x_T(torch.float64), torch.full((2,), 10.0, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    out = cfg_model(apply, cond, uncond, scale)(x, t)
    assert calls == [2]
    assert torch.equal(out, apply(x, t, cond))


def test_eps_model_and_predict_x0_at_fractional_t():
    v_toy = toy(6, torch.float64)
    x, t = x_T(torch.float64), torch.tensor([123.4, 876.5], dtype=torch.float64)
    a = t_to_alpha(t, AC).view(-1, 1, 1, 1)
    eps = eps_model(v_toy, "v", AC)(x, t)
    assert torch.allclose(eps, a.sqrt() * v_toy(x, t) + (1 - a).sqrt() * x)
    # x0 from ε equals the v-form x0 = √ᾱ·x − √(1−ᾱ)·v
    assert torch.allclose(predict_x0(eps, x, t, AC), a.sqrt() * x - (1 - a).sqrt() * v_toy(x, t), atol=1e-12)
    assert eps_model(v_toy, "eps", AC) is v_toy
    with pytest.raises(ValueError):
        eps_model(v_toy, "x0", AC)


# -- seeds, dispatch, inpainting -------------------------------------------------------------------------------
def test_initial_noise_independent_of_batch():
    seeds = [11, 12, 13, 14]
    batch = initial_noise((4, 4, 8, 8), seeds, device="cpu")
    for k, s in enumerate(seeds):
        assert torch.equal(batch[k], initial_noise((1, 4, 8, 8), [s], device="cpu")[0])
    assert not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("name", ["ddpm", "euler_a", "ddim"])
def test_seeded_sampling_independent_of_batch(name):
    seeds, model = [21, 22, 23, 24], toy(7)
    kw = {"eta": 1.0} if name == "ddim" else {}

    def batch_of(ss):
        x = initial_noise((len(ss), 4, 8, 8), ss)
        return run(name, model, x, 10, noise=seeded_noise([s + 1000 for s in ss]), **kw)
    batch = batch_of(seeds)
    for k, s in enumerate(seeds):
        assert torch.allclose(batch[k], batch_of([s])[0], atol=1e-6)


def test_dispatch_errors():
    model = toy(0)
    grid = uniform(AC, 10)
    with pytest.raises(UsageError, match="unknown sampler 'lmz'; choose one of ddim, plms, ddpm, dpmpp_2m, euler"):
        sample("lmz", model, x_T(), grid)
    with pytest.raises(UsageError, match="PLMS is deterministic: eta must be 0"):
        sample("plms", model, x_T(), grid, eta=0.5)
    with pytest.raises(UsageError, match="--karras asks for the karras schedule, not 'exponential'"):
        grid_for("ddim", AC, 10, karras=True, schedule="exponential")
    with pytest.raises(UsageError, match="latent inpainting needs both x0_known and mask"):
        run("ddim", model, x_T(), 10, mask=torch.ones(SHAPE))


@pytest.mark.parametrize("name", SAMPLERS)
def test_inpaint_full_mask_returns_known(name):
    known = x_T(seed=5)
    out = run(name, toy(8), x_T(), 10, x0_known=known, mask=torch.ones(SHAPE))
    assert torch.equal(out, known)


@pytest.mark.parametrize("name", SAMPLERS)
def test_inpaint_blends_before_each_step(name):
    """The model's first input, in the known region, is q_sample(x0_known, t) with the sampler's noise."""
    known, fixed = x_T(seed=5), x_T(seed=6)
    mask = torch.zeros(SHAPE)
    mask[..., :4] = 1
    seen = []

    def model(x, t):
        seen.append((x.clone(), t.clone()))
        return toy(8)(x, t)
    out = run(name, model, x_T(), 10, x0_known=known, mask=mask, noise=lambda x: fixed)
    x_in, t = seen[0]
    a = t_to_alpha(t, AC).view(-1, 1, 1, 1).float()
    assert torch.allclose(x_in[..., :4], (a.sqrt() * known + (1 - a).sqrt() * fixed)[..., :4], atol=1e-5)
    assert torch.equal(out[..., :4], known[..., :4])
    assert not torch.allclose(out[..., 4:], known[..., 4:])


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_runs_and_calls_back(name):
    steps_seen = []
    out = run(name, toy(9), x_T(), 10, callback=lambda i, n, x, x0: steps_seen.append((i, n)))
    assert steps_seen == [(i, 10) for i in range(10)]
    assert out.shape == SHAPE and torch.isfinite(out).all()


@pytest.mark.gpu
def test_cuda_noise_identity_and_half_precision_sampling():
    """noise_device="cpu" gives the CPU x_T on CUDA; every sampler runs on fp16 CUDA latents (t stays float32)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    seeds = [1, 2]
    x = initial_noise(SHAPE, seeds, device="cuda", noise_device="cpu")
    assert x.device.type == "cuda" and torch.equal(x.cpu(), initial_noise(SHAPE, seeds, device="cpu"))
    for name in SAMPLERS:
        ref = run(name, toy(10), x.cpu(), 10, noise=seeded_noise(seeds, noise_device="cpu"))
        out = run(name, toy(10), x.half(), 10, noise=seeded_noise(seeds, device="cuda", noise_device="cpu"))
        assert out.dtype == torch.float16 and torch.isfinite(out).all()
        assert (out.float().cpu() - ref).abs().max().item() < 0.05, name


if __name__ == "__main__":   # the parity table for the report
    for dtype, cases in ((torch.float32, CASES + ["ddpm_1000"]), (torch.float64, VP_CASES)):
        for pred in ("epsilon", "v_prediction"):
            for case in cases:
                f, s, m = parity_errors(case, pred, dtype=dtype)
                print(f"{case:16s} {pred:13s} {str(dtype)[6:]}  final {f:.2e}  all steps {s:.2e}  (max |x| {m:.2f})")
    for pred in ("epsilon", "v_prediction"):
        f, s, m = parity_errors("dpmpp_2m_karras", pred, frac_t=False)
        print(f"dpmpp_2m_karras  {pred:13s} with diffusers' rounded t: final {f:.2e}  all steps {s:.2e}")
