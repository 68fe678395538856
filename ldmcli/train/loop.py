"""The training loop shared by every stage: AdamW, EMA, gradient clipping, AMP, checkpoint/resume, JSONL log.

A stage hands over `Objective`s: modules whose `forward(batch, generator, step)` returns (loss, metrics). Each
step optimises them in order on one batch (the autoencoder's generator, then its discriminator; one objective for
an LDM). Every random draw of step s on process r comes from a generator seeded with mix(seed, s, r) and the
batch from `data.batch_indices(s, ...)`, so the run is a pure function of the seed: an interrupted run resumed
from its last checkpoint continues exactly as the uninterrupted one (same batches, noise, weights).

Log records hold the mean of each metric since the previous record; a resumed run restarts that window at its
checkpoint, so with ckpt_every a multiple of log_every (as in the recipes) its log equals the uninterrupted one.
EMA follows the reference's LitEma (MODELS.md §3.4): decay_t = min(decay, (1 + n)/(10 + n)) after n updates,
shadow ← shadow − (1 − decay_t)·(shadow − θ), over every trainable parameter of the objective.
Multi-GPU: under torchrun (WORLD_SIZE > 1) each process wraps its objectives in DistributedDataParallel (NCCL on
CUDA, gloo on CPU), trains on its shard of the data, and rank 0 alone writes checkpoints and the log.
AMP: on CUDA the forward runs under autocast in bfloat16 (float16 with a GradScaler where bf16 is unsupported);
weights, optimiser state and EMA stay float32. The library never prints: progress and log lines go to callbacks.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ldmcli.errors import LdmError, UsageError
from ldmcli.io.atomic import atomic_write, write_bytes_atomic
from ldmcli.loading import pick_device
from ldmcli.train.data import Pool, batch_indices, mix_seed
from ldmcli.train.recipes import StageSettings

STATE_FORMAT = 1


@dataclass
class Objective:
    """One optimised loss. module.forward(batch, generator, step) -> (loss, {name: detached tensor})."""
    name: str
    module: nn.Module
    lr_scale: float = 1.0
    start: int = 0              # first step at which it is optimised (the discriminator's warm-up)
    ema_decay: float = 0.0      # 0: no EMA


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> Distributed:
    """One process per device under torchrun (WORLD_SIZE > 1): init the process group; else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world <= 1:
        return Distributed(device=dev)
    import torch.distributed as dist
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def teardown_distributed(d: Distributed) -> None:
    """Leave the process group that `setup_distributed` joined (torchrun runs only)."""
    if d.world > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(d: Distributed) -> None:
    if d.world > 1:
        import torch.distributed as dist
        dist.barrier()


class EMA:
    """LitEma over the named trainable parameters of a module (float32 shadows)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for n, p in self.params.items():
            self.shadow[n].sub_((1.0 - decay) * (self.shadow[n] - p.detach().float()))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
        for n, v in state["shadow"].items():
            self.shadow[n].copy_(v)


def lr_at(step: int, s: StageSettings) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay from lr to min_lr_ratio·lr at the last step before
    the stage's tail (`tail_steps`, which stays at that floor)."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    span = max(1, s.tail_start - s.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - s.warmup) / span)))
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * cosine)


@contextmanager
def frozen(module: nn.Module):
    """Gradients flow through `module` to its input, not into its parameters (the GAN generator step)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


