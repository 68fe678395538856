"""`ldm train` (ldmcli/train): losses fall, resume is exact, the log is complete, exports load and sample.

Everything runs a tiny recipe (16 px images, 4x4 latents, 32-channel models) on the CPU.
"""
import json
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ldmcli.errors import UsageError
from ldmcli.train import recipes as R
from ldmcli.train.run import TrainOptions, train

STEPS = 6


def tiny_recipe(steps: int = STEPS) -> R.Recipe:
    sizes = R.Sizes(image=16, ae_width=32, ae_res_blocks=0, width=32, mult=(1, 2), res_blocks=1,
                    cross_attention=(1, 2), self_attention=(2,), text_width=32, text_layers=1, layout_width=32,
                    layout_layers=1, photo_ae_res_blocks=1)
    stage = R.StageSettings(steps=steps, batch_size=4, lr=1e-3, warmup=2, ema_decay=0.9, log_every=1, ckpt_every=3,
                            disc_weight=0.1, disc_start=3)
    models = R._models(sizes)
    return R.Recipe("tiny", image_size=16, pool_size=16, autoencoder=models["txt2img"].first_stage, models=models,
                    photo_autoencoder=models["superres"].first_stage, photo_leaves=8,
                    stages={t: stage for t in R.TASKS})


class Recorder:
    """A stand-in for ldmcli.cli.console.Console that records progress and can interrupt a stage after n steps."""

    def __init__(self, stop_stage=None, stop_after=None):
        self.stop_stage, self.stop_after = stop_stage, stop_after
        self.advances = {}
        self.lines = []

    def log(self, msg):
        self.lines.append(str(msg))

    @contextmanager
    def progress(self, total, desc=""):
        done = []

        def advance(n=1):
            done.append(n)
            self.advances.setdefault(desc, []).append(n)
            if desc == self.stop_stage and sum(done) >= self.stop_after:
                raise KeyboardInterrupt
        yield advance


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    written = train(TrainOptions(out=str(out), device="cpu", seed=3), Recorder(), recipe=tiny_recipe())
    return out, written


# ---- data and conditions ---------------------------------------------------------------------------------------
def test_world_layout_tokens_follow_models_md():
    from ldmcli.train.data import unconditional_layout, world_layout_tokens
    tokens = world_layout_tokens(np.array([[0.1, 0.2, 0.5, 0.9]]), ["red circle"])
    assert tokens.shape == (92,)
    coord = lambda x, y: round(y * 89) * 90 + round(x * 89)          # noqa: E731 - MODELS.md §6.4
    assert tokens[:3].tolist() == [R.WORLD_LABELS.index("red circle"), coord(0.1, 0.2), coord(0.5, 0.9)]
    assert (tokens[3:90] == 8191).all() and tokens[90:].tolist() == [0, 8099]
    empty = unconditional_layout()
    assert (empty[:90] == 8191).all() and empty[90:].tolist() == [0, 8099]


def test_shuffle_objects_keeps_padding_last_and_crop_tokens():
    from ldmcli.train.data import world_layout_tokens
    from ldmcli.train.ldm_stage import shuffle_objects
    boxes = np.array([[0.0, 0.0, 0.2, 0.2], [0.4, 0.4, 0.6, 0.6], [0.7, 0.7, 0.9, 0.9]])
    tokens = torch.from_numpy(world_layout_tokens(boxes, ["red circle", "blue star", "green heart"]))[None]
    out = shuffle_objects(tokens.expand(8, -1).clone(), torch.Generator().manual_seed(0))
    triples = {tuple(t) for t in tokens[0, :9].reshape(3, 3).tolist()}
    for row in out:
        assert {tuple(t) for t in row[:9].reshape(3, 3).tolist()} == triples
        assert torch.equal(row[9:], tokens[0, 9:])
    assert len({tuple(r[:9].tolist()) for r in out}) > 1


