"""The eval examples of `ldm eval`: scenes of the shapes world's held-out split, rendered at a model's size, and the
inputs each task function takes for one of them (by the task table's parameter names)."""
from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np

from ldmcli.errors import UsageError

DEFAULT_N = 12      # examples per task: a quick look; the targets are judged at report.TARGET_N
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


# ---- the task function's inputs for an example -------------------------------------------------------------------
def _layout_boxes(ex: dict) -> list:
    from ldmcli.io.layout import LayoutBox
    return [LayoutBox(label, tuple(float(v) for v in box)) for label, box in zip(ex["labels"], ex["boxes"])]


# task -> example -> {parameter of the task function (ldmcli.tasks.TASKS[task].params): value}
INPUTS: Dict[str, Callable[[dict], dict]] = {
    "txt2img": lambda ex: {"prompt": ex["caption"]},
    "inpaint": lambda ex: {"image": ex["image"], "mask": ex["mask_object"].astype(np.float32),
                           "prompt": ex["caption"]},           # the hole: the box around one object
    "superres": lambda ex: {"image": ex["lowres"]},
    "layout2img": lambda ex: {"boxes": _layout_boxes(ex)},     # the scene's boxes with "red circle" labels
    "semantic2img": lambda ex: {"segmap": ex["class_map"].astype(np.int64)},
}


def task_inputs(task: str, ex: dict) -> dict:
    """The inputs of `task`'s function for example `ex`, keyed by the task table's parameter names."""
    from ldmcli.tasks import task as row
    params = row(task).params
    inputs = INPUTS[task](ex)
    unknown = sorted(set(inputs) - set(params))
    if unknown:
        raise ValueError(f"eval inputs {unknown} are not parameters of {task} ({', '.join(params)})")
    return inputs


__all__ = ["DEFAULT_N", "EVAL_SPLITS", "check_split", "eval_examples", "INPUTS", "task_inputs"]
