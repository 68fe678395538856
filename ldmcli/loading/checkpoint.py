"""Read, normalise, detect and strictly load LDM / Stable Diffusion checkpoints (MODELS.md §7).

Reading never executes code: `.safetensors` is memory-mapped, `.ckpt` goes through `torch.load(weights_only=True)`.
Normalising happens once, here: Lightning nesting, EMA weights (`model_ema.*`, where the family's reference config
says `use_ema: true`, or as asked), stray keys.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ldmcli.models.config import ModelConfig
from ldmcli.errors import CheckpointError

StateDict = Dict[str, torch.Tensor]

# Keys real files carry that the model does not use (MODELS.md §7.8, §7.9 item 2).
_IGNORED = re.compile(
    r"^(model_ema\.|low_scale_model\.|first_stage_model\.loss\.|lvlb_weights$|logvar$|ddim_\w+$)"
    r"|\.position_ids$|\.attn_mask$|^cond_stage_model\.model\.visual\."
)
# Parameters some converted files lack and that inference never reads: materialised as zeros.
_OPTIONAL = re.compile(r"(text_projection|logit_scale|to_logits\.(weight|bias))$")
# Globals of Lightning training metadata that plain checkpoints pickle beside the weights (callbacks, hparams).
# They are replaced by an inert stub; any other global is refused.
_STUB_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.")


@dataclass(frozen=True)
class LoadRecord:
    """What the loader read and decided: the one account of a load, for the CLI's log, the image record and
    `ldm weights`. The model itself carries no such attributes."""
    path: str                           # the file read (after registry names and defaults were resolved)
    family: str                         # the config's name: a preset, the header's config, or a YAML's stem
    ema: bool                           # the UNet's EMA weights were swapped in
    device: str = "cpu"
    dtype: str = "float32"
    ignored: int = 0                    # stray keys real files carry that inference never reads
    unexpected: Tuple[str, ...] = ()    # keys neither used nor known to be ignorable
    zero_filled: Tuple[str, ...] = ()   # optional parameters the file lacked, materialised as zeros
    metadata: Dict[str, str] = field(default_factory=dict, compare=False)  # the safetensors header's strings
    vae: str = ""                       # the --vae file whose first stage replaced the checkpoint's, if any


# ----------------------------------------------------------------------------------------------------
# reading
def read_checkpoint(path) -> Tuple[StateDict, Dict[str, str]]:
    """Return (flat tensor dict, safetensors header metadata) without ever running pickled code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint is a directory, expected a .ckpt or .safetensors file: {path}")
    from ldmcli.loading.files import check_regular_file
    check_regular_file(path, "checkpoint", CheckpointError)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"checkpoint is empty: {path}")
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        return _read_safetensors(path), safetensors_metadata(path)
    return _read_pickle(path), {}


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        sd = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path.name} as safetensors (truncated or corrupt?): "
                              f"{_first_line(e)}") from None
    if not sd:
        raise CheckpointError(f"{path.name} holds no tensors")
    return sd


