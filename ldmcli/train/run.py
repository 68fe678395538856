"""`ldm train` end to end: the autoencoder, its decoder fine-tune, then each latent diffusion model on it, then the
exported defaults.

Layout of --out:  autoencoder/state.pt, autoencoder.safetensors (float32), decoder/state.pt, decoder.safetensors (the
autoencoder with its decoder fine-tuned: what the LDM stages load and export, when the recipe has a decoder stage),
<task>/state.pt (resumable training state) and <task>.safetensors (the fp16 embedded default), train.jsonl; the
superres-decoder stage rewrites superres.safetensors with its tuned decoder (train/prediction_decoder_stage.py).
Seeds: the data stream of every stage has base seed `seed`; stage k initialises its weights from
mix(seed, SEED_INDEX[k]) and draws its per-step randomness from mix(that, step, rank) — see loop.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ldmcli.errors import UsageError
from ldmcli.models.config import BERTConfig
from ldmcli.train import recipes as R
from ldmcli.train.autoencoder_stage import (AUTOENCODER_FILE, DECODER_FILE, build_autoencoder, build_decoder_stage,
                                            load_autoencoder, save_autoencoder)
from ldmcli.train.data import (TASK_FIELDS, WORLD_ONLY, data_pool, folder_images, mix_seed, unconditional_layout,
                               vocabulary)
from ldmcli.train import prediction_decoder_stage as PD
from ldmcli.train.export import export_default, version_string
from ldmcli.train.ldm_stage import DiffusionObjective, Tail, build_ldm, encode_pool, latent_scale
from ldmcli.train.loop import (Distributed, Objective, barrier, read_state, resume_conflict, setup_distributed,
                               teardown_distributed, train_loop)

# what folder data can train: the first stage, and the tasks that need none of the world's annotations
FOLDER_TASKS = ("autoencoder", "decoder", "photo-autoencoder") + tuple(
    t for t in R.LDM_TASKS if not set(TASK_FIELDS[t]) & set(WORLD_ONLY)) + (PD.STAGE,)
FOLDER_TEXT_LENGTH = 77
FIRST_STAGE_FILES = {"autoencoder": AUTOENCODER_FILE, "decoder": DECODER_FILE,   # what each first-stage stage writes
                     "photo-autoencoder": "photo-autoencoder.safetensors"}


@dataclass(frozen=True)
class TrainOptions:
    """What `ldm train` was asked for; None keeps the recipe's value."""
    task: str = "all"
    recipe: str = "cpu"
    data: str = "world"
    out: str = "runs/default"
    steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    seed: int = 0
    resume: bool = False
    device: str = "auto"
    log: Optional[str] = None
    workers: int = 0            # processes that render the world pool; 0: the CPU count over the world size


class _Quiet:
    """Stands in for ldmcli.cli.console.Console when the caller gives none: no output at all."""

    def log(self, msg) -> None:
        pass

    def progress(self, total: int, desc: str = ""):
        from contextlib import nullcontext
        return nullcontext(lambda n=1: None)


def stages_for(task: str, data: str, rec: R.Recipe) -> List[str]:
    """The stages `--task` selects, in training order; "all" skips what folder data cannot train and the stages
    the recipe does not have."""
    if task not in ("all",) + R.TASKS:
        raise UsageError(f"unknown --task {task!r}; choose all, {', '.join(R.TASKS)}")
    if task != "all" and task not in rec.stages:
        raise UsageError(f"the {rec.name} recipe has no {task} stage")
    if data != "world":
        folder_images(data)      # a clear error for a wrong path before any work
        if task not in ("all",) + FOLDER_TASKS:
            raise UsageError(f"{task} needs the shapes world's layouts/class maps; train it with --data world")
        return [t for t in FOLDER_TASKS if t in rec.stages] if task == "all" else [task]
    return [t for t in R.TASKS if t in rec.stages] if task == "all" else [task]


