"""Run a subcommand's jobs in one process: load once, resume, write atomically, report per job.

stdout carries data only (one path per image, or one JSON object with --json); logs and progress go to stderr.
Exit: 0 all jobs ok, 3 some failed, 2 all failed on bad input, 1 all failed otherwise, 130 interrupted.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ldmcli.errors import EXIT_PARTIAL, EXIT_RUNTIME, EXIT_USAGE, LdmError, UsageError
from ldmcli.tasks import task as task_row

# ----------------------------------------------------------------------------------------------------
def build_jobs(task: str, positional: dict, opts: dict):
    from ldmcli.cli.jobs import Job, read_jobs
    for k in ("height", "width"):   # checked here: the tasks read 0 as "not given" (the model's native size)
        if positional.get(k) is not None and positional[k] <= 0:
            raise UsageError(f"--{k} must be positive, got {positional[k]}")
    defaults = {"negative_prompt": positional.get("negative_prompt") or None, "steps": opts.get("steps"),
                "scale": opts.get("scale"), "sampler": None, "n_samples": opts.get("n_samples"),
                "height": positional.get("height"), "width": positional.get("width")}
    # the task's own options (--palette, --noise-level, ...): a job's `extra`, for every job of a --from-file batch
    extra = {k: v for k, v in positional.items() if k not in Job.__dataclass_fields__ and v is not None}
    if opts.get("from_file"):
        given = [k for k in ("prompt", "image", "layout", "segmap") if positional.get(k)]
        if given:
            raise UsageError(f"pass either --from-file or a {given[0]} argument, not both")
        return read_jobs(opts["from_file"], {**defaults, "extra": extra})
    fields = {k: v for k, v in positional.items() if v is not None and k in Job.__dataclass_fields__}
    return [Job(**{**{k: v for k, v in defaults.items() if v is not None}, **fields, "extra": extra})]


def _check_required(task: str, job) -> None:
    """Required fields must be set; a blank prompt counts as unset (txt2img refuses it rather than silently
    sampling unconditionally, e.g. for an unset shell variable)."""
    for f in task_row(task).required:
        value = getattr(job, f)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise UsageError(f"{task} needs a {f} (as an argument, or a '{f}' field in each --from-file job)")


def _settings(opts: dict, job):
    from ldmcli.sampling.settings import SamplerSettings
    return SamplerSettings(sampler=job.sampler or opts.get("sampler") or "ddim", steps=job.steps,
                           guidance_scale=job.scale, eta=opts.get("eta"), karras=bool(opts.get("karras")),
                           noise_device=opts.get("noise_device"))


def _target(out: str, n_images: int):
    """(mode, path): 'stdout' for -o -, 'file' for a single .png name, else 'dir'."""
    if out == "-":
        if n_images != 1:
            raise UsageError(f"-o - writes one PNG to stdout, but this run makes {n_images} images")
        return "stdout", None
    p = Path(out)
    if p.suffix.lower() == ".png":
        if n_images != 1:
            raise UsageError(f"-o {out} names one file, but this run makes {n_images} images; pass a directory")
        return "file", p
    if p.exists() and not p.is_dir():
        raise UsageError(f"output {out} exists and is not a directory")
    return "dir", p


# ----------------------------------------------------------------------------------------------------
def run_task(task: str, positional: dict, opts: dict) -> int:
    from ldmcli.cli.console import Console
    from ldmcli.cli.jobs import fingerprint, seed_for, shard
    console = Console(quiet=bool(opts.get("quiet")))
    jobs = build_jobs(task, positional, opts)
    for job in jobs if not opts.get("from_file") else []:
        _check_required(task, job)
    mode, target = _target(opts.get("out") or "outputs", sum(j.n_samples for j in jobs))
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    for job in jobs:
        job.tag = fingerprint(task, job, opts)
    mine = shard(jobs, rank, world)
    todo = [(i, j) for i, j in mine if opts.get("overwrite") or mode == "stdout"
            or not all(_path(mode, target, i, j, k, seed_for(j, i, opts["seed"])).exists()
                       for k in range(j.n_samples))]
    for i, j in mine:
        if (i, j) not in todo:
            _emit_existing(opts, mode, target, i, j, seed_for(j, i, opts["seed"]))
    if not todo:
        console.log(f"all {len(mine)} job(s) already done (use --overwrite to redo)")
        return 0
    failures, ready = [], []
    for i, job in todo:  # cheap checks first: a batch of bad jobs fails without loading a model
        try:
            _precheck(task, job)
            ready.append((i, job))
        except LdmError as e:
            console.error(f"job {i + 1}: {e}")
            failures.append(e)
    if not ready:
        return _exit_code(failures, len(todo))
    model, loaded = load_model(task, opts, console, rank)
    with console.progress(len(ready), f"{task}") as advance_jobs, _library_warnings(console):
        for i, job in ready:
            try:
                _run_job(task, model, loaded, i, job, opts, mode, target, console)
            except LdmError as e:
                console.error(f"job {i + 1}: {e}")
                failures.append(e)
            advance_jobs()
    return _exit_code(failures, len(todo))


def _precheck(task: str, job) -> None:
    """What can be checked before the model is loaded: required fields, and that input files exist (pipes and
    devices count; reading and decoding them is the task's)."""
    from ldmcli.io.images import check_input_path
    from ldmcli.sampling.table import sampler_spec
    _check_required(task, job)
    if job.sampler is not None:
        sampler_spec(job.sampler)
    for what in task_row(task).files:
        value = getattr(job, what, None) or job.extra.get(what)
        if isinstance(value, str) and value:
            check_input_path(Path(value), what, "a file")


@contextmanager
def _library_warnings(console):
    """Show the library's warnings (logger "ldmcli", e.g. decode fallbacks) as `ldm: warning:` lines meanwhile."""
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: console.warn(record.getMessage())
    logger = logging.getLogger("ldmcli")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _exit_code(failures: list, n: int) -> int:
    if not failures:
        return 0
    if len(failures) < n:
        return EXIT_PARTIAL
    return EXIT_USAGE if all(getattr(e, "exit_code", 1) == EXIT_USAGE for e in failures) else EXIT_RUNTIME


def load_model(task, opts, console, rank):
    from ldmcli.loading import load
    t0 = time.perf_counter()
    model, info = load(opts.get("ckpt"), task=task, config=opts.get("config"), device=opts.get("device") or "auto",
                       dtype=opts.get("dtype") or "auto", use_ema=not opts.get("no_ema"),
                       prediction=opts.get("prediction"), vocab=opts.get("vocab"))
    if opts.get("compile"):
        from ldmcli.loading.compiling import compile_unet
        where = compile_unet(model)
        console.log(f"compiling the UNet with torch.compile on its first step (cache: {where})")
    console.log(f"loaded {info.family} from {Path(info.path).name} in {time.perf_counter() - t0:.2f}s "
                f"({'EMA' if info.ema else 'plain'} weights, {model.device}, {str(model.dtype)[6:]})")
    if info.unexpected:
        console.warn(f"{len(info.unexpected)} unexpected tensors ignored (e.g. {info.unexpected[0]})")
    return model, info


def _path(mode, target, index, job, k, seed) -> Path:
    from ldmcli.io.png import output_name
    if mode == "file":
        return target
    if mode == "stdout":
        return Path("-")
    return target / output_name(index, job.name, seed, k, tag=job.tag)


def _emit_existing(opts, mode, target, index, job, seed) -> None:
    for k in range(job.n_samples):
        p = _path(mode, target, index, job, k, seed)
        _emit(opts, {"path": str(p), "seed": seed + k, "job": index, "skipped": True})


def _emit(opts, record: dict) -> None:
    line = json.dumps(record) if opts.get("json") else record["path"]
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _run_job(task, model, loaded, index, job, opts, mode, target, console) -> None:
    from ldmcli.cli.inputs import run_job
    from ldmcli.cli.jobs import seed_for
    from ldmcli.io.png import write_png_atomic, write_png_stdout
    from ldmcli.cli.record import job_record
    seed = seed_for(job, index, opts["seed"])
    settings = _settings(opts, job).resolved(model.cfg)
    batch = max(1, int(opts.get("batch_size") or 1))
    for start in range(0, job.n_samples, batch):
        ks = list(range(start, min(job.n_samples, start + batch)))
        seeds = [seed + k for k in ks]
        t0 = time.perf_counter()
        with console.progress(settings.steps, f"job {index + 1} images {ks[0] + 1}-{ks[-1] + 1}") as adv:
            images = run_job(task, model, job, seeds, settings, lambda *a: adv())
        dt = (time.perf_counter() - t0) / len(ks)
        for k, img in zip(ks, images):
            record = job_record(task, model, loaded, job, settings, seed + k, img.size, index)
            if mode == "stdout":
                write_png_stdout(img, record)
                continue
            path = write_png_atomic(img, _path(mode, target, index, job, k, seed), record)
            _emit(opts, {"path": str(path), "seed": seed + k, "job": index, "seconds": round(dt, 3)})


