"""The weights registry: embedded defaults shipped in `weights/` and known public checkpoints (by name)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional

from ldmcli.errors import UsageError
from ldmcli.io.paths import expand_user

# inside the package, so an installed wheel has them too (in a checkout, ldmcli/weights links to weights/)
WEIGHTS_DIR = Path(os.environ.get("LDM_WEIGHTS_DIR", Path(__file__).resolve().parents[1] / "weights"))
REGISTRY_FILE = WEIGHTS_DIR / "registry.json"


def sha256_file(path: Path, start: int = 0) -> str:
    """SHA-256 of a file's bytes from offset `start` on, read in 1 MiB chunks (checkpoints are gigabytes)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def registry() -> Dict[str, dict]:
    try:
        return json.loads(REGISTRY_FILE.read_text())["models"]
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError) as e:
        raise UsageError(f"weights registry {REGISTRY_FILE} is malformed: {e}") from None


def default_path(task: str) -> Path:
    entries = [(n, e) for n, e in registry().items() if e.get("default_for") == task and e.get("file")]
    for name, e in entries:
        p = WEIGHTS_DIR / e["file"]
        if p.exists():
            return p
    raise UsageError(f"no embedded default model for {task} in {WEIGHTS_DIR}; pass --ckpt PATH to a checkpoint "
                     f"(.ckpt or .safetensors), e.g. --ckpt v1-5-pruned-emaonly.safetensors")


def registry_path(name: str) -> Path:
    reg = registry()
    if name not in reg:
        from ldmcli.loading.detect import suggest
        raise UsageError(f"checkpoint not found: {name} is neither a file nor a registry name"
                         f"{suggest(name, reg)}")
    e = reg[name]
    if e.get("file") and (WEIGHTS_DIR / e["file"]).exists():
        return WEIGHTS_DIR / e["file"]
    local = expand_user(e.get("local_name", ""))
    if e.get("local_name") and local.exists():
        return local
    raise UsageError(f"{name} is a known checkpoint but not present here; download it from {e.get('source', '?')} "
                     f"and pass --ckpt PATH")


def list_entries() -> List[dict]:
    out = []
    for name, e in registry().items():
        p = WEIGHTS_DIR / e["file"] if e.get("file") else None
        out.append({"name": name, **e, "present": bool(p and p.exists())})
    return out


def embedded_defaults(task: str) -> Optional[dict]:
    """The sampling defaults of the embedded model for `task` ({"steps", "schedule", "guidance", "eta", "size",
    "steps_unprompted", "schedule_unprompted", "ensemble", "detail" (None without match_input)}), read from its
    safetensors header with plain JSON (no torch: `--help` shows them); None when there is no embedded model."""
    import struct
    try:
        path = default_path(task)
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            cfg = json.loads(json.loads(f.read(n))["__metadata__"]["ldmcli_config"])
        factor = 2 ** (len(cfg["first_stage"]["ch_mult"]) - 1)
        return {"steps": cfg["default_steps"], "schedule": cfg.get("default_schedule", ""),
                "guidance": cfg["default_guidance"], "eta": cfg["default_eta"], "size": cfg["latent_size"] * factor,
                "steps_unprompted": cfg.get("default_steps_unprompted", 0),
                "schedule_unprompted": cfg.get("default_schedule_unprompted", ""),
                "ensemble": cfg.get("default_ensemble", 1),
                "detail": cfg.get("default_detail", 1.0) if cfg.get("default_match_input") else None}
    except (UsageError, OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def family_defaults(task: str) -> str:
    """The public families' reference defaults for `task`, one phrase per family (for --help)."""
    from ldmcli.loading.presets import PRESETS
    seen, out = set(), []
    for cfg in PRESETS.values():
        key = (cfg.default_steps, cfg.default_guidance, cfg.image_size)
        if cfg.task == task and key not in seen:
            seen.add(key)
            out.append(f"{cfg.name}: {cfg.default_steps} steps, guidance {cfg.default_guidance:g}, "
                       f"{cfg.image_size} px")
    return "; ".join(out)
