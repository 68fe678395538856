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
    ckpt = loaded.path
    record = {
        "task": task, "prompt": job.prompt, "negative_prompt": job.negative_prompt,
        "steps": settings.steps, "sampler": settings.sampler,
        "scale": settings.guidance_scale, "eta": settings.eta, "karras": settings.karras,
        "noise_device": settings.noise_device, "seed": seed, "width": size[0], "height": size[1],
        "model": model.cfg.name, "model_hash": model_hash(ckpt) if ckpt else "",
        "ckpt": Path(ckpt).name if ckpt else "", "ckpt_path": str(Path(ckpt).resolve()) if ckpt else "",
        "ema": loaded.ema,
        "prediction": model.cfg.parameterization, "job": index,
        "image": job.image, "mask": job.mask, "layout": job.layout, "segmap": job.segmap,
        "extra": job.extra, "fingerprint": job.tag, "ldmcli_version": _version(),
    }
    return record


def _version() -> str:
    from ldmcli import __version__
    return __version__
