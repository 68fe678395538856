"""`ldm eval`: sample the default models on the shapes world's held-out eval split and score the images against
the world's exact ground truth (issue 4; the world and its read-back: `ldmcli.world`).

Per task, `n` eval examples, each sampled with `samples` seeds in one call of the public task function (what a
user gets, paste-back included), every image scored on its own:

  txt2img       prompt = the example's caption; colour / shape / position / count accuracy of what the caption
                asks (`metrics.txt2img_metrics`), over one-, two- and three-object scenes in equal numbers, so the
                single-object and two-object figures the targets name each have n/3 prompts
  inpaint       hole = the box around one object (`mask_object`), prompt = the caption; change outside the hole,
                PSNR inside it beside `diffusion_fill`, and whether that object is back in the hole
  superres      input = the exact render at a quarter of the model's size; PSNR / SSIM against the exact render
                at its size, beside PIL bicubic
  layout2img    the scene's boxes and "red circle" labels; IoU of the best-overlapping object read back, label
  semantic2img  the scene's class map; pixel accuracy and mIoU of the class map read back

  autoencoder   no sampling: the exact renders of n eval scenes through the first stage (encode, decode) and read
                back like the generated images — PSNR, colour / shape / position accuracy, object-pixel accuracy of
                the class map. No target: it is the ceiling of every score above, since no LDM draws a shape its
                autoencoder cannot reconstruct. Uses the txt2img model's first stage (all defaults share one).

Images have the model's own size (`cfg.image_size`: latent size x the first stage's factor). The pass/fail
targets are `TARGETS`; `check` applies them.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from ldmcli.errors import UsageError
from ldmcli.loading.registry import TASKS

CEILING = "autoencoder"   # the first-stage ceiling, evaluated with "all" (see the module docstring)
DEFAULT_N = 12      # examples per task: the five tasks take about a minute on two CPU cores with the cpu recipe
# The n the targets are judged at. A txt2img example is one prompt (one, two or three objects in turn), so at n = 30
# the single- and two-object figures rest on 10 prompts each: the same model measured single-object colour 0.975
# on eval at n = 30, 0.775 on val at n = 30, and 0.855 / 0.86 on eval / val at n = 150.
TARGET_N = 150
SAMPLES = 4         # seeds per example, sampled in one batch


class Target(NamedTuple):
    """value `op` threshold, where the threshold is `offset` plus metric `relative_to` of the same task if named."""
    op: str
    offset: float
    relative_to: Optional[str] = None


# The issue's targets, and two of this evaluator's: object_in_hole has no number in the issue ("the requested
# object present in the hole"), at least half the time is ours; and semantic2img's pixel accuracy is passed by a
# blank image (background is ~90 % of the pixels), so the requested-object pixels must be half right too.
TARGETS: Dict[str, Dict[str, Target]] = {
    "txt2img": {"single_colour_acc": Target(">=", 0.90), "single_shape_acc": Target(">=", 0.80),
                "two_colours_acc": Target(">=", 0.75), "position_acc": Target(">=", 0.70)},
    "inpaint": {"max_abs_outside": Target("<=", 0.0), "psnr_hole": Target(">", 0.0, "baseline_psnr_hole"),
                "object_in_hole": Target(">=", 0.5)},
    "superres": {"psnr": Target(">=", 3.0, "bicubic_psnr")},
    "layout2img": {"iou": Target(">=", 0.6)},
    "semantic2img": {"pixel_acc": Target(">=", 0.85), "object_pixel_acc": Target(">=", 0.5)},
}
_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b}


# ---- checkpoints ------------------------------------------------------------------------------------------------
def parse_tasks(tasks: Sequence[str]) -> tuple:
    """Task names from a list whose items may be comma lists or "all"; in the order of `TASKS`."""
    wanted = {t.strip() for item in tasks for t in str(item).split(",") if t.strip()}
    if not wanted or "all" in wanted:
        return TASKS + (CEILING,)
    unknown = sorted(wanted - set(TASKS) - {CEILING})
    if unknown:
        raise UsageError(f"unknown task {unknown[0]!r}; choose all or some of {', '.join(TASKS + (CEILING,))}")
    return tuple(t for t in TASKS + (CEILING,) if t in wanted)


def parse_overrides(items: Sequence[str], tasks: Sequence[str]) -> Dict[str, str]:
    """--ckpt values "TASK=PATH" as {task: path}; a bare PATH is allowed when one task is evaluated."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep and len(tasks) == 1:
            name, path = tasks[0], item
        elif not sep or not path or not name.strip():
            raise UsageError(f"--ckpt {item!r}: give TASK=PATH, e.g. --ckpt txt2img=runs/cpu0/txt2img.safetensors")
        out[name.strip()] = path
    return out


