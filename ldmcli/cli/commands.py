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


def replay_opts(image: str, given: dict) -> dict:
    """The task, positional fields and options that regenerate `image` from its ldmcli record."""
    from ldmcli.io.png import read_metadata
    rec = read_metadata(image).get("ldmcli")
    if not rec:
        raise UsageError(f"{image} has no ldmcli record (only ldm-written PNGs can be replayed)")
    task = rec["task"]
    positional = {k: rec.get(k) for k in ("prompt", "negative_prompt", "image", "mask", "layout", "segmap")}
    if task_row(task).sized:  # the others take their size from their input file
        positional.update({"height": rec.get("height"), "width": rec.get("width")})
    positional.update(rec.get("extra") or {})
    opts = {"ckpt": given.get("ckpt") or rec.get("ckpt_path"), "config": None, "steps": rec["steps"],
            "sampler": rec["sampler"], "scale": rec["scale"], "eta": rec["eta"], "karras": rec.get("karras"),
            "seed": rec["seed"], "n_samples": 1, "batch_size": 1, "device": given.get("device"),
            "dtype": given.get("dtype"), "out": given.get("out"), "quiet": given.get("quiet"),
            "json": given.get("json"), "overwrite": True, "noise_device": rec.get("noise_device"),
            "from_file": None, "no_ema": not rec.get("ema", True), "prediction": rec.get("prediction")}
    return {"task": task, "positional": positional, "opts": opts}
