"""The sampler table: one row per sampler, read by the settings, the dispatch and the CLI's --sampler choices.

Adding a sampler: a plain function in samplers.py (`sample_x(model, x, grid, noise=None, callback=None, ...)`)
and one row below. This module imports no torch, so the CLI can check a sampler name while parsing.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from ldmcli.errors import UsageError


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler.

    name: what --sampler takes. function: its function in ldmcli.sampling.samplers.
    schedule: its default grid, a key of `schedules.SCHEDULES`.
    eta: whether it takes the settings' η (DDIM); the others ignore η, except PLMS, which refuses a non-zero one.
    karras: whether karras=True swaps its grid for Karras σs (the σ-space samplers).
    label: the name A1111 shows (PNG parameters).
    """
    name: str
    function: str
    schedule: str
    eta: bool = False
    karras: bool = False
    label: str = ""

    def sampler(self) -> Callable:
        """The sampler function (imported on first use: it imports torch)."""
        return getattr(importlib.import_module("ldmcli.sampling.samplers"), self.function)


SAMPLERS: Dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("ddim", "sample_ddim", "uniform", eta=True, label="DDIM"),
    SamplerSpec("plms", "sample_plms", "uniform", label="PLMS"),
    SamplerSpec("ddpm", "sample_ddpm", "ddpm", label="DDPM"),
    SamplerSpec("dpmpp_2m", "sample_dpmpp_2m", "trailing", karras=True, label="DPM++ 2M"),
    SamplerSpec("euler", "sample_euler", "trailing", karras=True, label="Euler"),
    SamplerSpec("euler_a", "sample_euler_ancestral", "trailing", karras=True, label="Euler a"),
)}
SAMPLER_NAMES: Tuple[str, ...] = tuple(SAMPLERS)
K_SAMPLERS: Tuple[str, ...] = tuple(n for n, s in SAMPLERS.items() if s.karras)


def sampler_spec(name: str) -> SamplerSpec:
    """The row of `name`; a UsageError naming the samplers for anything else."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UsageError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None


def check_sampler(name: str, eta: float = 0.0, karras: bool = False) -> SamplerSpec:
    """The row of `name`, after refusing what it cannot do: a non-zero η for PLMS, Karras σs off the σ-space
    samplers."""
    spec = sampler_spec(name)
    if name == "plms" and eta != 0:
        raise UsageError("PLMS is deterministic: eta must be 0")
    if karras and not spec.karras:
        raise UsageError(f"Karras sigmas apply to {', '.join(K_SAMPLERS)} only, not {name}")
    return spec


def schedule_name(name: str, karras: bool = False, schedule: Optional[str] = None) -> str:
    """The grid sampler `name` runs on: `schedule` when given, Karras σs for karras=True, else its default."""
    spec = check_sampler(name, karras=karras)
    if karras and schedule not in (None, "karras"):
        raise UsageError(f"karras=True asks for the karras schedule, not {schedule!r}")
    return "karras" if karras else schedule or spec.schedule


__all__ = ["SamplerSpec", "SAMPLERS", "SAMPLER_NAMES", "K_SAMPLERS", "sampler_spec", "check_sampler",
           "schedule_name"]