def safetensors_metadata(path: Path) -> Dict[str, str]:
    """The string metadata of a .safetensors header (reads the header only)."""
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def _read_pickle(path: Path) -> StateDict:
    """`torch.load(weights_only=True)`; Lightning metadata globals become inert stubs, anything else is refused."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path.name} is not a torch zip checkpoint nor safetensors (truncated, or another "
                              f"format?)")
    stubs: list = []
    for _ in range(32):
        try:
            with torch.serialization.safe_globals(stubs):
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            break
        except pickle.UnpicklingError as e:
            name = _refused_global(str(e))
            if name is None or not name.startswith(_STUB_PREFIXES):
                what = f"the global '{name}'" if name else "objects that are not plain tensors"
                raise CheckpointError(f"refusing to load {path.name}: its pickle references {what}; only "
                                      f"weights are loaded (weights_only), never code") from None
            stubs.append(_stub_class(name))
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path.name} (truncated or corrupt?): {_first_line(e)}") from None
    else:
        raise CheckpointError(f"refusing to load {path.name}: too many non-tensor globals in its pickle")
    return _flatten_top(obj, path)


def _refused_global(message: str) -> Optional[str]:
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message) or re.search(r"GLOBAL ([\w.]+)", message)
    return m.group(1) if m else None


def _stub_class(dotted: str) -> type:
    """An inert class whose qualified name matches a refused Lightning global: it stores nothing, runs nothing."""
    module, _, qualname = dotted.rpartition(".")

    def _init(self, *args, **kwargs):
        pass

    def _setstate(self, state):
        pass

    return type(qualname, (), {"__module__": module, "__qualname__": qualname, "__init__": _init,
                               "__setstate__": _setstate})


def _flatten_top(obj, path: Path) -> StateDict:
    """Unwrap `{"state_dict": ...}` (Lightning) or `{"model": ...}` and keep tensors only."""
    for _ in range(3):
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        elif isinstance(obj, dict) and isinstance(obj.get("model"), dict) and not any(
                isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj["model"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a state dict")
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path.name} holds no tensors")
    return sd


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


# ----------------------------------------------------------------------------------------------------
# normalising
def normalize(sd: StateDict, use_ema: bool = True) -> Tuple[StateDict, bool]:
    """Swap in EMA UNet weights when present (and wanted), strip `module.` wrappers. Returns (sd, ema_used).

    LitEma names each parameter of the DiffusionWrapper with the dots removed (MODELS.md §3.4):
    `model.diffusion_model.input_blocks.0.0.weight` <-> `model_ema.diffusion_modelinput_blocks00weight`.
    """
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    ema_used = False
    if use_ema and any(k.startswith("model_ema.") and k not in ("model_ema.decay", "model_ema.num_updates")
                       for k in sd):
        out = dict(sd)
        unet_keys = [k for k in sd if k.startswith("model.diffusion_model.")]
        found = 0
        for k in unet_keys:
            ema_key = "model_ema." + k[len("model."):].replace(".", "")
            if ema_key in sd:
                out[k] = sd[ema_key]
                found += 1
        ema_used = found == len(unet_keys) and found > 0
        if not ema_used:  # a partial EMA set would mix weights: keep the plain ones
            out = dict(sd)
        sd = out
    return sd, ema_used


def split_prefix(sd: StateDict, prefix: str) -> StateDict:
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------------------------------
# loading
def load_model(path, *, config=None, use_ema: Optional[bool] = None, prediction: Optional[str] = None,
               device="cpu", dtype: torch.dtype = torch.float32):
    """Build the model on the meta device (no random init) and assign the checkpoint's tensors strictly.

    config: None (auto-detect), a preset name, a ModelConfig, or a path to an original YAML config.
    use_ema: run the file's `model_ema.*` UNet weights (True), its plain ones (False), or as the family's reference
    config decides (None: `presets.ema_default`).
    Returns (LatentDiffusion, LoadRecord).
    """
    from ldmcli.loading.detect import resolve_config
    from ldmcli.loading.presets import ema_default
    from ldmcli.models.ldm import LatentDiffusion
    from ldmcli.loading.skeleton import meta_skeleton

    raw, meta = read_checkpoint(path)
    sd, _ = normalize(raw, use_ema=False)   # the family is detected from the plain weights' names and shapes
    cfg = resolve_config(sd, path, meta, config, prediction)
    sd, ema_used = normalize(sd, ema_default(cfg, config) if use_ema is None else use_ema)
    if "scale_factor" in sd and sd["scale_factor"].numel() == 1:
        cfg = cfg.with_(scale_factor=float(sd["scale_factor"]))  # lsun_churches stores a learned value
    try:
        with meta_skeleton():
            model = LatentDiffusion(cfg)
    except (RuntimeError, ValueError, TypeError, ArithmeticError, IndexError, KeyError, AssertionError) as e:
        # a config read from a file header or a YAML can hold numbers no module accepts (0 heads, odd widths)
        raise CheckpointError(f"the config {cfg.name} does not describe a buildable model: {_first_line(e)}") from None
    ignored, unexpected, zero_filled = _assign_components(model, sd)
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    record = LoadRecord(path=str(path), family=cfg.name, ema=ema_used, device=str(model.device),
                        dtype=str(model.dtype).replace("torch.", ""), ignored=ignored, unexpected=unexpected,
                        zero_filled=zero_filled, metadata=meta)
    return model, record


def _assign_components(model, sd: StateDict) -> Tuple[int, Tuple[str, ...], Tuple[str, ...]]:
    """Assign each component's tensors; returns (ignored count, unexpected keys, zero-filled keys)."""
    parts = [("model.diffusion_model.", model.model.diffusion_model),
             ("first_stage_model.", model.first_stage_model)]
    if model.cond_stage_model is not None:
        parts.append(("cond_stage_model.", model.cond_stage_model))
    used, unexpected, zero_filled = set(), [], []
    for prefix, module in parts:
        sub = split_prefix(sd, prefix)
        used.update(prefix + k for k in sub)
        _assign(module, sub, prefix, model.cfg.name, unexpected, zero_filled)
    rest = [k for k in sd if k not in used and "." in k]
    if model.cfg.cond_stage == "first_stage":   # inpainting_big stores the autoencoder twice (§7.7)
        rest = [k for k in rest if not k.startswith("cond_stage_model.")]
    ignored = sum(1 for k in rest if _IGNORED.search(k)) + sum(1 for k in sd if "." not in k)
    unexpected += [k for k in rest if not _IGNORED.search(k)]
    return ignored, tuple(sorted(unexpected)), tuple(zero_filled)