def test_training_holes_are_binary_and_mixed():
    from ldmcli.train.ldm_stage import training_holes
    batch = {"image": torch.zeros(64, 3, 16, 16), "object_mask": torch.zeros(64, 16, 16, dtype=torch.uint8)}
    batch["object_mask"][:, 2:6, 2:6] = 1
    hole = training_holes(batch, torch.Generator().manual_seed(0))
    assert hole.shape == (64, 1, 16, 16) and set(hole.unique().tolist()) <= {0.0, 1.0}
    full = (hole.flatten(1).mean(1) == 1).float().mean()
    assert 0.1 < full < 0.45 and (hole.flatten(1).sum(1) > 0).all()


def test_world_vocabulary_covers_every_caption():
    from ldmcli.tokenizers.words import WordsTokenizer
    from ldmcli.train.data import world_vocabulary
    from ldmcli.world import dataset
    tok = WordsTokenizer(world_vocabulary(), 40)
    for ex in dataset("train", 40, size=8, seed=5):
        assert tok.unknown_words(ex["caption"]) == [] and len(tok.encode(ex["caption"])) <= 38


# ---- losses decrease on a fixed batch ----------------------------------------------------------------------------
def _fit(objective, batch, steps=25, lr=2e-3):
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = objective(dict(batch), torch.Generator().manual_seed(0), 0)   # same noise and t every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    return losses


def test_autoencoder_loss_decreases():
    from ldmcli.train.autoencoder_stage import build_autoencoder
    from ldmcli.train.data import world_pool
    rec = tiny_recipe()
    torch.manual_seed(0)
    _, objectives = build_autoencoder(rec.autoencoder, R.StageSettings(steps=1, batch_size=4, lr=1e-3))
    pool = world_pool(16, 4, 0)
    losses = _fit(objectives[0].module, pool.batch(torch.arange(4), "cpu"))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])


def test_caption_variants_pair_each_image_with_k_captions():
    from ldmcli.train.data import TASK_FIELDS, world_pool
    from ldmcli.train.ldm_stage import encode_pool
    from ldmcli.world.scenes import parse_caption
    one = world_pool(16, 6, 0, TASK_FIELDS["inpaint"])
    three = world_pool(16, 6, 0, TASK_FIELDS["inpaint"], caption_variants=3)
    assert len(one) == 6 and len(three) == 18 and three.n_images == 6
    assert three.captions[:6] == one.captions                           # variant 0: each example's own caption
    assert len(set(three.captions)) > 6                                 # the dropout was drawn again
    for i, text in enumerate(three.captions):                           # every caption describes its own image
        j = i % 6
        assert parse_caption(text).objects[0].colour == parse_caption(one.captions[j]).objects[0].colour
    three.tensors["tokens"] = torch.arange(18)[:, None]                 # one row per caption: indexed by example
    first_stage = SimpleNamespace(encode=lambda x: SimpleNamespace(mean=x[:, :1], std=x[:, :1]))
    encode_pool(SimpleNamespace(first_stage_model=first_stage), three, "cpu")
    assert three.tensors["z_mean"].shape[0] == 6                        # images encoded once, not per caption
    batch = three.batch(torch.tensor([1, 7, 13]), "cpu")
    assert batch["tokens"].flatten().tolist() == [1, 7, 13]
    assert torch.equal(batch["image"][0], batch["image"][2]) and torch.equal(batch["object_mask"][0],
                                                                            batch["object_mask"][1])
    assert len(world_pool(16, 6, 0, TASK_FIELDS["superres"], caption_variants=3)) == 6   # no captions: no variants


@pytest.mark.parametrize("task, prediction", [(t, "eps") for t in R.LDM_TASKS] + [("txt2img", "v")])
def test_ldm_loss_decreases(task, prediction):
    from ldmcli.models.autoencoder import AutoencoderKL
    from ldmcli.train.data import TASK_FIELDS, unconditional_layout, world_pool, world_vocabulary
    from ldmcli.train.ldm_stage import DiffusionObjective, build_ldm, encode_pool
    rec = tiny_recipe()
    cfg = R.model_config(rec, task, world_vocabulary(), scale_factor=1.0).with_(parameterization=prediction)
    torch.manual_seed(0)
    model = build_ldm(cfg, AutoencoderKL(cfg.first_stage).state_dict())     # the photo tasks have their own
    pool = world_pool(16, 4, 0, TASK_FIELDS[task])
    uncond = None
    if task in ("txt2img", "inpaint"):
        from ldmcli.tokenizers import tokenizer_for
        tok = tokenizer_for(cfg.cond_stage)
        pool.tensors["tokens"], uncond = tok(pool.captions), tok([""])
    elif task == "layout2img":
        uncond = torch.from_numpy(unconditional_layout())[None]
    encode_pool(model, pool, "cpu")
    objective = DiffusionObjective(model, 0.25, uncond)
    losses = _fit(objective, pool.batch(torch.arange(4), "cpu"))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses


