"""The warning for generative tasks asked for outputs at least twice the model's training size (cli/validate.py's
`size_warning`, printed once a run by the runner), where the embedded defaults draw noise and dots."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.app import app
from ldmcli.cli.jobs import Job
from ldmcli.cli.validate import job_size_warning, output_size, size_warning

runner = CliRunner()
WARNING = ("ldmcli-default-txt2img was trained at 32x32 px; at 64x64 px it may not draw coherent images "
           "(it was never trained at this size)")


def ldm(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _cfg(name="tiny-32", latent_size=8, factor=4):
    """A config trained at latent_size * factor px (32 by default), as `size_warning` reads it."""
    return SimpleNamespace(name=name, latent_size=latent_size, first_stage=SimpleNamespace(downsample_factor=factor),
                           unet=SimpleNamespace(channel_mult=(1, 2)))


@pytest.mark.parametrize("task", ["txt2img", "layout2img", "semantic2img", "img2img", "sample"])
def test_generative_tasks_warn_from_twice_the_training_size(task):
    cfg = _cfg()
    assert size_warning(task, cfg, 63, 63) is None
    assert size_warning(task, cfg, 32, 32) is None and size_warning(task, cfg, None, None) is None
    assert size_warning(task, cfg, 64, 64) == ("tiny-32 was trained at 32x32 px; at 64x64 px it may not draw "
                                               "coherent images (it was never trained at this size)")
    assert "at 64x16 px" in size_warning(task, cfg, 16, 64)    # the longer side counts; width x height
    assert "at 32x64 px" in size_warning(task, cfg, 64, None)  # an unset side is the native one


@pytest.mark.parametrize("task", ["superres", "inpaint"])
def test_restoring_tasks_never_warn(task):
    assert size_warning(task, _cfg(), 1024, 1024) is None


def test_any_checkpoint_warns_at_twice_its_size():
    sd1 = _cfg("sd1", latent_size=64, factor=8)     # trained at 512
    assert size_warning("txt2img", sd1, 768, 768) is None
    assert "trained at 512x512 px; at 1024x1024 px" in size_warning("txt2img", sd1, 1024, 1024)


def test_semantic2img_uses_the_map_size(tmp_path):
    Image.new("L", (80, 40)).save(tmp_path / "big.png")
    Image.new("L", (40, 24)).save(tmp_path / "small.png")
    big = Job(segmap=str(tmp_path / "big.png"), height=16, width=16)   # -H/-W do not size semantic2img
    assert output_size("semantic2img", _cfg(), big) == (40, 80)
    assert "at 80x40 px" in job_size_warning("semantic2img", _cfg(), big)
    assert job_size_warning("semantic2img", _cfg(), Job(segmap=str(tmp_path / "small.png"), height=99)) is None
    assert job_size_warning("semantic2img", _cfg(), Job(segmap=str(tmp_path / "missing.png"))) is None  # no raise


def test_img2img_uses_the_image_size_unless_given(tmp_path):
    Image.new("RGB", (70, 20)).save(tmp_path / "wide.png")
    job = Job(image=str(tmp_path / "wide.png"))
    assert output_size("img2img", _cfg(), job) == (16, 64)      # rounded down to the model's multiple of 8
    assert "at 64x16 px" in job_size_warning("img2img", _cfg(), job)
    job.height, job.width = 32, 32
    assert job_size_warning("img2img", _cfg(), job) is None
    assert job_size_warning("superres", _cfg(), Job(image=str(tmp_path / "wide.png"))) is None


def test_cli_warns_once_for_the_default_at_64_px_and_still_writes(tmp_path):
    out = tmp_path / "out"
    r = ldm("txt2img", "a red circle", "-H", 64, "-W", 64, "--n-samples", 2, "--steps", 1, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("warning:") == 1 and f"ldm: warning: {WARNING}\n" in r.stderr
    paths = r.stdout.split()
    assert len(paths) == 2 and all(Image.open(p).size == (64, 64) for p in paths)
    one = ldm("txt2img", "a red circle", "-H", 64, "-W", 64, "--steps", 1, "-q", "-o", tmp_path / "x.png")
    assert one.exit_code == 0 and (tmp_path / "x.png").is_file()
    assert one.stderr == f"ldm: warning: {WARNING}\n"     # shown even with --quiet


def test_cli_warns_once_per_size_across_jobs(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a red circle"}\n{"prompt": "a blue square"}\n'
                    '{"prompt": "a red circle", "height": 32}\n')
    r = ldm("txt2img", "--from-file", jobs, "-H", 64, "-W", 64, "--steps", 1, "-q", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("warning:") == 2 and r.stderr.count(WARNING) == 1
    assert "at 64x32 px" in r.stderr and len(r.stdout.split()) == 3


def test_cli_no_warning_at_the_training_size(tmp_path):
    r = ldm("txt2img", "a red circle", "-H", 32, "-W", 32, "--steps", 1, "-o", tmp_path / "x.png")
    assert r.exit_code == 0, r.stderr
    assert "warning" not in r.stderr and (tmp_path / "x.png").is_file()
