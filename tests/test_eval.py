"""`ldm eval` (ldmcli/eval): the scoring path passes the world's own renders and fails blank or random
images; the evaluator and the CLI run end to end on tiny random-weight models in the real file format; the slow
test holds the shipped defaults to every target."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import ldmcli.eval as E
from ldmcli.world import metrics as M
from ldmcli.cli.app import app
from ldmcli.errors import UsageError
from ldmcli.world.scenes import parse_caption, split_of

SIZE = 32          # the cpu recipe's image size, where the read-back is weakest


def _truth(task: str, ex: dict):
    """What a perfect model returns for the example: the world's exact render at the output size."""
    return ex["highres"] if task == "superres" else ex["image"]


@pytest.fixture(scope="module")
def examples():
    return {task: E.eval_examples(task, 9, SIZE) for task in E.TASK_NAMES}


# ---- examples ----------------------------------------------------------------------------------------------------
def test_examples_come_from_the_eval_split_at_the_model_size(examples):
    for task, exs in examples.items():
        assert len(exs) == 9 and all(split_of(ex["seed"]) == "eval" for ex in exs)
        if task == "superres":
            assert all(ex["lowres"].size == (SIZE // 4,) * 2 and ex["highres"].size == (SIZE,) * 2 for ex in exs)
        else:
            assert all(ex["image"].size == (SIZE,) * 2 for ex in exs)
    counts = [len(parse_caption(ex["caption"]).objects) for ex in examples["txt2img"]]
    assert counts == [1] * 3 + [2] * 3 + [3] * 3                      # equal shares of 1, 2, 3 objects
    assert [ex["seed"] for ex in E.eval_examples("layout2img", 9, SIZE)] == [ex["seed"] for ex in
                                                                              examples["layout2img"]]
    val = E.eval_examples("txt2img", 9, SIZE, split="val")         # for tuning: train-split scenes, same shares
    assert all(split_of(ex["seed"]) == "train" for ex in val)
    assert [len(parse_caption(ex["caption"]).objects) for ex in val] == counts
    with pytest.raises(UsageError, match="--split must be eval or val"):
        E.eval_examples("txt2img", 3, SIZE, split="train")
    assert len(E.eval_examples("txt2img", 4, SIZE)) == 4


# ---- the scoring path ----------------------------------------------------------------------------------------------
def test_ground_truth_scores_perfect_and_passes_every_target(examples):
    results = {task: E.score(task, exs, [[_truth(task, ex)] for ex in exs]) for task, exs in examples.items()}
    t = results["txt2img"]
    assert t["single_colour_acc"] == 1 and t["single_shape_acc"] >= 0.9 and t["two_colours_acc"] == 1
    assert t["position_acc"] == 1 and t["count_acc"] == 1 and t["n_single_images"] == 3
    assert results["layout2img"]["iou"] > 0.9 and results["layout2img"]["label_acc"] >= 0.9
    assert results["semantic2img"]["pixel_acc"] > 0.99 and results["semantic2img"]["miou"] > 0.9
    assert results["superres"]["psnr"] == 100 and results["superres"]["ssim"] == pytest.approx(1)
    i = results["inpaint"]
    assert i["max_abs_outside"] == 0 and i["psnr_hole"] == 100 and i["object_in_hole"] == 1
    assert E.all_passed(results), E.format_table(results)


def _blank(task: str, ex: dict):
    """The image's own background with every object gone: all that a model ignoring its condition can match."""
    size = _truth(task, ex).size[0]
    colour = np.asarray(ex["image"])[0, 0]
    if task == "inpaint":                                              # hole filled with the background colour
        out = np.asarray(ex["image"]).copy()
        out[ex["mask_object"] > 0] = colour
        return Image.fromarray(out)
    return Image.fromarray(np.broadcast_to(colour, (size, size, 3)).astype(np.uint8))


def test_blank_images_fail(examples):
    results = {task: E.score(task, exs, [[_blank(task, ex)] for ex in exs]) for task, exs in examples.items()}
    marks = E.check(results)
    assert not any(marks["txt2img"].values())
    assert marks["layout2img"] == {"iou": False}
    assert marks["semantic2img"] == {"pixel_acc": True, "object_pixel_acc": False}   # why the second target
    assert marks["superres"] == {"psnr": False}
    assert marks["inpaint"]["max_abs_outside"] and not marks["inpaint"]["object_in_hole"]
    assert not E.all_passed(results)
    assert "FAIL" in E.format_table(results) and "pass" in E.format_table(results)


def test_targets_and_checks():
    metrics = {"superres": {"psnr": 25.0, "bicubic_psnr": 22.0, "ssim": 0.9}}
    assert E.check(metrics) == {"superres": {"psnr": True}}
    assert E.check({"superres": {"psnr": 24.9, "bicubic_psnr": 22.0}}) == {"superres": {"psnr": False}}
    assert E.target_text("superres", "psnr", metrics["superres"]) == ">= bicubic_psnr + 3 (= 25.00)"
    assert E.check({"layout2img": {"iou": float("nan")}}) == {"layout2img": {"iou": False}}   # no sample: fails
    assert E.check({"inpaint": {"max_abs_outside": 1.0, "psnr_hole": 20.0, "baseline_psnr_hole": 20.0,
                                "object_in_hole": 0.5}})["inpaint"] == \
        {"max_abs_outside": False, "psnr_hole": False, "object_in_hole": True}
    report = E.json_report({"layout2img": {"iou": float("nan"), "label_acc": 0.5}}, n=1)
    assert json.loads(json.dumps(report))["results"]["layout2img"]["iou"] is None and report["all_pass"] is False
    assert E.parse_tasks(["txt2img,superres", "inpaint"]) == ("txt2img", "inpaint", "superres")
    assert E.parse_tasks(["all"])[:len(E.TASK_NAMES) + 1] == E.TASK_NAMES + (E.CEILING,)   # then photos, if any
    assert E.parse_tasks(["autoencoder"]) == (E.CEILING,)
    with pytest.raises(UsageError, match="unknown task"):
        E.parse_tasks(["txt2image"])
    assert E.parse_overrides(["a.safetensors"], ("superres",)) == {"superres": "a.safetensors"}
    with pytest.raises(UsageError, match="TASK=PATH"):
        E.parse_overrides(["a.safetensors"], E.TASK_NAMES)


# ---- tiny random-weight models in the real format ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    """The five task models of a 16 px recipe (32-channel UNets), random weights, exported like the defaults."""
    from tiny import randomize_
    from ldmcli.models.ldm import LatentDiffusion
    from ldmcli.train import recipes as R
    from ldmcli.train.data import world_vocabulary
    from ldmcli.train.export import export_default
    sizes = R.Sizes(image=16, ae_width=32, ae_res_blocks=0, width=32, mult=(1, 2), res_blocks=1,
                    cross_attention=(1, 2), self_attention=(2,), text_width=32, text_layers=1, layout_width=32,
                    layout_layers=1)
    models = R._models(sizes)
    rec = R.Recipe("tiny", image_size=16, pool_size=16, autoencoder=models["txt2img"].first_stage, models=models)
    out = tmp_path_factory.mktemp("tiny_models")
    paths = {}
    for k, task in enumerate(R.LDM_TASKS):
        torch.manual_seed(k)
        model = randomize_(LatentDiffusion(R.model_config(rec, task, world_vocabulary())), seed=k)
        paths[task] = str(export_default(model.eval(), out / f"{task}.safetensors", version="test"))
    return paths


def test_evaluate_runs_on_tiny_models_and_random_weights_score_low(tiny_ckpts, tmp_path):
    seen = []
    results = E.evaluate(E.TASK_NAMES + (E.CEILING,), n=3, ckpts=tiny_ckpts, steps=2, samples=2, save_dir=tmp_path,
                         progress=lambda task, done, total: seen.append((task, done, total)))
    assert list(results) == list(E.TASK_NAMES) + [E.CEILING]
    assert seen == [(t, d, 3) for t in E.TASK_NAMES + (E.CEILING,) for d in range(4)]
    ceiling = results.pop(E.CEILING)
    assert ceiling["n_images"] == 3 and 0 <= ceiling["shape_acc"] <= 1 and 0 < ceiling["psnr"] < 100
    for task, metrics in results.items():
        assert set(E.TARGETS[task]) <= set(metrics) and metrics["n_examples"] == 3 and metrics["seconds"] > 0
        for name, value in metrics.items():
            if name.endswith("_acc") or name in ("iou", "miou", "object_in_hole", "ssim"):
                assert math.isnan(value) or -1 <= value <= 1, (task, name, value)
        pngs = sorted((tmp_path / task).glob("*.png"))
        assert len(pngs) == 6 and all(Image.open(p).size == (16, 16) for p in pngs)
        assert len((tmp_path / task / "conditions.jsonl").read_text().splitlines()) == 3
    assert results["txt2img"]["n_images"] == 6 and results["txt2img"]["n_single_images"] == 2
    assert results["inpaint"]["max_abs_outside"] == 0                  # the paste-back keeps every outside pixel
    marks = E.check(results)
    assert not marks["txt2img"]["single_colour_acc"] and not marks["layout2img"]["iou"]
    assert not marks["superres"]["psnr"] and not marks["semantic2img"]["object_pixel_acc"]
    again = E.evaluate(("layout2img",), n=3, ckpts=tiny_ckpts, steps=2, samples=2)
    assert {k: v for k, v in again["layout2img"].items() if k != "seconds"} == \
        {k: v for k, v in results["layout2img"].items() if k != "seconds"}                  # seeded


def test_autoencoder_ceiling_of_a_lossless_first_stage_is_perfect(tiny_ckpts, monkeypatch):
    """With encode/decode made lossless the ceiling reads the exact renders: every score at its best."""
    from ldmcli.models.ldm import LatentDiffusion
    monkeypatch.setattr(LatentDiffusion, "encode_first_stage", lambda self, x, sample=True: x)
    monkeypatch.setattr(LatentDiffusion, "decode_first_stage", lambda self, z: z)
    got = E.evaluate((E.CEILING,), n=6, ckpts={"txt2img": tiny_ckpts["txt2img"]})[E.CEILING]
    exs = E.eval_examples("semantic2img", 6, 16)                               # the tiny models' size
    exact = M.txt2img_metrics([ex["scene"] for ex in exs], [ex["image"] for ex in exs])
    assert got["psnr"] == M.PSNR_CAP
    assert all(got[k] == exact[k] for k in ("colour_acc", "shape_acc", "position_acc"))
    assert got["object_pixel_acc"] == M.semantic2img_metrics([ex["class_map"] for ex in exs],
                                                             [ex["image"] for ex in exs])["object_pixel_acc"]


def test_ceiling_reads_a_first_stage_file_of_ldm_train(tiny_ckpts, tmp_path):
    """`--ckpt autoencoder=<run>/autoencoder.safetensors` gives the same row as a task model with that first stage."""
    from ldmcli.loading import load
    from ldmcli.train.autoencoder_stage import save_autoencoder
    model, _ = load(tiny_ckpts["txt2img"], device="cpu")
    ae_file = save_autoencoder(model.first_stage_model, tmp_path / "autoencoder.safetensors")
    from_file = E.evaluate((E.CEILING,), n=3, ckpts={E.CEILING: str(ae_file)})[E.CEILING]
    from_model = E.evaluate((E.CEILING,), n=3, ckpts={"txt2img": tiny_ckpts["txt2img"]})[E.CEILING]
    same = ("psnr", "colour_acc", "shape_acc", "position_acc", "object_pixel_acc")
    assert [from_file[k] for k in same] == pytest.approx([from_model[k] for k in same], abs=1e-3)


def test_evaluate_refuses_a_model_of_another_task(tiny_ckpts):
    with pytest.raises(UsageError, match="not a txt2img model"):
        E.evaluate(("txt2img",), n=1, ckpts={"txt2img": tiny_ckpts["layout2img"]}, steps=1, samples=1)


# ---- the command line ----------------------------------------------------------------------------------------------
def _invoke(*args):
    return CliRunner().invoke(app, ["eval", *args])


def test_cli_json_and_table(tiny_ckpts):
    ckpts = [a for t in ("txt2img", "superres") for a in ("--ckpt", f"{t}={tiny_ckpts[t]}")]
    result = _invoke("--task", "txt2img,superres", *ckpts, "--n", "2", "--samples", "1", "--steps", "1", "--json",
                     "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report["results"]) == ["txt2img", "superres"] and report["all_pass"] is False
    assert report["ckpts"]["superres"] == tiny_ckpts["superres"] and report["n"] == 2
    assert set(report["pass"]["txt2img"]) == set(E.TARGETS["txt2img"])
    table = _invoke("--task", "superres", "--ckpt", tiny_ckpts["superres"], "--n", "1", "--samples", "1",
                    "--steps", "1", "--quiet")
    assert table.exit_code == 0, table.output
    assert "bicubic_psnr" in table.stdout and "FAIL" in table.stdout and "targets met" in table.stdout
    checked = _invoke("--task", "superres", "--ckpt", f"superres={tiny_ckpts['superres']}", "--n", "1",
                      "--samples", "1", "--steps", "1", "--quiet", "--check")
    assert checked.exit_code == 1
    tuned = _invoke("--task", "txt2img", "--ckpt", tiny_ckpts["txt2img"], "--n", "1", "--samples", "1", "--steps",
                    "1", "--scale", "5", "--eta", "1", "--split", "val", "--json", "--quiet")
    assert tuned.exit_code == 0, tuned.output
    report = json.loads(tuned.stdout)
    assert (report["split"], report["scale"], report["eta"]) == ("val", 5.0, 1.0)
    assert _invoke("--task", "superres", "--ckpt", tiny_ckpts["superres"], "--split", "train").exit_code == 2


def test_cli_usage_errors(tiny_ckpts, tmp_path, monkeypatch):
    import ldmcli.loading.registry as W
    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(W, "REGISTRY_FILE", tmp_path / "registry.json")
    missing = _invoke("--task", "txt2img,layout2img", "--ckpt", f"txt2img={tiny_ckpts['txt2img']}")
    assert missing.exit_code == 2
    assert "no embedded default model for layout2img" in missing.stderr and "--ckpt layout2img=PATH" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert _invoke("--task", "paint").exit_code == 2
    assert _invoke("--ckpt", tiny_ckpts["txt2img"]).exit_code == 2           # which task? needs TASK=PATH
    assert _invoke("--task", "txt2img", "--ckpt", f"txt2img={tmp_path / 'none.safetensors'}").exit_code == 2


# ---- the shipped defaults ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shipped_defaults_meet_every_target():
    try:
        E.resolve_checkpoints(E.TASK_NAMES)
    except UsageError as e:
        pytest.skip(str(e))
    results = E.evaluate(n=E.TARGET_N, device="cpu")
    assert E.all_passed(results), "\n" + E.format_table(results)


def test_photo_rows_run_on_real_photos_and_are_judged(tiny_ckpts, monkeypatch):
    pytest.importorskip("skimage")
    from ldmcli.eval import photos as P
    monkeypatch.setattr(P, "PHOTOS", ("astronaut", "camera"))           # two photos: the rows, not the figures
    assert E.parse_tasks(["all"])[-1] == "photos" and E.parse_tasks(["photos"]) == ("photos",)
    seen = []
    got = E.evaluate(("photos",), ckpts=tiny_ckpts, steps=1,
                     progress=lambda task, done, total: seen.append((task, done, total)))["photos"]
    assert set(E.TARGETS["photos"]) <= set(got) and got["n_photos"] == 2
    assert 5 < got["sr128_bicubic_psnr"] < 60 and 5 < got["sr256_psnr"] < 60 and 0 < got["autoencoder_psnr"] < 60
    assert got["sr128_gain_db"] == pytest.approx(got["sr128_psnr"] - got["sr128_bicubic_psnr"])
    assert got["sr128_worst_gain_db"] <= got["sr128_gain_db"] and got["inpaint_seam_index"] > 0
    assert [s for s in seen if s[1] == 0] == [("photos superres 32->128", 0, 2), ("photos superres 64->256", 0, 2),
                                              ("photos inpaint", 0, 2)]
    marks = E.check({"photos": got})["photos"]
    assert set(marks) == set(E.TARGETS["photos"])


def test_photo_rows_tune_on_val_pictures_with_the_detail_share(tiny_ckpts, monkeypatch):
    pytest.importorskip("skimage")
    from ldmcli.eval import photos as P
    import ldmcli.tasks.superres as S
    monkeypatch.setattr(P, "VAL", ("cell", "text"))                  # text (172 px) is never enlarged to 256
    shares, real = [], S.superres

    def spy(*args, **kwargs):
        shares.append((kwargs.get("detail"), kwargs.get("ensemble")))
        return real(*args, **kwargs)
    monkeypatch.setattr(S, "superres", spy)
    seen = []
    got = E.evaluate(("photos",), ckpts=tiny_ckpts, steps=1, split="val", detail=0.25, ensemble=2,
                     progress=lambda task, done, total: seen.append((task, done, total)))["photos"]
    assert [s for s in seen if s[1] == 0] == [("photos superres 32->128", 0, 2), ("photos superres 64->256", 0, 1),
                                              ("photos inpaint", 0, 2)]
    assert shares == [(0.25, 2)] * 3 and got["n_photos"] == 2
    # each row says how many pictures it rests on, in the table's footer too
    assert (got["n_sr128"], got["n_sr256"], got["n_inpaint"]) == (2, 1, 2)
    assert "photos 2, sr128 2, sr256 1, inpaint 2" in E.format_table({"photos": got})
    with pytest.raises(UsageError, match="--detail must be a number between 0 and 1"):
        E.evaluate(("photos",), ckpts=tiny_ckpts, split="val", detail=1.5)
    tuned = _invoke("--task", "superres", "--ckpt", tiny_ckpts["superres"], "--n", "1", "--samples", "1", "--steps",
                    "1", "--detail", "0", "--ensemble", "3", "--split", "val", "--json", "--quiet")
    assert tuned.exit_code == 0, tuned.output
    report = json.loads(tuned.stdout)
    assert (report["detail"], report["ensemble"]) == (0.0, 3) and shares[-1] == (0.0, 3)
    assert _invoke("--task", "superres", "--ckpt", tiny_ckpts["superres"], "--detail", "2").exit_code == 2
    assert _invoke("--task", "superres", "--ckpt", tiny_ckpts["superres"], "--ensemble", "9").exit_code == 2
    with pytest.raises(UsageError, match="--ensemble must be a whole number"):
        E.evaluate(("superres",), ckpts=tiny_ckpts, ensemble=0)


def test_photo_rows_need_scikit_image(monkeypatch):
    from ldmcli.eval import photos as P
    from ldmcli.errors import UsageError
    monkeypatch.setattr(P, "available", lambda: False)
    assert "photos" not in E.parse_tasks(["all"])
    with pytest.raises(UsageError, match="scikit-image"):
        E.parse_tasks(["photos"])