# ---- the whole pipeline ------------------------------------------------------------------------------------------
def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_log_has_one_record_per_logged_step(full_run):
    out, _ = full_run
    records = _records(out / "train.jsonl")
    for stage in R.TASKS:
        mine = [r for r in records if r["stage"] == stage]
        assert [r["step"] for r in mine] == list(range(1, STEPS + 1))
        assert all(np.isfinite(r["loss"]) and r["lr"] > 0 and r["sec_per_step"] > 0 for r in mine)
    ae = [r for r in records if r["stage"] == "autoencoder"]
    assert ["disc_loss" in r for r in ae] == [False] * 3 + [True] * 3    # the discriminator starts at step 3


def _state(out, stage):
    return torch.load(str(Path(out) / stage / "state.pt"), weights_only=True)


def _assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("stage", ["autoencoder", "decoder", "txt2img"])
def test_resume_continues_exactly(full_run, tmp_path, stage):
    out, _ = full_run
    for before in R.TASKS[:R.TASKS.index(stage)]:       # the stages it builds on (txt2img: autoencoder, decoder)
        train(TrainOptions(task=before, out=str(tmp_path), device="cpu", seed=3), Recorder(), recipe=tiny_recipe())
    with pytest.raises(KeyboardInterrupt):     # killed after step 5: the last checkpoint is step 3
        train(TrainOptions(task=stage, out=str(tmp_path), device="cpu", seed=3), Recorder(stage, 5),
              recipe=tiny_recipe())
    assert _state(tmp_path, stage)["step"] == 3
    with pytest.raises(UsageError, match="--resume"):
        train(TrainOptions(task=stage, out=str(tmp_path), device="cpu", seed=3), Recorder(), recipe=tiny_recipe())
    recorder = Recorder()
    train(TrainOptions(task=stage, out=str(tmp_path), device="cpu", seed=3, resume=True), recorder,
          recipe=tiny_recipe())
    assert recorder.advances[stage] == [3, 1, 1, 1]                  # picked up at step 3, then steps 4-6
    _assert_same(_state(tmp_path, stage), _state(out, stage), stage)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "sec_per_step")}  # noqa: E731
                        for r in rs if r["stage"] == stage]
    assert strip(_records(tmp_path / "train.jsonl")) == strip(_records(out / "train.jsonl"))