def resolve_checkpoints(tasks: Sequence[str], ckpts: Optional[Dict[str, str]] = None) -> Dict[str, Path]:
    """The checkpoint of every task: the override where given, else the embedded default. Checked before any
    sampling, so a missing default stops the run at once with one line."""
    from ldmcli.loading.load import resolve_ckpt
    from ldmcli.loading.registry import WEIGHTS_DIR, default_path
    ckpts = dict(ckpts or {})
    unknown = sorted(set(ckpts) - set(TASKS) - {CEILING})
    if unknown:
        raise UsageError(f"--ckpt for unknown task {unknown[0]!r}; tasks are {', '.join(TASKS + (CEILING,))}")
    out = {}
    for task in tasks:
        source = "txt2img" if task == CEILING and not ckpts.get(CEILING) else task  # the ceiling: txt2img's AE
        if ckpts.get(source):
            out[task] = resolve_ckpt(ckpts[source], source)
            continue
        try:
            out[task] = default_path(source)
        except UsageError:
            raise UsageError(f"no embedded default model for {source} in {WEIGHTS_DIR}; train one (ldm train) or "
                             f"pass --ckpt {source}=PATH") from None
    return out


# ---- examples ---------------------------------------------------------------------------------------------------
EVAL_SPLITS = ("eval", "val")   # the held-out split the targets are for, and the one to tune settings on


def check_split(split: str) -> None:
    if split not in EVAL_SPLITS:
        raise UsageError(f"--split must be eval or val, got {split!r}")


