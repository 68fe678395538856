"""Loading a model for a task: `load()` returns the model and its `LoadRecord`.

Device and dtype choice live here too (`pick_device`, `pick_dtype`): the CLI, `ldm eval` and training all choose
through them. Importing this package imports no torch; each function imports it when called.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ldmcli.errors import UsageError

if TYPE_CHECKING:
    from ldmcli.loading.checkpoint import LoadRecord

DTYPES = ("auto", "float32", "float16", "bfloat16")
SMALL_MODEL_PARAMS = 20_000_000   # UNet parameters under which a CPU run uses one thread (embedded defaults: 3.4M)
SMALL_MODEL_BYTES = 100 * 2**20   # checkpoints under this stay float32 on CPU under "auto" (embedded: 5–8 MB)
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


def pick_dtype(dtype: str, device, weights_bytes: Optional[int] = None):
    """"auto": float16 on CUDA; on CPU bfloat16 where the cores compute it natively (`cpu_has_native_bf16`) and the
    checkpoint is not small (`weights_bytes`, None: unknown), else float32. bf16 pays on compute-bound models;
    small ones (the embedded defaults) are bound by per-op overhead, where it only costs. An explicit float32
    keeps the exact path everywhere."""
    import torch
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        large = weights_bytes is None or weights_bytes >= SMALL_MODEL_BYTES
        return torch.bfloat16 if device.type == "cpu" and large and cpu_has_native_bf16() else torch.float32
    if dtype == "float16" and device.type == "cpu":
        raise UsageError("--dtype float16 is not supported on CPU; use float32 or bfloat16")
    return getattr(torch, dtype)


def auto_dtype_is_bf16(device: str = "auto", ckpt: Optional[str] = None, task: str = "txt2img") -> bool:
    """Whether `load` turns --dtype auto into bfloat16 for this device and checkpoint. The cheap checks come first,
    so torch is imported (to see whether "auto" means CUDA) only when the answer depends on it."""
    return _auto_bf16(device, ckpt, task, small=False)


def auto_bf16_for_large_images(device: str = "auto", ckpt: Optional[str] = None, task: str = "txt2img") -> bool:
    """Whether --dtype auto keeps this small checkpoint float32 on this device but makes its large images in
    bfloat16 (sampling/precision.py); as cheap as `auto_dtype_is_bf16`."""
    return _auto_bf16(device, ckpt, task, small=True)


def _auto_bf16(device: str, ckpt: Optional[str], task: str, small: bool) -> bool:
    try:
        size = _file_bytes(resolve_ckpt(ckpt, task))
    except UsageError:
        return False
    is_small = size is not None and size < SMALL_MODEL_BYTES
    if small != is_small or not cpu_has_native_bf16() or device.startswith("cuda"):
        return False
    try:
        return pick_device(device).type == "cpu"
    except UsageError:
        return False


def _file_bytes(path: Path) -> Optional[int]:
    """A checkpoint file's size; None (unknown) for a folder or a path that cannot be read."""
    try:
        return None if path.is_dir() else path.stat().st_size
    except OSError:
        return None


@functools.lru_cache(maxsize=4)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True where the x86 CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16), which oneDNN uses for bf16
    convolutions and matmuls; elsewhere bf16 is emulated and float32 is faster (Arm's BF16 is unmeasured: float32).
    Read from the kernel's CPU flags: torch does not expose them (`get_cpu_capability` says only "AVX512")."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    flags = set(value.split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def cpu_threads_for(model) -> Optional[int]:
    """Intra-op threads for a CPU model: one for small models (their per-layer work is too short to split, and
    spinning threads on a busy machine slow them many-fold), torch's choice otherwise. None: leave it as is
    (GPU, or the user set OMP_NUM_THREADS)."""
    if model.device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None
    unet_params = sum(p.numel() for p in model.model.parameters())
    return 1 if unet_params < SMALL_MODEL_PARAMS else None


@contextlib.contextmanager
def cpu_threads(model):
    """Run the block with `cpu_threads_for(model)` intra-op threads; restores the previous count after."""
    import torch
    n, before = cpu_threads_for(model), torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load(ckpt: Optional[str] = None, *, task: str = "txt2img", config=None, device: str = "auto",
         dtype: str = "auto", use_ema: Optional[bool] = None, prediction: Optional[str] = None,
         vocab: Optional[str] = None, vae: Optional[str] = None) -> "tuple[object, LoadRecord]":
    """Load a checkpoint (path or registry name), or the embedded default for `task` when `ckpt` is None.

    use_ema: True/False run a file's EMA/plain UNet weights; None as the family's reference config does.
    vae: a standalone first-stage file (loading/vae.py) that replaces the checkpoint's.
    Returns (LatentDiffusion, LoadRecord): the record holds the file read, the family, EMA, device and dtype.
    """
    import torch
    from ldmcli.loading.checkpoint import load_model
    dev = pick_device(device)
    if prediction not in (None, "eps", "v"):
        raise UsageError(f"--prediction must be eps or v, got {prediction!r}")
    path = resolve_ckpt(ckpt, task)
    dt = pick_dtype(dtype, dev, _file_bytes(path))
    model, record = load_model(path, config=config, use_ema=use_ema, prediction=prediction, device=dev, dtype=dt)
    _attach_tokenizer(model, vocab, path)
    if vae:
        import dataclasses
        from ldmcli.io.paths import expand_user
        from ldmcli.loading.vae import apply_vae
        vae_path = expand_user(vae)
        apply_vae(model, vae_path)
        record = dataclasses.replace(record, vae=str(vae_path))
    prepare_for_cpu(model)      # after --vae, which replaces first-stage tensors
    # small under auto on a CPU with native bf16: float32, but its large images in bf16 (sampling/precision.py)
    model.bf16_work = dtype == "auto" and dev.type == "cpu" and dt == torch.float32 and cpu_has_native_bf16()
    return model, record


def prepare_for_cpu(model) -> None:
    """Channels-last weights for the UNet and the first stage of a bfloat16 CPU model: oneDNN's bf16 convolutions
    run in that layout natively (contiguous tensors are reordered around every conv), and the layout then flows
    through the activations. float32 stays contiguous, the exact path; CUDA is left as loaded."""
    import torch
    if model.device.type == "cpu" and model.dtype == torch.bfloat16:
        for part in (model.model, model.first_stage_model):
            part.to(memory_format=torch.channels_last)


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


__all__ = ["load", "LoadRecord", "pick_device", "pick_dtype", "prepare_for_cpu", "cpu_has_native_bf16", "cpu_threads",
           "cpu_threads_for", "auto_dtype_is_bf16", "resolve_ckpt", "DTYPES"]
