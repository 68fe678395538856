"""The superres-decoder stage (ldmcli/train/prediction_decoder_stage.py): the superres export's decoder side is tuned
on the UNet's own one-step latents and the encoder's; the UNet and the encoder stay bit for bit; a resumed stage
returns at once, writes its decoder back into a file exported again, and refuses another UNet."""
from __future__ import annotations

import shutil

import pytest
import torch

from ldmcli.errors import UsageError
from ldmcli.train import recipes as R
from ldmcli.train.run import TrainOptions, train
from tests.test_train import Recorder, tiny_recipe

STAGE = "superres-decoder"


def _run(out, task, **kw):
    recorder = Recorder()
    written = train(TrainOptions(task=task, out=str(out), device="cpu", seed=3, **kw), recorder, recipe=tiny_recipe())
    return written, recorder


@pytest.fixture(scope="module")
def superres_run(tmp_path_factory):
    """A run through the superres stage, and a copy of its superres export before any decoder tuning."""
    out = tmp_path_factory.mktemp("run")
    for task in ("photo-autoencoder", "superres"):
        _run(out, task)
    shutil.copy(out / "superres.safetensors", out / "before.safetensors")
    return out


def _sd(path):
    """(tensors, header) of a file, copied out of the memory map: the test overwrites the files it read."""
    from ldmcli.loading.checkpoint import read_checkpoint
    sd, meta = read_checkpoint(path)
    return {k: v.clone() for k, v in sd.items()}, meta


def test_the_stage_comes_after_superres_in_both_the_recipe_and_make_weights():
    from pathlib import Path
    assert R.TASKS.index(STAGE) > R.TASKS.index("superres")
    assert R.recipe("cpu").stages[STAGE].image_size == 64 and STAGE not in R.recipe("gpu").stages
    assert R.recipe("cpu").stages[STAGE].back_projected_loss
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    stages = makefile.split("STAGES :=")[1].splitlines()[0].split()
    assert stages.index(STAGE) > stages.index("superres")
    assert f"runs/default/.done-{STAGE}: runs/default/.done-superres" in makefile


def test_only_the_decoder_side_of_the_superres_export_changes(superres_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(superres_run, run)
    written, recorder = _run(run, STAGE)
    assert written[STAGE] == run / "superres.safetensors"
    before, meta_before = _sd(run / "before.safetensors")
    after, meta = _sd(written[STAGE])
    assert before.keys() == after.keys()
    decoder = [k for k in before if k.startswith(("first_stage_model.decoder.", "first_stage_model.post_quant_conv."))]
    assert decoder and not all(torch.equal(before[k], after[k]) for k in decoder)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in decoder)     # UNet, encoder: as they were
    assert all(after[k].dtype == torch.float16 for k in decoder)
    assert meta["ldmcli_version"] == (meta_before["ldmcli_version"] + "; decoder tuned on its own latents: "
                                      "task=superres-decoder recipe=tiny steps=6 seed=3 data=world")
    assert sum(recorder.advances[STAGE]) == 6
    from ldmcli.loading.checkpoint import load_model
    from ldmcli.tasks.superres import superres
    from PIL import Image
    model, _ = load_model(written[STAGE])
    assert superres(model, Image.new("RGB", (4, 4), (90, 20, 200)), seeds=[0])[0].size == (16, 16)

    # resumed when finished: at once; after superres exported again: the tuned decoder written back, no training
    again, recorder = _run(run, STAGE, resume=True)
    assert any("already trained" in line for line in recorder.lines) and STAGE not in recorder.advances
    shutil.copy(run / "before.safetensors", run / "superres.safetensors")
    _, recorder = _run(run, STAGE, resume=True)
    assert STAGE not in recorder.advances and any("writing the tuned decoder back" in line for line in recorder.lines)
    restored, _ = _sd(run / "superres.safetensors")
    assert [k for k in after if not torch.equal(restored[k], after[k])] == []


def test_the_stage_refuses_another_unet_and_needs_superres(superres_run, tmp_path):
    from ldmcli.loading.checkpoint import save_safetensors
    with pytest.raises(UsageError, match="train it first"):
        _run(tmp_path / "empty", STAGE)
    run = tmp_path / "run"
    shutil.copytree(superres_run, run)
    with pytest.raises(KeyboardInterrupt):
        train(TrainOptions(task=STAGE, out=str(run), device="cpu", seed=3), Recorder(STAGE, 4), recipe=tiny_recipe())
    sd, meta = _sd(run / "superres.safetensors")
    key = next(k for k in sd if k.startswith("model.diffusion_model."))
    save_safetensors({**sd, key: sd[key] + 1}, run / "superres.safetensors", meta)     # superres trained again
    with pytest.raises(UsageError, match="another superres UNet"):
        _run(run, STAGE, resume=True)


