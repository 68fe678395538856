"""bfloat16 for the large images of small models, on CPUs that compute it natively (`--dtype auto`).

A small checkpoint (the embedded defaults) stays float32 under "auto": at its own 32 px its UNet is bound by per-op
overhead, and bf16 only costs (loading/__init__.py). Its large images are another matter: from about 128 px the
convolutions dominate, and oneDNN's bf16 kernels (AVX512-BF16, AMX) run them several times faster — measured on
the Intel host (2026-12-06; UNet call / decode, ms, float32 → bf16 autocast with channels-last): superres at a
64×64 latent 45.8 → 17.1 / 631 → 171, txt2img at 32×32 (batch 2) 72.7 → 59.7 / 123 → 29; at 8×8 (the defaults'
own size) the UNet is slower in bf16 (2.9 → 5.2). So from BF16_FROM_PIXELS output pixels an image is sampled and
decoded under `torch.autocast` to bfloat16: the weights stay float32 (cast per operation, so nothing is lost when
the next image is small), normalisations and the sampler's arithmetic stay float32, and the convolution layout is
channels-last for the duration. docs/RESULTS.md ("bf16 for the large images of small models") has the speed and
the eval figures.

Who decides: `load` marks a model `bf16_work` (auto, CPU, native bf16, float32 because it is small). In the CLI the
runner sets each job's choice (`bf16_job`) from the job's declared size, the same choice that the job's
fingerprint names; elsewhere (ldm eval, library calls) the latent's own size decides. torch is imported only to
run the work, so the CLI can ask `BF16_FROM_PIXELS` before it loads anything.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

BF16_FROM_PIXELS = 128 * 128     # output pixels per image from which large work runs in bfloat16


def runs_bf16(model, pixels: int) -> bool:
    """Whether an image of `pixels` output pixels is made in bfloat16 by `model` (see the module's doc)."""
    if not getattr(model, "bf16_work", False):
        return False
    chosen = getattr(model, "bf16_job", None)
    return chosen if chosen is not None else pixels >= BF16_FROM_PIXELS


def dtype_name(model) -> str:
    """The precision a job's images are made in, for their record: the job's choice, else the model's dtype."""
    if getattr(model, "bf16_work", False) and getattr(model, "bf16_job", None):
        return "bfloat16"
    return str(model.dtype).replace("torch.", "")


@contextmanager
def for_job(model, bf16: bool) -> Iterator[None]:
    """The job's choice while its images are made (the CLI's runner; `bf16` as its fingerprint names it)."""
    model.bf16_job = bool(bf16)
    try:
        yield
    finally:
        model.bf16_job = None


@contextmanager
def work_precision(model, part, pixels: int) -> Iterator[bool]:
    """Run `part` (the UNet, the first stage: a torch Module) in bfloat16 autocast with channels-last weights when
    `runs_bf16`; yields whether it does. The layout is put back afterwards (the values never change)."""
    if not runs_bf16(model, pixels):
        yield False
        return
    import torch
    part.to(memory_format=torch.channels_last)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yield True
    finally:
        part.to(memory_format=torch.contiguous_format)


__all__ = ["BF16_FROM_PIXELS", "runs_bf16", "dtype_name", "for_job", "work_precision"]