def test_exports_load_and_sample_with_every_task(full_run):
    from ldmcli.loading.checkpoint import load_model, read_checkpoint
    from ldmcli.io.layout import LayoutBox
    from ldmcli.sampling.settings import SamplerSettings
    from ldmcli.tasks.inpaint import inpaint
    from ldmcli.tasks.layout2img import layout2img
    from ldmcli.tasks.semantic2img import semantic2img
    from ldmcli.tasks.superres import superres
    from ldmcli.tasks.txt2img import txt2img
    out, written = full_run
    one = SamplerSettings(steps=1)
    image = Image.fromarray(np.full((16, 16, 3), 90, np.uint8))
    hole = np.zeros((16, 16), np.float32)
    hole[4:12, 4:12] = 1
    seg = np.zeros((16, 16), np.int64)
    seg[2:10, 2:10] = 3
    run = {"txt2img": lambda m: txt2img(m, "a red circle on a blue background", seeds=[0], settings=one),
           "inpaint": lambda m: inpaint(m, image, hole, "a green star", seeds=[0], settings=one),
           "superres": lambda m: superres(m, image.resize((4, 4)), seeds=[0], settings=one),
           "layout2img": lambda m: layout2img(m, [LayoutBox("red circle", (0.1, 0.1, 0.5, 0.5))], seeds=[0],
                                              settings=one),
           "semantic2img": lambda m: semantic2img(m, seg, seeds=[0], settings=one)}
    for task in R.LDM_TASKS:
        sd, meta = read_checkpoint(written[task])
        assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
        first_stage = (f"first stage: task=decoder recipe=tiny steps={STEPS} seed=3 data=world; "
                       f"autoencoder: task=autoencoder recipe=tiny steps={STEPS} seed=3 data=world")
        if task in R.PHOTO_TASKS:     # their own first stage, trained on dead leaves and the world
            first_stage = f"first stage: task=photo-autoencoder recipe=tiny steps={STEPS} seed=3 data=world"
        if task == "superres":      # the superres-decoder stage rewrote it with its tuned decoder
            first_stage += (f"; decoder tuned on its own latents: task=superres-decoder recipe=tiny steps={STEPS} "
                            f"seed=3 data=world")
        assert meta["ldmcli_version"].endswith(f"train task={task} recipe=tiny steps={STEPS} seed=3 data=world; "
                                               + first_stage)
        model, info = load_model(written[task])
        assert model.cfg.task == task and model.cfg.scale_factor != 1.0
        ema = _state(out, task)["objectives"][task]["ema"]["shadow"]
        key = "model.diffusion_model.input_blocks.0.0.weight"
        assert torch.equal(sd[key], ema["ldm." + key].half())                # the EMA weights are exported
        images = run[task](model)
        assert len(images) == 1 and images[0].size == (16, 16)


def test_folder_data(tmp_path):
    from ldmcli.loading.checkpoint import load_model
    from ldmcli.tokenizers.words import build_vocab
    data = tmp_path / "images"
    data.mkdir()
    captions = ["A red square", "two BLUE dots", "a sunset"]
    for i, text in enumerate(captions):
        Image.fromarray(np.full((20 + i, 24, 3), 40 * i, np.uint8)).save(data / f"im{i}.png")
        (data / f"im{i}.txt").write_text(text)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / "nocaption.jpg")
    opts = dict(out=str(tmp_path / "out"), data=str(data), device="cpu", steps=2)
    written = train(TrainOptions(task="autoencoder", **opts), recipe=tiny_recipe())
    with pytest.raises(UsageError, match="no trained decoder"):    # the recipe's decoder stage comes first
        train(TrainOptions(task="txt2img", **opts), recipe=tiny_recipe())
    written.update(train(TrainOptions(task="decoder", **opts), recipe=tiny_recipe()))
    written.update(train(TrainOptions(task="txt2img", **opts), recipe=tiny_recipe()))
    model, _ = load_model(written["txt2img"])
    assert model.cfg.cond_stage.vocab == build_vocab(captions) and model.cfg.cond_stage.max_seq_len == 77
    with pytest.raises(UsageError, match="world"):
        train(TrainOptions(task="layout2img", **opts), recipe=tiny_recipe())
    with pytest.raises(UsageError, match="not a directory"):
        train(TrainOptions(task="txt2img", **dict(opts, data=str(tmp_path / "missing"))), recipe=tiny_recipe())


def test_decoder_stage_keeps_the_encoder_and_the_exports_carry_its_decoder(full_run):
    """The decoder stage changes the decoder side only (the latents every LDM trained on stay bit for bit), and the
    LDM exports hold that decoder."""
    from ldmcli.loading.checkpoint import read_checkpoint
    from ldmcli.train.autoencoder_stage import load_autoencoder
    out, written = full_run
    _, before = load_autoencoder(written["autoencoder"])
    _, after = load_autoencoder(written["decoder"])
    encoder = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder and decoder and len(encoder) + len(decoder) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert not all(torch.equal(before[k], after[k]) for k in decoder)
    sd, _ = read_checkpoint(written["txt2img"])
    for k in encoder + decoder:
        assert torch.equal(sd[f"first_stage_model.{k}"], after[k].half()), k


