"""What can be refused without the model, refused before it loads: one UsageError line, exit 2.

The runner calls `check_options` once after building the jobs (the run's options, the environment, and the one job
of a run without --from-file) and `check_job` for every job of a batch before anything is loaded, so a bad job
fails alone and the model is never read for a batch that has no good job. What needs the model (the size's
multiple, class names, the number of timesteps, the upscaler's noise cap) is checked again when it is known.
`job_size_warning` is no refusal: once the model is known, the runner warns (and goes on) when a generative task is
asked for an output at least twice the model's training size, where it is likely to draw incoherent images.

Bounds, said in the errors and the README:
- --n-samples (a job's `n_samples`) 1..MAX_N_SAMPLES; --batch-size 1..MAX_BATCH_SIZE;
- --eta in [0, 1] (DDIM's σ = η·√(…) would take the square root of a negative number above 1); --scale (guidance)
  and every other number finite;
- --height/--width 1..MAX_SIDE; --steps ≥ 1; --noise-level 0..MAX_NOISE_LEVEL; --mask-blur 0..MAX_MASK_BLUR px;
  --tile-size ≥ 1 and 0 ≤ --tile-overlap < --tile-size; superres --scale ≥ 1;
- --seed −1 (random) or 0..2^64−1;
- WORLD_SIZE ≥ 1, 0 ≤ RANK < WORLD_SIZE, LOCAL_RANK ≥ 0, each a plain decimal number.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Optional, Tuple

from ldmcli.cli.outputs import SEED_LIMIT
from ldmcli.errors import CheckpointError, LdmError, UsageError
from ldmcli.sampling.memory import MAX_SIDE

MAX_N_SAMPLES = 10_000      # images per job: 10^9 is a typo, not a plan
MAX_ENSEMBLE = 8            # superres views: len(tasks.superres.VIEWS), the symmetries of a square
MAX_BATCH_SIZE = 1_000      # images per forward pass
MAX_NOISE_LEVEL = 999       # the upscaler's noise-augmentation schedule has 1000 levels (its model caps it lower)
MAX_MASK_BLUR = 1024        # px of Gaussian feather; more blurs any mask to a uniform grey
_DECIMAL = re.compile(r"\s*[0-9]{1,9}\s*")   # int() would take "+1", "1_0" and non-ASCII digits too


def _finite(name: str, value, low=None, high=None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"--{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"--{name} must be {bounds}, got {value:g}")


def _whole(name: str, value, low: int, high=None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"--{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"--{name} must be {bounds}, got {value}")


def _env_number(name: str):
    """An environment variable's whole number (None when unset); junk is a UsageError."""
    text = os.environ.get(name)
    if text is None or (name == "LOCAL_RANK" and not text.strip()):   # pick_device reads an empty one as unset
        return None
    if not _DECIMAL.fullmatch(text):
        raise UsageError(f"{name}={text[:40]!r} is not a whole number (set by torchrun; unset it for one process)")
    return int(text)


