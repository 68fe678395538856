"""The CPU fast path: bfloat16 by default where the cores compute it natively, channels-last bf16 convolutions, one
thread for small models, and the bounds that keep bf16 images close to the exact float32 ones."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import ldmcli.loading as loading
from ldmcli.cli.app import app
from ldmcli.models.layers import GroupNorm32
from tiny import SD1_TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def ldm(*args) -> list:
    r = CliRunner().invoke(app, [str(a) for a in args] + ["-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return r.stdout.split()


def _pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64)


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni\n")
    assert loading.cpu_has_native_bf16(str(with_bf16)) is True
    assert loading.cpu_has_native_bf16(str(without)) is False
    assert loading.cpu_has_native_bf16(str(tmp_path / "missing")) is False     # macOS, Windows: float32


@pytest.mark.parametrize("native, auto", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_cpu_is_bf16_only_with_native_bf16(monkeypatch, native, auto):
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert loading.pick_dtype("auto", cpu) == auto
    assert loading.pick_dtype("float32", cpu) == torch.float32          # the exact path, when asked
    assert loading.pick_dtype("bfloat16", cpu) == torch.bfloat16
    assert loading.pick_dtype("auto", torch.device("cuda")) == torch.float16
    big, small = loading.SMALL_MODEL_BYTES, loading.SMALL_MODEL_BYTES - 1
    assert loading.pick_dtype("auto", cpu, weights_bytes=big) == auto
    assert loading.pick_dtype("auto", cpu, weights_bytes=small) == torch.float32   # overhead-bound: bf16 costs
    assert loading.pick_dtype("bfloat16", cpu, weights_bytes=small) == torch.bfloat16


def test_the_embedded_defaults_stay_float32_under_auto(monkeypatch):
    """They are small: per-op overhead, not arithmetic, bounds them, so their exact path is also the fast one."""
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    for task in ("txt2img", "inpaint", "superres", "layout2img", "semantic2img"):
        assert not loading.auto_dtype_is_bf16("cpu", None, task)
        path = loading.resolve_ckpt(None, task)
        assert loading.pick_dtype("auto", torch.device("cpu"), path.stat().st_size) == torch.float32
    monkeypatch.setattr(loading, "SMALL_MODEL_BYTES", 0)
    assert loading.auto_dtype_is_bf16("cpu", None, "txt2img") and not loading.auto_dtype_is_bf16("cuda", None)


def test_bf16_cpu_model_is_channels_last_and_float32_stays_contiguous(sd1_file):
    bf16, _ = loading.load(str(sd1_file), device="cpu", dtype="bfloat16")
    fp32, _ = loading.load(str(sd1_file), device="cpu", dtype="float32")
    conv = "model.diffusion_model.input_blocks.0.0.weight"
    vae_conv = "first_stage_model.decoder.conv_in.weight"
    for name in (conv, vae_conv):
        assert bf16.get_parameter(name).is_contiguous(memory_format=torch.channels_last)
        assert fp32.get_parameter(name).is_contiguous()


def test_group_norm_in_bf16_on_cpu_matches_the_float32_computation():
    """The CPU bf16 kernel accumulates in float32 (bf16 cannot overflow where fp16 does): within a bf16 rounding."""
    norm = GroupNorm32(8, 64, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_(1, 0.1)
        norm.bias.normal_(0, 0.1)
    x = (torch.randn(2, 64, 16, 16) * 30 + 5).bfloat16()
    want = norm(x.float())
    for layout in (torch.contiguous_format, torch.channels_last):
        got = norm.bfloat16()(x.contiguous(memory_format=layout))
        assert got.dtype == torch.bfloat16
        assert ((got.float() - want).abs() <= 2 ** -7 * want.abs() + 1e-2).all()


def test_bf16_vs_float32_on_sd_architecture_random_weights():
    """UNet ε and the decoded image of a tiny SD1-architecture model: bf16 (channels-last) stays near float32."""
    fp32 = tiny_model(SD1_TINY, seed=3)
    bf16 = tiny_model(SD1_TINY, seed=3).bfloat16()
    loading.prepare_for_cpu(bf16)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, SD1_TINY.unet.context_dim, generator=g)
    t = torch.tensor([999, 300])
    with torch.inference_mode():
        eps32, eps16 = (m.apply_model(x, t, c_crossattn=[ctx]) for m in (fp32, bf16))
        img32, img16 = (m.decode_first_stage(x).float() for m in (fp32, bf16))
    assert (eps16 - eps32).norm() / eps32.norm() < 0.02
    assert (img16 - img32).abs().max() < 0.05 and (img16 - img32).abs().mean() < 0.01


def test_default_txt2img_in_bf16_draws_what_float32_draws(tmp_path):
    """The embedded default at its default settings, forced to bf16: pixels close to float32, and the same colours
    read back by the shapes world's scorer (`ldm eval` figures: see the README's Performance section)."""
    from ldmcli.world.readback import read_image
    prompts = ("a red circle", "a blue square", "a green triangle")
    for i, prompt in enumerate(prompts):
        a, b = (ldm("txt2img", prompt, "--dtype", d, "--seed", 1, "-o", tmp_path / f"{i}-{d}.png")[0]
                for d in ("float32", "bfloat16"))
        diff = np.abs(_pixels(a) - _pixels(b))
        assert diff.mean() < 3.0 and diff.max() < 96, (prompt, diff.mean(), diff.max())
        # colours are what the default draws reliably; a borderline shape may read back differently either way
        want = sorted(o.colour for o in read_image(Image.open(a)).objects)
        assert sorted(o.colour for o in read_image(Image.open(b)).objects) == want, prompt
        assert json.loads(Image.open(b).info["ldmcli"])["dtype"] == "bfloat16"


def test_small_cpu_models_run_on_one_thread_and_the_count_is_restored(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    model = tiny_model()
    before = torch.get_num_threads()
    with loading.cpu_threads(model):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setattr(loading, "SMALL_MODEL_PARAMS", 0)           # a large model: torch's own choice
    assert loading.cpu_threads_for(model) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")                      # the user's setting wins
    monkeypatch.setattr(loading, "SMALL_MODEL_PARAMS", 10**12)
    assert loading.cpu_threads_for(model) is None


def test_fingerprint_names_the_dtype_auto_resolves_to(monkeypatch):
    from ldmcli.cli.jobs import Job, fingerprint
    job = Job(prompt="a red circle")
    fp = lambda dtype: fingerprint("txt2img", job, {"dtype": dtype, "device": "cpu"})
    monkeypatch.setattr(loading, "SMALL_MODEL_BYTES", 0)               # the embedded default counts as large
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert fp("auto") == fp("bfloat16") != fp("float32")
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert fp("auto") not in (fp("bfloat16"), fp("float32"))          # as before auto could mean bf16


def test_cpu_bench_mode_parses():
    pytest.importorskip("diffusers")
    from benchmarks.bench import parse
    args = parse(["--cpu", "--dtypes", "bfloat16", "--repeats", "1"])
    assert args.cpu and args.dtypes == "bfloat16" and args.repeats == 1


@pytest.mark.slow   # imports diffusers and times both sides
def test_cpu_bench_tiny_runs_and_both_sides_agree():
    pytest.importorskip("diffusers")
    from benchmarks.bench import main
    (fp32,) = main(["--cpu", "--tiny", "--dtypes", "float32", "--repeats", "1"])
    assert fp32["unet_eps_diff_max_mean"][0] < 1e-4 and fp32["vae_image_diff_max_mean"][0] < 1e-4
    for key in ("unet_contiguous", "unet_picked", "vae_contiguous", "vae_picked"):
        assert fp32[f"{key}_ours_s"] > 0 and fp32[f"{key}_speedup"] > 0 and fp32[f"{key}_ours_gflops"] > 0