def test_resumed_export_takes_the_first_stage_from_its_file(full_run, tmp_path):
    """`--resume` of a finished LDM stage re-exports it with the first stage of the run's file (a decoder stage
    trained after it lands in the export), not the copy in the training state."""
    import shutil
    from ldmcli.loading.checkpoint import read_checkpoint
    from ldmcli.train.autoencoder_stage import DECODER_FILE, load_autoencoder, save_autoencoder
    out, _ = full_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    cfg, sd = load_autoencoder(run / DECODER_FILE)
    from ldmcli.models.autoencoder import AutoencoderKL
    ae = AutoencoderKL(cfg)
    ae.load_state_dict({k: v + 0.25 if k.startswith("decoder.conv_out") else v for k, v in sd.items()})
    save_autoencoder(ae, run / DECODER_FILE)
    written = train(TrainOptions(task="layout2img", out=str(run), device="cpu", seed=3, resume=True), Recorder(),
                    recipe=tiny_recipe())
    exported, _ = read_checkpoint(written["layout2img"])
    key = "decoder.conv_out.weight"
    assert torch.equal(exported[f"first_stage_model.{key}"], (sd[key] + 0.25).half())


def test_decoder_stage_refuses_an_autoencoder_of_another_recipe(full_run, tmp_path):
    import shutil
    from dataclasses import replace
    out, written = full_run
    shutil.copy(written["autoencoder"], tmp_path / "autoencoder.safetensors")
    rec = tiny_recipe()
    other = replace(rec, autoencoder=replace(rec.autoencoder, ch=16))
    with pytest.raises(UsageError, match="another recipe"):
        train(TrainOptions(task="decoder", out=str(tmp_path), device="cpu"), recipe=other)


def test_recipe_without_a_decoder_stage_skips_it(tmp_path):
    from dataclasses import replace
    from ldmcli.train.run import first_stage_file, stages_for
    rec = tiny_recipe()
    bare = replace(rec, stages={k: v for k, v in rec.stages.items() if k != "decoder"})
    assert stages_for("all", "world", rec) == list(R.TASKS)
    assert stages_for("all", "world", bare) == [t for t in R.TASKS if t != "decoder"]
    assert first_stage_file(tmp_path, bare).name == "autoencoder.safetensors"
    assert first_stage_file(tmp_path, rec).name == "decoder.safetensors"
    with pytest.raises(UsageError, match="no decoder stage"):
        stages_for("decoder", "world", bare)


def test_ldm_stage_needs_the_autoencoder(tmp_path):
    with pytest.raises(UsageError, match="autoencoder"):
        train(TrainOptions(task="superres", out=str(tmp_path), device="cpu"), recipe=tiny_recipe())


# ---- recipes and CLI ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", R.RECIPES)
def test_recipe_exports_fit_in_50_mb(name):
    from ldmcli.models.ldm import LatentDiffusion
    from ldmcli.train.data import world_vocabulary
    rec = R.recipe(name)
    total = 0
    for task in R.LDM_TASKS:
        with torch.device("meta"):
            model = LatentDiffusion(R.model_config(rec, task, world_vocabulary()))
        total += sum(v.numel() for k, v in model.state_dict().items() if ".to_logits." not in k)
    assert 2 * total < 50e6                                               # fp16: two bytes a value


def test_cli_help_and_bad_task():
    import typer
    from typer.testing import CliRunner
    from ldmcli.train.cli import train_command
    app = typer.Typer()
    app.command()(train_command)
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    for option in ("--task", "--recipe", "--data", "--out", "--steps", "--batch-size", "--lr", "--seed", "--resume",
                   "--device", "--log"):
        assert option in result.output
    assert runner.invoke(app, ["--task", "paint"]).exit_code == 2
    assert runner.invoke(app, ["--recipe", "tpu"]).exit_code == 2


