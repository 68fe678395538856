"""The tail of an LDM stage (recipes.StageSettings.tail_*, ldm_stage.Tail): the last steps of a stage run at the
floor learning rate, may draw a share of t from the top of the schedule and add the decoded z0's pixel MSE
(superres: tuned for its one-step default), and may draw their batches from the world scenes alone (inpaint);
before them, and in every stage without one, training is what it was."""
import json
from dataclasses import replace

import pytest
import torch

from ldmcli.train import recipes as R
from ldmcli.train.loop import lr_at
from ldmcli.train.run import TrainOptions, train
from tests.test_train import Recorder, tiny_recipe


def test_the_main_schedule_is_unchanged_and_the_tuning_stays_at_the_floor():
    main = R.StageSettings(steps=100, batch_size=4, lr=1e-3, warmup=10)
    tuned = replace(main, steps=140, tail_steps=40)
    assert [lr_at(k, tuned) for k in range(100)] == [lr_at(k, main) for k in range(100)]
    assert all(lr_at(k, tuned) == pytest.approx(1e-4) for k in range(100, 140))
    assert lr_at(99, tuned) > lr_at(100, tuned)


def test_steps_override_keeps_the_tunings_share_of_the_run():
    s = R.StageSettings(steps=22000, batch_size=32, lr=1e-3, tail_steps=4000)
    assert R.with_overrides(s, steps=11).tail_steps == 2
    assert R.with_overrides(s, steps=2).tail_steps == 0
    assert R.with_overrides(replace(s, tail_steps=0), steps=5).tail_steps == 0


def test_the_cpu_recipe_tunes_superres_for_one_step_and_inpaint_on_captions():
    stages = R.recipe("cpu").stages
    sr, inpaint = stages["superres"], stages["inpaint"]
    assert sr.tail_steps > 0 and sr.pixel_weight > 0 and sr.tail_top_share > 0 and not sr.tail_world_only
    assert inpaint.tail_steps > 0 and inpaint.tail_world_only and inpaint.pixel_weight == 0
    assert all(s.tail_steps == 0 for name, s in stages.items() if name not in ("superres", "inpaint"))
    # each tail follows the steps the stage had before it, unchanged
    assert (sr.steps - sr.tail_steps, inpaint.steps - inpaint.tail_steps) == (18000, 12000)
    assert R.recipe("cpu").models["superres"].default_steps == 1


def _objective(tail=None, parameterization="v"):
    from ldmcli.models.autoencoder import AutoencoderKL
    from ldmcli.train.data import TASK_FIELDS, world_pool
    from ldmcli.train.ldm_stage import DiffusionObjective, build_ldm, encode_pool
    cfg = R.model_config(tiny_recipe(), "superres", (), scale_factor=1.0).with_(parameterization=parameterization)
    torch.manual_seed(0)
    model = build_ldm(cfg, AutoencoderKL(cfg.first_stage).state_dict())
    for p in model.model.parameters():        # a UNet that is not zero at the output, so gradients are not trivial
        p.data.add_(0.05 * torch.randn_like(p))
    pool = world_pool(16, 8, 0, TASK_FIELDS["superres"])
    encode_pool(model, pool, "cpu")
    seen = []
    apply = model.apply_model
    model.apply_model = lambda z, t, **c: (seen.append(t.clone()), apply(z, t, **c))[1]
    return DiffusionObjective(model, 0.0, None, tail), pool.batch(torch.arange(8), "cpu"), seen


def test_before_the_tuning_the_objective_is_plain_l_ldm():
    from ldmcli.train.ldm_stage import Tail
    plain, batch, _ = _objective()
    tuned, _, seen = _objective(Tail(start=10, share=1.0, top=100, pixel_weight=5.0))
    for step in (0, 9):
        a, ma = plain(batch, torch.Generator().manual_seed(step), step)
        b, mb = tuned(batch, torch.Generator().manual_seed(step), step)
        assert torch.equal(a, b) and mb.keys() == {"loss"}
    assert any((t < 900).any() for t in seen)


@pytest.mark.parametrize("parameterization", ["v", "eps"])
def test_in_the_tuning_t_comes_from_the_top_and_the_decoded_pixels_join_the_loss(parameterization):
    from ldmcli.train.ldm_stage import Tail
    from ldmcli.train.losses import diffusion_loss
    objective, batch, seen = _objective(Tail(start=0, share=1.0, top=100, pixel_weight=5.0), parameterization)
    model = objective.ldm
    loss, metrics = objective(batch, torch.Generator().manual_seed(3), 3)
    t = seen[-1]
    assert bool((t >= 900).all()) and set(metrics) == {"loss", "pixel_mse"}
    # the pixel term is the decoded prediction of z0 against the picture, recomputed here from the same draws
    with torch.no_grad():
        g = torch.Generator().manual_seed(3)
        eps_post = torch.randn(batch["z_mean"].shape, generator=g)
        z0 = batch["z_mean"] + batch["z_std"] * eps_post
        torch.randint(0, 1000, (8,), generator=g)
        t2 = torch.randint(900, 1000, (8,), generator=g)
        torch.rand(8, generator=g)
        eps = torch.randn(z0.shape, generator=g)
        assert torch.equal(t2, t)
        a = objective.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        pred = model.apply_model(z_t, t, c_concat=[batch["lowres"]])
        if parameterization == "v":
            z0_pred, target = a.sqrt() * z_t - (1 - a).sqrt() * pred, a.sqrt() * eps - (1 - a).sqrt() * z0
        else:
            z0_pred, target = (z_t - (1 - a).sqrt() * pred) / a.sqrt(), eps
        pixels = torch.mean((model.decode_first_stage(z0_pred) - batch["image"]) ** 2)
    assert metrics["pixel_mse"].item() == pytest.approx(pixels.item(), rel=1e-5)
    assert loss.item() == pytest.approx((diffusion_loss(target, pred) + 5.0 * pixels).item(), rel=1e-5)
    # the gradient of the pixel term reaches the UNet, never the frozen first stage
    loss.backward()
    assert all(p.grad is None for p in model.first_stage_model.parameters())
    assert model.model.diffusion_model.out[-1].weight.grad.abs().sum() > 0


