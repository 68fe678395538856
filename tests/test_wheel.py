"""The package as a user installs it: a wheel, installed into a fresh virtual environment outside the checkout,
carries the embedded defaults, verifies them and runs every generating subcommand on them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, cwd, env, timeout=300):
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(ldm executable, folder to run in, env): the wheel of this checkout in a new venv whose dependencies
    (torch & co.) come from the test environment's site-packages through a path entry — its .pth files, among them
    the checkout's editable install, are not run, so `ldmcli` can only come from the wheel."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    base = tmp_path_factory.mktemp("wheel")
    build = _run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation", "-q", "-w",
                  base / "dist"], base, dict(os.environ))
    assert build.returncode == 0, build.stderr
    wheel = next((base / "dist").glob("ldmcli-*.whl"))
    venv = base / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv], base, dict(os.environ)).returncode == 0
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base,
                     dict(os.environ)).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], base,
               dict(os.environ))
    assert pip.returncode == 0, pip.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LDM_WEIGHTS_DIR")}
    work = base / "work"
    work.mkdir()
    return venv / "bin" / "ldm", work, env


def test_wheel_ships_the_defaults_and_verifies_them(installed):
    ldm, work, env = installed
    where = _run([ldm.parent / "python", "-c", "import ldmcli; print(ldmcli.__file__)"], work, env)
    assert str(ROOT) not in where.stdout, where.stdout          # the installed copy, not the checkout
    listed = _run([ldm, "weights", "list"], work, env)
    assert listed.returncode == 0 and listed.stdout.count("present") >= 5, listed.stdout + listed.stderr
    verified = _run([ldm, "weights", "verify"], work, env)
    assert verified.returncode == 0 and verified.stdout.count("\tok\t") >= 5, verified.stdout + verified.stderr


def test_every_subcommand_runs_on_the_defaults_from_the_wheel(installed):
    ldm, work, env = installed
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(work / "img.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(work / "mask.png")
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(work / "small.png")
    seg = np.zeros((32, 32), np.uint8)
    seg[4:20, 6:26] = 1
    Image.fromarray(seg).save(work / "seg.png")
    runs = {
        "txt2img": ["txt2img", "a red circle", "--steps", 4],
        "inpaint": ["inpaint", "img.png", "a blue square", "--mask", "mask.png", "--steps", 4],
        "superres": ["superres", "small.png", "--scale", 4, "--steps", 4],
        "layout2img": ["layout2img", "--box", "red circle 0.1 0.1 0.5 0.5", "--steps", 4],
        "semantic2img": ["semantic2img", "seg.png", "--steps", 4],
    }
    for task, argv in runs.items():
        r = _run([ldm, *argv, "-o", f"{task}.png"], work, env)
        assert r.returncode == 0, f"{task}: {r.stderr}"
        assert r.stdout.strip() == f"{task}.png" and Image.open(work / f"{task}.png").size[0] > 0
