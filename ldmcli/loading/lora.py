"""LoRA (Hu et al. 2021, ΔW = B·A scaled by α/r) read from kohya/sd-scripts or diffusers/PEFT files and merged into
the weights: `W += weight · α/r · up @ down` (a conv's kernels flattened: `(out, r) @ (r, in·kh·kw)`, reshaped).

Merging costs nothing per step. The original tensors of every touched parameter are kept (one copy each) and put
back bit-exactly before another set of LoRAs is merged, so in a batch a job's image never depends on the jobs before
it. The merged set is remembered per model (a weak map, nothing is set on the model).

Layouts (keys grouped by module; the names are diffusers' module names, mapped in lora_keys.py):
- kohya: `lora_unet_<name with _>.lora_down.weight / .lora_up.weight / .alpha`, `lora_te_...` (SD 1.x/2.x text
  encoder); LoCon adds the ResBlock and resampler convs (3×3 down, 1×1 up).
- diffusers/PEFT: `unet.<name>.lora_A.weight / .lora_B.weight`, `text_encoder.<name>...`, optional `.alpha`.
A module without an alpha is scaled by 1 (α = r). LyCORIS LoHa/LoKr, SDXL files, unknown keys and layers that the
model lacks or has in another shape are refused with one line (UsageError, exit 2) before anything is merged.
"""
from __future__ import annotations

import os
import re
import weakref
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from ldmcli.errors import UsageError, close_matches, one_line
from ldmcli.loading.registry import sha256_file

