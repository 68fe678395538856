"""Batch job files: one prompt per line, or one JSON object per line (JSONL), from a file or stdin (`-`).

- Plain text: each line is a prompt (surrounding whitespace stripped); blank lines and lines starting with '#'
  are skipped.
- JSONL: chosen when the first line that is neither blank nor a '#' comment starts with '{'. Each such line is
  an object whose keys are `Job` fields; a null value means "not set". Blank and '#' lines are skipped here too.
- A value a line does not set comes from `defaults` (the command-line options), then from `Job`'s defaults.
- Relative paths in a job (image, mask, layout, segmap, and the `extra` options palette, vae, embeddings,
  embedding_dir; '~' expanded) are resolved against the job file's directory; for stdin they are left relative to
  the working directory.
- Seeds: a job's explicit seed wins (-1: random); otherwise image k of job i gets --seed plus the images of the jobs
  before it, plus k (`outputs.first_seeds`), so every image of a batch has its own seed, reproducible from one
  --seed, the same however the batch is sharded (`shard`).
Every problem is one InputError line, `FILE:LINE: what is wrong`.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ldmcli.cli.outputs import SEED_LIMIT
from ldmcli.errors import InputError, LdmError, UsageError, close_matches, one_line
from ldmcli.io.paths import expand_user
from ldmcli.tasks import ADDON_FILES, TASKS

MAX_JOB_FILE_BYTES = 256 * 2**20  # `yes | ldm ... --jobs -` must end in an error, not fill memory


@dataclass
class Job:
    """One line of a batch: what to generate. None = the task's own default."""
    prompt: str = ""
    negative_prompt: str = ""
    seed: Optional[int] = None
    steps: Optional[int] = None
    scale: Optional[float] = None
    sampler: Optional[str] = None
    schedule: Optional[str] = None  # a --schedule choice (a display-name `sampler` may carry one too)
    image: Optional[str] = None     # paths, resolved against the job file's directory
    mask: Optional[str] = None
    layout: Optional[str] = None
    segmap: Optional[str] = None
    name: Optional[str] = None      # output file stem (see outputs.output_name)
    n_samples: int = 1
    height: Optional[int] = None
    width: Optional[int] = None
    extra: dict = field(default_factory=dict)  # task-specific options, e.g. {"strength": 0.7}
    tag: str = ""                   # set by the runner: `fingerprint` of the job, part of its output names


def _text(value):
    if not isinstance(value, str):
        raise TypeError("a string")
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (a lone surrogate escape)") from None
    return value


def _path(value):
    if not _text(value):
        raise ValueError("is an empty path")
    return value


def _integer(value, low: int, high: Optional[int] = None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("an integer")
    if value < low:
        raise ValueError(f"must be >= {low}, got {value}")
    if high is not None and value >= high:
        raise ValueError(f"must be < {high}, got {value}")
    return value


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("a number")
    if not math.isfinite(value):
        raise ValueError(f"must be finite, got {value}")
    return float(value)


def _object(value):
    if not isinstance(value, dict):
        raise TypeError("an object {...}")
    return value


def _count(value):
    return _integer(value, 1)


def _samples(value):
    from ldmcli.cli.validate import MAX_N_SAMPLES
    if _count(value) > MAX_N_SAMPLES:
        raise ValueError(f"must be at most {MAX_N_SAMPLES} images per job, got {value}")
    return value


def _seed(value):
    return -1 if value == -1 and type(value) is int else _integer(value, 0, SEED_LIMIT)   # -1: random


# The check and conversion of each Job field's JSON value: TypeError says what was expected, ValueError why not.
_CHECKS = {"prompt": _text, "negative_prompt": _text, "seed": _seed, "steps": _count, "scale": _number,
           "sampler": _text, "schedule": _text, "image": _path, "mask": _path, "layout": _path, "segmap": _path, "name": _text,
           "n_samples": _samples, "height": _count, "width": _count, "extra": _object}
_FILES = {f for t in TASKS.values() for f in t.files} | set(ADDON_FILES)   # the task table's file inputs:
PATH_FIELDS = tuple(f for f in Job.__dataclass_fields__ if f in _FILES)   # Job fields,
EXTRA_PATHS = tuple(sorted(_FILES - set(PATH_FIELDS)))                    # and options of a job's `extra`


def _json_type(value) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_source(source: Union[str, Path]) -> tuple[str, Optional[Path], bytes]:
    """(name for messages, directory for relative paths or None, content) of a job file or of stdin."""
    if str(source) == "-":
        if sys.stdin is None:
            raise InputError("<stdin>: no standard input to read jobs from")
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        data = stream.read(MAX_JOB_FILE_BYTES + 1)
        name, base_dir = "<stdin>", None
        data = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    else:
        path = Path(source)
        name, base_dir = str(path), path.absolute().parent
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_JOB_FILE_BYTES + 1)
        except OSError as e:
            raise InputError(f"job file {path}: {e.strerror or one_line(e)}") from None
    if len(data) > MAX_JOB_FILE_BYTES:
        raise InputError(f"{name}: job file larger than {MAX_JOB_FILE_BYTES >> 20} MiB")
    return name, base_dir, data


