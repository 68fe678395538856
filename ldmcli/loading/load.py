"""Glue between the CLI and the library: device/dtype choice, model loading, turning errors into exit codes."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from ldmcli.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, LdmError, UsageError

DTYPES = ("auto", "float32", "float16", "bfloat16")


def pick_device(device: str = "auto"):
    import torch
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
         dtype: str = "auto", use_ema: bool = True, prediction: Optional[str] = None, vocab: Optional[str] = None):
    """Load a checkpoint (path or registry name) — or the embedded default for `task` when `ckpt` is None."""
    from ldmcli.loading.checkpoint import load_model
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if prediction not in (None, "eps", "v"):
        raise UsageError(f"--prediction must be eps or v, got {prediction!r}")
    path = resolve_ckpt(ckpt, task)
    model, info = load_model(path, config=config, use_ema=use_ema, prediction=prediction, device=dev, dtype=dt)
    _attach_tokenizer(model, vocab, path)
    model.checkpoint_path = str(path)
    return model, info


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
    return default_path(task)


def guarded(fn, *, debug: bool = False) -> int:
    """Run `fn`; map errors to one stderr line and the documented exit code."""
    try:
        rc = fn()
        return 0 if rc is None else rc
    except LdmError as e:
        _err(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_RUNTIME
    except MemoryError:
        _err("out of memory")
        return EXIT_RUNTIME
    except Exception as e:  # noqa: BLE001 - the one place a traceback becomes a line
        if debug:
            raise
        name = type(e).__name__
        if "out of memory" in str(e).lower():
            _err(f"out of memory: {str(e).splitlines()[0][:200]} (try a smaller size, --n-samples 1 or --device cpu)")
        else:
            _err(f"internal error: {name}: {str(e).splitlines()[0][:300] if str(e) else ''} (rerun with --debug)")
        return EXIT_RUNTIME


def _err(msg: str) -> None:
    msg = " ".join(str(msg).splitlines())   # one line, even when a file name holds a newline
    sys.stderr.write(f"ldm: error: {msg}\n")
    sys.stderr.flush()
