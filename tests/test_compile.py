"""`--compile`: the compiled UNet gives the eager image (within float rounding) and leaves its cache on disk."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ldmcli.loading.checkpoint import config_metadata, save_safetensors
from ldmcli.cli.app import app
from tiny import SD1_TINY, compvis_state_dict, tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors"
    save_safetensors(compvis_state_dict(tiny_model(SD1_TINY, seed=5)), path, config_metadata(SD1_TINY))
    return path


def test_compiled_unet_draws_the_eager_image_and_caches(tmp_path, sd1_file, monkeypatch):
    pytest.importorskip("torch._inductor")
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    args = ["txt2img", "a red circle", "--ckpt", str(sd1_file), "--steps", "3", "--seed", "4", "-q"]
    eager = runner.invoke(app, args + ["-o", str(tmp_path / "eager.png")], catch_exceptions=False)
    compiled = runner.invoke(app, args + ["-o", str(tmp_path / "compiled.png"), "--compile"],
                             catch_exceptions=False)
    assert eager.exit_code == 0 and compiled.exit_code == 0, compiled.stderr
    a = np.asarray(Image.open(tmp_path / "eager.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "compiled.png"), dtype=np.int16)
    assert np.abs(a - b).max() <= 1          # fused kernels round differently; the picture is the same
    assert any((cache / "ldmcli" / "inductor").rglob("*")), "no compiled code cached"
