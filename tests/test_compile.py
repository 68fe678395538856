"""`--compile`: the compiled UNet gives the eager image (within float rounding) and leaves its cache on disk."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

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
    # Inductor's precompiled C++ headers, which it would put in <temp folder>/torchinductor_<user> whatever
    # TORCHINDUCTOR_CACHE_DIR says, are in the same cache
    assert not list(Path(tempfile.gettempdir()).glob("torchinductor_*"))
    assert any((cache / "ldmcli" / "inductor" / "precompiled_headers").glob("*.gch"))


@pytest.fixture
def bare_unet(monkeypatch):
    """A stand-in model whose UNet compiles lazily (no compilation runs), with Inductor's header folder restored
    after the test."""
    codecache = pytest.importorskip("torch._inductor.codecache")
    import torch
    for name in ("_HEADER_DIR", "_HEADER_LOCK_DIR"):
        monkeypatch.setattr(codecache, name, getattr(codecache, name))    # undone after the test
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2)))


def test_compile_points_inductors_headers_into_its_cache(tmp_path, monkeypatch, bare_unet):
    """Without a compilation: what compile_unet sets before the first step."""
    from torch._inductor import codecache
    from ldmcli.loading.compiling import compile_unet
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "chosen"))
    assert compile_unet(bare_unet) == tmp_path / "chosen"
    assert codecache._HEADER_DIR == str(tmp_path / "chosen" / "precompiled_headers")
    assert codecache._HEADER_LOCK_DIR.startswith(codecache._HEADER_DIR)


def test_an_empty_cache_variable_counts_as_unset(tmp_path, monkeypatch, bare_unet):
    from ldmcli.loading.compiling import compile_unet
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")
    where = compile_unet(bare_unet)
    assert where == tmp_path / "xdg" / "ldmcli" / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(where)      # Inductor would read "" as the working folder


def test_compile_freezes_the_weights_on_the_cpu_when_asked(tmp_path, monkeypatch, bare_unet):
    """freeze=True compiles with Inductor's freezing on the CPU, and marks the model; elsewhere (here: the meta
    device, standing in for a GPU) and without freeze=True, the default mode."""
    import torch
    from ldmcli.loading.compiling import compile_unet
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    for device, freeze, frozen in (("cpu", True, True), ("cpu", False, False), ("meta", True, False)):
        asked = []
        bare_unet.model.diffusion_model = torch.nn.Linear(2, 2, device=device)
        bare_unet.model.diffusion_model.compile = lambda **kw: asked.append(kw)   # records, compiles nothing
        compile_unet(bare_unet, freeze=freeze)
        assert bare_unet.frozen_unet is frozen
        assert asked == [{"options": {"freezing": True} if frozen else None}]