# ---- checkpoints ------------------------------------------------------------------------------------------------
def read_state(path) -> Optional[dict]:
    """A training state written by `train_loop`, or None when there is none. Tensors only (weights_only)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise UsageError(f"cannot resume from {path}: {' '.join(str(e).split())[:200]}") from None
    if state.get("format") != STATE_FORMAT:
        raise UsageError(f"{path} is not an ldm train state (format {state.get('format')!r})")
    return state


# settings that decide nothing about the weights, or only from the step they start at (checked by that step)
_FREE = {"log_every", "ckpt_every"}
_LATE = {"steps", "disc_start", "tail_steps", "tail_top_share", "tail_top", "pixel_weight", "tail_world_only"}
_TAIL = ("tail_top_share", "tail_top", "pixel_weight", "tail_world_only")
# settings saved under an earlier name (states written by ldmcli before the tail was named so)
_RENAMED = {"onestep_steps": "tail_steps", "onestep_share": "tail_top_share", "onestep_top": "tail_top"}


def resume_conflict(saved: dict, s: StageSettings, done: int) -> Optional[str]:
    """None when continuing a state whose first `done` steps ran under the settings `saved` (its asdict) gives
    what a run under `s` would have given from the start; else the first difference, "name: old -> new". So a
    stage may grow (more steps, a tail appended after its schedule's end, as a recipe that adds one does) but never
    change what its finished steps did (learning rate, batch, data, losses)."""
    known = {f.name for f in fields(StageSettings)}
    saved = {_RENAMED.get(k, k): v for k, v in saved.items()}
    if done > s.steps:
        return f"steps: {saved.get('steps')} -> {s.steps}, and the state is at step {done}"
    for name, value in saved.items():         # a setting of another version, in use: cannot be checked
        if name not in known and value:
            return f"{name}: {value!r} -> (not a setting of this version)"
    old = StageSettings(**{k: v for k, v in saved.items() if k in known})
    if min(old.disc_start, done) != min(s.disc_start, done):
        return f"disc_start: {old.disc_start} -> {s.disc_start}"
    if min(old.tail_start, done) != min(s.tail_start, done):
        return f"the tail's start: step {old.tail_start} -> {s.tail_start}"
    ran = sorted(known - _FREE - _LATE) + (list(_TAIL) if old.tail_start < done else [])
    for name in ran:
        if getattr(old, name) != getattr(s, name):
            return f"{name}: {getattr(old, name)!r} -> {getattr(s, name)!r}"
    for step in range(done):
        if lr_at(step, old) != lr_at(step, s):
            return f"the learning rate at step {step}: {lr_at(step, old):.4g} -> {lr_at(step, s):.4g}"
    return None


def _trim_log(path: Path, stage: str, step: int) -> None:
    """On resume, drop this stage's records past the checkpoint (written after it by the interrupted run)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip()
            and not (json.loads(line).get("stage") == stage and json.loads(line).get("step", 0) > step)]
    write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode())


