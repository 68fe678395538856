"""Loading a model for a task: `load()` returns the model and its `LoadRecord`.

Device and dtype choice live here too (`pick_device`, `pick_dtype`): the CLI, `ldm eval` and training all choose
through them. Importing this package imports no torch; each function imports it when called.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ldmcli.errors import UsageError

if TYPE_CHECKING:
    from ldmcli.loading.checkpoint import LoadRecord

DTYPES = ("auto", "float32", "float16", "bfloat16")
_MODEL_TASK = {"img2img": "txt2img"}   # subcommands that run another task's model (its embedded default too)


def pick_device(device: str = "auto", local_rank: Optional[int] = None):
    """"auto": CUDA when there is a device, else CPU. Under torchrun (LOCAL_RANK in the environment, or
    `local_rank` given) "auto" and "cuda" mean this process's own GPU, cuda:LOCAL_RANK."""
    import torch
    if local_rank is None and os.environ.get("LOCAL_RANK", "").strip():
        try:
            local_rank = int(os.environ["LOCAL_RANK"])
        except ValueError:
            raise UsageError(f"LOCAL_RANK={os.environ['LOCAL_RANK']!r} is not a whole number") from None
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = "cuda"
    if device == "cuda" and local_rank is not None:
        device = f"cuda:{local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    return dev


def pick_dtype(dtype: str, device):
    """float16 on CUDA, float32 elsewhere, unless asked otherwise (bfloat16 on CPU is slow but correct)."""
    import torch
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype == "float16" and device.type == "cpu":
        raise UsageError("--dtype float16 is not supported on CPU; use float32 or bfloat16")
    return getattr(torch, dtype)


def load(ckpt: Optional[str] = None, *, task: str = "txt2img", config=None, device: str = "auto",
         dtype: str = "auto", use_ema: Optional[bool] = None, prediction: Optional[str] = None,
         vocab: Optional[str] = None, vae: Optional[str] = None) -> "tuple[object, LoadRecord]":
    """Load a checkpoint (path or registry name), or the embedded default for `task` when `ckpt` is None.

    use_ema: True/False run a file's EMA/plain UNet weights; None as the family's reference config does.
    vae: a standalone first-stage file (loading/vae.py) that replaces the checkpoint's.
    Returns (LatentDiffusion, LoadRecord): the record holds the file read, the family, EMA, device and dtype.
    """
    from ldmcli.loading.checkpoint import load_model
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if prediction not in (None, "eps", "v"):
        raise UsageError(f"--prediction must be eps or v, got {prediction!r}")
    path = resolve_ckpt(ckpt, task)
    model, record = load_model(path, config=config, use_ema=use_ema, prediction=prediction, device=dev, dtype=dt)
    _attach_tokenizer(model, vocab, path)
    if vae:
        import dataclasses
        from ldmcli.io.paths import expand_user
        from ldmcli.loading.vae import apply_vae
        vae_path = expand_user(vae)
        apply_vae(model, vae_path)
        record = dataclasses.replace(record, vae=str(vae_path))
    return model, record


def _attach_tokenizer(model, vocab: Optional[str], ckpt: Path) -> None:
    """Text encoders tokenize with the vocabulary given by --vocab, else a `vocab.txt` beside a BERT checkpoint
    (the LDM text models need bert-base-uncased's WordPiece vocabulary, which no package ships)."""
    from ldmcli.models.config import BERTConfig
    enc, cfg = model.cond_stage_model, model.cfg.cond_stage
    if enc is None or not hasattr(enc, "encode"):
        return
    beside = ckpt.parent / "vocab.txt"
    if vocab is None and isinstance(cfg, BERTConfig) and cfg.tokenizer == "wordpiece" and beside.exists():
        vocab = str(beside)
    if vocab is not None:
        from ldmcli.tokenizers import tokenizer_for
        enc.tokenizer = tokenizer_for(cfg, vocab)


def resolve_ckpt(ckpt: Optional[str], task: str) -> Path:
    """A path as given; else the embedded default of the task in weights/ (the CLI explains what to pass)."""
    if ckpt:
        from ldmcli.io.paths import expand_user
        p = expand_user(ckpt)
        if p.exists() or "/" in ckpt or p.suffix:
            return p
        from ldmcli.loading.registry import registry_path
        return registry_path(ckpt)
    from ldmcli.loading.registry import default_path
    return default_path(_MODEL_TASK.get(task, task))


def __getattr__(name: str):
    if name == "LoadRecord":     # lives beside the loader, which imports torch: resolved on first use
        from ldmcli.loading.checkpoint import LoadRecord
        return LoadRecord
    raise AttributeError(f"module 'ldmcli.loading' has no attribute {name!r}")


__all__ = ["load", "LoadRecord", "pick_device", "pick_dtype", "resolve_ckpt", "DTYPES"]
