"""The benchmark's CPU smoke mode (slow; `make test-all`): every config runs on both sides, the JSON record carries
the figures the README table needs, and the final latents agree with diffusers. The default run checks that the
benchmark still imports against ldmcli and parses its smoke options."""
import json
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("diffusers")


def test_bench_imports_and_parses_its_smoke_options():
    from benchmarks.bench import TINY, parse
    args = parse(["--tiny", "--batches", "1,2", "--repeats", "5"])
    assert args.tiny and args.batches == [1, 2] and args.steps <= 4 and args.repeats == 2
    assert set(TINY) == {"sd15-512", "sd21-768", "x4-upscaler"}


@pytest.mark.slow   # imports diffusers and times both sides
def test_bench_tiny_mode_runs_and_checks_correctness(capsys):
    from benchmarks.bench import main
    records = main(["--tiny", "--batches", "1,2", "--repeats", "1"])
    assert [(r["config"], r["batch"]) for r in records] == [
        (c, b) for c in ("sd15-512", "sd21-768", "x4-upscaler") for b in (1, 2)]
    for r in records:
        assert r["correct"] and r["max_abs_latent_diff_vs_diffusers"] <= 1e-3, r
        assert r["ours_s_per_image"] > 0 and r["diffusers_s_per_image"] > 0 and r["ours_tflops"] > 0
        assert r["speedup_vs_diffusers"] == pytest.approx(r["diffusers_s_per_image"] / r["ours_s_per_image"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == len(records)


def test_cpu_mode_interleaves_the_sides_and_rotates_who_goes_first():
    from benchmarks.cpu import _rounds
    calls = []
    times = _rounds({"ours": lambda: calls.append("ours"), "peer": lambda: calls.append("peer")}, repeats=3)
    assert calls == ["ours", "peer"] + ["ours", "peer"] + ["peer", "ours"] + ["ours", "peer"]   # warm-up, 3 rounds
    assert [len(t) for t in times.values()] == [3, 3]


def test_a_slow_spell_of_the_host_falls_on_both_sides_of_a_ratio():
    """A host that runs every other round three times slower: each side's median time moves, but the ratio, the
    median of the rounds' own ratios, stays what the two sides cost (peer twice ours)."""
    from benchmarks.cpu import _compare, _rounds
    now, calls = [0.0], [0]

    def cost(units):
        def run():
            slow = 3.0 if (calls[0] // 2) % 2 else 1.0      # rounds of two calls, after a warm-up of two
            now[0] += units * slow
            calls[0] += 1
        return run
    times = _rounds({"ours": cost(1.0), "peer": cost(2.0)}, repeats=5, clock=lambda: now[0])
    assert times["ours"] == [3.0, 1.0, 3.0, 1.0, 3.0] and times["peer"] == [6.0, 2.0, 6.0, 2.0, 6.0]
    assert _compare(times, "peer", "ours") == 2.0


def _check_engine(rec: dict, part: str, name: str, tol: float) -> None:
    assert rec[f"{part}_{name}_s"] > 0 and rec[f"{part}_{name}_first_call_s"] >= 0
    # one round: its ratio is the ratio of the two times, which the record keeps to four digits
    assert rec[f"{part}_ours_over_{name}"] == pytest.approx(rec[f"{part}_{name}_ours_s"] / rec[f"{part}_{name}_s"],
                                                            rel=0.01, abs=1e-3)
    assert 0 < rec[f"{part}_{name}_min_s"] <= rec[f"{part}_{name}_s"]
    assert rec[f"{part}_{name}_diff_max_mean"][0] <= tol, rec   # the same work: outputs agree


@pytest.mark.slow   # builds diffusers' twin and OpenVINO's conversion of the tiny SD1.5
def test_cpu_mode_times_openvino_on_our_weights():
    pytest.importorskip("openvino")
    from benchmarks.cpu import _TINY, bench_dtype
    import torch
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 0.1)):
        rec = bench_dtype(_TINY, dtype, repeats=1)
        assert rec["openvino"] not in ("not installed", "") and rec["unet_gflop"] > 0
        for part in ("unet", "vae"):
            _check_engine(rec, part, "openvino", tol)


@pytest.mark.slow   # compiles the tiny UNet and decoder with Inductor
def test_cpu_mode_times_the_frozen_compiled_path():
    # in a process of its own: the compiled forward code is shared by every UNet of a process, and Inductor keeps
    # the place of its precompiled headers, so a later test's `--compile` of another model in the same process
    # failed (a recompile with symbolic sizes that frozen convolutions cannot lower; headers deleted below)
    import subprocess
    import sys
    code = ("import json, torch; from benchmarks.cpu import _TINY, bench_dtype; "
            "print(json.dumps(bench_dtype(_TINY, torch.float32, repeats=1, compiled=True)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    rec = json.loads(done.stdout.strip().splitlines()[-1])
    for part in ("unet", "vae"):
        _check_engine(rec, part, "compiled", 1e-3)
        assert f"{part}_compiled_break_even_calls" in rec
    # Inductor's precompiled headers ignore TORCHINDUCTOR_CACHE_DIR (see tests/test_compile.py): a cache by design
    for headers in Path(tempfile.gettempdir()).glob("torchinductor_*"):
        shutil.rmtree(headers)