def mismatches(expected: StateDict, sd: StateDict) -> Tuple[List[str], List[str]]:
    """(keys `sd` lacks, keys whose shape differs) against a module's `expected` state dict, in its order."""
    missing = [k for k in expected if k not in sd]
    return missing, [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]


def _assign(module, sub: StateDict, prefix: str, family: str, unexpected: List[str], zero_filled: List[str]) -> None:
    expected = module.state_dict(keep_vars=True)
    missing, _ = mismatches(expected, sub)
    for k in [k for k in missing if _OPTIONAL.search(k)]:
        sub[k] = torch.zeros(expected[k].shape, dtype=torch.float32)
        zero_filled.append(prefix + k)
        missing.remove(k)
    if missing:
        raise CheckpointError(
            f"checkpoint lacks {len(missing)} of {len(expected)} {prefix}* tensors for {family} "
            f"(e.g. {prefix}{missing[0]}): a partial or UNet-only file?")
    _, bad = mismatches(expected, sub)
    if bad:
        k = bad[0]
        raise CheckpointError(f"{prefix}{k} has shape {list(sub[k].shape)}, {family} expects "
                              f"{list(expected[k].shape)} ({len(bad)} mismatched tensors): wrong family or config")
    extra = [k for k in sub if k not in expected]
    module.load_state_dict({k: sub[k] for k in expected}, strict=True, assign=True)
    unexpected.extend(prefix + k for k in extra if not _IGNORED.search(prefix + k))


def save_safetensors(sd: StateDict, path, metadata: Optional[Dict[str, str]] = None) -> None:
    """Write tensors atomically (temporary name, then rename) with string metadata in the header."""
    from safetensors.torch import save_file
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def config_metadata(cfg: ModelConfig) -> Dict[str, str]:
    """Header metadata that makes a file self-describing (used by the embedded defaults)."""
    from ldmcli.loading.detect import config_to_json
    return {"ldmcli_config": json.dumps(config_to_json(cfg)), "ldmcli_version": cfg.version}