def _lines(name: str, data: bytes) -> list[tuple[int, str]]:
    """(line number, stripped line) of every line that is neither blank nor a '#' comment."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"{name}:{lineno}: not UTF-8 text") from None
    if "\x00" in text:
        lineno = text.count("\n", 0, text.index("\x00")) + 1
        raise InputError(f"{name}:{lineno}: NUL byte; this looks like a binary file, not a list of jobs")
    numbered = ((n, line.strip()) for n, line in enumerate(text.split("\n"), 1))
    return [(n, line) for n, line in numbered if line and not line.startswith("#")]


def _did_you_mean(key: str) -> str:
    close = close_matches(key, _CHECKS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(_CHECKS)})"


def _resolve(path: str, base_dir: Optional[Path]) -> str:
    p = expand_user(path)
    return str(p if p.is_absolute() or base_dir is None else base_dir / p)


def _resolve_option(name: str, value, base_dir: Optional[Path]):
    """An `extra` option's value with its path(s) resolved when it names files (a path, or a list of paths)."""
    if name not in EXTRA_PATHS:
        return value
    if isinstance(value, list):
        return [_resolve(v, base_dir) if isinstance(v, str) and v else v for v in value]
    return _resolve(value, base_dir) if isinstance(value, str) and value else value


def _json_job(where: str, line: str, base: dict, base_dir: Optional[Path]) -> Job:
    """One JSONL line as a Job, on top of `base` (the defaults)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: invalid JSON at column {e.colno}: {e.msg}") from None
    except (ValueError, RecursionError) as e:  # e.g. an over-long integer, nesting too deep
        raise InputError(f"{where}: invalid JSON ({one_line(e)[:200]})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object {{...}}, got {_json_type(obj)}")
    values = _fresh(base)
    for key, value in obj.items():
        if key not in _CHECKS:
            raise InputError(f"{where}: unknown key {key[:40]!r}{_did_you_mean(key)}")
        if value is None:
            continue
        try:
            checked = _CHECKS[key](value)
        except TypeError as e:
            raise InputError(f"{where}: {key!r} should be {e}, got {_json_type(value)}") from None
        except ValueError as e:
            raise InputError(f"{where}: {key!r} {e}") from None
        if key == "extra":
            values["extra"].update({k: _resolve_option(k, v, base_dir) for k, v in checked.items()})  # on top of
            # the default extras
        else:
            values[key] = _resolve(checked, base_dir) if key in PATH_FIELDS else checked
    return Job(**values)


def _fresh(base: dict) -> dict:
    """Job field values starting from `base`, with an `extra` dict of the job's own."""
    return {**base, "extra": dict(base.get("extra", {}))}


