"""Run a subcommand's jobs in one process: load once, resume, write atomically, report per job.

stdout carries data only (one path per image, or one JSON object with --json); logs and progress go to stderr.
Exit: 0 all jobs ok, 3 some failed, 2 all failed on bad input, 1 all failed otherwise, 130 interrupted, 143
terminated, 141 stdout closed by its reader (the batch stops there; the images written are kept).
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from ldmcli.errors import EXIT_PARTIAL, EXIT_RUNTIME, EXIT_USAGE, LdmError, OutputClosed, UsageError
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
    if opts.get("no_prompt_syntax"):    # every job's, unless a --from-file job's `extra` sets its own
        extra["no_prompt_syntax"] = True
    if opts.get("lora"):    # --lora FILE[:WEIGHT]: every job's, unless a --from-file job's `extra` sets its own
        extra["lora"] = list(opts["lora"])
    if opts.get("from_file"):
        given = [k for k in ("prompt", "image", "layout", "segmap") if positional.get(k)]
        if given:
            raise UsageError(f"pass either --from-file or a {given[0]} argument, not both")
        jobs = read_jobs(opts["from_file"], {**defaults, "extra": extra})
    else:
        fields = {k: v for k, v in positional.items() if v is not None and k in Job.__dataclass_fields__}
        jobs = [Job(**{**{k: v for k, v in defaults.items() if v is not None}, **fields, "extra": extra})]
    return [_absolute_inputs(task, job) for job in jobs]


def _absolute_inputs(task: str, job):
    """The job with its input files as absolute paths: its fingerprint then names the files, not the folder the
    run started in, and `ldm replay` finds them from anywhere."""
    from ldmcli.io.paths import expand_user
    from ldmcli.tasks import ADDON_FILES
    for what in task_row(task).files + ADDON_FILES:
        where = job.__dict__ if what in job.__dataclass_fields__ else job.extra
        if isinstance(where.get(what), str) and where[what]:
            where[what] = os.path.abspath(expand_user(where[what]))
        elif isinstance(where.get(what), list):     # a job's `embeddings`: a list of files
            where[what] = [os.path.abspath(expand_user(v)) if isinstance(v, str) and v else v for v in where[what]]
    if job.extra.get("lora") is not None:      # LoRA files too: FILE[:WEIGHT] strings
        from ldmcli.loading.lora import absolute_specs
        job.extra["lora"] = absolute_specs(job.extra["lora"])
    return job


def _check_required(task: str, job) -> None:
    """Required fields must be set; a blank prompt counts as unset (txt2img refuses it rather than silently
    sampling unconditionally, e.g. for an unset shell variable)."""
    for f in task_row(task).required:
        value = getattr(job, f)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise UsageError(f"{task} needs a {f} (as an argument, or a '{f}' field in each --from-file job)")


def _settings(opts: dict, job, cfg):
    """The job's sampling settings resolved for `cfg`; a job without a prompt gets the model's unprompted defaults
    for what it leaves unset (`SamplerSettings.unprompted`)."""
    from ldmcli.sampling.settings import SamplerSettings
    settings = SamplerSettings(sampler=job.sampler or opts.get("sampler") or "ddim", steps=job.steps,
                               guidance_scale=job.scale, eta=opts.get("eta"), karras=bool(opts.get("karras")),
                               noise_device=opts.get("noise_device"),
                               schedule=job.schedule or opts.get("schedule"))
    if not job.prompt.strip():
        settings = settings.unprompted(cfg)
    return settings.resolved(cfg)


# ----------------------------------------------------------------------------------------------------
def run_task(task: str, positional: dict, opts: dict) -> int:
    from ldmcli.cli.console import Console
    from ldmcli.cli.jobs import fingerprint, shard
    from ldmcli.cli.outputs import first_seeds, image_paths, plan_target
    from ldmcli.cli.validate import check_options
    from ldmcli.cli.addons import check_job_addons
    from ldmcli.loading.lora import check_job_loras
    console = Console(quiet=bool(opts.get("quiet")))
    jobs = build_jobs(task, positional, opts)
    check_options(task, opts, jobs)     # what needs no model, refused before anything loads (cli/validate.py)
    for job in jobs if not opts.get("from_file") else []:
        _check_required(task, job)
    mode, target = plan_target(opts.get("out") or "outputs", sum(j.n_samples for j in jobs))
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    for job in jobs:
        job.tag = fingerprint(task, job, opts)
    seeds = first_seeds(jobs, opts["seed"])
    paths = image_paths(mode, target, jobs, seeds)   # the whole batch: collisions across shards count too
    if mode != "stdout":            # temporary files of writers killed mid-write (SIGKILL, power loss)
        from ldmcli.io.atomic import clear_stale
        clear_stale(target if mode == "dir" else target.parent)
    failures, ready = [], []
    for i, job in shard(jobs, rank, world):   # cheap checks first: a batch of bad jobs fails without a model
        try:
            pending = _pending(opts, mode, paths, i, job, seeds[i])
            if not pending:
                continue
            _precheck(task, job)
            check_job_loras(job, opts)      # files, weights, tags and layouts; their shapes need the model
            check_job_addons(job, opts)     # a job's own embeddings read; their width needs the model
            ready.append((i, job, pending))
        except LdmError as e:
            console.error(f"job {i + 1}: {e}")
            failures.append(e)
    attempted = len(failures) + len(ready)      # the jobs with work left (the others are done)
    if not ready:
        if not failures:
            console.log(f"all {len(jobs)} job(s) already done (use --overwrite to redo)")
        return _exit_code(failures, attempted)
    model, loaded = load_model(task, opts, console, rank)
    if opts.get("compile"):
        from ldmcli.loading.compiling import compile_unet
        from ldmcli.loading.lora import takes_loras
        # the UNet's weights are frozen into the compiled code (CPU) only where no job merges a LoRA into them
        where = compile_unet(model, freeze=not takes_loras([job for _, job, _ in ready], opts))
        console.log(f"compiling the UNet with torch.compile on its first step"
                    f"{' (weights frozen)' if model.frozen_unet else ''} (cache: {where})")
    from ldmcli.cli.validate import job_size_warning
    from ldmcli.loading import cpu_threads
    warned = set()      # each size warning once a run, not once a job
    with console.progress(len(ready), f"{task}") as advance_jobs, _library_warnings(console), cpu_threads(model):
        for n, (i, job, pending) in enumerate(ready):
            try:
                warn = _warn_once(console, warned, job_size_warning(task, model.cfg, job))
                _run_job(task, model, loaded, (i, job, seeds[i], pending), opts, paths, console, warn)
            except OutputClosed as e:   # the reader is gone: stop the batch (a rerun makes the rest)
                rest = len(ready) - n - 1
                raise OutputClosed(f"{e}: stopped in job {i + 1}" + (f", {rest} more job(s) not run" if rest else "")
                                   + "; the images written are kept") from None
            except LdmError as e:
                console.error(f"job {i + 1}: {e}")
                failures.append(e)
            advance_jobs()
    return _exit_code(failures, attempted)


def _warn_once(console, warned: set, note):
    """A callable that prints warning `note` (None: none) the first time it is called in the run, and then never."""
    def warn() -> None:
        if note and note not in warned:
            warned.add(note)
            console.warn(note)
    return warn


def _pending(opts, mode, paths, index, job, seed) -> list:
    """The images of a job still to make; done ones are reported as skipped. A complete image of another job at
    one of its paths fails the job (UsageError), unless --overwrite."""
    from ldmcli.cli.outputs import DONE, OTHER, image_state, other_job_error
    if opts.get("overwrite") or mode == "stdout":
        return list(range(job.n_samples))
    pending = []
    for k in range(job.n_samples):
        state = image_state(paths[(index, k)], job.tag, seed + k)
        if state == OTHER:
            raise other_job_error(paths[(index, k)])
        if state == DONE:
            _emit(opts, {"path": str(paths[(index, k)]), "seed": seed + k, "job": index, "skipped": True})
        else:
            pending.append(k)
    return pending


def _precheck(task: str, job) -> None:
    """What can be checked before the model is loaded: required fields, then everything cli/validate.py can tell
    without the model (input files, numbers, headers, layouts, palettes)."""
    from ldmcli.cli.validate import check_job
    _check_required(task, job)
    check_job(task, job)


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
    from ldmcli.cli.process import collection_paused
    with collection_paused():           # torch's import and the model: see ldmcli/cli/process.py
        return _load_model(task, opts, console, rank)


def _load_model(task, opts, console, rank):
    import dataclasses
    from ldmcli.io.paths import expand_user
    from ldmcli.loading import load
    from ldmcli.cli.addons import embeddings_of, run_addons
    # embeddings are read (and bad files refused) before the model loads; their width is checked against it after
    embeddings = embeddings_of(run_addons(opts))
    t0 = time.perf_counter()
    model, info = load(opts.get("ckpt"), task=task, config=opts.get("config"), device=opts.get("device") or "auto",
                       dtype=opts.get("dtype") or "auto", use_ema=opts.get("ema"),
                       prediction=opts.get("prediction"), vocab=opts.get("vocab"))
    if opts.get("vae"):     # swapped in by use_vae, which keeps the checkpoint's own for jobs that want it back
        from ldmcli.loading.vae import use_vae
        info = dataclasses.replace(info, vae=str(expand_user(opts["vae"])))
        use_vae(model, info.vae)
    if embeddings or opts.get("clip_skip") is not None:
        from ldmcli.prompts import configure
        configure(model, embeddings=embeddings, clip_skip=opts.get("clip_skip"))
    console.log(f"loaded {info.family} from {Path(info.path).name} in {time.perf_counter() - t0:.2f}s "
                f"({'EMA' if info.ema else 'plain'} weights, {model.device}, {str(model.dtype)[6:]})")
    if info.unexpected:
        console.warn(f"{len(info.unexpected)} unexpected tensors ignored (e.g. {info.unexpected[0]})")
    return model, info


def _sampler_steps(task: str, job, settings) -> int:
    """The steps a job's progress bar counts: img2img runs only its strength's share of the grid."""
    if task != "img2img":
        return settings.steps
    from ldmcli.cli.inputs import job_option
    from ldmcli.sampling.schedules import kept_steps
    return kept_steps(settings.steps, job_option(job, "strength"))


def _emit(opts, record: dict, console=None) -> None:
    """A line of data on stdout, through `console` while its progress bars may share the terminal."""
    from ldmcli.cli.console import write_data
    line = json.dumps(record) if opts.get("json") else record["path"]
    (console.data if console is not None else write_data)(line)


def _run_job(task, model, loaded, work, opts, paths, console, warn=lambda: None) -> None:
    """Make the pending images of one job, `batch_size` at a time, each written as soon as it is decoded. `warn()`
    is called at each sampling step and once the images are made: after the task's own size and memory checks, so
    a job refused for its size gets its one error line, not a warning about the size first."""
    from ldmcli.cli.addons import apply_job_addons
    from ldmcli.cli.inputs import run_job
    from ldmcli.cli.jobs import declares_large_image
    from ldmcli.cli.record import job_record
    from ldmcli.io.png import write_png_atomic, write_png_stdout
    from ldmcli.loading.lora import apply_job_loras
    from ldmcli.sampling.precision import for_job
    index, job, seed, pending = work
    # the job's LoRAs merged (the previous job's restored first); `run` is the job with its <lora:...> tags cut out
    run, lora_fields = apply_job_loras(model, job, opts)
    loaded = apply_job_addons(model, loaded, job, opts)  # its clip skip, embeddings and VAE (the record's too)
    settings = _settings(opts, job, model.cfg)
    batch = max(1, int(opts.get("batch_size") or 1))
    # the precision its fingerprint names: the model's bf16_work says auto, a small checkpoint, native bf16, no compile
    with for_job(model, declares_large_image(task, job)):
        for start in range(0, len(pending), batch):
            ks = pending[start:start + batch]
            t0 = time.perf_counter()
            bar = f"job {index + 1} images {ks[0] + 1}-{ks[-1] + 1}"
            with console.progress(_sampler_steps(task, run, settings), bar) as adv:
                images = run_job(task, model, run, [seed + k for k in ks], settings, lambda *a: (warn(), adv()))
            warn()
            dt = (time.perf_counter() - t0) / len(ks)
            for k, img in zip(ks, images):
                record = job_record(task, model, loaded, job, settings, seed + k, img.size, index)
                record.update(lora_fields)
                if paths[(index, k)] == Path("-"):
                    write_png_stdout(img, record)
                    continue
                path = write_png_atomic(img, paths[(index, k)], record)
                _emit(opts, {"path": str(path), "seed": seed + k, "job": index, "seconds": round(dt, 3)}, console)
