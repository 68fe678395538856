"""`ldm sample`: class-conditional (cin256-like) and unconditional LDMs end to end, against the same model run through
the shared sampler by hand; class names and ids, guidance against the null class, the record, replay and batches.

Tiny random-weight models (tests/tiny.py CIN_TINY: 1001 classes with the null class like cin256-v2; CIN_V1: 1000
classes, no null class, like cin256; UNCOND_TINY: no condition, like CelebA-HQ/FFHQ/LSUN) are written as CompVis-layout
safetensors with their config in the header.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.app import app
from ldmcli.data import imagenet
from ldmcli.errors import UsageError
from ldmcli.io.images import tensor_to_pil
from ldmcli.io.png import read_metadata
from ldmcli.loading.checkpoint import load_model
from ldmcli.models import config as C
from ldmcli.sampling import samplers
from ldmcli.sampling.guidance import cfg_model, eps_model
from ldmcli.sampling.noise import initial_noise, seeded_noise
from ldmcli.sampling.pipeline import _ANCESTRAL_STREAM
from ldmcli.tasks import TASK_NAMES, TASKS
from ldmcli.tasks.sample import class_condition, list_labels, resolve_class
from tiny import CIN_TINY, UNCOND_TINY

pytestmark = pytest.mark.usefixtures("one_thread")
CIN_V1 = CIN_TINY.with_(name="tiny-cin-v1", cond_stage=C.ClassEmbedderConfig(n_classes=1000, embed_dim=32),
                        default_guidance=1.0)
runner = CliRunner()


def ldm(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def files(tiny_ckpt):
    return {cfg.name: tiny_ckpt(cfg, seed=41) for cfg in (CIN_TINY, CIN_V1, UNCOND_TINY)}


@pytest.fixture(scope="module")
def models(files):
    return {name: load_model(path)[0] for name, path in files.items()}


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def by_hand(model, class_id, seed: int, steps: int, scale: float, eta: float) -> np.ndarray:
    """The whole sampling path spelled out: class token (ClassEmbedder) and null-class token, CFG, seeded noise,
    the shared DDIM over its grid, decode (MODELS.md §6.3, §9.5)."""
    apply = lambda x, t, c: model.apply_model(x, t, **c)     # noqa: E731
    cond, uncond = {}, None
    if class_id is not None:
        emb = model.cond_stage_model.embedding.weight
        cond = {"c_crossattn": [emb[class_id][None, None]]}            # [1, 1, 32]
        uncond = {"c_crossattn": [emb[1000][None, None]]} if scale != 1 else None
    eps = eps_model(cfg_model(apply, cond, uncond, scale), "eps", model.alphas_cumprod)
    x_T = initial_noise((1, 3, 8, 8), [seed])
    noise = seeded_noise([seed + _ANCESTRAL_STREAM])
    grid = samplers.grid_for("ddim", model.alphas_cumprod, steps)
    with torch.inference_mode():
        z = samplers.sample("ddim", eps, x_T, grid, eta=eta, noise=noise)
        x = model.decode_first_stage(z)
    return np.asarray(tensor_to_pil(x)[0])


# --- parity: the CLI against the hand-built path -------------------------------------------------------------------
def test_class_sample_matches_hand_built_path(files, models, tmp_path):
    r = ldm("sample", "--ckpt", files["tiny-cin"], "--class", 3, "--seed", 0, "--steps", 4, "-o", tmp_path)
    assert r.exit_code == 0, r.output
    png = next(tmp_path.glob("*.png"))
    want = by_hand(models["tiny-cin"], 3, seed=0, steps=4, scale=3.0, eta=1.0)   # the family defaults: CFG 3, η 1
    assert np.array_equal(pixels(png), want)
    unguided = by_hand(models["tiny-cin"], 3, seed=0, steps=4, scale=1.0, eta=1.0)
    assert not np.array_equal(want, unguided)                                  # the guidance did something


def test_unconditional_sample_matches_hand_built_path(files, models, tmp_path):
    r = ldm("sample", "--ckpt", files["tiny-uncond"], "--seed", 7, "--steps", 3, "--eta", 0, "-o", tmp_path)
    assert r.exit_code == 0, r.output
    want = by_hand(models["tiny-uncond"], None, seed=7, steps=3, scale=1.0, eta=0.0)
    assert np.array_equal(pixels(next(tmp_path.glob("*.png"))), want)


# --- classes: ids, names, the null class ---------------------------------------------------------------------------
def test_class_ids_and_names(models):
    m = models["tiny-cin"]
    assert [resolve_class(m, c) for c in (3, "3", " 3 ", "goldfish", "GoldFish", "tiger  shark")] == [3, 3, 3, 1, 1, 3]
    assert resolve_class(m, "unconditional") == resolve_class(m, 1000) == 1000     # the null class, n_classes − 1
    with pytest.raises(UsageError, match="did you mean 'goldfish'"):
        resolve_class(m, "goldfsh")
    with pytest.raises(UsageError, match="out of range 0-1000"):
        resolve_class(m, 1001)
    with pytest.raises(UsageError, match="tiny-cin is class-conditional: give --class"):
        resolve_class(m, None)
    with pytest.raises(UsageError, match="no unconditional class"):
        resolve_class(models["tiny-cin-v1"], "unconditional")
    with pytest.raises(UsageError, match="unconditional model: it takes no --class"):
        resolve_class(models["tiny-uncond"], "3")
    assert resolve_class(models["tiny-uncond"], None) is None


def test_guidance_only_with_a_null_class(models):
    cond, uncond = class_condition(models["tiny-cin"], 5, guided=True)
    emb = models["tiny-cin"].cond_stage_model.embedding.weight
    assert torch.equal(cond["c_crossattn"][0], emb[5][None, None]) and torch.equal(uncond["c_crossattn"][0],
                                                                                  emb[1000][None, None])
    for name in ("tiny-cin-v1", "tiny-uncond"):
        with pytest.raises(UsageError, match="leave --scale at 1"):
            class_condition(models[name], None if name == "tiny-uncond" else 5, guided=True)


def test_list_labels(models, files):
    labels = list_labels(models["tiny-cin"])
    assert len(labels) == 1001 and labels[:2] == ["tench", "goldfish"] and labels[-1] == "unconditional"
    assert len(list_labels(models["tiny-cin-v1"])) == 1000
    with pytest.raises(UsageError, match="no class labels"):
        list_labels(models["tiny-uncond"])
    r = ldm("sample", "--ckpt", files["tiny-cin"], "--list-labels")
    assert r.exit_code == 0 and r.output.splitlines()[25] == "25\tfire salamander"


def test_names_without_open_clip(models, monkeypatch):
    """No open_clip: names are unknown (one line saying so), ids still work."""
    monkeypatch.setattr(imagenet, "_metadata_file", lambda: None)
    imagenet.imagenet_names.cache_clear()
    try:
        m = models["tiny-cin"]
        assert resolve_class(m, 7) == 7
        with pytest.raises(UsageError, match="open_clip_torch package, which is not installed") as e:
            resolve_class(m, "goldfish")
        assert "\n" not in str(e.value)
        with pytest.raises(UsageError, match="class ids 0-1000 still work"):
            list_labels(m)
    finally:
        imagenet.imagenet_names.cache_clear()


def test_imagenet_names_read_without_importing_open_clip():
    code = ("import sys; from ldmcli.data.imagenet import imagenet_names as n; names = n(); "
            "print(len(names), names[1], 'open_clip' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1000", "goldfish", "False", "False"]


# --- CLI checks: one line, exit 2, before sampling -----------------------------------------------------------------
@pytest.mark.parametrize("name,args,message", [
    ("tiny-uncond", ["--class", "3"], "tiny-uncond is an unconditional model: it takes no --class"),
    ("tiny-cin", [], "tiny-cin is class-conditional: give --class"),
    ("tiny-cin-v1", ["--class", "3", "--scale", "2"], "no unconditional class for classifier-free guidance"),
    ("tiny-uncond", ["--scale", "2"], "nothing to guide; leave --scale at 1"),
    ("tiny-cin", ["--class", "goldfsh"], "did you mean 'goldfish'"),
])
def test_refusals(files, tmp_path, name, args, message):
    r = ldm("sample", "--ckpt", files[name], *args, "--steps", 2, "-o", tmp_path)
    assert r.exit_code == 2 and message in r.output and not list(tmp_path.glob("*.png"))


def test_class_of_wrong_json_type_refused_before_loading(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"extra": {"class": True}}) + "\n")
    r = ldm("sample", "--ckpt", tmp_path / "missing.safetensors", "--from-file", jobs, "-o", tmp_path)
    assert r.exit_code == 2 and "option 'class' should be int or str, got True" in r.output


# --- record, replay, batches ---------------------------------------------------------------------------------------
def test_record_and_replay(files, tmp_path):
    r = ldm("sample", "--ckpt", files["tiny-cin"], "--class", "tiger shark", "--seed", 5, "--steps", 2,
            "--scale", 2.5, "-o", tmp_path / "a")
    assert r.exit_code == 0, r.output
    png = next((tmp_path / "a").glob("*.png"))
    rec = read_metadata(png)["ldmcli"]
    assert (rec["task"], rec["class_id"], rec["class_name"], rec["extra"], rec["scale"]) == \
        ("sample", 3, "tiger shark", {"class": "tiger shark"}, 2.5)
    r = ldm("replay", png, "-o", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert np.array_equal(pixels(png), pixels(next((tmp_path / "b").glob("*.png"))))


def test_jsonl_batch_and_resume(files, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(j) for j in (
        {"extra": {"class": 1}, "seed": 3, "name": "by-id"},
        {"extra": {"class": "Goldfish"}, "seed": 3, "name": "by-name"},
        {"extra": {"class": "unconditional"}, "seed": 3, "name": "null"})) + "\n")
    args = ("sample", "--ckpt", files["tiny-cin"], "--from-file", jobs, "--steps", 2, "-o", tmp_path / "out")
    r = ldm(*args)
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    assert np.array_equal(pixels(out / "by-id-s3-0.png"), pixels(out / "by-name-s3-0.png"))
    null = read_metadata(out / "null-s3-0.png")["ldmcli"]      # (its pixels may equal class 1's: the tiny VQ
    assert (null["class_id"], null["class_name"]) == (1000, "unconditional")   # re-quantizes small latent changes)
    again = ldm(*args, "--json")
    assert again.exit_code == 0 and all(json.loads(line)["skipped"] for line in again.stdout.splitlines())


def test_training_and_eval_tasks_unchanged():
    assert "sample" in TASKS and "sample" not in TASK_NAMES
    assert TASKS["sample"].labels and TASKS["sample"].sized


def test_python_api(models):
    import ldmcli
    images = ldmcli.sample(models["tiny-cin"], "goldfish", seeds=[0, 1], height=8, width=16,
                           settings=ldmcli.SamplerSettings(steps=2))
    assert [im.size for im in images] == [(16, 8), (16, 8)]


def test_cin256_v2_defaults_to_the_notebooks_guidance():
    """cin256-v2's reference notebook guides at 3.0 against class 1000 (MODELS.md §6.3); cin256 (v1) cannot guide."""
    from ldmcli.loading.presets import preset
    from ldmcli.loading.yaml_config import sampling_defaults
    v2, v1 = preset("cin256-v2"), preset("cin256")
    assert (v2.default_guidance, v1.default_guidance) == (3.0, 1.0)
    assert sampling_defaults(v2)["default_guidance"] == 3.0 and sampling_defaults(v1)["default_guidance"] == 1.0