def test_latent_pool_pairs_each_picture_with_its_one_step_latent_and_its_encoder_latent(superres_run):
    from ldmcli.loading.checkpoint import load_model
    from ldmcli.sampling.pipeline import sample_latents
    from ldmcli.sampling.settings import SamplerSettings
    from ldmcli.tasks.superres import bsr_condition
    from ldmcli.train.data import data_pool, mix_seed
    from ldmcli.train.prediction_decoder_stage import latent_pool
    model, _ = load_model(superres_run / "before.safetensors")
    pool = data_pool("world", 16, 3, 5, "superres", leaves=2)
    got = latent_pool(model, pool, 11, "cpu", chunk=2)
    assert got.n_images == 10 and torch.equal(got.tensors["image"][5:], pool.tensors["image"])
    assert got.tensors["one_step"].tolist() == [1.0] * 5 + [0.0] * 5
    lr = pool.tensors["lowres"][3:4].float() / 127.5 - 1
    one = sample_latents(model, bsr_condition(lr), None, (4, 4, 4), [mix_seed(11, 3)], SamplerSettings())
    assert torch.equal(got.tensors["latent"][3], one[0].float())
    x = pool.tensors["image"][4:5].float() / 127.5 - 1
    enc = model.first_stage_model.encode(x).mean * model.scale_factor
    torch.testing.assert_close(got.tensors["latent"][9], enc[0], rtol=0, atol=1e-6)


def test_the_objective_fits_the_decoder_side_alone():
    from ldmcli.models.autoencoder import AutoencoderKL
    from ldmcli.train.prediction_decoder_stage import PredictionDecoderObjective, freeze_all_but_decoder
    torch.manual_seed(0)
    ae = AutoencoderKL(tiny_recipe().photo_autoencoder)
    freeze_all_but_decoder(ae)
    trainable = {n for n, p in ae.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("decoder.", "post_quant_conv.")) for n in trainable)
    objective = PredictionDecoderObjective(ae, 2.0)
    batch = {"latent": torch.randn(4, 4, 4, 4), "image": torch.rand(4, 3, 16, 16) * 2 - 1}
    opt = torch.optim.Adam([p for p in ae.parameters() if p.requires_grad], lr=1e-3)
    first = None
    for step in range(30):
        loss, metrics = objective(batch, None, step)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    with torch.no_grad():      # bf16 autocast on the CPU: the same loss within bf16 rounding
        exact = torch.nn.functional.mse_loss(ae.decode(batch["latent"] / 2.0), batch["image"])
        fast, _ = PredictionDecoderObjective(ae, 2.0, cpu_bf16=True)(batch, None, 0)
    torch.testing.assert_close(objective(batch, None, 0)[0].detach(), exact, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast, exact, rtol=0.05, atol=0)


def test_the_back_projected_loss_judges_one_step_latents_on_what_the_projection_keeps():
    """One-step examples: the MSE of kept_error(e) + PLAIN_SHARE·MSE(e); encoder examples: plain MSE. A smooth
    colour cast, which the default's back-projection removes, costs a one-step example about PLAIN_SHARE of what it
    costs an encoder example."""
    from ldmcli.models.autoencoder import AutoencoderKL
    from ldmcli.tasks.match_input import kept_error
    from ldmcli.train.prediction_decoder_stage import PLAIN_SHARE, PredictionDecoderObjective
    torch.manual_seed(0)
    ae = AutoencoderKL(tiny_recipe().photo_autoencoder).eval()
    latent = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        decoded = ae.decode(latent / 2.0)
    ramp = torch.linspace(-0.3, 0.3, 16).view(1, 1, 1, 16).expand(2, 3, 16, 16)
    objective = PredictionDecoderObjective(ae, 2.0, back_projected=True)
    cost = lambda image, kind: objective({"latent": latent, "image": image,          # noqa: E731
                                          "one_step": torch.tensor(kind)}, None, 0)[0].item()
    plain = torch.nn.functional.mse_loss(decoded, decoded - ramp).item()
    assert abs(cost(decoded - ramp, [0.0, 0.0]) - plain) < 1e-6
    assert cost(decoded - ramp, [1.0, 1.0]) < 1.2 * PLAIN_SHARE * plain
    image = torch.rand(2, 3, 16, 16) * 2 - 1
    e = decoded - image
    want = (kept_error(e[:1]) ** 2 + PLAIN_SHARE * e[:1] ** 2).sum() + (e[1:] ** 2).sum()
    with torch.no_grad():
        got = cost(image, [1.0, 0.0])
    assert abs(got - want.item() / e.numel()) < 1e-5
    assert PredictionDecoderObjective(ae, 2.0)({"latent": latent, "image": image, "one_step": torch.ones(2)},
                                               None, 0)[0].item() == pytest.approx((e ** 2).mean().item(), abs=1e-6)


def test_the_stage_writes_the_recipes_detail_share_and_trains_with_the_back_projected_loss(superres_run, tmp_path):
    from dataclasses import replace
    from ldmcli.loading.checkpoint import load_model
    run = tmp_path / "run"
    shutil.copytree(superres_run, run)
    rec = tiny_recipe()
    models = dict(rec.models, superres=rec.models["superres"].with_(default_detail=0.6))
    stages = dict(rec.stages, **{STAGE: replace(rec.stages[STAGE], back_projected_loss=True)})
    rec = replace(rec, models=models, stages=stages)
    assert load_model(run / "before.safetensors")[0].cfg.default_detail != 0.6
    recorder = Recorder()
    written = train(TrainOptions(task=STAGE, out=str(run), device="cpu", seed=3), recorder, recipe=rec)
    assert load_model(written[STAGE])[0].cfg.default_detail == 0.6
    import json
    logged = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    assert any(r.get("stage") == STAGE and "mse" in r for r in logged)       # the back-projected loss's record
