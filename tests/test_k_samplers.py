"""The k-diffusion sampler set (Heun, LMS, DPM2, DPM2 a, DPM++ 2S a/SDE/2M SDE/3M SDE) against k-diffusion's own
functions, and UniPC against diffusers' UniPCMultistepScheduler: same toy ε- or v-model, same initial noise, the
same noise stream (passed to k-diffusion as its `noise_sampler`), on the default and Karras grids (CPU, seconds).
`python tests/test_k_samplers.py` prints the error table.

k-diffusion is a test-only dependency (`pip install k-diffusion torchsde trampoline torchdiffeq scipy --no-deps`);
its package __init__ pulls training modules (torchvision, scikit-image, …), so only `k_diffusion/sampling.py` is
loaded, under a stub package whose `utils.append_dims` is the one helper it uses.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import types

import numpy as np
import pytest
import torch

from ldmcli.sampling.guidance import eps_model
from ldmcli.sampling.samplers import grid_for, sample
from ldmcli.sampling.schedules import SCHEDULES, sigmas_from
from test_sampling import AC, SHAPE, TOL, _diffusers_trajectory, gen_noise, toy, x_T

# our name: (k-diffusion function, draws noise?)
K_FUNCTIONS = {"euler": "sample_euler", "euler_a": "sample_euler_ancestral", "heun": "sample_heun",
               "lms": "sample_lms", "dpm2": "sample_dpm_2", "dpm2_a": "sample_dpm_2_ancestral",
               "dpmpp_2s_a": "sample_dpmpp_2s_ancestral", "dpmpp_sde": "sample_dpmpp_sde",
               "dpmpp_2m": "sample_dpmpp_2m", "dpmpp_2m_sde": "sample_dpmpp_2m_sde",
               "dpmpp_3m_sde": "sample_dpmpp_3m_sde"}
STEPS = 12


def k_sampling():
    """k_diffusion.sampling, loaded without the package __init__; sys.modules is left as it was."""
    for dep in ("scipy", "torchsde", "torchdiffeq", "tqdm"):
        pytest.importorskip(dep)
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        pytest.skip("k-diffusion is not installed")
    pkg, utils = types.ModuleType("k_diffusion"), types.ModuleType("k_diffusion.utils")
    pkg.__path__ = list(spec.submodule_search_locations)
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    saved = {k: sys.modules.get(k) for k in ("k_diffusion", "k_diffusion.utils", "k_diffusion.sampling")}
    sys.modules.update({"k_diffusion": pkg, "k_diffusion.utils": utils})
    try:
        sys.modules.pop("k_diffusion.sampling", None)
        return importlib.import_module("k_diffusion.sampling")
    finally:
        for k, v in saved.items():
            sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)


def k_denoiser(out_fn, prediction):
    """D(x, σ) as k-diffusion's DiscreteEpsDDPMDenoiser/DiscreteVDDPMDenoiser define it, written independently of
    ldmcli: c_in = 1/√(σ²+1), t by np.interp of log σ over the training log σs."""
    log_sigmas = np.log(sigmas_from(AC).numpy())

    def denoise(x, sigma):
        s = sigma[0].item()
        t = torch.full((x.shape[0],), float(np.interp(np.log(s), log_sigmas, np.arange(1000))), dtype=x.dtype)
        out = out_fn(x / (s ** 2 + 1) ** 0.5, t)
        if prediction == "epsilon":
            return x - s * out
        return x / (s ** 2 + 1) - out * s / (s ** 2 + 1) ** 0.5
    return denoise


def _ours(name, prediction, schedule):
    out_fn = toy(1) if prediction == "epsilon" else toy(2)
    model = out_fn if prediction == "epsilon" else eps_model(out_fn, "v", AC)
    grid = grid_for(name, AC, STEPS, schedule=schedule)
    x0s = []
    final = sample(name, model, x_T(), grid, noise=gen_noise(1), callback=lambda i, n, x, x0: x0s.append(x0))
    return out_fn, grid, final, x0s


def k_errors(name, prediction, schedule=None):
    """(max |Δ| of the final latent, max |Δ| of the per-step x0 predictions) against k-diffusion."""
    out_fn, grid, final, ours = _ours(name, prediction, schedule)
    fn = getattr(k_sampling(), K_FUNCTIONS[name])
    sigmas = grid.sigmas.to(torch.float32)
    g = gen_noise(1)
    kw = {"noise_sampler": lambda s, s_next: g(torch.empty(SHAPE))} if "noise_sampler" in inspect.signature(fn).parameters else {}
    theirs = []
    x = x_T() * math.sqrt(1 + grid.sigmas[0].item() ** 2)
    k_final = fn(k_denoiser(out_fn, prediction), x, sigmas, disable=True,
                 callback=lambda d: theirs.append(d["denoised"]), **kw)
    assert len(ours) == len(theirs)
    return (final - k_final).abs().max().item(), max((a - b).abs().max().item() for a, b in zip(ours, theirs))


def unipc_errors(prediction, schedule=None):
    """(final, per-step) max |Δ| of the VP-scale latents against diffusers' UniPCMultistepScheduler."""
    d = pytest.importorskip("diffusers")
    out_fn = toy(1) if prediction == "epsilon" else toy(2)
    model = out_fn if prediction == "epsilon" else eps_model(out_fn, "v", AC)
    ours = []
    final = sample("unipc", model, x_T(), grid_for("unipc", AC, STEPS, schedule=schedule),
                   callback=lambda i, n, x, x0: ours.append(x))
    config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  final_sigmas_type="zero", timestep_spacing="trailing", prediction_type=prediction,
                  use_karras_sigmas=schedule == "karras")
    theirs = _diffusers_trajectory(d.UniPCMultistepScheduler(**config), out_fn, x_T(), STEPS, True, {},
                                   schedule == "karras")
    return (final - theirs[-1]).abs().max().item(), max((a - b).abs().max().item() for a, b in zip(ours, theirs))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", [None, "karras", "exponential"])