def read_jobs(source: Union[str, Path], defaults: Optional[dict] = None) -> list[Job]:
    """The jobs of a job file, or of stdin when `source` is "-" (format: the module docstring).

    defaults: Job field values for what a line leaves out (None values are ignored, so unset CLI options can be
    passed as they are). An empty file (or one with only comments) is an InputError too.
    """
    base = {k: v for k, v in (defaults or {}).items() if v is not None}
    unknown = sorted(set(base) - set(_CHECKS))
    if unknown:
        raise UsageError(f"unknown job field(s) in defaults: {', '.join(unknown)}")
    name, base_dir, data = _read_source(source)
    lines = _lines(name, data)
    if not lines:
        raise InputError(f"{name}: no jobs (the file is empty or holds only comments)")
    if lines[0][1].startswith("{"):
        return [_json_job(f"{name}:{n}", line, base, base_dir) for n, line in lines]
    return [Job(**{**_fresh(base), "prompt": line}) for _, line in lines]


def shard(jobs: list[Job], rank: int, world: int) -> list[tuple[int, Job]]:
    """This process's share of a batch as (global index, job): job i goes to rank i % world (round-robin), so
    file names and derived seeds are those of a single-process run and the shards' union is the whole batch."""
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"bad shard {rank} of {world}: need world >= 1 and 0 <= rank < world")
    return [(i, job) for i, job in enumerate(jobs) if i % world == rank]


# options that never change the pixels (or, like the seed and the sample count, are in the file name already)
_NOT_IN_FINGERPRINT = {"out", "quiet", "json", "overwrite", "from_file", "device", "seed", "n_samples", "debug"}


def declared_pixels(task: str, job: Job) -> int:
    """Pixels of one output image as the job declares them: its height and width, else its input picture's
    (superres: 16x, its 4x in each direction); 0 where only the model knows (its default size), or the input is a
    pipe or cannot be read (refused later, in its place)."""
    if job.height or job.width:
        return (job.height or job.width) * (job.width or job.height)
    source = job.image or job.segmap
    if not source:
        return 0
    from ldmcli.io.images import image_size
    try:
        size = image_size(source)
    except LdmError:
        return 0
    return 0 if size is None else size[0] * size[1] * (16 if task == "superres" else 1)


def declares_large_image(task: str, job: Job) -> bool:
    """Whether the job's declared size reaches sampling/precision.py's BF16_FROM_PIXELS. The runner makes the job's
    images in bf16 when this holds and its model is marked `bf16_work` (which `large_image_bf16` predicts)."""
    from ldmcli.sampling.precision import BF16_FROM_PIXELS
    return declared_pixels(task, job) >= BF16_FROM_PIXELS


def large_image_bf16(task: str, job: Job, opts: dict) -> bool:
    """Whether the job's images are made in bfloat16 by a small model under --dtype auto (sampling/precision.py),
    told before the model loads: the job's fingerprint names it."""
    if (opts.get("dtype") or "auto") != "auto" or opts.get("compile"):   # --compile: float32 (compile_unet)
        return False
    if not declares_large_image(task, job):
        return False
    from ldmcli.loading import auto_bf16_for_large_images
    return auto_bf16_for_large_images(opts.get("device") or "auto", opts.get("ckpt"), task)


def fingerprint(task: str, job: Job, opts: dict) -> str:
    """Six hex digits of SHA-256 over what decides a job's pixels: the task, the job's fields (prompt, inputs,
    steps, …) and the run's options (checkpoint, sampler, dtype, …). Outputs carry it in their names, so a
    re-run recognises its own finished files (resume) and a different prompt into the same folder never mistakes
    an earlier image for its own."""
    import dataclasses
    import hashlib
    import json
    fields = {k: v for k, v in dataclasses.asdict(job).items() if k not in ("name", "n_samples", "seed", "tag")}
    if fields.get("schedule") is None:   # a job without one keeps the fingerprint it had before the field existed
        fields.pop("schedule", None)
    options = {k: v for k, v in sorted(opts.items()) if k not in _NOT_IN_FINGERPRINT and v is not None}
    if options.get("dtype", "auto") == "auto":   # auto means bf16 on CPUs with native bf16: name what runs, so a
        from ldmcli.loading import auto_dtype_is_bf16   # folder resumed elsewhere redoes it; fp32/fp16 keep theirs
        if auto_dtype_is_bf16(opts.get("device") or "auto", opts.get("ckpt"), task) or large_image_bf16(task, job,
                                                                                                   opts):
            options["dtype"] = "bfloat16"
    text = json.dumps([task, fields, options], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:6]