def _first_stage(rec: R.Recipe, task: str = "") -> str:
    """The stage whose output the LDM stage `task` loads and exports: the photo autoencoder for the photo tasks
    (when the recipe has one), else the decoder stage when the recipe has one."""
    if task in R.PHOTO_TASKS and rec.photo_autoencoder is not None and "photo-autoencoder" in rec.stages:
        return "photo-autoencoder"
    return "decoder" if "decoder" in rec.stages else "autoencoder"


def _photo(stage: str, rec: R.Recipe) -> bool:
    """Whether the stage trains on the photo pool (dead leaves mixed with the world)."""
    return _first_stage(rec, stage) == "photo-autoencoder" or stage == "photo-autoencoder"


def _leaves(stage: str, opts: TrainOptions, rec: R.Recipe) -> int:
    """Dead-leaves pictures in the stage's pool: the stage's own count, else the recipe's, for photo stages on the
    world data; none otherwise."""
    if not (_photo(stage, rec) and opts.data == "world"):
        return 0
    own = rec.stages[stage].leaves if stage in rec.stages else None
    return rec.photo_leaves if own is None else own


def first_stage_file(out: Path, rec: R.Recipe, task: str = "") -> Path:
    """The first-stage file the LDM stage `task` loads and exports (`_first_stage`)."""
    return out / FIRST_STAGE_FILES[_first_stage(rec, task)]


def train(opts: TrainOptions, console=None, recipe: Optional[R.Recipe] = None) -> Dict[str, Path]:
    """Train the selected stages; returns {stage: written file} (written by rank 0; every rank gets the paths).

    console: an `ldmcli.cli.console.Console` for progress bars and log lines (None: silent). recipe: a Recipe object
    instead of the named `opts.recipe` (tests use tiny ones)."""
    console = console or _Quiet()
    rec = recipe if recipe is not None else R.recipe(opts.recipe)
    stages = stages_for(opts.task, opts.data, rec)
    dist = setup_distributed(opts.device)
    out = Path(opts.out)
    written = {}
    try:
        for stage in stages:
            if stage in FIRST_STAGE_FILES:
                written[stage] = _train_first_stage(stage, opts, rec, dist, out, console)
            elif stage == PD.STAGE:
                written[stage] = _train_prediction_decoder(opts, rec, dist, out, console)
            else:
                written[stage] = _train_ldm(stage, opts, rec, dist, out, console)
    finally:
        teardown_distributed(dist)
    return written


def _stage_setup(stage: str, opts: TrainOptions, rec: R.Recipe, out: Path):
    """(settings, stage seed, state path, resumed state or None, log path)."""
    s = R.with_overrides(rec.stages[stage], opts.steps, opts.batch_size, opts.lr)
    state_path = out / stage / "state.pt"
    if state_path.exists() and not opts.resume:
        raise UsageError(f"{state_path} exists: pass --resume to continue that run, or choose another --out")
    state = read_state(state_path) if opts.resume else None
    if state is not None:
        conflict = resume_conflict(state.get("settings", {}), s, int(state["step"]))
        if conflict:
            raise UsageError(f"cannot resume {state_path}: its {state['step']} steps ran with other settings "
                             f"({conflict}); delete {state_path.parent} to train the stage again, or choose "
                             f"another --out")
    log_path = Path(opts.log) if opts.log else out / "train.jsonl"
    return s, mix_seed(opts.seed, R.SEED_INDEX[stage]), state_path, state, log_path