def test_mse_term_weights_pixels_by_their_error():
    """reconstruction_loss's MSE term: added with its weight, and (unlike L1, whose gradient is the same on every
    pixel) it pushes hardest where the error is largest: a missing object outweighs texture noise."""
    from ldmcli.train.losses import reconstruction_loss
    x = torch.zeros(1, 3, 8, 8)
    rec = torch.full_like(x, 0.05)                      # small error everywhere (texture noise)
    rec[..., 2:4, 2:4] = 1.0                            # large error on a 2x2 "object"
    base, m0 = reconstruction_loss(x, rec, 0.5)
    both, m1 = reconstruction_loss(x, rec, 0.5, mse_weight=5.0)
    assert "mse" not in m0 and torch.isclose(both, base + 5.0 * (x - rec).pow(2).mean())
    grads = {}
    for w in (0.0, 5.0):
        r = rec.clone().requires_grad_(True)
        reconstruction_loss(x, r, 0.0, mse_weight=w)[0].backward()
        grads[w] = r.grad[0, 0]
    assert torch.isclose(grads[0.0][2, 2], grads[0.0][6, 6])                  # L1: equal push
    assert grads[5.0][2, 2] > 5 * grads[5.0][6, 6]                            # L1 + MSE: the object dominates


def test_layout_coordinate_tokens_start_smooth_and_classes_random():
    from ldmcli.io.layout import coordinate_token
    from ldmcli.train.ldm_stage import coordinate_init_
    torch.manual_seed(0)
    w = torch.randn(8192, 64)
    before = w.clone()
    coordinate_init_(w, n_classes=72)
    assert torch.equal(w[:72], before[:72]) and torch.equal(w[8100:], before[8100:])   # classes and padding
    a, near, far = (w[coordinate_token(x, y, 90)] for x, y in ((0.5, 0.5), (0.52, 0.5), (0.9, 0.1)))
    assert (a - near).norm() < 0.5 * (a - far).norm()
    assert 0.8 < w[72:8100].pow(2).mean().sqrt().item() < 1.2                      # same scale as N(0, 1)


def test_photo_stages_train_on_dead_leaves_through_their_own_autoencoder(full_run):
    from ldmcli.loading.checkpoint import read_checkpoint
    from ldmcli.train.autoencoder_stage import load_autoencoder
    out, written = full_run
    photo_cfg, photo_sd = load_autoencoder(out / "photo-autoencoder.safetensors")
    shapes_cfg, _ = load_autoencoder(out / "decoder.safetensors")
    assert photo_cfg.num_res_blocks == 1 and shapes_cfg.num_res_blocks == 0
    for task in R.LDM_TASKS:
        sd, _ = read_checkpoint(written[task])
        photo = task in R.PHOTO_TASKS
        assert ("first_stage_model.decoder.up.0.block.1.conv1.weight" in sd) == photo   # one res block more
        if photo:      # the exported first stage is the photo autoencoder, as trained (superres: its decoder then
            # tuned by the superres-decoder stage, tests/test_prediction_decoder.py)
            for part in ("encoder", "decoder") if task == "inpaint" else ("encoder",):
                key = f"{part}.conv_in.weight"
                assert torch.equal(sd[f"first_stage_model.{key}"], photo_sd[key].half())


def test_photo_pool_joins_dead_leaves_after_the_world_keeping_caption_variants():
    from ldmcli.train.data import data_pool, join_pools, leaves_pool, world_pool
    world = world_pool(16, 6, 0, ("caption", "object_mask", "lowres"), caption_variants=3)
    leaves = leaves_pool(16, 4, 0, ("caption", "object_mask", "lowres"))
    pool = join_pools(world, leaves)
    assert pool.n_images == 10 and len(pool) == 30
    assert pool.captions[:6] == world.captions[:6] and pool.captions[6:10] == [""] * 4
    assert pool.captions[10:16] == world.captions[6:12]                  # variant 1 of the world, then the leaves
    assert pool.tensors["lowres"].shape == (10, 3, 4, 4) and not pool.tensors["object_mask"][6:].any()
    again = data_pool("world", 16, 6, 0, "superres", leaves=4)
    assert torch.equal(again.tensors["image"][6:], leaves.tensors["image"])   # the same seeds, the same pictures


