"""The benchmark's CPU smoke mode (slow; `make test-all`): every config runs on both sides, the JSON record carries
the figures the README table needs, and the final latents agree with diffusers. The default run checks that the
benchmark still imports against ldmcli and parses its smoke options."""
import json

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
