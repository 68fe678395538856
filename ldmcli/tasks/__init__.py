"""The task table: one row per generating subcommand, read by the CLI, the batch runner, `ldm eval` and training.

A task is a function in `ldmcli.tasks.<name>` with the row's name: it takes the loaded model, its inputs as
strings, PIL images, arrays or boxes (the row's `params`), and `seeds`, `settings`, `callback`; it returns one PIL
image per seed. Tasks never open files: the CLI reads a job's files into those inputs (ldmcli/cli/inputs.py), and
`ldm eval` builds them from rendered scenes.

Adding a subcommand: a module here with its function (and its condition builder), one row below, and its Typer
command in ldmcli/cli/app.py. This module imports no torch, so `ldm --help` stays fast.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Tuple


@dataclass(frozen=True)
class Task:
    """One subcommand.

    name: the subcommand, its module in ldmcli.tasks and its function there.
    params: the function's input parameters, in order (the CLI reads each from a job: cli/inputs.py).
    required: Job fields every job must set (a blank prompt counts as unset), checked before the model loads.
    files: Job fields, and options of a job's `extra`, that name input files (resolved against a job file's
        folder, checked to exist before the model loads, stored resolved in the image's record).
    sized: whether it takes --height/--width (the others take their size from their input).
    labels: whether its module has `list_labels(model)` (--list-labels).
    summary: one line for help texts.
    world: whether it has an embedded default trained on the shapes world, so `ldm train` and `ldm eval` cover it
        (TASK_NAMES); public-checkpoint-only subcommands (sample) have none.
    """
    name: str
    params: Tuple[str, ...]
    required: Tuple[str, ...] = ()
    files: Tuple[str, ...] = ()
    sized: bool = False
    labels: bool = False
    summary: str = ""
    world: bool = True

    def function(self) -> Callable:
        """The task function (imported on first use: it imports torch)."""
        return getattr(importlib.import_module(f"ldmcli.tasks.{self.name}"), self.name)

    def list_labels(self, model) -> list:
        if not self.labels:
            raise ValueError(f"{self.name} has no labels")
        return importlib.import_module(f"ldmcli.tasks.{self.name}").list_labels(model)


TASKS: Dict[str, Task] = {t.name: t for t in (
    Task("txt2img", params=("prompt", "negative_prompt", "height", "width"), required=("prompt",), sized=True,
         summary="Generate images from a text prompt."),
    Task("img2img", params=("image", "prompt", "negative_prompt", "strength", "height", "width"),
         required=("image",), files=("image",), sized=True, world=False,
         summary="Redraw an image toward a text prompt (SDEdit: --strength of the schedule from the image)."),
    Task("inpaint", params=("image", "mask", "prompt", "negative_prompt", "mask_blur", "match_input"),
         required=("image", "mask"), files=("image", "mask"),
         summary="Repaint the masked part of an image; pixels outside the mask stay unchanged."),
    Task("superres", params=("image", "prompt", "negative_prompt", "scale", "noise_level", "tile_size",
                             "tile_overlap", "match_input", "detail", "ensemble"), required=("image",),
         files=("image",),
         summary="Upscale an image 4x (overlapping latent tiles for large inputs)."),
    Task("layout2img", params=("boxes", "height", "width"), files=("layout",), sized=True, labels=True,
         summary="Draw objects inside the given boxes."),
    Task("semantic2img", params=("segmap", "tile_size", "tile_overlap"), required=("segmap",),
         files=("segmap", "palette"), labels=True,
         summary="Paint an image that follows a semantic segmentation map."),
    Task("sample", params=("label", "height", "width"), sized=True, labels=True, world=False,
         summary="Sample a class-conditional (ImageNet) or unconditional model."),
)}

TASK_NAMES: Tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.world)   # the tasks training and eval cover
# options of every task's `extra` that name files (a job's own add-ons: cli/addons.py), resolved as `files` are;
# `embeddings` is a list of paths
ADDON_FILES: Tuple[str, ...] = ("vae", "embeddings", "embedding_dir")


def task(name: str) -> Task:
    """The row of `name`; a ValueError naming the tasks for anything else."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


__all__ = ["ADDON_FILES", "Task", "TASKS", "TASK_NAMES", "task"]
