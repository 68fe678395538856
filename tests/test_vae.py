"""--vae: a standalone first stage in the CompVis (with or without prefix) or diffusers layout replaces the
checkpoint's; one that does not fit is refused in one line before sampling; metadata and replay."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ldmcli.cli.app import app
from ldmcli.errors import CheckpointError
from ldmcli.loading import load
from ldmcli.loading.checkpoint import save_safetensors
from tiny import SD1_TINY, TINY_VAE, compvis_state_dict, randomize_, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def ldm(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _compvis_vae(path, prefix="", seed=8, cfg=SD1_TINY):
    sd = {prefix + k[len("first_stage_model."):]: v for k, v in compvis_state_dict(tiny_model(cfg, seed)).items()
          if k.startswith("first_stage_model.")}
    save_safetensors(sd, path)
    return sd


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_compvis_layout_replaces_the_first_stage(tmp_path, sd1_file, prefix):
    path = tmp_path / "vae.safetensors"
    sd = _compvis_vae(path, prefix)
    model, rec = load(str(sd1_file), device="cpu", vae=str(path))
    assert rec.vae == str(path)
    for k, v in model.first_stage_model.state_dict().items():
        assert torch.equal(v, sd[prefix + k]), k
    plain, _ = load(str(sd1_file), device="cpu")
    assert torch.equal(plain.model.diffusion_model.out[2].weight, model.model.diffusion_model.out[2].weight)


@pytest.mark.parametrize("old_names", [False, True])
def test_diffusers_layout_decodes_as_diffusers_does(tmp_path, sd1_file, old_names):
    diffusers = pytest.importorskip("diffusers")
    f = TINY_VAE
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64],
                                  layers_per_block=f.num_res_blocks, latent_channels=4, norm_num_groups=32).eval()
    randomize_(vae, seed=3)
    sd = dict(vae.state_dict())
    if old_names:   # diffusers < 0.14 files: query/key/value/proj_attn
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            sd = {k.replace(f"attentions.0.{new}.", f"attentions.0.{old}."): v for k, v in sd.items()}
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_safetensors(sd, path)
    model, _ = load(str(sd1_file), device="cpu", vae=str(path))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ours = model.decode_first_stage(z)
        theirs = vae.decode(z / model.scale_factor).sample
        ours_mean = model.encode_first_stage(x, sample=False) / model.scale_factor
        theirs_mean = vae.encode(x).latent_dist.mode()
    assert (ours - theirs).abs().max() <= 1e-4 and ours.std() > 1e-3
    assert (ours_mean - theirs_mean).abs().max() <= 1e-4


def test_wrong_vae_refused_in_one_line_before_sampling(tmp_path, sd1_file):
    wrong = tmp_path / "wrong.safetensors"
    _compvis_vae(wrong, cfg=SD1_TINY.with_(first_stage=TINY_VAE.__class__(**{**TINY_VAE.__dict__, "ch": 64})))
    with pytest.raises(CheckpointError, match="does not fit"):
        load(str(sd1_file), device="cpu", vae=str(wrong))
    unet_only = tmp_path / "unet.safetensors"
    save_safetensors({"foo.weight": torch.zeros(2)}, unet_only)
    out = tmp_path / "o.png"
    for bad, says in ((wrong, "does not fit"), (unet_only, "lacks"), (tmp_path / "none.safetensors", "not found")):
        r = ldm("txt2img", "x", "--ckpt", sd1_file, "--vae", bad, "--steps", 2, "-o", out)
        assert r.exit_code == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists()


def test_cli_vae_metadata_and_replay(tmp_path, sd1_file):
    path = tmp_path / "my-vae.safetensors"
    _compvis_vae(path)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert ldm("txt2img", "x", "--ckpt", sd1_file, "--steps", 2, "-o", a, "-q").exit_code == 0
    r = ldm("txt2img", "x", "--ckpt", sd1_file, "--vae", path, "--steps", 2, "-o", b, "-q")
    assert r.exit_code == 0, r.stderr
    img = Image.open(b)
    assert img.tobytes() != Image.open(a).tobytes()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert f"VAE hash: {digest}, VAE: my-vae.safetensors" in img.info["parameters"]
    rec = json.loads(img.info["ldmcli"])
    assert rec["vae"] == "my-vae.safetensors" and rec["vae_hash"] == digest
    r = ldm("replay", b, "-o", tmp_path / "r", "-q")
    assert r.exit_code == 0, r.stderr
    assert Image.open(r.stdout.split()[0]).tobytes() == img.tobytes()
