"""A batch job's inputs, read from its files and options into the arguments of its task function.

The task table (ldmcli/tasks) names each task's parameters; this module knows, once per parameter name, where a
job keeps it: text fields, input files read here (tasks never open files) and the task options of a job's
`extra` dict (`--mask-blur`, `--noise-level`, ...), whose types are checked with one line on error.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

from ldmcli.errors import UsageError
from ldmcli.tasks import task as task_row

# options of a job's `extra`: name -> (type, default). `upscale` is superres's --scale: a job's `scale` is the
# guidance scale of every subcommand.
OPTIONS = {"mask_blur": (float, 0.0), "invert_mask": (bool, False), "upscale": (int, 4),
           "noise_level": (int, None), "tile_size": (int, None), "tile_overlap": (int, None),
           "palette": (str, None), "boxes": (list, None),
           "no_prompt_syntax": (bool, False),
           "strength": (float, 0.75), "match_input": (bool, None),
           "detail": (float, None), "ensemble": (int, None)}
OPTIONS["class"] = ((int, str), None)   # `ldm sample --class`: an id or a name (JSONL may give either)
OPTIONS["lora"] = (list, None)          # --lora / a job's "lora": ["FILE:WEIGHT", ...] (loading/lora.py)
# a job's own add-ons, over the run's --clip-skip/--embedding/--embedding-dir/--vae (cli/addons.py); "vae": ""
# is the checkpoint's own first stage, "embeddings": [] none
OPTIONS.update({"clip_skip": (int, None), "embeddings": (list, None), "embedding_dir": (str, None),
                "vae": (str, None)})


def job_option(job, name: str):
    """Option `name` of a job's `extra`, checked against its type (an int passes as a float); its default when
    unset."""
    kind, default = OPTIONS[name]
    value = job.extra.get(name, default)
    if value is None or (kind is float and type(value) is int):
        return value if value is None else float(value)
    if kind is list and isinstance(value, (str, dict)):
        return [value]
    if isinstance(kind, tuple):     # several JSON types allowed (bool, an int subclass, is none of them)
        if type(value) not in kind:
            raise UsageError(f"option {name!r} should be {' or '.join(k.__name__ for k in kind)}, got {value!r}")
        return value
    if type(value) is not kind:
        raise UsageError(f"option {name!r} should be {kind.__name__}, got {value!r}")
    return value


def _image(job, model, got):
    from ldmcli.io.images import load_image
    if not job.image:
        raise UsageError("this task needs an image")
    return load_image(job.image)


def _mask(job, model, got):
    from ldmcli.io.images import load_mask
    if not job.mask:
        raise UsageError("inpaint needs an image and a mask")
    return load_mask(job.mask, size=got["image"].size, invert=job_option(job, "invert_mask"),
                     blur=job_option(job, "mask_blur"))


def _boxes(job, model, got):
    from ldmcli.io.layout import boxes_from_option, read_layout
    boxes = read_layout(job.layout) if job.layout else []
    boxes += boxes_from_option(job.extra.get("boxes"))
    if not job.layout and not boxes:
        raise UsageError("layout2img needs a layout JSON file or at least one --box \"label x0 y0 x1 y1\"")
    return boxes


def _segmap(job, model, got):
    from ldmcli.io.segmap import check_class_ids, read_palette, read_segmap
    from ldmcli.tasks.semantic2img import NO_NAMES, check_semantic_model, class_names
    count = check_semantic_model(model.cfg).in_channels
    if not job.segmap:
        raise UsageError("semantic2img needs a segmentation map")
    palette_path = job_option(job, "palette")
    palette = read_palette(palette_path, class_names(model), count, NO_NAMES) if palette_path else None
    seg = read_segmap(job.segmap, palette)
    check_class_ids(seg, count, f"segmentation map {job.segmap}")
    return seg


def _prompt(job, text):
    """A prompt as the task gets it: marked literal when the job says no_prompt_syntax (ldmcli/prompts)."""
    if text is None or not job_option(job, "no_prompt_syntax"):
        return text
    from ldmcli.prompts import LiteralPrompt
    return LiteralPrompt(text)


# parameter name -> reader(job, model, inputs read so far)
READERS: Dict[str, Callable] = {
    "prompt": lambda job, model, got: _prompt(job, job.prompt),
    "negative_prompt": lambda job, model, got: _prompt(job, job.negative_prompt),
    "height": lambda job, model, got: job.height,
    "width": lambda job, model, got: job.width,
    "image": _image,
    "mask": _mask,
    "boxes": _boxes,
    "segmap": _segmap,
    "scale": lambda job, model, got: job_option(job, "upscale"),
    "noise_level": lambda job, model, got: job_option(job, "noise_level"),
    "tile_size": lambda job, model, got: job_option(job, "tile_size"),
    "tile_overlap": lambda job, model, got: job_option(job, "tile_overlap"),
    "strength": lambda job, model, got: job_option(job, "strength"),
    "mask_blur": lambda job, model, got: job_option(job, "mask_blur"),
    "match_input": lambda job, model, got: job_option(job, "match_input"),
    "detail": lambda job, model, got: job_option(job, "detail"),
    "ensemble": lambda job, model, got: job_option(job, "ensemble"),
    "label": lambda job, model, got: job_option(job, "class"),
}


def read_inputs(task: str, job, model) -> dict:
    """The keyword arguments of `task`'s function for `job`, in the order of the row's params."""
    got: dict = {}
    for name in task_row(task).params:
        got[name] = READERS[name](job, model, got)
    return got


def run_job(task: str, model, job, seeds: List[int], settings, callback: Optional[Callable] = None):
    """Read the job's inputs and run the task function: one PIL image per seed."""
    return task_row(task).function()(model, **read_inputs(task, job, model), seeds=seeds, settings=settings,
                                     callback=callback)


__all__ = ["OPTIONS", "READERS", "job_option", "read_inputs", "run_job"]
