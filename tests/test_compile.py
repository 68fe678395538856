"""`--compile`: the compiled UNet gives the eager image (within float rounding) and leaves its cache on disk."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.app import app

runner = CliRunner()


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    from ldmcli.loading.compiling import cache_dir
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ldmcli" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "chosen"))
    assert cache_dir() == tmp_path / "chosen"


@pytest.mark.slow   # about a minute on 2 cores: Inductor compiles the UNet's C++ kernels
def test_compiled_unet_draws_the_eager_image_and_caches(tmp_path, sd1_file, monkeypatch):
    pytest.importorskip("torch._inductor")
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    # set, then unset: monkeypatch then also undoes the TORCHINDUCTOR_CACHE_DIR that compile_unet sets for the
    # process, which would otherwise point later tests at this test's tmp_path
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    args = ["txt2img", "a red circle", "--ckpt", str(sd1_file), "--steps", "3", "--seed", "4", "-q"]
    eager = runner.invoke(app, args + ["-o", str(tmp_path / "eager.png")], catch_exceptions=False)
    compiled = runner.invoke(app, args + ["-o", str(tmp_path / "compiled.png"), "--compile"],
                             catch_exceptions=False)
    assert eager.exit_code == 0 and compiled.exit_code == 0, compiled.stderr
    a = np.asarray(Image.open(tmp_path / "eager.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "compiled.png"), dtype=np.int16)
    assert np.abs(a - b).max() <= 1          # fused kernels round differently; the picture is the same
    assert any((cache / "ldmcli" / "inductor").rglob("*")), "no compiled code cached"
    # Inductor's precompiled C++ headers ignore TORCHINDUCTOR_CACHE_DIR (torch/_inductor/codecache.py, _HEADER_DIR):
    # they go to <temp folder>/torchinductor_<user>, here the session's private one (conftest.py); a cache by
    # design, removed so that the session-end check sees only what forgot to clean up
    for headers in Path(tempfile.gettempdir()).glob("torchinductor_*"):
        shutil.rmtree(headers)
