"""img2img: partial-start trajectories against diffusers' img2img timestep logic, the encoding, the size rule, the
strength ends, and the CLI (metadata, replay, JSONL)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.app import app
from ldmcli.loading.checkpoint import load_model
from ldmcli.sampling.noise import initial_noise, side_generator
from ldmcli.sampling.pipeline import decode, sample_latents
from ldmcli.sampling.settings import SamplerSettings
from tiny import SD1_TINY, SD2_TINY, compvis_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4   # tests/test_pipeline_parity.py's


def ldm(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _picture(w=16, h=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())


def _diffusers_img2img(unet, sched, x0, noise, context, uncond, scale, steps, strength):
    """diffusers' StableDiffusionImg2ImgPipeline loop by hand: get_timesteps, set_begin_index, add_noise at
    timesteps[t_start], then the guided scheduler loop."""
    sched.set_timesteps(steps)
    t_start = steps - min(int(steps * strength), steps)
    timesteps = sched.timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    x = sched.add_noise(x0, noise, timesteps[:1].repeat(x0.shape[0]))
    for t in timesteps:
        out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, context])).sample
        out_u, out_c = out.chunk(2)
        x = sched.step(out_u + scale * (out_c - out_u), t, x).prev_sample
    return x


@pytest.mark.parametrize("cfg", [SD1_TINY, SD2_TINY], ids=["sd1-eps", "sd2-v"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_img2img_trajectory_matches_diffusers(tiny_ckpt, cfg, sampler):
    pytest.importorskip("diffusers")
    from test_pipeline_parity import _oracle, _scheduler
    model, _ = load_model(tiny_ckpt(cfg, seed=4))
    unet, vae = _oracle(cfg, compvis_state_dict(model))
    steps, scale, seeds, strength = 5, 7.5, [21, 22], 0.6   # int(5·0.6) = 3 steps, as diffusers counts them
    with torch.inference_mode():
        image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        gens = [side_generator(s, 7) for s in seeds]
        ours_x0 = torch.cat([model.encode_first_stage(image[k:k + 1], generator=gens[k]) for k in range(2)])
        gens = [side_generator(s, 7) for s in seeds]
        theirs_x0 = torch.cat([vae.encode(image[k:k + 1]).latent_dist.sample(gens[k]) for k in range(2)])
        theirs_x0 = theirs_x0 * cfg.scale_factor
        assert (ours_x0 - theirs_x0).abs().max() <= TOL   # the seeded posterior sample is diffusers' too
        context = model.get_learned_conditioning(["a red circle"] * 2)
        uncond = model.get_learned_conditioning([""] * 2)
        settings = SamplerSettings(sampler=sampler, steps=steps, guidance_scale=scale, eta=0.0)
        ours = sample_latents(model, {"c_crossattn": [context]}, {"c_crossattn": [uncond]}, (4, 8, 8), seeds,
                              settings, start=(ours_x0, strength))
        noise = initial_noise((2, 4, 8, 8), seeds)
        theirs = _diffusers_img2img(unet, _scheduler(sampler, cfg.parameterization), theirs_x0, noise, context,
                                    uncond, scale, steps, strength)
    err = (ours - theirs).abs().max().item()
    print(f"{cfg.name} {sampler}: latent {err:.2e}")
    assert ours.abs().mean() > 0.1 and err <= TOL, err


def test_strength_ends_and_step_count(tiny_ckpt):
    from ldmcli.tasks.img2img import encode, img2img
    model, _ = load_model(tiny_ckpt(SD1_TINY, seed=4))
    pic, seeds = _picture(), [3]
    settings = SamplerSettings(sampler="euler", steps=4, guidance_scale=3.0)
    back = img2img(model, pic, "x", strength=0, seeds=seeds, settings=settings)[0]
    assert back.tobytes() == decode(model, encode(model, pic, seeds))[0].tobytes()
    for strength, n in ((1.0, 4), (0.5, 2), (0.75, 3), (0.1, 0)):   # int(steps·strength), as diffusers and A1111
        calls = []
        out = img2img(model, pic, "x", strength=strength, seeds=seeds, settings=settings,
                      callback=lambda *a: calls.append(1))
        assert len(calls) == n, (strength, calls)
    assert out[0].tobytes() == back.tobytes()                 # no step to run: the input, encoded and decoded


def test_size_rule_resizes_to_the_models_multiple(tiny_ckpt):
    from ldmcli.errors import UsageError
    from ldmcli.tasks.img2img import img2img, target_size
    model, _ = load_model(tiny_ckpt(SD1_TINY, seed=4))
    assert target_size(model, _picture(30, 19)) == (28, 16)    # tiny model: multiple 4 (f 2 x UNet 2)
    assert target_size(model, _picture(30, 19), 8, 12) == (12, 8)
    with pytest.raises(UsageError):
        target_size(model, _picture(3, 40))
    out = img2img(model, _picture(30, 19), "x", strength=0.5, seeds=[1, 2],
                  settings=SamplerSettings(sampler="ddim", steps=2))
    assert [o.size for o in out] == [(28, 16)] * 2 and out[0].tobytes() != out[1].tobytes()


def test_cli_img2img_metadata_replay_and_jsonl(tmp_path, sd1_file):
    src = tmp_path / "in.png"
    _picture(22, 17).save(src)
    out = tmp_path / "a.png"
    r = ldm("img2img", src, "a blue star", "--strength", 0.5, "--ckpt", sd1_file, "--steps", 4, "--seed", 5,
            "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    img = Image.open(out)
    assert img.size == (20, 16)
    assert "Denoising strength: 0.5" in img.info["parameters"]
    rec = json.loads(img.info["ldmcli"])
    assert rec["task"] == "img2img" and rec["denoising_strength"] == 0.5
    r = ldm("replay", out, "-o", tmp_path / "replayed", "-q")
    assert r.exit_code == 0, r.stderr
    assert Image.open(r.stdout.split()[0]).tobytes() == img.tobytes()
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": "in.png", "prompt": "a blue star", "extra": {"strength": 0.5}}) + "\n"
                    + json.dumps({"image": "in.png", "prompt": "a blue star", "extra": {"strength": 1.0}}) + "\n")
    r = ldm("img2img", "--from-file", jobs, "--ckpt", sd1_file, "--steps", 4, "--seed", 5, "-o", tmp_path / "b",
            "-q")
    assert r.exit_code == 0, r.stderr
    first, second = (Image.open(p) for p in r.stdout.split())
    assert first.tobytes() == img.tobytes() and second.tobytes() != img.tobytes()


@pytest.mark.parametrize("strength", ["1.5", "-0.1"])
def test_bad_strength_is_one_line(tmp_path, sd1_file, strength):
    src = tmp_path / "in.png"
    _picture().save(src)
    r = ldm("img2img", src, "x", "--strength", strength, "--ckpt", sd1_file, "-o", tmp_path / "o.png")
    assert r.exit_code == 2 and "strength" in r.stderr
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": str(src), "prompt": "x", "extra": {"strength": float(strength)}}) + "\n")
    r = ldm("img2img", "--from-file", jobs, "--ckpt", sd1_file, "-o", tmp_path / "j")
    assert r.exit_code == 2 and "strength" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("strength, kept", [(0.3, 3), (0.75, 7), (1.0, 10)])
def test_cli_img2img_progress_counts_the_steps_its_strength_runs(tmp_path, sd1_file, strength, kept):
    src = tmp_path / "in.png"
    _picture(16, 16).save(src)
    r = ldm("img2img", src, "a blue star", "--strength", strength, "--ckpt", sd1_file, "--steps", 10,
            "-o", tmp_path / "a.png")
    assert r.exit_code == 0, r.stderr
    bar = [line for line in r.stderr.splitlines() if line.startswith("job 1 images 1-1: step")]
    assert bar and bar[-1] == f"job 1 images 1-1: step {kept}/{kept}", bar