def _workers(opts: TrainOptions, dist: Distributed) -> int:
    return opts.workers or max(1, (os.cpu_count() or 1) // dist.world)


def _train_first_stage(stage: str, opts: TrainOptions, rec: R.Recipe, dist: Distributed, out: Path, console) -> Path:
    """The autoencoder stage (from scratch, on the autoencoder's pool) or the decoder stage (the autoencoder stage's
    output with the encoder frozen, on the LDM stages' pool: the scenes they see, more than the autoencoder's)."""
    s, seed, state_path, state, log_path = _stage_setup(stage, opts, rec, out)
    pool_size = rec.pool_size
    leaves = _leaves(stage, opts, rec)
    path = out / FIRST_STAGE_FILES[stage]
    inputs, extra = [state_path], {}
    if stage == "decoder":
        cfg, sd = load_autoencoder(out / AUTOENCODER_FILE)
        if cfg != rec.autoencoder:
            raise UsageError(f"{out / AUTOENCODER_FILE} was trained with another recipe than --recipe {rec.name}")
        pool_size = rec.ldm_pool_size or rec.pool_size
        extra["autoencoder"] = _fingerprint(sd)
        _check_input(state, "autoencoder", extra["autoencoder"], f"autoencoder than {out / AUTOENCODER_FILE}",
                     state_path)
        inputs.append(out / AUTOENCODER_FILE)
    if _finished(state, s, path, inputs):
        console.log(f"{stage}: already trained ({s.steps} steps) and written: {path}")
        return path
    console.log(f"{stage}: building the data pool ({pool_size} examples + {leaves} dead leaves, {rec.image_size} px)")
    pool = data_pool(opts.data, rec.image_size, pool_size, opts.seed, "autoencoder", dist.rank, dist.world,
                     _workers(opts, dist), leaves=leaves)
    torch.manual_seed(seed)
    if stage == "decoder":
        ae, objectives = build_decoder_stage(cfg, sd, s)
    else:
        ae, objectives = build_autoencoder(rec.photo_autoencoder if stage == "photo-autoencoder" else rec.autoencoder,
                                           s)
    for o in objectives:
        o.module.to(dist.device)
    with console.progress(s.steps, stage) as advance:
        train_loop(objectives, pool, s, stage=stage, seed=seed, dist=dist, state_path=state_path,
                   log_path=log_path, state=state, extra=extra, progress=advance,
                   on_log=lambda r: console.log(_line(r)))
    if dist.main:
        version = version_string(stage, rec.name, s.steps, opts.seed, opts.data)
        if stage == "decoder":
            version += f"; autoencoder: {_provenance(out / AUTOENCODER_FILE)}"
        save_autoencoder(ae, path, version)
    barrier(dist)
    return path


def _train_ldm(task: str, opts: TrainOptions, rec: R.Recipe, dist: Distributed, out: Path, console) -> Path:
    s, seed, state_path, state, log_path = _stage_setup(task, opts, rec, out)
    first = _first_stage(rec, task)
    for stage in dict.fromkeys(("photo-autoencoder",) if first == "photo-autoencoder" else ("autoencoder", first)):
        if not (out / FIRST_STAGE_FILES[stage]).is_file():
            raise UsageError(f"no trained {stage} at {out / FIRST_STAGE_FILES[stage]}: train it first "
                             f"(ldm train --task {stage} --out {out})")
    fs_path = first_stage_file(out, rec, task)
    fs_cfg, fs_sd = load_autoencoder(fs_path)
    text_length = rec.text_length if opts.data == "world" else FOLDER_TEXT_LENGTH
    cfg = R.model_config(rec, task, vocabulary(opts.data) if R.takes_text(rec.models[task]) else (), text_length)
    # attn_pool_side only changes inference on maps larger than training ever sees: a file without it still fits
    if replace(fs_cfg, attn_pool_side=cfg.first_stage.attn_pool_side) != cfg.first_stage:
        raise UsageError(f"{fs_path} was trained with another recipe than --recipe {rec.name}")
    fingerprint = _fingerprint(fs_sd, None if s.pixel_weight else _ENCODER)
    _check_input(state, "first_stage", fingerprint, f"first stage than {fs_path}", state_path)
    path = out / f"{task}.safetensors"
    if _finished(state, s, path, [state_path, fs_path]):
        console.log(f"{task}: already trained ({s.steps} steps) and exported: {path}")
        return path
    pool_size = s.world or rec.ldm_pool_size or rec.pool_size
    leaves = _leaves(task, opts, rec)
    size = s.image_size or rec.image_size
    console.log(f"{task}: building the data pool ({pool_size} examples + {leaves} dead leaves, {size} px)")
    pool = data_pool(opts.data, size, pool_size, opts.seed, task, dist.rank, dist.world,
                     _workers(opts, dist), rec.caption_variants, leaves, s.thin_leaves)
    torch.manual_seed(seed)
    model = build_ldm(cfg, fs_sd).to(dist.device)
    uncond = _tokenize(model, pool)
    encode_pool(model, pool, dist.device)
    scale = float(state["extra"]["scale_factor"]) if state else latent_scale(pool, seed, dist)
    model.scale_factor = scale
    objective = DiffusionObjective(model, s.uncond_prob, uncond, Tail.of(s)).to(dist.device)
    with console.progress(s.steps, task) as advance:
        parts = train_loop([Objective(task, objective, ema_decay=s.ema_decay)], pool, s, stage=task, seed=seed,
                           dist=dist, state_path=state_path, log_path=log_path, state=state,
                           extra={"scale_factor": scale, "first_stage": fingerprint}, progress=advance,
                           on_log=lambda r: console.log(_line(r)))
    ema = parts[task].ema
    # the frozen first stage is exported as the file holds it, not as the training state does: a run resumed after a
    # later decoder stage re-exports with that decoder (the encoder, all the LDM saw, is the same in both)
    model.first_stage_model.load_state_dict(fs_sd, strict=True)
    if dist.main:
        weights = {k[len("ldm."):]: v for k, v in ema.shadow.items()} if ema else None
        version = version_string(task, rec.name, s.steps, opts.seed, opts.data)
        export_default(model, path, version=f"{version}; first stage: {_provenance(fs_path)}", ema_weights=weights)
    barrier(dist)
    return path


def _train_prediction_decoder(opts: TrainOptions, rec: R.Recipe, dist: Distributed, out: Path, console) -> Path:
    """The superres-decoder stage (prediction_decoder_stage.py): superres.safetensors rewritten in place with its
    decoder side tuned on the UNet's one-step latents. Its state records the UNet it tuned for; a finished state
    whose tuned decoder is not the file's (superres exported again) writes it back without training."""
    from ldmcli.loading import cpu_has_native_bf16
    from ldmcli.loading.checkpoint import load_model, read_checkpoint
    stage, task = PD.STAGE, PD.TASK
    s, seed, state_path, state, log_path = _stage_setup(stage, opts, rec, out)
    path = out / f"{task}.safetensors"
    if not path.is_file():
        raise UsageError(f"no trained {task} at {path}: train it first (ldm train --task {task} --out {out})")
    sd, _ = read_checkpoint(path)
    unet = _fingerprint(sd, ("model.diffusion_model.",))
    _check_input(state, task, unet, f"{task} UNet than {path}", state_path)
    model, _ = load_model(path, device=dist.device)
    fs = model.first_stage_model
    version = model.cfg.version.split(_TUNED, 1)[0]
    version += _TUNED + version_string(stage, rec.name, s.steps, opts.seed, opts.data).split(" train ", 1)[1]
    if state is not None and int(state["step"]) >= s.steps:
        tuned = PD.tuned_decoder(state)
        if all(torch.equal(sd[f"first_stage_model.{k}"], v.to(sd[f"first_stage_model.{k}"].dtype))
               for k, v in tuned.items()):
            console.log(f"{stage}: already trained ({s.steps} steps) and written: {path}")
            return path
        console.log(f"{stage}: {path} was exported again; writing the tuned decoder back into it")
        fs.load_state_dict(tuned, strict=False)
    else:
        leaves = _leaves(task, opts, rec) if s.leaves is None or opts.data != "world" else s.leaves
        pool_size = s.world or rec.ldm_pool_size or rec.pool_size
        size = s.image_size or rec.image_size
        console.log(f"{stage}: building the data pool ({pool_size} examples + {leaves} dead leaves, {size} px) and "
                    f"its {task} latents")
        # the stage's own seed: pictures that no earlier stage drew, so the UNet's latents are those of new pictures
        pool = data_pool(opts.data, size, pool_size, seed, task, dist.rank, dist.world, _workers(opts, dist),
                         leaves=leaves)
        pool = PD.latent_pool(model, pool, seed, dist.device)
        torch.manual_seed(seed)
        PD.freeze_all_but_decoder(fs)
        objective = PD.PredictionDecoderObjective(fs, float(model.scale_factor), cpu_has_native_bf16(),
                                                  s.back_projected_loss)
        with console.progress(s.steps, stage) as advance:
            train_loop([Objective(stage, objective)], pool, s, stage=stage, seed=seed, dist=dist,
                       state_path=state_path, log_path=log_path, state=state, extra={task: unet}, progress=advance,
                       on_log=lambda r: console.log(_line(r)))
        fs.requires_grad_(False)
    if dist.main:
        # the detail share is chosen for the tuned decoder: the file written last carries the recipe's
        model.cfg = model.cfg.with_(default_detail=rec.models[task].default_detail)
        export_default(model, path, version=version)
    barrier(dist)
    return path


_TUNED = "; decoder tuned on its own latents: "


# what an LDM stage learnt from its first stage: the encoder's latents (a decoder stage trained later changes only
# what the stage exports), and the decoder as well where a pixel term decoded through it
_ENCODER = ("encoder.", "quant_conv.")


def _fingerprint(sd: Dict[str, torch.Tensor], prefixes: Optional[tuple] = None) -> str:
    """SHA-256 of the named tensors' bytes (those under `prefixes`, else all), in key order."""
    import hashlib
    h = hashlib.sha256()
    for key in sorted(sd):
        if prefixes is None or key.startswith(prefixes):
            h.update(key.encode())
            h.update(sd[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_input(state: Optional[dict], key: str, fingerprint: str, what: str, state_path: Path) -> None:
    """A resumed state must have trained on the input it reads now (states from before the check hold none)."""
    seen = state["extra"].get(key) if state else None
    if seen is not None and seen != fingerprint:
        raise UsageError(f"cannot resume {state_path}: it was trained on another {what}; delete "
                         f"{state_path.parent} to train the stage again, or choose another --out")


def _finished(state: Optional[dict], s: R.StageSettings, path: Path, inputs: List[Path]) -> bool:
    """Whether a resumed stage has run all its steps and `path` was written after its state and every input file,
    so that resuming it again (`make weights` after a recipe change) returns at once instead of building its pool."""
    if state is None or int(state["step"]) < s.steps or not path.is_file():
        return False
    return all(path.stat().st_mtime >= p.stat().st_mtime for p in inputs)


def _provenance(path: Path) -> str:
    """The provenance string in the header of a first-stage file, without the "ldmcli <version> train " prefix
    that the exported model's own string already has."""
    from ldmcli.loading.checkpoint import safetensors_metadata
    version = safetensors_metadata(path).get("ldmcli_version", "") or "unknown"
    return version.split(" train ", 1)[1] if version.startswith("ldmcli ") and " train " in version else version


def _tokenize(model, pool) -> Optional[torch.Tensor]:
    """Tokenize the pool's captions once (a words encoder) and return the unconditional τθ input for condition
    dropout: the tokens of the prompt "", or the empty layout (a layout encoder); None for concat-only models."""
    cs = model.cfg.cond_stage
    if R.takes_text(model.cfg):
        from ldmcli.tokenizers import tokenizer_for
        tokenizer = model.cond_stage_model.tokenizer = tokenizer_for(cs)
        pool.tensors["tokens"] = tokenizer(pool.captions)
        return tokenizer([""])
    if isinstance(cs, BERTConfig):      # tokenizer "none": the layout's bbox tokens
        return torch.from_numpy(unconditional_layout())[None]
    return None


def _line(record: dict) -> str:
    metrics = " ".join(f"{k}={v:.4g}" for k, v in record.items()
                       if k not in ("stage", "step", "time") and isinstance(v, float))
    return f"{record['stage']} step {record['step']}: {metrics}"


__all__ = ["TrainOptions", "FOLDER_TASKS", "stages_for", "first_stage_file", "train"]
