"""`ldm txt2img` end to end on small random-weight checkpoints written in the SD layouts."""
from __future__ import annotations

import json
import subprocess
import sys

import torch
from PIL import Image
from typer.testing import CliRunner

from ldmcli.loading.checkpoint import save_safetensors
from ldmcli.cli.app import app
from tiny import SD1_TINY, SD2_TINY, compvis_state_dict, tiny_model

runner = CliRunner()


def ldm(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_txt2img_safetensors_writes_pngs_and_prints_paths(tmp_path, sd1_file):
    out = tmp_path / "out"
    r = ldm("txt2img", "a red circle", "--ckpt", sd1_file, "--steps", 3, "-n", 2, "--seed", 7, "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    paths = r.stdout.split()
    assert len(paths) == 2 and all(p.startswith(str(out)) for p in paths)
    for p in paths:
        img = Image.open(p)
        img.load()
        assert img.size == (16, 16) and img.mode == "RGB"
        assert json.loads(img.info["ldmcli"])["prompt"] == "a red circle"
    assert r.stderr == ""   # --quiet


def test_txt2img_seed_reproduces_and_resume_skips(tmp_path, sd1_file):
    a, b = tmp_path / "a", tmp_path / "b"
    r1 = ldm("txt2img", "x", "--ckpt", sd1_file, "--steps", 2, "--seed", 3, "-o", a, "-q")
    r2 = ldm("txt2img", "x", "--ckpt", sd1_file, "--steps", 2, "--seed", 3, "-o", b, "-q")
    pa, pb = r1.stdout.strip(), r2.stdout.strip()
    assert Image.open(pa).tobytes() == Image.open(pb).tobytes()
    r3 = ldm("txt2img", "x", "--ckpt", sd1_file, "--steps", 2, "--seed", 3, "-o", a, "--json")
    assert r3.exit_code == 0 and json.loads(r3.stdout)["skipped"] is True
    assert json.loads(r3.stdout)["path"] == pa


def test_another_prompt_into_the_same_folder_is_not_mistaken_for_done(tmp_path, sd1_file):
    """Output names carry the job's fingerprint: a second prompt with the same seed makes its own file."""
    r1 = ldm("txt2img", "a red circle", "--ckpt", sd1_file, "--steps", 2, "--seed", 3, "-o", tmp_path, "-q")
    r2 = ldm("txt2img", "a blue star", "--ckpt", sd1_file, "--steps", 2, "--seed", 3, "-o", tmp_path, "-q")
    p1, p2 = r1.stdout.strip(), r2.stdout.strip()
    assert p1 != p2 and len(list(tmp_path.glob("*.png"))) == 2
    assert json.loads(Image.open(p2).info["ldmcli"])["prompt"] == "a blue star"


TINY_SD2_YAML = """
model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    parameterization: "v"
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: 8
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    scale_factor: 0.18215
    use_ema: False # we set this to false because this is an inference only config
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        use_fp16: True
        image_size: 32 # unused
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [ 2, 1 ]
        num_res_blocks: 2
        channel_mult: [ 1, 2 ]
        num_head_channels: 8 # need to fix for flash-attn
        use_spatial_transformer: True
        use_linear_in_transformer: True
        transformer_depth: 1
        context_dim: 32
        legacy: False
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 32
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult:
          - 1
          - 2
          num_res_blocks: 2
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""


def test_txt2img_lightning_ckpt_with_ema_and_yaml_config(tmp_path, monkeypatch):
    """A Lightning-style .ckpt ({"state_dict": ...} with model_ema.*) of an SD2-style v model, configured by an
    original-format YAML. Its `use_ema: False` picks the plain weights by default, as the reference does; --ema
    picks the EMA ones."""
    import ldmcli.loading.yaml_config as yc
    cfg = yc.config_from_yaml(TINY_SD2_YAML)
    # the tiny OpenCLIP tower: the YAML's FrozenOpenCLIPEmbedder means ViT-H (1024 wide); shrink it for the test
    monkeypatch.setattr(yc, "config_from_yaml", lambda *a, **k: cfg.with_(cond_stage=SD2_TINY.cond_stage))
    assert cfg.parameterization == "v" and cfg.unet.use_linear_in_transformer
    model = tiny_model(cfg.with_(cond_stage=SD2_TINY.cond_stage), seed=9)
    sd = compvis_state_dict(model)
    ema = {"model_ema." + k[len("model."):].replace(".", ""): v + 0.01 for k, v in sd.items()
           if k.startswith("model.diffusion_model.")}
    path = tmp_path / "tiny-sd2.ckpt"
    torch.save({"state_dict": {**sd, **ema}, "global_step": 10}, path)
    yaml = tmp_path / "tiny-sd2.yaml"
    yaml.write_text(TINY_SD2_YAML)
    outs = {}
    for flag in ([], ["--ema"]):
        out = tmp_path / f"o{len(flag)}.png"
        r = ldm("txt2img", "a blue star", "--ckpt", path, "--config", yaml, "--steps", 2, "-o", out, *flag)
        assert r.exit_code == 0, r.stderr
        assert "EMA" in r.stderr if flag else "plain" in r.stderr
        outs[len(flag)] = Image.open(out).tobytes()
    assert outs[0] != outs[1]


def test_missing_ckpt_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_WEIGHTS_DIR", str(tmp_path))
    r = ldm("txt2img", "x", "--ckpt", tmp_path / "nope.safetensors")
    assert r.exit_code == 2 and "checkpoint not found" in r.stderr and len(r.stderr.splitlines()) == 1
    r = ldm("txt2img", "x", "--ckpt", "~nosuchuserxyz/m.ckpt", "-o", tmp_path / "x.png")  # a home no one has
    assert r.exit_code == 2 and "checkpoint not found" in r.stderr and len(r.stderr.splitlines()) == 1


def test_pickle_that_runs_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "x": Evil()}, path)
    r = ldm("txt2img", "x", "--ckpt", path)
    assert r.exit_code == 2 and "refusing to load" in r.stderr and not marker.exists()
    assert len(r.stderr.strip().splitlines()) == 1


def test_truncated_and_unet_only_files_get_one_line_diagnosis(tmp_path, sd1_file):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(sd1_file.read_bytes()[:5000])
    r = ldm("txt2img", "x", "--ckpt", cut)
    assert r.exit_code == 2 and "truncated or corrupt" in r.stderr
    unet_only = tmp_path / "unet.safetensors"
    sd = compvis_state_dict(tiny_model(SD1_TINY))
    save_safetensors({k[len("model.diffusion_model."):]: v for k, v in sd.items()
                      if k.startswith("model.diffusion_model.")}, unet_only)
    r = ldm("txt2img", "x", "--ckpt", unet_only)
    assert r.exit_code == 2 and "UNet-only" in r.stderr, r.stderr


def test_help_is_fast():
    code = "import time; t = time.perf_counter(); import ldmcli.cli.app; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) < 0.3
    loaded = subprocess.run([sys.executable, "-c", "import sys, ldmcli.cli.app; print(sorted(sys.modules))"],
                            capture_output=True, text=True).stdout
    # the command line reads the world's vocabulary (train's help), not its renderer or evaluator (nor numpy)
    for heavy in ("torch", "numpy", "ldmcli.world.render", "ldmcli.world.metrics"):
        assert f"'{heavy}'" not in loaded, heavy


def test_info_and_replay_regenerate_the_same_image(tmp_path, sd1_file):
    r = ldm("txt2img", "a green star", "--ckpt", sd1_file, "--steps", 3, "--seed", 21, "--sampler", "euler_a",
            "-o", tmp_path / "a", "-q")
    first = r.stdout.strip()
    info = ldm("info", first, "--json")
    rec = json.loads(info.stdout)
    assert rec["ldmcli"]["seed"] == 21 and rec["parameters"]["Sampler"] == "Euler a"
    again = ldm("replay", first, "-o", tmp_path / "b", "-q")
    assert again.exit_code == 0, again.stderr
    assert Image.open(again.stdout.strip()).tobytes() == Image.open(first).tobytes()


def test_stdout_png_and_batch_size_independence(tmp_path, sd1_file):
    r = ldm("txt2img", "x", "--ckpt", sd1_file, "--steps", 2, "--seed", 4, "-n", 3, "--batch-size", 3,
            "-o", tmp_path / "batch", "-q")
    batch = r.stdout.split()
    r1 = ldm("txt2img", "x", "--ckpt", sd1_file, "--steps", 2, "--seed", 5, "-o", tmp_path / "one.png", "-q")
    assert r1.exit_code == 0
    # image 1 of the batch (seed 4+1) equals the single run with seed 5
    assert Image.open(batch[1]).tobytes() == Image.open(tmp_path / "one.png").tobytes()
