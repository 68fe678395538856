"""Running `ldm eval`: which tasks and checkpoints, then per task: sample its examples through the public task
function (what a user gets, paste-back included) and score every image on its own."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ldmcli.errors import UsageError
from ldmcli.eval.ceiling import CEILING, Progress, autoencoder_ceiling, first_stage_model
from ldmcli.eval.examples import DEFAULT_N, check_split, eval_examples, task_inputs
from ldmcli.eval.photos import PHOTO_ROWS
from ldmcli.eval.scores import score
from ldmcli.tasks import TASK_NAMES, TASKS

SAMPLES = 4         # seeds per example, sampled in one batch
CHOICES = TASK_NAMES + (CEILING, PHOTO_ROWS)
# the models the photo rows run: superres and inpaint on photographs, the autoencoder row is superres's first stage
PHOTO_MODELS = ("superres", "inpaint")


# ---- tasks and checkpoints ------------------------------------------------------------------------------------
def parse_tasks(tasks: Sequence[str]) -> tuple:
    """Task names from a list whose items may be comma lists or "all"; in the order of the task table."""
    from ldmcli.eval.photos import available
    wanted = {t.strip() for item in tasks for t in str(item).split(",") if t.strip()}
    if not wanted or "all" in wanted:      # the photo rows when their photos are installed
        return CHOICES if available() else tuple(c for c in CHOICES if c != PHOTO_ROWS)
    unknown = sorted(wanted - set(CHOICES))
    if unknown:
        raise UsageError(f"unknown task {unknown[0]!r}; choose all or some of {', '.join(CHOICES)}")
    if PHOTO_ROWS in wanted and not available():
        raise UsageError("the photo rows need scikit-image's sample photos: pip install scikit-image")
    return tuple(t for t in CHOICES if t in wanted)


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
    from ldmcli.loading import resolve_ckpt
    from ldmcli.loading.registry import WEIGHTS_DIR, default_path
    ckpts = dict(ckpts or {})
    photo_keys = {f"{PHOTO_ROWS}:{t}" for t in PHOTO_MODELS}     # resolved paths handed back in (ldm eval)
    unknown = sorted(set(ckpts) - set(CHOICES) - photo_keys)
    if unknown:
        raise UsageError(f"--ckpt for unknown task {unknown[0]!r}; tasks are {', '.join(CHOICES)}")
    out = {}
    for task in tasks:
        if task == PHOTO_ROWS:
            given = {t: ckpts.get(f"{PHOTO_ROWS}:{t}") or ckpts.get(t) for t in PHOTO_MODELS}
            out |= {f"{PHOTO_ROWS}:{t}": p for t, p in
                    resolve_checkpoints(PHOTO_MODELS, {t: v for t, v in given.items() if v}).items()}
            continue
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


# ---- one task -------------------------------------------------------------------------------------------------
def generate(task: str, model, ex: dict, seeds: List[int], settings, sr_options: Optional[dict] = None) -> list:
    """One image per seed for example `ex`, through the public task function (superres with `sr_options`)."""
    extra = (sr_options or {}) if task == "superres" else {}
    return TASKS[task].function()(model, **task_inputs(task, ex), seeds=seeds, settings=settings, **extra)


def save_examples(save_dir, task: str, examples: Sequence[dict], images: Sequence[Sequence]) -> None:
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


def evaluate_model(task: str, model, n: int = DEFAULT_N, seed: int = 0, steps: Optional[int] = None,
                   samples: int = SAMPLES, save_dir=None, progress: Optional[Progress] = None, split: str = "eval",
                   scale: Optional[float] = None, eta: Optional[float] = None,
                   sr_options: Optional[dict] = None) -> Dict[str, float]:
    """Scores of one loaded model on `n` examples of `split` for `task`, `samples` images each (seeds seed + k);
    steps, scale (guidance), eta None: the model's defaults; sr_options: superres's detail / ensemble. Images have
    the model's own size (`cfg.image_size`). Adds n_examples and seconds (sampling and scoring)."""
    from ldmcli.sampling.settings import SamplerSettings
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
        images.append(generate(task, model, ex, [seed + i * samples + j for j in range(samples)], settings, sr_options))
        if progress:
            progress(task, i + 1, len(examples))
    if save_dir is not None:
        save_examples(save_dir, task, examples, images)
    out = score(task, examples, images)
    return out | {"n_examples": float(len(examples)), "seconds": time.perf_counter() - start}