SUFFIXES = (".safetensors", ".pt", ".ckpt")
# A1111's extra-network tag: <lora:NAME> or <lora:NAME:WEIGHT> (later fields, e.g. A1111's unet multiplier, refused)
_TAG = re.compile(r"<lora:([^:<>]*)(?::([^<>]*))?>")
_KOHYA = re.compile(r"^(lora_(?:unet|te)_\w+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_PEFT = re.compile(r"^((?:unet|text_encoder)\.[\w.]+?)\.(lora_A\.weight|lora_B\.weight|alpha)$")
_PART = {"lora_down.weight": "down", "lora_A.weight": "down", "lora_up.weight": "up", "lora_B.weight": "up",
         "alpha": "alpha"}
_LYCORIS = ("hada_w1_a", "hada_w2_a", "lokr_w1", "lokr_w2", "lora_mid", "dora_scale", ".diff", "oft_")


# ---- what to apply: FILE[:WEIGHT] options and <lora:NAME:WEIGHT> tags (no torch) -----------------------------------
class Spec(NamedTuple):
    path: str       # absolute
    weight: float


def _weight(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what}: the LoRA weight {text[:40]!r} is not a number") from None
    if value != value or abs(value) == float("inf"):
        raise UsageError(f"{what}: the LoRA weight must be finite, got {text[:40]!r}")
    return value


def parse_spec(text: str) -> Spec:
    """`FILE[:WEIGHT]` (weight 1 when absent; a colon followed by a non-number is part of the path)."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"--lora wants FILE[:WEIGHT], got {str(text)[:60]!r}")
    path, sep, tail = text.rpartition(":")
    if sep and path and re.fullmatch(r"\s*[-+]?[0-9.eE+-]+\s*", tail):
        return Spec(os.path.abspath(os.path.expanduser(path)), _weight(tail, f"--lora {text[:60]}"))
    return Spec(os.path.abspath(os.path.expanduser(text)), 1.0)


def spec_text(spec: Spec) -> str:
    return f"{spec.path}:{spec.weight:g}"


def absolute_specs(items) -> List[str]:
    """A job's `lora` option (a list of FILE[:WEIGHT], or one string) with absolute paths, as records keep it."""
    items = [items] if isinstance(items, str) else items
    if not isinstance(items, (list, tuple)):
        raise UsageError(f"option 'lora' should be a list of \"FILE[:WEIGHT]\", got {str(items)[:60]!r}")
    return [spec_text(parse_spec(x)) for x in items]


def extract_lora_tags(prompt: str) -> Tuple[str, List[Tuple[str, float]]]:
    """(prompt without its `<lora:NAME:WEIGHT>` tags, [(NAME, WEIGHT)]) — A1111's syntax, weight 1 by default.
    Only the tags are cut out; the rest of the prompt is left as it is."""
    found = []
    for m in _TAG.finditer(prompt or ""):
        name, weight = m.group(1).strip(), m.group(2)
        if not name:
            raise UsageError(f"prompt tag {m.group(0)[:60]!r} names no LoRA")
        if weight is not None and ":" in weight:
            raise UsageError(f"prompt tag {m.group(0)[:60]!r}: only <lora:NAME:WEIGHT> is supported")
        found.append((name, 1.0 if weight is None or not weight.strip() else _weight(weight, m.group(0)[:60])))
    return (_TAG.sub("", prompt) if found else prompt), found


def find_in_dir(name: str, lora_dir: Optional[str]) -> str:
    """The file whose stem is `name` in `lora_dir` (or below it, as A1111 searches), absolute."""
    if not lora_dir:
        raise UsageError(f"the prompt uses <lora:{name[:40]}> but no --lora-dir was given to find it in")
    root = Path(os.path.expanduser(lora_dir))
    if not root.is_dir():
        raise UsageError(f"--lora-dir {lora_dir} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    hits = [p for p in files if p.stem == name]
    if not hits:
        near = close_matches(name, {p.stem for p in files})
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise UsageError(f"no LoRA named {name[:40]!r} in {lora_dir}{hint}")
    return str(min(hits, key=lambda p: len(p.parts)).resolve())


def job_specs(job, opts: dict) -> Tuple[str, List[Spec]]:
    """(the job's prompt without LoRA tags, its LoRAs: the `lora` option's, then the prompt tags')."""
    specs = [parse_spec(x) for x in absolute_specs(job.extra.get("lora") or [])]
    prompt, tags = extract_lora_tags(job.prompt or "")
    specs += [Spec(find_in_dir(name, opts.get("lora_dir")), w) for name, w in tags]
    return prompt, specs


def check_job_loras(job, opts: dict) -> None:
    """What is known without the model: the specs parse, the files exist, and a .safetensors file's keys are a
    LoRA layout this module reads (its header only)."""
    from ldmcli.loading.files import check_regular_file
    for spec in job_specs(job, opts)[1]:
        path = Path(spec.path)
        if not path.is_file():
            raise UsageError(f"LoRA file not found: {spec.path}")
        check_regular_file(path, "LoRA file")
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            try:
                with safe_open(str(path), "pt") as f:
                    group_keys(list(f.keys()), path.name)
            except UsageError:
                raise
            except Exception as e:   # safetensors raises several kinds for a bad header
                raise UsageError(f"cannot read LoRA {path.name} (truncated or corrupt?): {one_line(e, 120)}") from None


# ---- reading --------------------------------------------------------------------------------------------------------
def group_keys(keys: Sequence[str], name: str) -> Dict[str, Dict[str, str]]:
    """{module: {"down"|"up"|"alpha": key}} of a kohya or PEFT file; anything else refused, naming the first key."""
    modules: Dict[str, Dict[str, str]] = {}
    for key in keys:
        if any(tag in key for tag in _LYCORIS):
            raise UsageError(f"LoRA {name}: {key[:80]} is a LyCORIS LoHa/LoKr/DoRA layer; only LoRA and LoCon "
                             "(lora_down/lora_up, lora_A/lora_B) files are supported")
        if key.startswith(("lora_te1_", "lora_te2_")):
            raise UsageError(f"LoRA {name} is for SDXL ({key[:60]}); this tool runs SD 1.x/2.x models")
        m = _KOHYA.match(key) or _PEFT.match(key)
        if not m:
            raise UsageError(f"LoRA {name}: unknown key {key[:100]!r} (not a kohya or diffusers/PEFT LoRA layout)")
        modules.setdefault(m.group(1), {})[_PART[m.group(2)]] = key
    for module, parts in modules.items():
        if "down" not in parts or "up" not in parts:
            raise UsageError(f"LoRA {name}: layer {module[:80]} lacks its {'up' if 'down' in parts else 'down'} "
                             "matrix (truncated file?)")
    if not modules:
        raise UsageError(f"LoRA {name} holds no LoRA layers")
    return modules


@dataclass(frozen=True)
class Layer:
    down: "object"          # torch tensors: (r, in[, kh, kw]) and (out, r[, 1, 1])
    up: "object"
    scale: float            # α / r


def read_lora(path: str) -> Dict[str, Layer]:
    """{module name as the file spells it: Layer} of a LoRA file (pickles read without running code)."""
    from ldmcli.errors import CheckpointError
    from ldmcli.loading.checkpoint import read_checkpoint
    name = Path(path).name
    try:
        sd, _ = read_checkpoint(path)
    except CheckpointError as e:
        raise UsageError(f"LoRA {name}: {e}") from None
    layers = {}
    for module, parts in group_keys(list(sd), name).items():
        down, up = sd[parts["down"]].float(), sd[parts["up"]].float()
        rank = down.shape[0]
        alpha = float(sd[parts["alpha"]]) if "alpha" in parts else rank
        layers[module] = Layer(down, up, alpha / rank)
    return layers


@lru_cache(maxsize=64)
def _short_hash(path: str, mtime_ns: int, size: int) -> str:
    """A1111's LoRA hash (extensions-builtin/Lora/network.py): the `sshs_model_hash` of the file's metadata when
    present, else for .safetensors the "addnet" hash — SHA-256 of the bytes after the header, so editing the
    metadata keeps it — and for other files SHA-256 of the whole file; the first 12 hex digits."""
    start = 0
    if path.endswith(".safetensors"):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = _header_metadata(f.read(n))
        if re.fullmatch(r"[0-9a-fA-F]{12,64}", meta.get("sshs_model_hash", "")):
            return meta["sshs_model_hash"][:12].lower()
        start = 8 + n
    return sha256_file(Path(path), start)[:12]


def _header_metadata(header: bytes) -> dict:
    import json
    try:
        meta = json.loads(header).get("__metadata__") or {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def lora_hash(path: str) -> str:
    st = os.stat(path)
    return _short_hash(path, st.st_mtime_ns, st.st_size)


# ---- merging and restoring ------------------------------------------------------------------------------------------
class _Merged:
    """The set merged into a model now (`key`) and the original tensors of the parameters it touched."""

    def __init__(self):
        self.key: tuple = ()
        self.saved: dict = {}


_STATE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _kohya_name(name: str) -> str:
    """`unet.down_blocks.0.attentions.0.proj_in` → `lora_unet_down_blocks_0_attentions_0_proj_in`; the text encoder's
    prefix is `lora_te_`."""
    head, _, rest = name.partition(".")
    return f"lora_{'unet' if head == 'unet' else 'te'}_" + rest.replace(".", "_")


def _plan(model, loras) -> list:
    """[(Target, Layer, weight)] for every layer of `loras` [(file name, layers, weight)], every one checked against
    the model (its name and its shape) before anything is merged."""
    from ldmcli.loading.lora_keys import lora_targets
    targets = lora_targets(model)
    index = {**targets, **{_kohya_name(k): v for k, v in targets.items()}}
    params = dict(model.named_parameters())
    plan = []
    for name, layers, weight in loras:
        for module, layer in layers.items():
            target = index.get(module)
            if target is None:
                raise UsageError(f"LoRA {name}: this model has no layer {module[:80]} (a LoRA for another model "
                                 "family?)")
            shape = params[target.param].shape
            shape = (target.rows[1] - target.rows[0],) + tuple(shape[1:]) if target.rows else tuple(shape)
            if not _fits(layer, shape):
                raise UsageError(f"LoRA {name} does not fit this model: {module[:80]} is {list(shape)} here, the "
                                 f"LoRA's is {list(layer.up.shape[:1]) + list(layer.down.shape[1:])} (a LoRA for "
                                 "another family, e.g. SD 2 on SD 1?)")
            plan.append((target, layer, weight))
    return plan


def _fits(layer: Layer, shape: tuple) -> bool:
    """up (out, r[, 1, 1]) @ down (r, in[, kh, kw]) flattened must give the weight's (out, in·kh·kw)."""
    import math
    rank = layer.down.shape[0]
    return (layer.up.shape[0] == shape[0] and layer.up[0].numel() == rank
            and layer.down[0].numel() == math.prod(shape[1:]))


def _key(specs: Sequence[Spec]) -> tuple:
    """What identifies a merged set: each file (path, modification time, size) and its weight, in order."""
    out = []
    for s in specs:
        st = os.stat(s.path)
        out.append((s.path, st.st_mtime_ns, st.st_size, s.weight))
    return tuple(out)


def restore(model) -> None:
    """Put back, bit for bit, the tensors the merged LoRAs changed."""
    import torch
    state = _STATE.get(model)
    if state is None or not state.saved:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, original in state.saved.items():
            params[name].copy_(original)
    state.saved, state.key = {}, ()


def apply_loras(model, specs: Sequence[Spec]) -> None:
    """Merge `specs` into `model`'s weights, replacing whatever set was merged before (nothing to do when it is the
    same set). A refused file leaves the model with no LoRA merged."""
    import torch
    key = _key(specs)
    state = _STATE.setdefault(model, _Merged())
    if state.key == key:
        return
    if getattr(model, "frozen_unet", False):
        raise UsageError("the UNet was compiled with its weights frozen into the compiled code, which a LoRA "
                         "merged now would not reach: compile it with compile_unet(model, freeze=False) to use LoRAs")
    restore(model)
    plan = _plan(model, [(Path(s.path).name, read_lora(s.path), s.weight) for s in specs])
    params = dict(model.named_parameters())
    with torch.no_grad():
        for target, layer, weight in plan:
            p = params[target.param]
            state.saved.setdefault(target.param, p.detach().clone())
            w = p[target.rows[0]:target.rows[1]] if target.rows else p
            up, down = layer.up.to(w.device), layer.down.to(w.device)
            delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape)     # (out, in·kh·kw) → the weight's shape
            w.copy_((w.float() + (weight * layer.scale) * delta).to(w.dtype))
    state.key = key


def takes_loras(jobs, opts: dict) -> bool:
    """Whether any of `jobs` merges a LoRA (its `lora` option or its prompt's tags)."""
    return any(job_specs(job, opts)[1] for job in jobs)


def apply_job_loras(model, job, opts: dict):
    """Merge the job's LoRAs (its `lora` option and its prompt's tags) into `model` — restoring the previous job's —
    and return (the job with its prompt free of LoRA tags, the record's LoRA fields)."""
    prompt, specs = job_specs(job, opts)
    apply_loras(model, specs)
    if not specs:
        return job, {}
    loras = [{"name": Path(s.path).stem, "path": s.path, "weight": s.weight, "hash": lora_hash(s.path)}
             for s in specs]
    # A1111's `Lora hashes: "name: hash, ..."` (file stems without ':' or ',', each file once, as A1111 writes them)
    hashes = ", ".join(dict.fromkeys(f"{re.sub('[:,]', '', x['name'])}: {x['hash']}" for x in loras))  # each once
    fields = {"loras": loras, "lora_hashes": hashes,
              "lora_dir": os.path.abspath(os.path.expanduser(opts["lora_dir"])) if opts.get("lora_dir") else None}
    return replace(job, prompt=prompt), fields


__all__ = ["Spec", "absolute_specs", "apply_job_loras", "apply_loras", "check_job_loras", "extract_lora_tags",
           "find_in_dir", "group_keys", "job_specs", "lora_hash", "parse_spec", "read_lora", "restore", "takes_loras"]
