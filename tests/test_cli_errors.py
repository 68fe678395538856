"""The real `ldm` entry point: Click's own usage errors come out as one `ldm: error:` line with exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))


def ldm(*args):
    return subprocess.run([sys.executable, "-m", "ldmcli", *args], capture_output=True, text=True, env=ENV,
                          timeout=60)


@pytest.mark.parametrize("argv, message", [
    (["txt2img", "--steps", "abc", "x"], "Invalid value for '--steps'"),
    (["txt2imgg"], "No such command 'txt2imgg'. Did you mean 'txt2img'?"),
    (["txt2img", "--no-such-option", "x"], "No such option: --no-such-option"),
    (["txt2img", "x", "--steps"], "requires an argument"),
])
def test_click_usage_errors_are_one_line(argv, message):
    r = ldm(*argv)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ldm: error: ") and message in lines[0], r.stderr
    assert "--help" in lines[0]


def test_version_and_bare_help():
    from ldmcli import __version__
    r = ldm("--version")
    assert r.returncode == 0 and r.stdout.strip() == __version__
    r = ldm()
    assert r.returncode == 0 and "txt2img" in r.stdout and r.stderr == ""


def test_sampler_names_are_checked_before_anything_loads(tmp_path, monkeypatch):
    """An unknown sampler is refused while parsing (the checkpoint is never opened), and a job file's unknown
    sampler fails its job before the model loads."""
    from typer.testing import CliRunner
    import ldmcli.cli.runner as runner
    from ldmcli.cli.app import app
    r = CliRunner().invoke(app, ["txt2img", "a", "--sampler", "magic", "--ckpt", str(tmp_path / "absent.ckpt")])
    assert r.exit_code == 2 and "unknown sampler 'magic'" in r.stderr and "absent" not in r.stderr
    monkeypatch.setattr(runner, "load_model", lambda *a: pytest.fail("the model was loaded"))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a", "sampler": "magic"}\n')
    r = CliRunner().invoke(app, ["txt2img", "--from-file", str(jobs), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "job 1: unknown sampler 'magic'" in r.stderr