def test_a_share_of_the_examples_keeps_every_t():
    from ldmcli.train.ldm_stage import Tail
    objective, batch, seen = _objective(Tail(start=0, share=0.5, top=100, pixel_weight=0.0))
    for step in range(40):
        _, metrics = objective(batch, torch.Generator().manual_seed(step), step)
        assert set(metrics) == {"loss"}                 # no pixel weight, no decode
    t = torch.cat(seen)
    top = (t >= 900).float().mean().item()
    assert 0.4 < top < 0.7 and (t < 500).any()          # half from the top, the rest (10 % of them too) uniform


def test_a_tuned_stage_trains_logs_its_pixels_and_resumes_exactly(tmp_path):
    rec = tiny_recipe()
    stage = replace(rec.stages["superres"], steps=6, tail_steps=3, tail_top_share=1.0, pixel_weight=2.0)
    rec = replace(rec, stages={**rec.stages, "superres": stage})
    for task in ("photo-autoencoder", "superres"):
        train(TrainOptions(task=task, out=str(tmp_path), device="cpu", seed=1), Recorder(), recipe=rec)
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    mine = [r for r in lines if r["stage"] == "superres"]
    assert [("pixel_mse" in r) for r in mine] == [False] * 3 + [True] * 3
    floor = stage.lr * stage.min_lr_ratio
    assert [r["lr"] == pytest.approx(floor) for r in mine] == [False] * 3 + [True] * 3
    first = torch.load(str(tmp_path / "superres" / "state.pt"), weights_only=True)
    # stopped after step 4 (its last checkpoint: step 3, before the tuning), resumed into the tuning
    again = tmp_path / "again"
    for task in ("photo-autoencoder",):
        train(TrainOptions(task=task, out=str(again), device="cpu", seed=1), Recorder(), recipe=rec)
    with pytest.raises(KeyboardInterrupt):
        train(TrainOptions(task="superres", out=str(again), device="cpu", seed=1), Recorder("superres", 4),
              recipe=rec)
    train(TrainOptions(task="superres", out=str(again), device="cpu", seed=1, resume=True), Recorder(), recipe=rec)
    second = torch.load(str(again / "superres" / "state.pt"), weights_only=True)
    for k, v in first["objectives"]["superres"]["module"].items():
        assert torch.equal(v, second["objectives"]["superres"]["module"][k]), k


def test_world_examples_of_a_joined_pool_are_its_world_scenes_with_every_caption():
    from ldmcli.train.data import Pool, join_pools
    world = Pool({"image": torch.arange(3).view(3, 1, 1, 1).to(torch.uint8)}, ["a0", "b0", "c0", "a1", "b1", "c1"])
    leaves = Pool({"image": torch.full((2, 1, 1, 1), 9, dtype=torch.uint8)}, ["", ""])
    joined = join_pools(world, leaves)
    assert len(joined) == 10 and joined.world_examples == 6 == world.world_examples
    picked = joined.world_index(torch.arange(6))
    assert [joined.captions[i] for i in picked] == world.captions
    assert joined.batch(picked, "cpu")["image"].flatten().tolist() == world.batch(torch.arange(6), "cpu")[
        "image"].flatten().tolist()
    assert torch.equal(world.world_index(torch.arange(6)), torch.arange(6))


def test_a_world_only_tail_draws_its_batches_from_the_world_scenes(tmp_path, monkeypatch):
    import ldmcli.train.data as D
    rec = tiny_recipe()
    stage = replace(rec.stages["inpaint"], steps=6, tail_steps=3, tail_world_only=True)
    rec = replace(rec, stages={**rec.stages, "inpaint": stage})
    train(TrainOptions(task="photo-autoencoder", out=str(tmp_path), device="cpu", seed=1), Recorder(), recipe=rec)
    drawn = []
    real = D.Pool.batch

    def spy(self, indices, device):
        drawn.append((len(self), self.world_images, self.n_images, [self.captions[i] for i in indices]))
        return real(self, indices, device)
    monkeypatch.setattr(D.Pool, "batch", spy)
    train(TrainOptions(task="inpaint", out=str(tmp_path), device="cpu", seed=1), Recorder(), recipe=rec)
    steps = [d for d in drawn if d[0] > d[1] > 0]            # the training batches of the joined pool
    assert len(steps) == 6
    assert all(caption for d in steps[3:] for caption in d[3])                 # the tail: world captions only
    assert any(caption == "" for d in steps[:3] for caption in d[3])           # before it: dead leaves too