def evaluate_photos(paths: Dict[str, Path], device: str, seed: int = 0, steps: Optional[int] = None,
                    progress: Optional[Progress] = None, scale: Optional[float] = None,
                    eta: Optional[float] = None, split: str = "eval",
                    sr_options: Optional[dict] = None, dtype: str = "auto") -> Dict[str, float]:
    """The photo rows (eval/photos.py): superres and its first stage, then inpaint, on scikit-image's photos (of
    `split`: eval, the photos the targets are for, or val, other pictures to tune on)."""
    from ldmcli.eval import photos as P
    from ldmcli.loading import load
    from ldmcli.sampling.settings import SamplerSettings
    settings = SamplerSettings(steps=steps, guidance_scale=scale, eta=eta)
    start = time.perf_counter()
    model, _ = load(str(paths[f"{PHOTO_ROWS}:superres"]), task="superres", device=device, dtype=dtype)
    out = P.superres_rows(model, seed, settings, progress, split, sr_options) | P.autoencoder_rows(model, split=split)
    del model
    model, _ = load(str(paths[f"{PHOTO_ROWS}:inpaint"]), task="inpaint", device=device, dtype=dtype)
    out |= P.inpaint_rows(model, seed, settings, progress, split)
    count = len(P.PHOTOS if split == "eval" else P.VAL)
    return {"n_photos": float(count)} | out | {"seconds": time.perf_counter() - start}


# ---- the evaluator --------------------------------------------------------------------------------------------
def evaluate(tasks: Sequence[str] = ("all",), n: int = DEFAULT_N, ckpts: Optional[Dict[str, str]] = None,
             device: str = "cpu", seed: int = 0, steps: Optional[int] = None, save_dir=None,
             progress: Optional[Progress] = None, samples: int = SAMPLES, split: str = "eval",
             scale: Optional[float] = None, eta: Optional[float] = None,
             detail: Optional[float] = None, ensemble: Optional[int] = None,
             dtype: str = "auto") -> Dict[str, Dict[str, float]]:
    """{task: {metric: value}} for each task's model: `ckpts[task]` (a path or registry name) or the embedded
    default. Every checkpoint is resolved before the first model loads. steps, scale, eta, detail and ensemble
    (superres's detail share and views) None: each model's default. split: eval (the held-out split and photos the
    targets are for) or val (other scenes and pictures, for tuning those settings). dtype: as `ldm --dtype`
    (auto: what the CLI would run; float32: the exact path)."""
    from ldmcli.loading import load
    tasks = parse_tasks(tasks)
    check_split(split)  # before any model loads
    from ldmcli.tasks.match_input import check_detail
    from ldmcli.tasks.superres import check_ensemble
    if detail is not None:
        check_detail(detail, "--detail")
    if ensemble is not None:
        check_ensemble(ensemble, "--ensemble")
    sr_options = {k: v for k, v in (("detail", detail), ("ensemble", ensemble)) if v is not None}
    paths = resolve_checkpoints(tasks, ckpts)
    results = {}
    for task in tasks:
        if task == CEILING:
            model = first_stage_model(paths[task], device)
            results[task] = autoencoder_ceiling(model, n, progress, split=split)
        elif task == PHOTO_ROWS:
            results[task] = evaluate_photos(paths, device, seed, steps, progress, scale, eta, split, sr_options,
                                            dtype)
            continue
        else:
            model, _ = load(str(paths[task]), task=task, device=device, dtype=dtype)
            results[task] = evaluate_model(task, model, n, seed, steps, samples, save_dir, progress, split, scale,
                                           eta, sr_options)
        del model
    return results


__all__ = ["SAMPLES", "CHOICES", "parse_tasks", "parse_overrides", "resolve_checkpoints", "generate",
           "save_examples", "evaluate_model", "evaluate"]
