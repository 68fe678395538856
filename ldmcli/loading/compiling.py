"""`--compile`: torch.compile the denoising UNet, with Inductor's compiled code cached across runs.

The UNet is compiled in place (`nn.Module.compile`), so its parameter names — and everything that reads them — stay
as they are. The first denoising step of a process pays the compilation; Inductor's on-disk caches (FX graph and
AOTAutograd) make later processes with the same shapes start from compiled code. Unless the user already chose a
place with TORCHINDUCTOR_CACHE_DIR, the cache lives in ~/.cache/ldmcli/inductor ($XDG_CACHE_HOME respected), which
outlives /tmp cleaning, unlike Inductor's own default.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ldmcli" / "inductor"


def compile_unet(model) -> Path:
    """Compile `model.model.diffusion_model` in place (default mode); returns the compile cache directory."""
    import torch
    from ldmcli.errors import UsageError
    if not hasattr(torch, "compile"):
        raise UsageError("--compile needs PyTorch 2 or later")
    where = cache_dir()
    where.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(where))
    model.model.diffusion_model.compile()
    return where