def check_environment() -> None:
    """torchrun's variables: WORLD_SIZE ≥ 1, 0 ≤ RANK < WORLD_SIZE, LOCAL_RANK ≥ 0."""
    world, rank, _ = (_env_number(n) for n in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    world = 1 if world is None else world
    if world < 1:
        raise UsageError(f"WORLD_SIZE={world} must be at least 1")
    if rank is not None and rank >= world:
        raise UsageError(f"RANK={rank} must be below WORLD_SIZE={world}")


def _check_model_paths(opts: dict) -> None:
    """--ckpt and --config must be regular files when they exist: a device or FIFO would be read forever."""
    from ldmcli.io.paths import expand_user
    from ldmcli.loading.files import check_regular_file
    for name in ("ckpt", "config"):
        value = opts.get(name)
        if isinstance(value, str) and value:
            path = expand_user(value)
            if path.exists() and (name == "ckpt" or path.suffix in (".yaml", ".yml")):
                check_regular_file(path, "checkpoint" if name == "ckpt" else "config",
                                   CheckpointError if name == "ckpt" else UsageError)
    if isinstance(opts.get("vae"), str):
        _check_vae_file(opts["vae"], "--vae file")


def _check_vae_file(value: str, what: str) -> None:
    """A VAE ("" is the checkpoint's own) is an existing regular file, checked before the model loads."""
    from ldmcli.io.paths import expand_user
    from ldmcli.loading.files import check_regular_file
    if value:
        path = expand_user(value)
        if not path.exists():
            raise CheckpointError(f"{what} not found: {path}")
        check_regular_file(path, "VAE", CheckpointError)


def check_options(task: str, opts: dict, jobs=()) -> None:
    """The run's options and environment; and, without --from-file, its one job (whose errors then carry no
    "job 1:" prefix). Raises UsageError."""
    check_environment()
    _finite("eta", opts.get("eta"), 0, 1)
    _whole("batch-size", opts.get("batch_size"), 1, MAX_BATCH_SIZE)
    _whole("n-samples", opts.get("n_samples"), 1, MAX_N_SAMPLES)
    seed = opts.get("seed")
    if seed is not None and seed != -1:
        _whole("seed", seed, 0, SEED_LIMIT - 1)
    _check_model_paths(opts)
    if not opts.get("from_file"):
        for job in jobs:
            check_job(task, job)
    else:   # the command line's values are every job's defaults: refuse them once, not once per job
        _check_numbers(task, opts, opts)


def _check_numbers(task: str, fields: dict, extra: dict) -> None:
    _whole("steps", fields.get("steps"), 1)
    _finite("guidance" if task == "superres" else "scale", fields.get("scale"))
    _whole("n-samples", fields.get("n_samples"), 1, MAX_N_SAMPLES)
    for side in ("height", "width"):
        _whole(side, fields.get(side), 1)
        if fields.get(side) is not None and fields[side] > MAX_SIDE:   # the words of tasks.geometry.check_size
            raise UsageError(f"--{side} {fields[side]} is over the {MAX_SIDE} px limit")
    _finite("mask-blur", extra.get("mask_blur"), 0, MAX_MASK_BLUR)
    _finite("strength", extra.get("strength"), 0, 1)
    _whole("noise-level", extra.get("noise_level"), 0, MAX_NOISE_LEVEL)
    _whole("scale" if task == "superres" else "upscale", extra.get("upscale"), 1)
    _whole("tile-size", extra.get("tile_size"), 1, MAX_SIDE)
    _whole("tile-overlap", extra.get("tile_overlap"), 0)
    _finite("detail", extra.get("detail"), 0, 1)
    _whole("ensemble", extra.get("ensemble"), 1, MAX_ENSEMBLE)
    _whole("clip-skip", extra.get("clip_skip"), 1)     # its upper bound is the text encoder's depth
    size, overlap = extra.get("tile_size"), extra.get("tile_overlap")
    if size is not None and overlap is not None and overlap >= size:
        raise UsageError(f"--tile-overlap must be below --tile-size ({size}), got {overlap}")


def check_job(task: str, job) -> None:
    """One job's numbers, and its input files as far as their headers and text tell (sizes, mask aspect, boxes,
    palette format). Raises UsageError."""
    from ldmcli.cli.inputs import OPTIONS, job_option
    from ldmcli.io.images import check_input_path
    from ldmcli.tasks import task as task_row
    for what in task_row(task).files:   # they exist (pipes and devices count: reading them is the task's)
        value = getattr(job, what, None) or job.extra.get(what)
        if isinstance(value, str) and value:
            check_input_path(Path(value), what, "a file")
    extra = {name: job_option(job, name) for name in OPTIONS if name in job.extra}   # typed, or UsageError
    _check_numbers(task, job.__dict__, extra)
    if job.sampler is not None:
        from ldmcli.sampling.table import parse_sampler
        parse_sampler(job.sampler)      # a name of the table or an A1111 display name
    if getattr(job, "schedule", None) is not None:
        from ldmcli.sampling.table import SCHEDULE_LABELS
        if job.schedule not in SCHEDULE_LABELS:
            raise UsageError(f"unknown schedule {job.schedule!r}; choose one of {', '.join(SCHEDULE_LABELS)}")
    _check_images(job)
    _check_addon_files(extra)
    if task == "layout2img":
        _check_layout(job)
    if extra.get("palette"):
        from ldmcli.io.segmap import check_palette_file
        check_palette_file(Path(extra["palette"]))


def _check_addon_files(extra: dict) -> None:
    """A job's own VAE (a regular file; "" is the checkpoint's own), embedding files and embedding folder exist."""
    from ldmcli.io.paths import expand_user
    if extra.get("vae"):
        _check_vae_file(extra["vae"], "VAE file")
    for name in extra.get("embeddings") or ():
        if not isinstance(name, str) or not name:
            raise UsageError(f"option 'embeddings' should be a list of files, got {str(name)[:60]!r} in it")
        path = expand_user(name)
        if not path.is_file():
            raise UsageError(f"embedding not found: {path}")
    if extra.get("embedding_dir") and not expand_user(extra["embedding_dir"]).is_dir():
        raise UsageError(f"embedding_dir {extra['embedding_dir']}: not a folder")


def _check_images(job) -> None:
    """Image headers: refused formats and sizes now, and a mask whose aspect ratio cannot fit its image."""
    from ldmcli.io.images import check_mask_aspect, image_size
    sizes = {what: image_size(Path(getattr(job, what)), name) for what, name in
             (("image", "image"), ("mask", "mask"), ("segmap", "segmentation map")) if getattr(job, what)}
    if sizes.get("image") and sizes.get("mask"):
        check_mask_aspect(job.mask, sizes["mask"], sizes["image"])


def _check_layout(job) -> None:
    from ldmcli.io.layout import boxes_from_option, check_boxes, read_layout
    boxes = read_layout(job.layout) if job.layout else []
    boxes += boxes_from_option(job.extra.get("boxes"))
    check_boxes(boxes, job.width, job.height)


# tasks whose output is synthesised, not restored: beyond their training size they repeat subjects or lose shape
# (superres and inpaint work on the picture they are given, locally, and are left out)
GENERATIVE_TASKS = ("txt2img", "layout2img", "semantic2img", "img2img", "sample")


def size_warning(task: str, cfg, height: Optional[int], width: Optional[int]) -> Optional[str]:
    """The warning for a `task` output of height x width px (None: the model's native side) from a model of `cfg`,
    when its longer side is at least twice the training size (`cfg.latent_size` latent cells times the first
    stage's factor); None otherwise, and always for the tasks outside GENERATIVE_TASKS."""
    trained = cfg.latent_size * cfg.first_stage.downsample_factor
    height, width = height or trained, width or trained
    if task not in GENERATIVE_TASKS or max(height, width) < 2 * trained:
        return None
    return (f"{cfg.name} was trained at {trained}x{trained} px; at {width}x{height} px it may not draw coherent "
            f"images (it was never trained at this size)")


def output_size(task: str, cfg, job) -> Tuple[Optional[int], Optional[int]]:
    """(height, width) of a job's images as its task will make them, from its options and input headers; None
    for a side that is the model's native one (or that cannot be told before reading a pipe)."""
    from ldmcli.io.images import image_size
    if task == "semantic2img":      # the map's own size
        size = image_size(Path(job.segmap), "segmentation map") if job.segmap else None
        return (size[1], size[0]) if size else (None, None)
    if task == "img2img" and job.image and not (job.height and job.width):   # the image's, rounded down
        size = image_size(Path(job.image), "image")
        m = cfg.first_stage.downsample_factor * 2 ** (len(cfg.unet.channel_mult) - 1)
        if size:
            return job.height or size[1] - size[1] % m, job.width or size[0] - size[0] % m
    return job.height, job.width


def job_size_warning(task: str, cfg, job) -> Optional[str]:
    """`size_warning` for a job; None too when its input cannot be read (the task reports that, not this)."""
    try:
        return size_warning(task, cfg, *output_size(task, cfg, job))
    except (LdmError, OSError, ValueError):
        return None


__all__ = ["GENERATIVE_TASKS", "job_size_warning", "output_size", "size_warning",
           "MAX_N_SAMPLES", "MAX_BATCH_SIZE", "MAX_NOISE_LEVEL", "MAX_MASK_BLUR", "check_options", "check_job",
           "check_environment"]
