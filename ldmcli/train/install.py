"""Install a training run's exported models as the embedded defaults: `python -m ldmcli.train.install RUN WEIGHTS`.

Copies `<run>/<task>.safetensors` to `<weights>/ldmcli-default-<task>.safetensors` (atomically) and records each in
`<weights>/registry.json` as `ldmcli-default-<task>` with its file, `default_for` task, size, SHA-256 and the
provenance string from the file's header, so `ldm <task>` without --ckpt uses it and `ldm weights verify` checks it.
Other registry entries are kept as they are. `make weights` trains the cpu recipe and runs this.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Sequence

from ldmcli.errors import UsageError
from ldmcli.io.atomic import write_bytes_atomic
from ldmcli.loading.registry import WEIGHTS_DIR, sha256_file
from ldmcli.tasks import TASK_NAMES

LICENCE = "same as ldmcli (trained from scratch on the procedural shapes world)"


def install(run: Path, weights: Path, tasks: Sequence[str] = TASK_NAMES) -> Dict[str, dict]:
    """Install the run's models for `tasks`; returns the registry entries written. Every file is checked to be
    present before anything is copied, so a partial run installs nothing."""
    from ldmcli.loading.checkpoint import safetensors_metadata
    run, weights = Path(run), Path(weights)
    sources = {t: run / f"{t}.safetensors" for t in tasks}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise UsageError(f"run {run} lacks {', '.join(missing)}; train it first (ldm train --out {run})")
    weights.mkdir(parents=True, exist_ok=True)
    reg_path = weights / "registry.json"
    reg = json.loads(reg_path.read_text()) if reg_path.exists() else {"models": {}}
    written = {}
    for task, src in sources.items():
        name = f"ldmcli-default-{task}"
        dst = weights / f"{name}.safetensors"
        write_bytes_atomic(dst, src.read_bytes())            # a few MB each
        entry = {"family": "ldmcli-default", "task": task, "file": dst.name, "default_for": task,
                 "source": safetensors_metadata(dst).get("ldmcli_version") or f"ldm train ({run.name})",
                 "bytes": dst.stat().st_size, "sha256": sha256_file(dst), "licence": LICENCE}
        reg["models"][name] = entry
        written[name] = entry
    write_bytes_atomic(reg_path, (json.dumps(reg, indent=1) + "\n").encode())
    return written


def main(argv: Sequence[str] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ldmcli.train.install", description=__doc__.splitlines()[0])
    p.add_argument("run", help="training run folder (ldm train --out)")
    p.add_argument("weights", nargs="?", default=str(WEIGHTS_DIR))
    p.add_argument("--task", action="append", choices=TASK_NAMES, help="only these tasks (default: all five)")
    a = p.parse_args(argv)
    try:
        done = install(Path(a.run), Path(a.weights), a.task or TASK_NAMES)
    except UsageError as e:
        print(f"install: error: {e}", file=sys.stderr)
        return 2
    for name, e in done.items():
        print(f"{a.weights}/{e['file']}\t{e['bytes'] / 1e6:.1f} MB\t{e['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