@pytest.mark.parametrize("name", list(K_FUNCTIONS))
def test_matches_k_diffusion(name, schedule, prediction):
    final_err, step_err = k_errors(name, prediction, schedule)
    assert final_err <= TOL and step_err <= TOL, (name, schedule, prediction, final_err, step_err)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", [None, "karras"])
def test_unipc_matches_diffusers(schedule, prediction):
    final_err, step_err = unipc_errors(prediction, schedule)
    assert final_err <= TOL and step_err <= TOL, (schedule, prediction, final_err, step_err)


@pytest.mark.parametrize("ours,theirs", [("karras", "get_sigmas_karras"), ("exponential", "get_sigmas_exponential")])
def test_sigma_schedules_match_k_diffusion(ours, theirs):
    all_sigmas = sigmas_from(AC)
    ref = getattr(k_sampling(), theirs)(STEPS, all_sigmas[0].item(), all_sigmas[-1].item())
    assert torch.allclose(SCHEDULES[ours](AC, STEPS).sigmas.float(), ref, rtol=1e-5, atol=0)


def test_a1111_names_schedules_and_metadata():
    from ldmcli.errors import UsageError
    from ldmcli.io.png import a1111_parameters
    from tiny import SD1_TINY
    from ldmcli.sampling.settings import SamplerSettings
    from ldmcli.sampling.table import parse_sampler
    assert parse_sampler("DPM++ 2M Karras") == ("dpmpp_2m", "karras")
    assert parse_sampler("euler A") == ("euler_a", None)
    assert parse_sampler("dpm++  sde karras") == ("dpmpp_sde", "karras")
    assert parse_sampler("DPM++ 2M SDE Exponential") == ("dpmpp_2m_sde", "exponential")
    with pytest.raises(UsageError, match=r"unknown sampler 'DPM\+\+ 9M'"):
        parse_sampler("DPM++ 9M")
    s = SamplerSettings(sampler="DPM++ SDE Karras").resolved(SD1_TINY)
    assert (s.sampler, s.schedule, s.karras) == ("dpmpp_sde", "karras", True)
    assert SamplerSettings(sampler="euler", karras=True).resolved(SD1_TINY).schedule == "karras"
    assert SamplerSettings(sampler="unipc").resolved(SD1_TINY).schedule is None
    with pytest.raises(UsageError, match="conflicting schedules: exponential, karras"):
        SamplerSettings(sampler="Euler Karras", schedule="exponential").resolved(SD1_TINY)
    record = {"prompt": "p", "negative_prompt": "", "steps": 20, "scale": 7.0, "seed": 1, "width": 64,
              "height": 64, "model_hash": "", "eta": 0.0}
    text = a1111_parameters({**record, "sampler": "dpmpp_2m_sde", "karras": False, "schedule": "exponential"})
    assert "Sampler: DPM++ 2M SDE, Schedule type: Exponential," in text
    text = a1111_parameters({**record, "sampler": "dpmpp_2m", "karras": True, "schedule": "karras"})
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in text
    assert "Schedule type" not in a1111_parameters({**record, "sampler": "heun", "karras": False, "schedule": None})


def test_new_schedules():
    from ldmcli.sampling.schedules import normal, sgm_uniform, t_to_sigma
    grid = sgm_uniform(AC, 4)
    assert grid.t.tolist() == [999.0, 749.25, 499.5, 249.75] and grid.sigmas[-1] == 0
    assert torch.allclose(grid.sigmas[:-1], t_to_sigma(grid.t, AC))
    assert normal(AC, 4).t.tolist() == [999.0, 666.0, 333.0, 0.0]


if __name__ == "__main__":
    for name in K_FUNCTIONS:
        for schedule in (None, "karras", "exponential"):
            for prediction in ("epsilon", "v_prediction"):
                print(f"{name:14s} {schedule or 'default':12s} {prediction:13s} %.2e %.2e" %
                      k_errors(name, prediction, schedule))
    for schedule in (None, "karras"):
        for prediction in ("epsilon", "v_prediction"):
            print(f"{'unipc':14s} {schedule or 'default':12s} {prediction:13s} %.2e %.2e" %
                  unipc_errors(prediction, schedule))