def eval_examples(task: str, n: int, size: int, split: str = "eval") -> List[dict]:
    """The first `n` examples of `split` (eval, or val for tuning: `world.scenes`) for `task` at image size `size`
    (`world.render.example` dicts).

    txt2img takes the first scenes with 1, 2 and 3 objects in turn (equal shares, the rest to the smaller counts);
    superres renders the input at size / 4 with its exact x4 render ("highres") at `size`."""
    from ldmcli.world.render import example
    from ldmcli.world.scenes import MAX_OBJECTS, scene_from_seed, scene_seeds
    check_split(split)
    if task == "superres":
        if size % 4:
            raise UsageError(f"superres evaluation needs an output size divisible by 4, got {size}")
        return [example(s, size // 4, extras=("superres",)) for s in _first(scene_seeds(split), n)]
    extras = ("inpaint",) if task == "inpaint" else ()
    if task != "txt2img":
        return [example(s, size, extras=extras) for s in _first(scene_seeds(split), n)]
    quota = [n // MAX_OBJECTS + (k < n % MAX_OBJECTS) for k in range(MAX_OBJECTS)]
    chosen: Dict[int, List[int]] = {k: [] for k in range(MAX_OBJECTS)}
    for s in scene_seeds(split):
        if sum(len(v) for v in chosen.values()) == n:
            break
        k = len(scene_from_seed(s).objects) - 1
        if len(chosen[k]) < quota[k]:
            chosen[k].append(s)
    return [example(s, size) for k in range(MAX_OBJECTS) for s in chosen[k]]


def _first(stream, n: int) -> List[int]:
    return [s for s, _ in zip(stream, range(n))]


# ---- generation -------------------------------------------------------------------------------------------------
def generate(task: str, model, ex: dict, seeds: List[int], settings) -> list:
    """One image per seed for example `ex`, through the public task function."""
    if task == "txt2img":
        from ldmcli.tasks.txt2img import txt2img
        return txt2img(model, ex["caption"], seeds=seeds, settings=settings)
    if task == "inpaint":
        from ldmcli.tasks.inpaint import inpaint
        return inpaint(model, ex["image"], ex["mask_object"].astype(np.float32), ex["caption"], seeds=seeds,
                       settings=settings)
    if task == "superres":
        from ldmcli.tasks.superres import superres
        return superres(model, ex["lowres"], seeds=seeds, settings=settings)
    if task == "layout2img":
        from ldmcli.io.layout import LayoutBox
        from ldmcli.tasks.layout2img import layout2img
        boxes = [LayoutBox(label, tuple(float(v) for v in box)) for label, box in zip(ex["labels"], ex["boxes"])]
        return layout2img(model, boxes, seeds=seeds, settings=settings)
    if task == "semantic2img":
        from ldmcli.tasks.semantic2img import semantic2img
        return semantic2img(model, ex["class_map"].astype(np.int64), seeds=seeds, settings=settings)
    raise UsageError(f"unknown task {task!r}")


# ---- scores -----------------------------------------------------------------------------------------------------
def score(task: str, examples: Sequence[dict], images: Sequence[Sequence]) -> Dict[str, float]:
    """The task's metrics over every image; images[i] are the images (PIL or uint8 arrays) of examples[i]."""
    from ldmcli.world import metrics as M
    from ldmcli.world.scenes import parse_caption
    pairs = [(ex, img) for ex, imgs in zip(examples, images, strict=True) for img in imgs]
    exs, imgs = [p[0] for p in pairs], [p[1] for p in pairs]
    if task == "txt2img":
        prompts = [parse_caption(ex["caption"]) for ex in exs]
        out = M.txt2img_metrics(prompts, imgs)
        for k, name in ((1, "single"), (2, "two")):
            mine = [i for i, p in enumerate(prompts) if len(p.objects) == k]
            part = M.txt2img_metrics([prompts[i] for i in mine], [imgs[i] for i in mine])
            out |= {f"{name}_colour_acc": part["colour_acc"], f"{name}_shape_acc": part["shape_acc"],
                    f"n_{name}_images": part["n_images"]}
        return out
    if task == "inpaint":
        return M.inpaint_metrics(imgs, [ex["image"] for ex in exs], [ex["mask_object"] for ex in exs],
                                 [ex["objects"][ex["mask_object_index"]] for ex in exs])
    if task == "superres":
        return M.superres_metrics(imgs, [ex["highres"] for ex in exs], [ex["lowres"] for ex in exs])
    if task == "layout2img":
        return M.layout2img_metrics([ex["scene"] for ex in exs], imgs)
    if task == "semantic2img":
        return M.semantic2img_metrics([ex["class_map"] for ex in exs], imgs)
    raise UsageError(f"unknown task {task!r}")


def _save(save_dir, task: str, examples: Sequence[dict], images: Sequence[Sequence]) -> None:
    """<save_dir>/<task>/<example>-<seed index>.png, and conditions.jsonl with each example's condition."""
    folder = Path(save_dir) / task
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "conditions.jsonl", "w") as f:
        for i, (ex, imgs) in enumerate(zip(examples, images)):
            for j, img in enumerate(imgs):
                img.save(folder / f"{i:03d}-{j}.png")
            record = {"example": i, "scene_seed": ex["seed"], "caption": ex["caption"], "labels": ex["labels"],
                      "boxes": np.asarray(ex["boxes"]).round(4).tolist()}
            if task == "inpaint":
                record["hole_object"] = ex["mask_object_index"]
            f.write(json.dumps(record) + "\n")


# ---- the evaluator ----------------------------------------------------------------------------------------------
Progress = Callable[[str, int, int], None]   # progress(task, examples done, examples in all)


def evaluate_model(task: str, model, n: int = DEFAULT_N, seed: int = 0, steps: Optional[int] = None,
                   samples: int = SAMPLES, save_dir=None, progress: Optional[Progress] = None, split: str = "eval",
                   scale: Optional[float] = None, eta: Optional[float] = None) -> Dict[str, float]:
    """Scores of one loaded model on `n` examples of `split` for `task`, `samples` images each (seeds seed + k);
    steps, scale (guidance) and eta None: the model's defaults. Adds n_examples and seconds (sampling and
    scoring)."""
    from ldmcli.sampling.pipeline import SamplerSettings
    if model.cfg.task != task:
        raise UsageError(f"{model.cfg.name} is a {model.cfg.task} model, not a {task} model")
    if n < 1 or samples < 1:
        raise UsageError(f"need at least one example and one sample each, got n={n}, samples={samples}")
    start = time.perf_counter()
    examples = eval_examples(task, n, model.cfg.image_size, split)
    settings = SamplerSettings(steps=steps, guidance_scale=scale, eta=eta)
    images = []
    if progress:
        progress(task, 0, len(examples))
    for i, ex in enumerate(examples):
        images.append(generate(task, model, ex, [seed + i * samples + j for j in range(samples)], settings))
        if progress:
            progress(task, i + 1, len(examples))
    if save_dir is not None:
        _save(save_dir, task, examples, images)
    out = score(task, examples, images)
    return out | {"n_examples": float(len(examples)), "seconds": time.perf_counter() - start}


class _FirstStage:
    """What `autoencoder_ceiling` needs of a model, for a first-stage file of `ldm train`."""

    def __init__(self, ae, device, image_size: int):
        from types import SimpleNamespace
        self.ae, self.device, self.cfg = ae.to(device).eval(), device, SimpleNamespace(image_size=image_size)

    def encode_first_stage(self, x, sample: bool = False):
        return self.ae.encode(x).mode()

    def decode_first_stage(self, z):
        return self.ae.decode(z)


def first_stage_model(path, device: str = "cpu"):
    """For the ceiling: a task model (its first stage is used), or `ldm train`'s <run>/autoencoder.safetensors, so
    a first stage can be judged before any LDM is trained on it."""
    from ldmcli.loading.load import load, pick_device
    if Path(path).suffix == ".safetensors":
        from ldmcli.loading.checkpoint import safetensors_metadata
        try:
            meta = safetensors_metadata(path)
        except Exception:       # noqa: BLE001 - not readable here: load() gives the one-line diagnosis
            meta = {}
        if "ldmcli_autoencoder" in meta:
            from ldmcli.models.autoencoder import AutoencoderKL
            from ldmcli.train.autoencoder_stage import load_autoencoder
            cfg, sd = load_autoencoder(path)
            ae = AutoencoderKL(cfg)
            ae.load_state_dict(sd, strict=True)
            return _FirstStage(ae, pick_device(device), cfg.resolution)
    return load(str(path), device=device)[0]


def autoencoder_ceiling(model, n: int = DEFAULT_N, progress: Optional[Progress] = None,
                        chunk: int = 16, split: str = "eval") -> Dict[str, float]:
    """The read-back scores of the first stage's reconstructions of the exact renders of n scenes of `split` (mode
    of the posterior; see the module docstring). Adds n_images and seconds."""
    import torch
    from PIL import Image
    from ldmcli.world import metrics as M
    start = time.perf_counter()
    examples = eval_examples("semantic2img", n, model.cfg.image_size, split)
    if progress:
        progress(CEILING, 0, len(examples))
    exact, rebuilt = [ex["image"].convert("RGB") for ex in examples], []
    for i in range(0, len(exact), chunk):
        # rounded, not images.tensor_to_pil's reference truncation: that loses a level on some pixels even when
        # nothing else does, and this row is about the first stage alone
        x = torch.stack([torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1) for im in exact[i:i + chunk]])
        with torch.inference_mode():
            y = model.decode_first_stage(model.encode_first_stage((x / 127.5 - 1).to(model.device), sample=False))
        y = ((y.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        rebuilt += [Image.fromarray(a) for a in y]
        if progress:
            for done in range(len(rebuilt) - len(y) + 1, len(rebuilt) + 1):
                progress(CEILING, done, len(examples))
    t2i = M.txt2img_metrics([ex["scene"] for ex in examples], rebuilt)
    sem = M.semantic2img_metrics([ex["class_map"] for ex in examples], rebuilt)
    psnr = float(np.mean([min(M.psnr(a, b), M.PSNR_CAP) for a, b in zip(rebuilt, exact)]))
    return {"psnr": psnr, "colour_acc": t2i["colour_acc"], "shape_acc": t2i["shape_acc"],
            "position_acc": t2i["position_acc"], "object_pixel_acc": sem["object_pixel_acc"],
            "n_images": float(len(examples)), "seconds": time.perf_counter() - start}


def evaluate(tasks: Sequence[str] = ("all",), n: int = DEFAULT_N, ckpts: Optional[Dict[str, str]] = None,
             device: str = "cpu", seed: int = 0, steps: Optional[int] = None, save_dir=None,
             progress: Optional[Progress] = None, samples: int = SAMPLES, split: str = "eval",
             scale: Optional[float] = None, eta: Optional[float] = None) -> Dict[str, Dict[str, float]]:
    """{task: {metric: value}} for each task's model: `ckpts[task]` (a path or registry name) or the embedded
    default. Every checkpoint is resolved before the first model loads. steps, scale, eta None: each model's
    default. split: eval (the held-out split the targets are for) or val (for tuning those settings)."""
    from ldmcli.loading.load import load
    tasks = parse_tasks(tasks)
    check_split(split)  # before any model loads
    paths = resolve_checkpoints(tasks, ckpts)
    results = {}
    for task in tasks:
        if task == CEILING:
            model = first_stage_model(paths[task], device)
            results[task] = autoencoder_ceiling(model, n, progress, split=split)
        else:
            model, _ = load(str(paths[task]), task=task, device=device)
            results[task] = evaluate_model(task, model, n, seed, steps, samples, save_dir, progress, split, scale,
                                           eta)
        del model
    return results


# ---- targets ----------------------------------------------------------------------------------------------------
def threshold(task: str, metric: str, metrics: Dict[str, float]) -> float:
    """The number a metric is compared with (nan when its reference metric is missing)."""
    t = TARGETS[task][metric]
    return t.offset + (metrics.get(t.relative_to, float("nan")) if t.relative_to else 0.0)


def check(results: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, bool]]:
    """{task: {metric: passed}} for every metric with a target; a nan value (no sample) fails."""
    out = {}
    for task, metrics in results.items():
        out[task] = {}
        for metric, target in TARGETS.get(task, {}).items():
            value, bar = metrics.get(metric, float("nan")), threshold(task, metric, metrics)
            out[task][metric] = not (math.isnan(value) or math.isnan(bar)) and _OPS[target.op](value, bar)
    return out


def all_passed(results: Dict[str, Dict[str, float]]) -> bool:
    return all(ok for marks in check(results).values() for ok in marks.values())


def target_text(task: str, metric: str, metrics: Dict[str, float]) -> str:
    """">= 0.9", or for a relative target "> baseline_psnr_hole + 0 (= 14.23)"; "" without a target."""
    t = TARGETS.get(task, {}).get(metric)
    if t is None:
        return ""
    if t.relative_to is None:
        return f"{t.op} {t.offset:g}"
    return f"{t.op} {t.relative_to} + {t.offset:g} (= {threshold(task, metric, metrics):.2f})"


# ---- reports ----------------------------------------------------------------------------------------------------
_HIDDEN = ("n_", "seconds")   # counts and timing: in the JSON and the table's footer, not as metric rows


def rows(results: Dict[str, Dict[str, float]]) -> List[tuple]:
    """(task, metric, value, target text, "pass" | "FAIL" | "") per metric, targeted metrics first."""
    marks = check(results)
    out = []
    for task, metrics in results.items():
        names = list(TARGETS.get(task, {})) + [m for m in metrics if m not in TARGETS.get(task, {})]
        for metric in names:
            if metric.startswith(_HIDDEN) or metric not in metrics and metric not in marks.get(task, {}):
                continue
            ok = marks.get(task, {}).get(metric)
            out.append((task, metric, metrics.get(metric, float("nan")), target_text(task, metric, metrics),
                        "" if ok is None else "pass" if ok else "FAIL"))
    return out


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    """A plain-text table: task, metric, value, target, pass/fail; then one line per task with its counts."""
    body = [("task", "metric", "value", "target", "result")]
    body += [(t, m, "n/a" if math.isnan(v) else f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}", tt, r)
             for t, m, v, tt, r in rows(results)]
    widths = [max(len(r[i]) for r in body) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for task, metrics in results.items():
        counts = ", ".join(f"{k[2:]} {v:g}" for k, v in metrics.items() if k.startswith("n_"))
        lines.append(f"{task}: {counts}; {metrics.get('seconds', float('nan')):.1f} s")
    verdict = check(results)
    failed = sum(not ok for marks in verdict.values() for ok in marks.values())
    total = sum(len(marks) for marks in verdict.values())
    lines.append(f"{total - failed}/{total} targets met")
    return "\n".join(lines)


def json_report(results: Dict[str, Dict[str, float]], **extra) -> dict:
    """One JSON-ready object: results (nan as null), targets (their text), pass marks, all_pass, and `extra`."""
    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return {**extra,
            "results": {t: {k: clean(v) for k, v in m.items()} for t, m in results.items()},
            "targets": {t: {k: target_text(t, k, results[t]) for k in TARGETS.get(t, {})} for t in results},
            "pass": check(results), "all_pass": all_passed(results)}