def test_a_photo_stage_may_have_its_own_number_of_dead_leaves():
    from dataclasses import replace
    from ldmcli.train.run import TrainOptions, _leaves
    rec = tiny_recipe()
    rec = replace(rec, stages={**rec.stages, "superres": replace(rec.stages["superres"], leaves=20)})
    opts = TrainOptions(task="all", recipe="tiny", out="unused")
    got = {t: _leaves(t, opts, rec) for t in ("photo-autoencoder", "superres", "inpaint", "txt2img", "autoencoder")}
    assert got == {"photo-autoencoder": 8, "superres": 20, "inpaint": 8, "txt2img": 0, "autoencoder": 0}
    assert _leaves("superres", replace(opts, data="some/folder"), rec) == 0      # folders bring their own pictures
    cpu = R.recipe("cpu")
    assert cpu.stages["superres"].leaves > cpu.photo_leaves and cpu.stages["inpaint"].leaves is None


def test_a_stage_with_thin_leaves_trains_on_strokes():
    """StageSettings.thin_leaves reaches the pool's dead leaves (leaves_pool → dead_leaves), in their seeds' order."""
    from ldmcli.train.data import data_pool, leaves_pool, mix_seed
    from ldmcli.world.deadleaves import dead_leaves
    plain, thin = leaves_pool(16, 3, 0, ("lowres",)), leaves_pool(16, 3, 0, ("lowres",), thin=0.5)
    for i in range(3):
        want = np.asarray(dead_leaves(mix_seed(0, i, 0x1EAF), 16, 0.5)).transpose(2, 0, 1)
        assert np.array_equal(thin.tensors["image"][i].numpy(), want)
    assert not torch.equal(plain.tensors["image"], thin.tensors["image"])
    pool = data_pool("world", 16, 2, 0, "superres", leaves=3, thin=0.5)
    assert torch.equal(pool.tensors["image"][2:], thin.tensors["image"])


def test_the_superres_stage_draws_its_leaves_with_the_stages_thin_share(tmp_path, monkeypatch):
    """`ldm train --task superres` hands StageSettings.thin_leaves to the pool's dead leaves (the cpu recipe: half)."""
    from dataclasses import replace
    import ldmcli.train.data as D
    assert R.recipe("cpu").stages["superres"].thin_leaves == 0.5
    assert all(s.thin_leaves == 0 for t, s in R.recipe("cpu").stages.items() if t != "superres")
    rec = tiny_recipe()
    rec = replace(rec, stages={**rec.stages, "superres": replace(rec.stages["superres"], thin_leaves=0.25)})
    train(TrainOptions(task="photo-autoencoder", out=str(tmp_path), device="cpu", seed=3), Recorder(), recipe=rec)
    seen, real = [], D.leaves_pool

    def spy(*args, **kwargs):
        seen.append(args[7] if len(args) > 7 else kwargs.get("thin", 0.0))
        return real(*args, **kwargs)
    monkeypatch.setattr(D, "leaves_pool", spy)
    with pytest.raises(KeyboardInterrupt):       # the pool is built before the first step
        train(TrainOptions(task="superres", out=str(tmp_path), device="cpu", seed=3), Recorder("superres", 1),
              recipe=rec)
    assert seen == [0.25]


@pytest.mark.parametrize("chosen", [None, ""])
def test_ldm_train_leaves_nothing_in_the_temp_folder(tmp_path, chosen):
    """The optimizer's first step imports torch._dynamo, which makes Inductor's cache folder: `ldm train` puts it in
    ldm's compile cache, not as an empty torchinductor_<user> in the temp folder (the old code left one there), also
    where TORCHINDUCTOR_CACHE_DIR is set but empty (unset, as for --compile)."""
    import os
    import subprocess
    import sys
    data, temp, cache = tmp_path / "images", tmp_path / "temp", tmp_path / "cache"
    for d in (data, temp, cache):
        d.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 90 * i, np.uint8)).save(data / f"im{i}.png")
        (data / f"im{i}.txt").write_text("a grey square")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(TMPDIR=str(temp), XDG_CACHE_HOME=str(cache), OMP_NUM_THREADS="1")
    if chosen is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = chosen
    done = subprocess.run([sys.executable, "-m", "ldmcli", "train", "--task", "autoencoder", "--data", str(data),
                           "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "run"), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert list(temp.iterdir()) == []
    assert (cache / "ldmcli" / "inductor").is_dir()
