"""bfloat16 for the large images of small models under --dtype auto, on CPUs with native bf16
(ldmcli/sampling/precision.py): float32 weights kept, autocast and channels-last only while a large image is made,
the job's record and fingerprint naming what ran, the embedded defaults' own 32 px images untouched, and a float32
decode when bf16 overflows."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import ldmcli.loading as loading
import ldmcli.sampling.precision as precision
from ldmcli.cli.app import app
from ldmcli.cli.jobs import Job, declared_pixels, fingerprint, large_image_bf16
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.txt2img import txt2img
from tiny import SD1_TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL_SIDE, LARGE_SIDE = 16, 48        # the tiny model's first stage halves: latents of 8 and 24 cells a side


@pytest.fixture
def native(monkeypatch):
    """A CPU with native bf16, and a threshold the tiny models reach at LARGE_SIDE."""
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda *a: True)
    monkeypatch.setattr(precision, "BF16_FROM_PIXELS", LARGE_SIDE * LARGE_SIDE)


def _autocast_seen(model) -> dict:
    seen = {"unet": [], "decoder": []}
    model.model.diffusion_model.register_forward_pre_hook(
        lambda m, a: seen["unet"].append(torch.is_autocast_enabled("cpu")))
    model.first_stage_model.decoder.register_forward_pre_hook(
        lambda m, a: seen["decoder"].append(torch.is_autocast_enabled("cpu")))
    return seen


def test_auto_marks_small_models_on_native_bf16_cpus_only(monkeypatch, sd1_file):
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda *a: True)
    model, _ = loading.load(str(sd1_file), device="cpu")
    assert model.dtype == torch.float32 and model.bf16_work
    assert not loading.load(str(sd1_file), device="cpu", dtype="float32")[0].bf16_work    # the exact path
    assert not loading.load(str(sd1_file), device="cpu", dtype="bfloat16")[0].bf16_work   # bf16 throughout
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda *a: False)
    assert not loading.load(str(sd1_file), device="cpu")[0].bf16_work
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda *a: True)
    monkeypatch.setattr(loading, "SMALL_MODEL_BYTES", 1)                  # a large checkpoint: bf16 throughout
    big, _ = loading.load(str(sd1_file), device="cpu")
    assert big.dtype == torch.bfloat16 and not big.bf16_work


def test_large_images_run_in_bf16_and_the_float32_weights_come_back_unchanged(native):
    model = tiny_model(SD1_TINY, seed=2)
    model.bf16_work = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = _autocast_seen(model)
    settings = SamplerSettings(steps=2)
    small = txt2img(model, "a red circle", seeds=[0], height=SMALL_SIDE, width=SMALL_SIDE, settings=settings)
    assert set(seen["unet"]) == {False} and seen["decoder"] == [False]
    seen["unet"].clear(), seen["decoder"].clear()
    large = txt2img(model, "a red circle", seeds=[0], height=LARGE_SIDE, width=LARGE_SIDE, settings=settings)
    assert set(seen["unet"]) == {True} and seen["decoder"] == [True]
    assert large[0].size == (LARGE_SIDE, LARGE_SIDE) and small[0].size == (SMALL_SIDE, SMALL_SIDE)
    for k, v in model.state_dict().items():           # float32, contiguous, bit for bit
        assert v.dtype == before[k].dtype and v.is_contiguous() and torch.equal(v, before[k]), k
    model.bf16_work = False                            # --dtype float32: never
    seen["unet"].clear()
    txt2img(model, "a red circle", seeds=[0], height=LARGE_SIDE, width=LARGE_SIDE, settings=settings)
    assert set(seen["unet"]) == {False}


def test_a_large_image_in_bf16_stays_close_to_float32(native):
    """The bound of the bf16 parity tests (test_cpu_speed.py) on the image itself."""
    model = tiny_model(SD1_TINY, seed=3)
    settings = SamplerSettings(steps=3)
    images = []
    for bf16 in (False, True):
        model.bf16_work = bf16
        img = txt2img(model, "a red circle", seeds=[1], height=LARGE_SIDE, width=LARGE_SIDE, settings=settings)[0]
        images.append(np.asarray(img, np.float64))
    diff = np.abs(images[0] - images[1])
    assert diff.mean() < 3.0 and diff.max() < 96, (diff.mean(), diff.max())


def test_the_embedded_superres_in_bf16_matches_float32_on_a_picture():
    """The real case: the default superres on a dead-leaves picture, 32 -> 128 (8 views): PSNR between the bf16 and
    the float32 result over 45 dB (measured 2026-12-06: val and eval photo gains within 0.002 dB)."""
    from ldmcli.tasks.superres import superres
    from ldmcli.world.deadleaves import dead_leaves
    model, _ = loading.load(None, task="superres", device="cpu", dtype="float32")
    lowres = dead_leaves(7, 32)
    exact = np.asarray(superres(model, lowres, seeds=[0])[0], np.float64)
    model.bf16_work = True
    seen = _autocast_seen(model)
    fast = np.asarray(superres(model, lowres, seeds=[0])[0], np.float64)
    assert all(seen["unet"]) and all(seen["decoder"]) and seen["decoder"]
    psnr = 10 * np.log10(255 ** 2 / np.mean((exact - fast) ** 2))
    assert psnr > 45, psnr


def test_the_job_record_and_fingerprint_name_what_ran(native, monkeypatch, sd1_file, tmp_path):
    def run(side: int, *more) -> dict:
        out = tmp_path / f"{side}{''.join(more)}.png"
        r = CliRunner().invoke(app, ["txt2img", "a red circle", "--ckpt", str(sd1_file), "--steps", "2", "-H",
                                     str(side), "-W", str(side), "-o", str(out), "-q", *more],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.stderr
        return json.loads(Image.open(out).info["ldmcli"])
    assert run(LARGE_SIDE)["dtype"] == "bfloat16"
    assert run(SMALL_SIDE)["dtype"] == "float32"
    assert run(LARGE_SIDE, "--dtype", "float32")["dtype"] == "float32"
    opts = {"ckpt": str(sd1_file), "device": "cpu"}
    large, small = Job(prompt="x", height=LARGE_SIDE, width=LARGE_SIDE), Job(prompt="x", height=SMALL_SIDE)
    assert large_image_bf16("txt2img", large, opts) and not large_image_bf16("txt2img", small, opts)
    assert fingerprint("txt2img", large, opts) == fingerprint("txt2img", large, opts | {"dtype": "bfloat16"})
    prints = {job.height: fingerprint("txt2img", job, opts) for job in (large, small)}
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda *a: False)
    assert fingerprint("txt2img", small, opts) == prints[SMALL_SIDE]     # as before: its images are float32
    assert fingerprint("txt2img", large, opts) != prints[LARGE_SIDE]     # a folder resumed elsewhere redoes it


def test_a_compiled_unet_stays_float32(native, sd1_file):
    from ldmcli.loading.compiling import compile_unet
    large = Job(prompt="x", height=LARGE_SIDE, width=LARGE_SIDE)
    opts = {"ckpt": str(sd1_file), "device": "cpu"}
    assert large_image_bf16("txt2img", large, opts)
    assert not large_image_bf16("txt2img", large, opts | {"compile": True})
    model, _ = loading.load(str(sd1_file), device="cpu")
    assert model.bf16_work
    compile_unet(model)                       # lazy: nothing is compiled before the first call
    assert not model.bf16_work


def test_declared_pixels_come_from_the_size_or_the_input_picture(tmp_path):
    picture = tmp_path / "in.png"
    Image.new("RGB", (40, 30)).save(picture)
    assert declared_pixels("txt2img", Job(height=64, width=32)) == 64 * 32
    assert declared_pixels("txt2img", Job(height=64)) == 64 * 64
    assert declared_pixels("txt2img", Job()) == 0                       # the model's own size: small
    assert declared_pixels("inpaint", Job(image=str(picture))) == 40 * 30
    assert declared_pixels("superres", Job(image=str(picture))) == 160 * 120
    assert declared_pixels("superres", Job(image=str(tmp_path / "missing.png"))) == 0   # refused later, in place


def test_a_bf16_decode_that_overflows_is_done_again_in_float32(native, caplog):
    model = tiny_model(SD1_TINY, seed=4)
    model.bf16_work = True
    decode = model.first_stage_model.decode

    def overflowing(z):
        x = decode(z)
        return torch.full_like(x, float("nan")) if torch.is_autocast_enabled("cpu") else x
    model.first_stage_model.decode = overflowing
    with caplog.at_level(logging.WARNING, logger="ldmcli"):
        img = txt2img(model, "a red circle", seeds=[0], height=LARGE_SIDE, width=LARGE_SIDE,
                      settings=SamplerSettings(steps=2))[0]
    assert img.size == (LARGE_SIDE, LARGE_SIDE)
    assert "decoded NaN/Inf pixels in bfloat16" in caplog.text and not model.bf16_work
