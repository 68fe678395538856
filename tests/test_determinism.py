"""Determinism of `ldm txt2img`: fixed weights and a fixed seed give the same pixels run after run, alone or in a
batch, and the pixels match golden hashes recorded once.

GOLDEN holds the SHA-256 of the decoded RGB pixel bytes (`Image.tobytes()`, not the PNG file, whose metadata names
the checkpoint's path). They were recorded with torch 2.13.0+cpu, float32, one intra-op thread, on this project's
x86-64 CPU machine. A golden hash is invalidated by anything that moves one float32 value far enough to flip one
uint8 pixel:
- the tiny model's weights (tests/tiny.py SD1_TINY and `randomize_`, seed 5 in conftest.py's `sd1_file`) or the
  tokenizer;
- the model code (UNet, first stage, text encoder), the sampler math, schedules or guidance;
- the noise streams (`initial_noise`, `seeded_noise` seeds and offsets), or the uint8 truncation in tensor_to_pil;
- the numerical library: another torch version, oneDNN/MKL kernels picked for another CPU instruction set, or
  another thread count (reductions are split differently), which is why this module pins torch to one thread.
When such a change is intended, re-record: run this file, and copy the hashes printed by the failing assertion.
The batch and run-to-run tests below do not depend on golden values and must hold on every machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.app import app
from ldmcli.errors import UsageError
from ldmcli.sampling.settings import SamplerSettings
from tiny import SD1_TINY

PROMPT = "a red circle above a blue square"
SEED = 1234
# (sampler, height, width) -> sha256 of the pixels; ddim is deterministic given x_T, euler_a also draws
# ancestral noise at every step (the second, seed + 0x5EED, stream)
DTYPE = ("--dtype", "float32")   # the golden hashes pin float32 numerics; auto is bfloat16 on bf16-capable CPUs
GOLDEN = {
    ("ddim", 16, 16): "3cc5c4f92835375a2ba54f4602f72cd010a605aa1c50aced6e56eded6aac9b8a",
    ("euler_a", 16, 16): "c7602dfa279e40d4f48c7fe782141aa30627461eb81ba9a48f1cb84786b4bd2e",
    ("ddim", 24, 32): "501a8cedc9eecf281bf4d643f9bb9e86e00762fa62a8a7ebbbeb73e30c35bfdc",
}


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py; the golden hashes need one thread


def pixels_sha256(path) -> str:
    with Image.open(path) as img:
        img.load()
        return hashlib.sha256(img.convert("RGB").tobytes()).hexdigest()


def ldm(*args) -> list:
    """Run the CLI in-process; returns the written paths (stdout)."""
    r = CliRunner().invoke(app, [str(a) for a in args] + ["-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return r.stdout.split()


def _one(ckpt, out, sampler="ddim", seed=SEED, h=16, w=16, *extra) -> str:
    paths = ldm("txt2img", PROMPT, "--ckpt", ckpt, "--steps", 4, "--sampler", sampler, "--seed", seed,
                "-H", h, "-W", w, "-o", out, *DTYPE, *extra)
    assert len(paths) == 1
    return pixels_sha256(paths[0])


@pytest.mark.parametrize("sampler, h, w", list(GOLDEN))
def test_golden_pixels(sd1_file, tmp_path, sampler, h, w):
    got = _one(sd1_file, tmp_path / "a.png", sampler, SEED, h, w)
    assert got == GOLDEN[(sampler, h, w)], f"pixels changed: GOLDEN[{(sampler, h, w)!r}] = {got!r} (see docstring)"


def test_two_runs_identical_in_process_and_in_a_fresh_process(sd1_file, tmp_path):
    first = _one(sd1_file, tmp_path / "a.png")
    assert _one(sd1_file, tmp_path / "b.png") == first
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))
    out = subprocess.run([sys.executable, "-m", "ldmcli", "txt2img", PROMPT, "--ckpt", str(sd1_file), "--steps", "4",
                          "--seed", str(SEED), "-o", str(tmp_path / "c.png"), "-q", *DTYPE],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert pixels_sha256(tmp_path / "c.png") == first


@pytest.mark.parametrize("sampler", ["ddim", "euler_a"])
def test_seed_in_a_batch_of_three_equals_alone(sd1_file, tmp_path, sampler):
    alone = _one(sd1_file, tmp_path / "alone.png", sampler)
    # --n-samples 3 in one forward: image k has seed SEED-1+k, so image 1 is SEED
    batch = ldm("txt2img", PROMPT, "--ckpt", sd1_file, "--steps", 4, "--sampler", sampler, "--seed", SEED - 1,
                "-n", 3, "--batch-size", 3, "-o", tmp_path / "batch", *DTYPE)
    assert len(batch) == 3 and pixels_sha256(batch[1]) == alone
    assert len({pixels_sha256(p) for p in batch}) == 3          # and the three differ
    # --from-file: job i takes seed base+i (text), or its own "seed" (JSONL)
    text = tmp_path / "jobs.txt"
    text.write_text(f"{PROMPT}\n" * 3)
    jobs = ldm("txt2img", "--from-file", text, "--ckpt", sd1_file, "--steps", 4, "--sampler", sampler,
               "--seed", SEED - 2, "-o", tmp_path / "text", *DTYPE)
    assert pixels_sha256(jobs[2]) == alone
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text("".join(json.dumps({"prompt": PROMPT, "seed": s}) + "\n" for s in (5, SEED, 6)))
    jobs = ldm("txt2img", "--from-file", jsonl, "--ckpt", sd1_file, "--steps", 4, "--sampler", sampler,
               "-o", tmp_path / "jsonl", *DTYPE)
    assert pixels_sha256(jobs[1]) == alone


@pytest.mark.parametrize("value", ["cpu", "auto"])
def test_noise_device_on_cpu_gives_the_same_pixels(sd1_file, tmp_path, value):
    """On a CPU model every noise device is the CPU: the flag must not change a pixel (x_T and ancestral noise)."""
    for sampler in ("ddim", "euler_a"):
        assert _one(sd1_file, tmp_path / f"{sampler}.png", sampler, SEED, 16, 16, "--noise-device", value) == \
            _one(sd1_file, tmp_path / f"{sampler}-default.png", sampler)


def test_noise_device_values():
    cfg = SD1_TINY
    assert SamplerSettings(noise_device="auto").resolved(cfg).noise_device is None
    assert SamplerSettings(noise_device="cpu").resolved(cfg).noise_device == "cpu"
    assert SamplerSettings().resolved(cfg).noise_device is None
    with pytest.raises(UsageError, match="--noise-device must be auto or cpu, got 'gpu'"):
        SamplerSettings(noise_device="gpu").resolved(cfg)


def test_bad_noise_device_is_one_line(sd1_file, tmp_path):
    r = CliRunner().invoke(app, ["txt2img", PROMPT, "--ckpt", str(sd1_file), "--noise-device", "gpu", "-q",
                                 "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and r.stderr.startswith("ldm: error:") and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
