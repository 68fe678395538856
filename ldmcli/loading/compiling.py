"""`--compile`: torch.compile the denoising UNet, with Inductor's compiled code cached across runs.

The UNet is compiled in place (`nn.Module.compile`), so its parameter names — and everything that reads them — stay
as they are. The first denoising step of a process pays the compilation; Inductor's on-disk caches (FX graph and
AOTAutograd) make later processes with the same shapes start from compiled code. Unless the user already chose a
place with TORCHINDUCTOR_CACHE_DIR, the cache lives in ~/.cache/ldmcli/inductor ($XDG_CACHE_HOME respected), which
outlives /tmp cleaning, unlike Inductor's own default. Inductor's precompiled C++ headers (about 150 MB for the
default model on CPU) ignore that variable and go to <temp folder>/torchinductor_<user>; they are pointed into the
same cache, so `--compile` leaves nothing in /tmp.

On the CPU, when the run's UNet weights never change after loading (no LoRA merged into them), the UNet is compiled
with Inductor's freezing: its weights become constants of the compiled code, folded and packed for oneDNN once
instead of read as inputs each step — about 10 % a step on SD1.5 512² in bf16 (README, "Performance"). A frozen
UNet cannot see a later in-place change of its weights, so merging a LoRA into it is refused (loading/lora.py).
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ldmcli" / "inductor"


def use_cache_dir() -> Path:
    """Make `cache_dir()` and name it in TORCHINDUCTOR_CACHE_DIR, where Inductor reads it (an empty value counts as
    unset there too, not as "."); returns it. For `--compile`, and for `ldm train`, whose optimizer step imports
    torch._dynamo, which makes Inductor's cache folder at once."""
    where = cache_dir()
    where.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(where)
    return where


def compile_unet(model, freeze: bool = False) -> Path:
    """Compile `model.model.diffusion_model` in place; returns the compile cache directory. Inductor's default mode,
    unless `freeze`: the caller will not change the UNet's weights from its first step on, and on the CPU they are
    then frozen into the compiled code (the model's `frozen_unet` says so)."""
    import torch
    from ldmcli.errors import UsageError
    if not hasattr(torch, "compile"):
        raise UsageError("--compile needs PyTorch 2 or later")
    where = use_cache_dir()
    _headers_into(where)
    unet = model.model.diffusion_model
    model.frozen_unet = freeze and next(unet.parameters()).device.type == "cpu"
    model.bf16_work = False    # compiled as float32: autocast and another layout for large images would recompile it
    unet.compile(options={"freezing": True} if model.frozen_unet else None)
    return where


def _headers_into(where: Path) -> None:
    """Point Inductor's precompiled headers into `where`: torch/_inductor/codecache.py fixes their folder at import
    (_HEADER_DIR, from the temp folder, not TORCHINDUCTOR_CACHE_DIR) and reads it each time it builds a header. A
    PyTorch without that attribute keeps its own place."""
    try:
        from torch._inductor import codecache
    except ImportError:
        return
    if hasattr(codecache, "_HEADER_DIR") and hasattr(codecache, "_HEADER_LOCK_DIR"):
        codecache._HEADER_DIR = str(where / "precompiled_headers")
        codecache._HEADER_LOCK_DIR = str(where / "precompiled_headers" / "locks")
