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
