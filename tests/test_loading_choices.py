"""Loading choices as the reference makes them: EMA per family (`use_ema` of its config) with --ema/--no-ema, and
the detection ties told apart by the official folder layout."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.app import app
from ldmcli.loading import load
from ldmcli.loading.detect import _break_tie
from ldmcli.loading.presets import PRESETS, PLAIN_WEIGHTS, ema_default
from tiny import SD1_TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def ldm(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _add_ema(sd):
    sd.update({"model_ema." + k[len("model."):].replace(".", ""): v + 0.01 for k, v in list(sd.items())
               if k.startswith("model.diffusion_model.")})


def _unet_weight(model):
    return model.model.diffusion_model.out[2].weight


@pytest.mark.parametrize("family, default_ema", [("sd1", False), ("tiny-ldm-task", True)])
def test_ema_default_follows_the_family(tiny_ckpt, family, default_ema):
    path = tiny_ckpt(SD1_TINY.with_(name=family), seed=6, edit=_add_ema)
    plain, rec_plain = load(str(path), device="cpu", use_ema=False)
    ema, rec_ema = load(str(path), device="cpu", use_ema=True)
    auto, rec_auto = load(str(path), device="cpu")
    assert not rec_plain.ema and rec_ema.ema and rec_auto.ema == default_ema
    assert not torch.equal(_unet_weight(plain), _unet_weight(ema))
    assert torch.equal(_unet_weight(auto), _unet_weight(ema if default_ema else plain))


def test_family_table_matches_the_reference_configs(tmp_path):
    # use_ema: False in v1-inference, v2-inference(-v), v2-inpainting, x4-upscaling, txt2img-1p4B-eval, cin256-v2
    assert PLAIN_WEIGHTS <= set(PRESETS)
    for name in ("sd1", "sd2-base", "sd2-v", "sd2-inpainting", "sd-x4-upscaler", "ldm-txt2img-f8-large",
                 "ldm-cin256-v2", "sd1-inpainting"):
        assert not ema_default(PRESETS[name]), name
    for name in ("ldm-bsr-sr", "ldm-inpainting-big", "ldm-layout2img-openimages256", "ldm-semantic-synthesis256",
                 "ldm-cin256", "ldm-celeba256", "ldm-lsun-churches256", "ldm-text2img256"):
        assert ema_default(PRESETS[name]), name
    yes, no = tmp_path / "a.yaml", tmp_path / "b.yaml"
    yes.write_text("model:\n  params:\n    linear_start: 0.1\n")           # unset: DDPM's default, True
    no.write_text("model:\n  params:\n    use_ema: False\n")
    assert ema_default(PRESETS["sd1"], str(yes)) and not ema_default(PRESETS["ldm-cin256"], str(no))


def test_cli_ema_tristate_recorded_and_replayed(tmp_path, tiny_ckpt):
    path = tiny_ckpt(SD1_TINY.with_(name="sd1"), seed=6, edit=_add_ema)
    outs = {}
    for flag in ([], ["--ema"], ["--no-ema"]):
        out = tmp_path / f"{''.join(flag) or 'default'}.png"
        r = ldm("txt2img", "x", "--ckpt", path, "--steps", 2, "-o", out, *flag)
        assert r.exit_code == 0, r.stderr
        img = Image.open(out)
        outs[tuple(flag)] = (img.tobytes(), json.loads(img.info["ldmcli"])["ema"])
    assert outs[()] == outs[("--no-ema",)] and outs[()][1] is False
    assert outs[("--ema",)][1] is True and outs[("--ema",)][0] != outs[()][0]
    r = ldm("replay", tmp_path / "--ema.png", "-o", tmp_path / "r", "-q")
    assert r.exit_code == 0, r.stderr
    assert Image.open(r.stdout.split()[0]).tobytes() == outs[("--ema",)][0]


SEMANTIC = ["ldm-semantic-synthesis256", "ldm-semantic-synthesis512"]
FACES = ["ldm-celeba256", "ldm-ffhq256", "ldm-lsun-bedrooms256"]


@pytest.mark.parametrize("matches, path, family", [
    (SEMANTIC, "models/ldm/semantic_synthesis512/model.ckpt", "ldm-semantic-synthesis512"),
    (SEMANTIC, "models/ldm/semantic_synthesis256/model.ckpt", "ldm-semantic-synthesis256"),
    (SEMANTIC, "models/ldm/semantic_synthesis/model.ckpt", "ldm-semantic-synthesis256"),
    (SEMANTIC, "x/semantic_512.ckpt", "ldm-semantic-synthesis512"),
    (SEMANTIC, "models/ldm/semantic_synthesis512/landscapes256.ckpt", "ldm-semantic-synthesis256"),  # file first
    (FACES, "models/ldm/ffhq256/model.ckpt", "ldm-ffhq256"),
    (FACES, "models/ldm/lsun_beds256/model.ckpt", "ldm-lsun-bedrooms256"),
    (FACES, "models/ldm/celeba256/model.ckpt", "ldm-celeba256"),
    (FACES, "models/ldm/ffhq256/lsun_bedrooms.ckpt", "ldm-lsun-bedrooms256"),
    (FACES, "somewhere/model.ckpt", "ldm-celeba256"),
])
def test_ties_read_the_official_folder_names(matches, path, family):
    assert _break_tie(matches, path, None) == family


def test_grey_mask_values_are_thresholded_unless_feathering_is_asked():
    import numpy as np
    from ldmcli.sampling.settings import SamplerSettings
    from ldmcli.tasks.inpaint import inpaint
    from tiny import tiny_model
    model = tiny_model(SD1_TINY, seed=2)
    g = torch.Generator().manual_seed(0)
    image = Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy())
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 4:12] = 0.7                      # repainted: >= 0.5
    mask[0:4, :] = 0.3                          # kept: < 0.5
    fast = SamplerSettings(sampler="ddim", steps=2)
    grey = np.asarray(inpaint(model, image, mask, "x", seeds=[1], settings=fast)[0])
    binary = np.asarray(inpaint(model, image, (mask >= 0.5).astype(np.float32), "x", seeds=[1], settings=fast)[0])
    assert np.array_equal(grey, binary)         # LDM's inpainting thresholds the mask at 0.5
    assert np.array_equal(grey[0:4], np.asarray(image)[0:4])
    feathered = np.asarray(inpaint(model, image, mask, "x", mask_blur=1.0, seeds=[1], settings=fast)[0])
    assert not np.array_equal(feathered[4:12, 4:12], binary[4:12, 4:12])   # soft values blend when asked
    assert not np.array_equal(feathered[0:4], np.asarray(image)[0:4])
