"""The commands that generate nothing: `ldm weights list|verify`, `--list-labels`, `ldm info`, and the job that
`ldm replay` re-runs. Data goes to stdout, one record per line; errors are LdmErrors (cli/guard.py)."""
from __future__ import annotations

import json
import sys
from typing import Optional

from ldmcli.cli.console import Console
from ldmcli.cli.runner import load_model
from ldmcli.errors import EXIT_USAGE, UsageError
from ldmcli.tasks import task as task_row


def weights_list(as_json: bool) -> int:
    from ldmcli.loading.registry import list_entries
    rows = list_entries()
    for r in rows:
        if as_json:
            sys.stdout.write(json.dumps(r) + "\n")
        else:
            mark = "present" if r["present"] else "absent"
            sys.stdout.write(f"{r['name']:<34} {r.get('family', ''):<28} {r.get('task', ''):<12} {mark}\n")
    return 0


def weights_verify(name: Optional[str]) -> int:
    """SHA-256 of each present registry file against its recorded hash; exit 2 on any mismatch."""
    from ldmcli.loading.registry import WEIGHTS_DIR, list_entries, sha256_file
    rows = [r for r in list_entries() if r["present"] and (name is None or r["name"] == name)]
    if name and not rows:
        raise UsageError(f"{name} is not a present registry entry (see ldm weights list)")
    bad = 0
    for r in rows:
        digest = sha256_file(WEIGHTS_DIR / r["file"])
        want = r.get("sha256")
        status = "no hash recorded" if not want else ("ok" if digest == want else "MISMATCH")
        bad += status == "MISMATCH"
        sys.stdout.write(f"{r['name']}\t{status}\t{digest}\n")
    return EXIT_USAGE if bad else 0


def print_labels(task: str, opts: dict) -> int:
    """`--list-labels`: the label names of the model's condition, one per line (index<TAB>name)."""
    model, _ = load_model(task, dict(opts, quiet=True), Console(quiet=True), 0)
    for i, label in enumerate(task_row(task).list_labels(model)):
        sys.stdout.write(f"{i}\t{label}\n")
    return 0


def show_info(image: str, as_json: bool) -> int:
    from ldmcli.io.png import read_metadata
    meta = read_metadata(image)
    if as_json:
        sys.stdout.write(json.dumps(meta) + "\n")
        return 0
    record = meta.get("ldmcli") or meta.get("parameters", {})
    for k, v in record.items():
        if v not in (None, "", {}):
            sys.stdout.write(f"{k}: {v}\n")
    return 0


# the record fields replay reads: name -> (JSON types allowed, required); numbers' ranges are validate.py's
_TEXT, _NUMBER, _INT, _FLAG = (str,), (int, float), (int,), (bool,)
_RECORD = {"task": (_TEXT, True), "steps": (_INT, True), "sampler": (_TEXT, True), "scale": (_NUMBER, True),
           "eta": (_NUMBER, True), "seed": (_INT, True), "prompt": (_TEXT, False), "negative_prompt": (_TEXT, False),
           "image": (_TEXT, False), "mask": (_TEXT, False), "layout": (_TEXT, False), "segmap": (_TEXT, False),
           "height": (_INT, False), "width": (_INT, False), "extra": ((dict,), False), "karras": (_FLAG, False),
           "ckpt_path": (_TEXT, False), "noise_device": (_TEXT, False), "ema": (_FLAG, False),
           "prediction": (_TEXT, False), "vae_path": (_TEXT, False),
           "lora_dir": (_TEXT, False),
           "clip_skip": (_INT, False), "embedding_paths": ((list,), False)}


def _check_record(image: str, rec) -> None:
    """The record must hold what replay reads, with JSON types it can use (a UsageError names the first field
    that does not); `extra` holds only the task options the CLI knows."""
    from ldmcli.cli.inputs import OPTIONS
    from ldmcli.tasks import TASKS
    if not isinstance(rec, dict):
        raise UsageError(f"{image}: its ldmcli record is not a JSON object")
    for key, (kinds, required) in _RECORD.items():
        value = rec.get(key)
        if value is None:
            if required:
                raise UsageError(f"{image}: its ldmcli record lacks {key!r}; it cannot be replayed")
            continue
        if type(value) not in kinds or (kinds is _NUMBER and type(value) is bool):
            raise UsageError(f"{image}: its ldmcli record's {key!r} is {str(value)[:40]!r}, not a "
                             f"{'/'.join(k.__name__ for k in kinds)}")
    if rec["task"] not in TASKS:
        raise UsageError(f"{image}: its ldmcli record names the task {rec['task'][:40]!r}, not one of "
                         f"{', '.join(TASKS)}")
    unknown = sorted(set(rec.get("extra") or {}) - set(OPTIONS))
    if unknown:
        raise UsageError(f"{image}: its ldmcli record's 'extra' holds an unknown option {unknown[0][:40]!r}")


def replay_opts(image: str, given: dict) -> dict:
    """The task, positional fields and options that regenerate `image` from its ldmcli record."""
    from ldmcli.io.png import read_metadata
    rec = read_metadata(image).get("ldmcli")
    if not rec:
        raise UsageError(f"{image} has no ldmcli record (only ldm-written PNGs can be replayed)")
    _check_record(image, rec)
    task = rec["task"]
    positional = {k: rec.get(k) for k in ("prompt", "negative_prompt", "image", "mask", "layout", "segmap")}
    if task_row(task).sized:  # the others take their size from their input file
        positional.update({"height": rec.get("height"), "width": rec.get("width")})
    positional.update(rec.get("extra") or {})
    opts = {"ckpt": given.get("ckpt") or rec.get("ckpt_path"), "config": None, "steps": rec["steps"],
            "sampler": rec["sampler"], "scale": rec["scale"], "eta": rec["eta"], "karras": rec.get("karras"),
            "schedule": rec.get("schedule"),
            "seed": rec["seed"], "n_samples": 1, "batch_size": 1, "device": given.get("device"),
            "dtype": given.get("dtype"), "out": given.get("out"), "quiet": given.get("quiet"),
            "json": given.get("json"), "overwrite": True, "noise_device": rec.get("noise_device"),
            "from_file": None, "ema": rec.get("ema"), "prediction": rec.get("prediction"),
            "vae": given.get("vae") or rec.get("vae_path"),
            "lora": None, "lora_dir": rec.get("lora_dir"),    # the LoRA files: in `extra` and the prompt's tags
            "clip_skip": rec.get("clip_skip"), "embedding": rec.get("embedding_paths"), "embedding_dir": None,
            "no_prompt_syntax": False}      # a job's no_prompt_syntax: in `extra`
    return {"task": task, "positional": positional, "opts": opts}
