"""Memory estimates and refusals (sampling/memory.check_memory), and the decode fallbacks: fp32 retry on NaN/Inf
pixels of a half-precision first stage, tiled retry on out-of-memory."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import ldmcli.sampling.memory as memory
import ldmcli.sampling.pipeline as pipeline
from ldmcli.loading import presets
from ldmcli.cli.app import app
from ldmcli.errors import LdmError, UsageError
from ldmcli.io.images import tensor_to_pil
from ldmcli.tasks.geometry import check_size
from ldmcli.sampling.tiling import decode_tiled
from tiny import SD1_TINY, tiny_model

GiB = 2**30


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest.py


@pytest.fixture(scope="module")
def model():
    return tiny_model(SD1_TINY, seed=3)


def _latent(model, n=1, side=8, seed=0):
    return torch.randn(n, 4, side, side, generator=torch.Generator().manual_seed(seed))


# --- estimates -----------------------------------------------------------------------------------------------------
def test_estimates_grow_with_area_and_batch():
    unet, vae = presets.SD1.unet, presets.SD1.first_stage
    u1, u2 = memory.unet_bytes(unet, 64, 64, 2, 2), memory.unet_bytes(unet, 128, 128, 2, 2)
    assert u2 == pytest.approx(4 * u1, rel=1e-6)          # linear in H·W: SDPA's fused kernels, no N² scores
    assert memory.unet_bytes(unet, 64, 64, 4, 2) == pytest.approx(2 * u1, rel=1e-6)
    assert memory.unet_bytes(unet, 64, 64, 2, 4) == pytest.approx(2 * u1, rel=1e-6)
    # SD1 at 512² in fp16 with CFG: a few hundred MiB of UNet activations, the decoder under 1 GiB
    assert 50 * 2**20 < u1 < 1 * GiB
    assert 100 * 2**20 < memory.decoder_bytes(vae, 64, 64, 1, 2) < 1 * GiB
    # the decoder's attention gets contiguous q/k/v, so SDPA's fused kernels keep it linear in the area too
    d1, d2 = memory.decoder_bytes(vae, 512, 512, 1, 2), memory.decoder_bytes(vae, 1024, 1024, 1, 2)
    assert d2 == pytest.approx(4 * d1, rel=1e-6)


def test_adm_attention_is_linear():
    """ADM AttentionBlocks (no SpatialTransformer) hand SDPA contiguous q/k/v: no N² scores."""
    cfg = presets.LDM_CELEBA256.unet
    small, large = memory.unet_bytes(cfg, 64, 64, 1, 4), memory.unet_bytes(cfg, 256, 256, 1, 4)
    assert large == pytest.approx(16 * small, rel=1e-6)


_ATTN_PEAK = textwrap.dedent("""
    import torch
    from ldmcli.models.autoencoder_blocks import AttnBlock
    from ldmcli.models.attention import AttentionBlock
    torch.set_num_threads(1)
    def status(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
    def peak(fn):
        fn(); base = status("VmRSS"); open("/proc/self/clear_refs", "w").write("5"); fn()
        return status("VmHWM") - base
    x = torch.randn(1, 64, 96, 96)                 # 9216 tokens: float32 scores alone would take 340 MB
    with torch.no_grad():
        a, b = AttnBlock(64).eval(), AttentionBlock(64, num_heads=1).eval()
        print(peak(lambda: a(x)), peak(lambda: b(x)))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux peak-RSS reset")
def test_attention_blocks_never_form_the_score_matrix():
    """Measured: both attention blocks stay far below the N×N float32 scores (9216² × 4 B = 340 MB)."""
    out = subprocess.run([sys.executable, "-c", _ATTN_PEAK], capture_output=True, text=True, check=True)
    vae, adm = (int(v) for v in out.stdout.split())
    assert vae < 100 * 2**20 and adm < 100 * 2**20, (vae, adm)


_MEASURE = textwrap.dedent("""
    import sys, torch
    from ldmcli.models import config as C
    from ldmcli.models.unet import UNetModel
    from ldmcli.models.autoencoder import build_first_stage
    from ldmcli.sampling.memory import unet_bytes, decoder_bytes
    torch.set_num_threads(1)
    def status(key):
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
    def peak(fn):  # after a warm-up call: the first one also allocates oneDNN's reordered weights
        fn(); base = status("VmRSS"); open("/proc/self/clear_refs", "w").write("5"); fn()
        return status("VmHWM") - base
    u = C.UNetConfig(model_channels=64, channel_mult=(1, 2, 4, 4), attention_resolutions=(2, 4), num_heads=4,
                     context_dim=32)
    unet = UNetModel(u).eval()
    x, t, ctx = torch.randn(1, 4, 96, 96), torch.tensor([5.0]), torch.randn(1, 7, 32)
    with torch.inference_mode():
        print(peak(lambda: unet(x, t, ctx)), unet_bytes(u, 96, 96, 1, 4))
    a = C.AutoencoderConfig(ch=64, ch_mult=(1, 2, 4, 4), resolution=256)
    vae = build_first_stage(a).eval()
    z = torch.randn(1, 4, 32, 32)
    with torch.inference_mode():
        print(peak(lambda: vae.decode(z)), decoder_bytes(a, 32, 32, 1, 4))
""")


@pytest.mark.slow   # real-size attention and decoder blocks measured in fresh processes
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux peak-RSS accounting")
def test_estimates_match_measured_peak_rss():
    """The formulas against the real peak RSS of one forward (fresh process; glibc told to hand memory back)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [tuple(map(int, line.split())) for line in out.stdout.strip().splitlines()]
    for measured, estimated in rows:
        assert 0.75 < estimated / measured < 1.33, rows


# --- refusal -------------------------------------------------------------------------------------------------------
def test_check_memory_refuses_with_figures(model, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: (24 * GiB, "this machine has 24.0 GiB of RAM"))
    memory.check_memory(model, 64, 64, 4)                    # a tiny model at 128² is far below 24 GiB
    with pytest.raises(UsageError) as e:
        memory.check_memory(model, 8192, 8192, 1)            # 16384² px: the UNet alone needs ~200 GiB
    msg = str(e.value)
    assert msg.startswith("16384x16384 px with a batch of 1 needs about") and "\n" not in msg
    assert "UNet activations" in msg and "VAE decode" in msg and "this machine has 24.0 GiB" in msg


def test_decode_counted_by_tiles_when_one_piece_cannot_fit(model, monkeypatch):
    """The one-piece decode does not fit but the tiled one does: accepted (decode will tile)."""
    cfg = model.cfg
    one = memory.decoder_bytes(cfg.first_stage, 512, 512, 1, 4)
    tiled = memory.decoder_bytes(cfg.first_stage, cfg.latent_size, cfg.latent_size, 1, 4)
    image = 48 * 1024 * 1024                                 # bytes per pixel × the 1024² px image
    have = tiled + image + 2**20
    assert have < one + image
    monkeypatch.setattr(memory, "unet_bytes", lambda *a: 0)  # only the decode is under test here
    monkeypatch.setattr(memory, "available_memory", lambda device: (have, "x"))
    memory.check_memory(model, 512, 512, 1)


def test_available_memory_on_cpu():
    have, where = memory.available_memory(torch.device("cpu"))
    assert have > 2**28 and ("RAM" in where or "container" in where)


def test_size_hard_cap(model):
    with pytest.raises(UsageError, match="--height 16386 is over the 16384 px limit"):
        check_size(model, 16386, 64)
    with pytest.raises(UsageError, match="positive multiple of 4"):
        check_size(model, 64, 18)
    check_size(model, 16384, 16384)                         # at the cap: left to check_memory


def test_cli_refuses_huge_size_before_sampling(sd1_file, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: (24 * GiB, "this machine has 24.0 GiB of RAM"))
    monkeypatch.setattr("ldmcli.sampling.samplers.sample", lambda *a, **k: pytest.fail("sampling started"))
    r = CliRunner().invoke(app, ["txt2img", "x", "--ckpt", str(sd1_file), "-H", "16384", "-W", "16384",
                                 "-o", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 2
    assert r.stderr.startswith("ldm: error: job 1: 16384x16384 px with a batch of 1 needs about")
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()


# --- decode fallbacks ----------------------------------------------------------------------------------------------
def _nan_in_half(fs):
    """Make a first stage decode NaN pixels unless it runs in float32 (an fp16 overflow stand-in)."""
    real = fs.decode

    def decode(z, *args, **kw):
        x = real(z, *args, **kw)
        return x if z.dtype == torch.float32 else x * float("nan")
    fs.decode = decode


def test_nan_in_bf16_decode_retries_in_fp32_and_warns_once(caplog):
    ref = tiny_model(SD1_TINY, seed=3).to(torch.bfloat16)
    ref.first_stage_model.float()                           # the bf16-rounded weights, decoding in fp32
    z = _latent(ref, n=2)
    want = [im.tobytes() for im in pipeline.decode(ref, z)]
    half = tiny_model(SD1_TINY, seed=3).to(torch.bfloat16)
    _nan_in_half(half.first_stage_model)
    with caplog.at_level(logging.WARNING, logger="ldmcli"):
        got = [im.tobytes() for im in pipeline.decode(half, z)]
        again = [im.tobytes() for im in pipeline.decode(half, z)]
    assert got == want and again == want                    # the fp32 first stage decodes exactly as the fp32 model
    assert next(half.first_stage_model.parameters()).dtype == torch.float32   # kept in fp32 for later images
    assert next(half.model.parameters()).dtype == torch.bfloat16               # the UNet untouched
    warnings = [r.getMessage() for r in caplog.records if r.name == "ldmcli"]
    assert len(warnings) == 1 and "bfloat16 first stage decoded NaN/Inf pixels" in warnings[0]


def test_nan_in_fp32_decode_and_nan_latents_are_errors(model):
    with pytest.raises(LdmError, match=r"sampled latents hold NaN/Inf values \(broken UNet weights\?\)"):
        pipeline.decode(model, torch.full((1, 4, 8, 8), float("nan")))
    broken = tiny_model(SD1_TINY, seed=3)
    with torch.no_grad():
        broken.first_stage_model.decoder.conv_out.bias.fill_(float("inf"))
    with pytest.raises(LdmError, match="the float32 first stage decoded NaN/Inf pixels"):
        pipeline.decode(broken, _latent(broken))


def test_cli_bf16_nan_warns_once_and_writes_good_images(sd1_file, tmp_path, monkeypatch):
    from ldmcli.models import autoencoder
    real = autoencoder.AutoencoderKL.decode
    monkeypatch.setattr(autoencoder.AutoencoderKL, "decode",
                        lambda self, z: real(self, z) * (1 if z.dtype == torch.float32 else float("nan")))
    args = ["txt2img", "x", "--ckpt", str(sd1_file), "--steps", "2", "-n", "2", "--batch-size", "1", "-q"]
    half = CliRunner().invoke(app, args + ["--dtype", "bfloat16", "-o", str(tmp_path / "bf16")])
    assert half.exit_code == 0, half.stderr
    assert half.stderr.splitlines() == ["ldm: warning: the bfloat16 first stage decoded NaN/Inf pixels; decoding in "
                                        "float32 from now on"]
    assert len(half.stdout.split()) == 2


def _oom_when_larger_than(fs, side: int, calls: list):
    real = fs.decode

    def decode(z, *args, **kw):
        calls.append(tuple(z.shape[-2:]))
        if max(z.shape[-2:]) > side:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(z, *args, **kw)
    fs.decode = decode


def test_oom_retries_by_tiles(caplog):
    m = tiny_model(SD1_TINY, seed=3)
    z = _latent(m, side=8)
    calls = []
    _oom_when_larger_than(m.first_stage_model, 4, calls)
    with caplog.at_level(logging.WARNING, logger="ldmcli"):
        got = pipeline.decode(m, z)[0]
    assert calls[0] == (8, 8) and set(calls[1:]) == {(4, 4)}     # one failed whole decode, then 4×4 tiles
    ref = tiny_model(SD1_TINY, seed=3)
    with torch.inference_mode():
        want = tensor_to_pil(decode_tiled(ref.decode_first_stage, z, 4, 1, 2))[0]
    assert got.tobytes() == want.tobytes()
    assert [r.getMessage() for r in caplog.records if r.name == "ldmcli"] == [
        "decoding 16x16 images by overlapping tiles to fit in memory (pixels differ slightly at the seams)"]


def test_tiled_decode_keeps_both_fallbacks(caplog):
    """The decode of tiled sampling (semantic2img/superres at large sizes) goes through the same fallbacks: a
    bfloat16 first stage that decodes NaN is retried in float32, and an out-of-memory tile is halved."""
    from ldmcli.sampling.tiling import Tiling
    z = _latent(tiny_model(SD1_TINY, seed=3), side=32)
    ref = tiny_model(SD1_TINY, seed=3).to(torch.bfloat16)
    ref.first_stage_model.float()
    with torch.inference_mode():
        want = tensor_to_pil(decode_tiled(ref.decode_first_stage, z, 16, 4, 2))[0].tobytes()
    half = tiny_model(SD1_TINY, seed=3).to(torch.bfloat16)
    _nan_in_half(half.first_stage_model)
    with caplog.at_level(logging.WARNING, logger="ldmcli"):
        assert pipeline.decode(half, z, Tiling(tile=16, overlap=4))[0].tobytes() == want
    assert next(half.first_stage_model.parameters()).dtype == torch.float32
    m, calls = tiny_model(SD1_TINY, seed=3), []
    _oom_when_larger_than(m.first_stage_model, 8, calls)
    with caplog.at_level(logging.WARNING, logger="ldmcli"):
        got = pipeline.decode(m, z, Tiling(tile=16, overlap=4))[0]
    assert calls[0] == (16, 16) and set(calls[1:]) == {(8, 8)}   # the asked-for tile failed, then half of it
    with torch.inference_mode():
        assert got.tobytes() == tensor_to_pil(decode_tiled(tiny_model(SD1_TINY, seed=3).decode_first_stage, z, 8,
                                                           2, 2))[0].tobytes()
    messages = [r.getMessage() for r in caplog.records if r.name == "ldmcli"]
    assert any("first stage decoded NaN/Inf" in x for x in messages)
    assert any("by overlapping tiles to fit in memory" in x for x in messages)


def test_oom_at_every_tile_size_is_one_error():
    m = tiny_model(SD1_TINY, seed=3)
    _oom_when_larger_than(m.first_stage_model, 0, [])
    with pytest.raises(LdmError, match="out of memory decoding 32x32 images, even by tiles"):
        pipeline.decode(m, _latent(m, side=16))


def test_one_piece_that_cannot_fit_is_tiled_up_front(monkeypatch):
    m = tiny_model(SD1_TINY, seed=3)
    calls = []
    _oom_when_larger_than(m.first_stage_model, 1000, calls)
    monkeypatch.setattr(memory, "decode_fits", lambda model, z: False)
    pipeline.decode(m, _latent(m, side=16))
    assert calls and max(max(c) for c in calls) == m.cfg.latent_size    # never the whole 16×16 latent


def test_cpu_allocator_failure_counts_as_oom():
    m = tiny_model(SD1_TINY, seed=3)
    real, state = m.first_stage_model.decode, {"n": 0}

    def decode(z):
        state["n"] += 1
        if state["n"] == 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return real(z)
    m.first_stage_model.decode = decode
    assert len(pipeline.decode(m, _latent(m, side=8))) == 1 and state["n"] > 1


def test_other_runtime_errors_are_not_swallowed():
    m = tiny_model(SD1_TINY, seed=3)
    m.first_stage_model.decode = lambda z: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        pipeline.decode(m, _latent(m))


def test_cpu_time_bound_refuses_hopeless_sizes_only(monkeypatch):
    """Attention is linear in memory on the CPU (fused SDPA) but quadratic in time: SD1 at its 512 px and at
    1024 px passes on one thread, 4096 px is refused with the figure."""
    from types import SimpleNamespace
    from ldmcli.loading.presets import preset
    monkeypatch.setattr(memory, "available_memory", lambda device: (2**50, "plenty"))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    model = SimpleNamespace(cfg=preset("sd1"), device=torch.device("cpu"), dtype=torch.float32,
                            first_stage_model=torch.nn.Linear(1, 1))
    for side in (64, 128):
        memory.check_memory(model, side, side, 1, guided=True, steps=50)
    with pytest.raises(UsageError, match=r"4096x4096 px: self-attention alone would take at least [\d.]+ h"):
        memory.check_memory(model, 512, 512, 1, guided=True, steps=50)
    assert memory.attention_flops(model.cfg.unet, 128, 128) == pytest.approx(
        16 * memory.attention_flops(model.cfg.unet, 64, 64), rel=0.01)
