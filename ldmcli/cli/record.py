"""The generation record stored in every PNG (A1111 `parameters` + full `ldmcli` JSON) and the model hash."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=8)
def model_hash(path: str) -> str:
    """AUTOMATIC1111's legacy short model hash: SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits.
    Cheap on multi-GB files, and what A1111-compatible readers expect in `Model hash:`."""
    try:
        with open(path, "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except OSError:
        return ""


def job_record(task, model, loaded, job, settings, seed, size, index) -> dict:
    """Everything needed to regenerate the image with `ldm replay`; `loaded` is the model's LoadRecord."""
    from ldmcli.sampling.precision import dtype_name
    ckpt = loaded.path
    record = {
        "task": task, "prompt": job.prompt, "negative_prompt": job.negative_prompt,
        "steps": settings.steps, "sampler": settings.sampler,
        "scale": settings.guidance_scale, "eta": settings.eta, "karras": settings.karras,
        "schedule": settings.schedule,
        "noise_device": settings.noise_device, "seed": seed, "width": size[0], "height": size[1],
        "model": model.cfg.name, "model_hash": model_hash(ckpt) if ckpt else "",
        "ckpt": Path(ckpt).name if ckpt else "", "ckpt_path": str(Path(ckpt).resolve()) if ckpt else "",
        "ema": loaded.ema,
        "denoising_strength": _strength(task, job),
        "vae": Path(loaded.vae).name if loaded.vae else None,
        "vae_hash": vae_hash(loaded.vae) if loaded.vae else None,
        "vae_path": str(Path(loaded.vae).resolve()) if loaded.vae else None,
        "prediction": model.cfg.parameterization, "job": index,
        "dtype": dtype_name(model),     # what --dtype auto resolved to on this machine, for this job's size
        "image": job.image, "mask": job.mask, "layout": job.layout, "segmap": job.segmap,
        "extra": job.extra, "fingerprint": job.tag, "ldmcli_version": _version(),
    }
    from ldmcli.prompts import setup_record
    record.update(setup_record(model))      # clip skip, embeddings with their hashes (A1111 `TI hashes`)
    if task == "sample":    # the class as resolved: id and name ({} for an unconditional model)
        from ldmcli.tasks.sample import class_record
        from ldmcli.cli.inputs import job_option
        record.update(class_record(model, job_option(job, "class")))
    return record


@lru_cache(maxsize=8)
def vae_hash(path: str) -> str:
    """A1111's `VAE hash`: SHA-256 of the whole file, first 10 hex digits."""
    from ldmcli.loading.registry import sha256_file
    try:
        return sha256_file(Path(path))[:10]
    except OSError:
        return ""


def _strength(task, job):
    """img2img's denoising strength (A1111 `Denoising strength`); None for the other tasks."""
    if task != "img2img":
        return None
    from ldmcli.cli.inputs import job_option
    return job_option(job, "strength")


def _version() -> str:
    from ldmcli import __version__
    return __version__