# ---- the loop ---------------------------------------------------------------------------------------------------
class _Part:
    """An objective as the loop runs it: (DDP-wrapped) module, optimiser, EMA."""

    def __init__(self, obj: Objective, s: StageSettings, d: Distributed):
        self.obj = obj
        self.params = [p for p in obj.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=s.lr * obj.lr_scale, betas=(0.9, 0.999),
                                           weight_decay=s.weight_decay)
        self.ema = EMA(obj.module, obj.ema_decay) if obj.ema_decay > 0 else None
        self.autocast, self.scaler = _amp(d.device)
        self.run = obj.module
        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            # device_ids=None: the batch is already on the device, and DDP then passes it through as is (with
            # device_ids it would copy the batch dict, and the autoencoder objective's note for the
            # discriminator step, written into that dict, would be lost)
            self.run = DistributedDataParallel(obj.module, device_ids=None)

    def state_dict(self) -> dict:
        return {"module": self.obj.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None,
                "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict) -> None:
        self.obj.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _amp(device: torch.device):
    """(autocast context factory, GradScaler or None): bf16 autocast on CUDA, fp16 + a scaler where bf16 is not
    supported, nothing on CPU. One scaler per optimiser, as GradScaler.update must follow each one's step."""
    if device.type != "cuda":
        return nullcontext, None
    if torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")


def _optimise(part: _Part, batch: dict, gen, step: int, s: StageSettings) -> Dict:
    """One optimiser step of one objective; returns its metrics (tensors) and gradient norm."""
    scaler = part.scaler
    for group in part.optimizer.param_groups:
        group["lr"] = lr_at(step, s) * part.obj.lr_scale
    part.optimizer.zero_grad(set_to_none=True)
    with part.autocast():
        loss, metrics = part.run(batch, gen, step)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(part.optimizer)
    else:
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(part.params, s.grad_clip if s.grad_clip > 0 else float("inf"))
    if scaler is not None:
        scaler.step(part.optimizer)
        scaler.update()
    else:
        part.optimizer.step()
    if part.ema is not None:
        part.ema.update()
    return {**metrics, "grad_norm": norm.detach()}


def train_loop(objectives: List[Objective], pool: Pool, s: StageSettings, *, stage: str, seed: int,
               dist: Distributed, state_path, log_path=None, state: Optional[dict] = None,
               extra: Optional[dict] = None, progress: Optional[Callable[[int], None]] = None,
               on_log: Optional[Callable[[dict], None]] = None) -> Dict[str, _Part]:
    """Run steps from the resumed `state` (or 0) to s.steps; returns the parts (modules, optimisers, EMAs).

    `extra` (plain values) is stored in every checkpoint, e.g. the latent scale factor of an LDM stage.
    """
    parts = {o.name: _Part(o, s, dist) for o in objectives}
    start = 0
    if state is not None:
        if state.get("stage") != stage:
            raise UsageError(f"cannot resume {stage} from a {state.get('stage')} state")
        for name, part in parts.items():
            part.load_state_dict(state["objectives"][name])
        start = int(state["step"])
    log_path = Path(log_path) if log_path else None
    if log_path is not None and dist.main:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        _trim_log(log_path, stage, start)
    for p in parts.values():
        p.obj.module.train()
    if progress and start:
        progress(start)
    window: Dict[str, list] = {}
    tick = time.perf_counter()
    for step in range(start, s.steps):
        gen = torch.Generator(dist.device).manual_seed(mix_seed(seed, step, dist.rank))
        if s.tail_world_only and step >= s.tail_start:     # the tail on the world scenes alone
            indices = pool.world_index(batch_indices(step, s.batch_size, pool.world_examples, seed, dist.rank))
        else:
            indices = batch_indices(step, s.batch_size, len(pool), seed, dist.rank)
        batch = pool.batch(indices, dist.device)
        for name, part in parts.items():
            if step >= part.obj.start:
                for key, value in _optimise(part, batch, gen, step, s).items():
                    window.setdefault(key if name == objectives[0].name else f"{name}_{key}", []).append(value)
        done = step + 1
        if done % s.log_every == 0 or done == s.steps:
            record = _record(stage, done, window, s, (time.perf_counter() - tick) / len(window.get("loss", [1])))
            window, tick = {}, time.perf_counter()
            if dist.main and log_path is not None:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if on_log and dist.main:
                on_log(record)
        if done % s.ckpt_every == 0 or done == s.steps:
            save_state(state_path, parts, stage, done, s, extra, dist)
        if progress:
            progress(1)
    return parts


def _record(stage: str, step: int, window: Dict[str, list], s: StageSettings, sec_per_step: float) -> dict:
    """A log line: the mean of each metric over the steps since the last one; a non-finite loss stops the run."""
    record = {"stage": stage, "step": step, "lr": lr_at(step - 1, s)}
    for key, values in window.items():
        record[key] = float(torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).mean())
    for key in ("loss", "disc_loss"):
        if key in record and not math.isfinite(record[key]):
            raise LdmError(f"{stage}: the {key} became {record[key]} by step {step}; lower --lr or check the data")
    record["sec_per_step"] = sec_per_step
    record["time"] = time.time()
    return record


def save_state(path, parts: Dict[str, _Part], stage: str, step: int, s: StageSettings, extra: Optional[dict],
               dist: Distributed) -> None:
    """Write the training state (rank 0) atomically: a crash mid-write leaves the previous checkpoint intact."""
    if dist.main:
        state = {"format": STATE_FORMAT, "stage": stage, "step": step, "settings": asdict(s),
                 "extra": dict(extra or {}), "objectives": {n: p.state_dict() for n, p in parts.items()}}
        atomic_write(path, lambda f: torch.save(state, f))
    barrier(dist)


__all__ = ["Objective", "Distributed", "EMA", "setup_distributed", "teardown_distributed",
           "barrier", "lr_at", "frozen", "read_state", "resume_conflict", "save_state", "train_loop"]
