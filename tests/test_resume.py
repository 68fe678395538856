"""`ldm train --resume` continues only the run a state belongs to: the settings of its finished steps, the first stage
it learnt from; a finished stage returns at once; `make weights` resumes every stage after a recipe change."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from ldmcli.errors import UsageError
from ldmcli.train import recipes as R
from ldmcli.train.loop import resume_conflict
from ldmcli.train.run import TrainOptions, train
from tests.test_train import Recorder, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
BASE = R.StageSettings(steps=1000, batch_size=8, lr=1e-4, warmup=50)


# ---- which changes a resumed state allows ----------------------------------------------------------------------
def test_same_settings_resume():
    assert resume_conflict(asdict(BASE), BASE, 600) is None
    assert resume_conflict(asdict(BASE), replace(BASE, log_every=7, ckpt_every=11), 600) is None


def test_a_tail_appended_after_the_finished_schedule_resumes():
    """The recipe change the shipped superres went through: 18000 steps, then 4000 more as a tail."""
    longer = replace(BASE, steps=1400, tail_steps=400, tail_top_share=0.5, pixel_weight=10.0)
    assert resume_conflict(asdict(BASE), longer, 1000) is None
    assert resume_conflict(asdict(BASE), longer, 700) is None      # interrupted before the end: still the same run


def test_more_steps_without_a_tail_stretch_the_schedule_and_are_refused():
    conflict = resume_conflict(asdict(BASE), replace(BASE, steps=2000), 1000)
    assert conflict is not None and "learning rate" in conflict
    assert resume_conflict(asdict(BASE), replace(BASE, steps=2000), 40) is None   # still in the warm-up: same lr


@pytest.mark.parametrize("change", [{"lr": 2e-4}, {"batch_size": 16}, {"leaves": 100}, {"world": 100}, {"warmup": 10},
                                    {"uncond_prob": 0.2}, {"ema_decay": 0.999}, {"min_lr_ratio": 0.5},
                                    {"thin_leaves": 0.5}, {"back_projected_loss": True}])
def test_a_change_of_what_the_finished_steps_did_is_refused(change):
    name = next(iter(change))
    conflict = resume_conflict(asdict(BASE), replace(BASE, **change), 600)
    assert conflict is not None and conflict.startswith(name)


@pytest.mark.parametrize("name, value, message", [("thin_leaves", 0.5, "thin_leaves: 0.0 -> 0.5"),
                                                   ("back_projected_loss", True, "back_projected_loss: False -> True")])
def test_a_state_saved_before_a_setting_existed_does_not_resume_a_stage_that_uses_it(name, value, message):
    """A state of a run before the setting (its settings lack the key) ran without it: a superres state before
    `thin_leaves` trained on round leaves only, a superres-decoder state before `back_projected_loss` on the plain
    pixel MSE."""
    saved = {k: v for k, v in asdict(BASE).items() if k != name}
    assert resume_conflict(saved, BASE, 600) is None
    assert resume_conflict(saved, replace(BASE, **{name: value}), 600) == message


def test_tail_settings_count_once_the_tail_has_run():
    tailed = replace(BASE, tail_steps=200, tail_top_share=0.5)
    other = replace(tailed, tail_top_share=1.0)
    assert resume_conflict(asdict(tailed), other, 700) is None        # the tail starts at 800: not run yet
    assert resume_conflict(asdict(tailed), other, 900).startswith("tail_top_share")
    assert "tail's start" in resume_conflict(asdict(tailed), replace(tailed, tail_steps=300), 900)


def test_a_state_past_the_end_and_unknown_settings_in_use_are_refused():
    assert "state is at step 1000" in resume_conflict(asdict(BASE), replace(BASE, steps=800), 1000)
    assert "not a setting" in resume_conflict(asdict(BASE) | {"new_knob": 3}, BASE, 600)
    assert resume_conflict(asdict(BASE) | {"old_knob": 0}, BASE, 600) is None    # an unused one changes nothing


def test_a_state_with_the_tails_earlier_names_resumes():
    """States written while the tail was called `onestep_*` (the shipped superres's own run)."""
    tailed = replace(BASE, steps=1400, tail_steps=400, tail_top_share=0.5, tail_top=100, pixel_weight=10.0)
    saved = {("onestep_" + k[len("tail_"):] if k in ("tail_steps", "tail_top") else k): v
             for k, v in asdict(tailed).items() if k not in ("tail_top_share", "tail_world_only")}
    saved["onestep_share"] = 0.5
    assert resume_conflict(saved, tailed, 1400) is None
    assert resume_conflict(saved, replace(tailed, tail_top_share=1.0), 1400).startswith("tail_top_share")


# ---- the stages ---------------------------------------------------------------------------------------------------
def _run(tmp_path, task, recipe=None, **kw):
    recorder = Recorder()
    written = train(TrainOptions(task=task, out=str(tmp_path), device="cpu", seed=3, **kw), recorder,
                    recipe=recipe or tiny_recipe())
    return written, recorder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume")
    for task in ("autoencoder", "decoder", "txt2img"):
        _run(out, task)
    return out


def test_resume_with_another_learning_rate_stops_before_the_pool(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with pytest.raises(UsageError, match=r"other settings \(lr: 0.001 -> 0.002\).*delete"):
        _run(run, "txt2img", resume=True, lr=2e-3)


def test_a_finished_stage_returns_at_once(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = {p.name: p.read_bytes() for p in run.glob("*.safetensors")}
    for task in ("autoencoder", "decoder", "txt2img"):
        written, recorder = _run(run, task, resume=True)
        assert any("already trained" in line for line in recorder.lines), task
        assert task not in recorder.advances                    # no pool, no loop: nothing to advance
        assert written[task].read_bytes() == before[written[task].name]


def test_a_stage_may_draw_its_own_count_of_world_scenes(trained, tmp_path):
    """StageSettings.world sizes the stage's pool (the recipe's ldm_pool_size otherwise), and is part of what its
    finished steps did."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "txt2img")
    (run / "txt2img.safetensors").unlink()
    rec = tiny_recipe()
    own = replace(rec, stages={**rec.stages, "txt2img": replace(rec.stages["txt2img"], world=6)})
    _, recorder = _run(run, "txt2img", recipe=own)
    assert any("building the data pool (6 examples" in line for line in recorder.lines), recorder.lines
    (run / "txt2img.safetensors").unlink()
    with pytest.raises(UsageError, match=r"world: 6 -> None"):
        _run(run, "txt2img", resume=True)


def test_a_stage_may_learn_on_larger_pictures_than_its_recipe(tmp_path):
    """StageSettings.image_size: the superres stage's pool at twice the recipe's size (its UNet is convolutional),
    the exported model upscales as any other, and the size is part of what the finished steps did."""
    from ldmcli.loading import load
    rec = tiny_recipe()
    big = replace(rec, stages={**rec.stages, "superres": replace(rec.stages["superres"], image_size=32)})
    _run(tmp_path, "photo-autoencoder", recipe=big)
    written, recorder = _run(tmp_path, "superres", recipe=big)
    assert any("superres: building the data pool" in line and "32 px" in line for line in recorder.lines), \
        recorder.lines
    model, _ = load(str(written["superres"]), task="superres", device="cpu", dtype="float32")
    assert model.cfg.task == "superres"
    (tmp_path / "superres.safetensors").unlink()
    with pytest.raises(UsageError, match=r"image_size: 32 -> None"):
        _run(tmp_path, "superres", recipe=rec, resume=True)


def test_resume_on_another_encoder_is_refused(trained, tmp_path):
    from ldmcli.models.autoencoder import AutoencoderKL
    from ldmcli.train.autoencoder_stage import AUTOENCODER_FILE, DECODER_FILE, load_autoencoder, save_autoencoder
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "txt2img.safetensors").unlink()                      # as if interrupted before its export
    cfg, sd = load_autoencoder(run / DECODER_FILE)
    ae = AutoencoderKL(cfg)
    ae.load_state_dict({k: v * 1.01 if k.startswith("encoder.conv_in") else v for k, v in sd.items()})
    save_autoencoder(ae, run / DECODER_FILE)
    with pytest.raises(UsageError, match="another first stage"):
        _run(run, "txt2img", resume=True)
    # and the decoder stage, resumed on another autoencoder than the one it fine-tuned
    (run / DECODER_FILE).unlink()
    save_autoencoder(ae, run / AUTOENCODER_FILE)
    with pytest.raises(UsageError, match="another autoencoder"):
        _run(run, "decoder", resume=True)


# ---- make weights ---------------------------------------------------------------------------------------------------
def _make_plan(tree: Path) -> str:
    out = subprocess.run(["make", "-n", "weights", "BIN=bin"], cwd=tree, capture_output=True, text=True, check=True)
    return out.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_weights_resumes_every_stage_after_a_recipe_change(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    recipes = tmp_path / "ldmcli" / "train" / "recipes.py"
    recipes.parent.mkdir(parents=True)
    recipes.write_text("")
    done = tmp_path / "runs" / "default"
    done.mkdir(parents=True)
    stages = ("autoencoder", "decoder", "txt2img", "layout2img", "semantic2img", "photo-autoencoder", "superres",
              "inpaint", "superres-decoder")
    for k, stage in enumerate(stages):                           # every stage done after the recipe, in order
        (done / stage).mkdir()
        (done / stage / "state.pt").write_text("")
        (done / f".done-{stage}").write_text("")
        os.utime(done / f".done-{stage}", (2000 + k, 2000 + k))
    os.utime(recipes, (1000, 1000))
    assert "ldm train" not in _make_plan(tmp_path)
    os.utime(recipes, (3000, 3000))                              # the recipe changed after the run
    plan = _make_plan(tmp_path)
    for stage in stages:
        assert f"ldm train --recipe cpu --seed 0 --task {stage} --out runs/default --resume" in plan, stage
