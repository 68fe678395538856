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

    name: what --sampler takes. function: its function in ldmcli.sampling.samplers ("module.function" for one in
    another module of ldmcli.sampling).
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
        module, _, function = self.function.rpartition(".")
        return getattr(importlib.import_module(f"ldmcli.sampling.{module or 'samplers'}"), function)


SAMPLERS: Dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("ddim", "sample_ddim", "uniform", eta=True, label="DDIM"),
    SamplerSpec("plms", "sample_plms", "uniform", label="PLMS"),
    SamplerSpec("ddpm", "sample_ddpm", "ddpm", label="DDPM"),
    SamplerSpec("dpmpp_2m", "sample_dpmpp_2m", "trailing", karras=True, label="DPM++ 2M"),
    SamplerSpec("euler", "sample_euler", "trailing", karras=True, label="Euler"),
    SamplerSpec("euler_a", "sample_euler_ancestral", "trailing", karras=True, label="Euler a"),
    # the σ-space samplers of k_samplers.py: name -> (function, A1111 label), all on the trailing grid by default
    *(SamplerSpec(name, f"k_samplers.{fn}", "trailing", karras=True, label=label) for name, (fn, label) in {
        "heun": ("sample_heun", "Heun"), "lms": ("sample_lms", "LMS"), "dpm2": ("sample_dpm2", "DPM2"),
        "dpm2_a": ("sample_dpm2_ancestral", "DPM2 a"), "dpmpp_2s_a": ("sample_dpmpp_2s_ancestral", "DPM++ 2S a"),
        "dpmpp_sde": ("sample_dpmpp_sde", "DPM++ SDE"), "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", "DPM++ 2M SDE"),
        "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", "DPM++ 3M SDE"), "unipc": ("sample_unipc", "UniPC"),
    }.items()),
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
    """The row of `name`, after refusing what it cannot do: a non-zero η for PLMS. (Every sampler takes every
    schedule: the VP samplers read a σ grid's ᾱ, exact between any two levels.)"""
    spec = sampler_spec(name)
    if name == "plms" and eta != 0:
        raise UsageError("PLMS is deterministic: eta must be 0")
    return spec


# --schedule choices -> A1111's "Schedule type" label (None: the sampler's default, no label written)
SCHEDULE_LABELS: Dict[str, Optional[str]] = {"uniform": "Uniform", "trailing": None, "karras": "Karras",
                                             "exponential": "Exponential", "sgm_uniform": "SGM Uniform"}


def schedule_name(name: str, karras: bool = False, schedule: Optional[str] = None) -> str:
    """The key of `schedules.SCHEDULES` sampler `name` runs on: `schedule` when given (karras=True is the karras
    schedule), else its default. "uniform" is the reference DDIM grid for the VP samplers and, for the σ-space
    ones, A1111's "Uniform" (`schedules.normal`: σ at evenly spaced timesteps, then 0)."""
    spec = check_sampler(name)
    if karras and schedule not in (None, "karras"):
        raise UsageError(f"--karras asks for the karras schedule, not {schedule!r}")
    which = "karras" if karras else schedule or spec.schedule
    return "normal" if which == "uniform" and spec.karras else which


def parse_sampler(value: str) -> Tuple[str, Optional[str]]:
    """(sampler, schedule or None) of a --sampler value: a name of the table, or an A1111 display name, with or
    without its schedule ("Euler a", "DPM++ 2M Karras", "dpm++ sde karras"), case-insensitive."""
    key = " ".join(value.split()).casefold()
    for spec in SAMPLERS.values():
        if key in (spec.name, spec.label.casefold()):
            return spec.name, None
        for schedule, label in SCHEDULE_LABELS.items():
            if label and key == f"{spec.label} {label}".casefold():
                return spec.name, schedule
    raise UsageError(f"unknown sampler {value!r}; choose one of {', '.join(SAMPLERS)} (or an A1111 name such as "
                     f"'DPM++ 2M Karras'; `ldm samplers` lists them)")


def table_rows():
    """`ldm samplers`: (name, A1111 label, default schedule, schedules it takes, takes --eta) per sampler."""
    return [(s.name, s.label, s.schedule, ", ".join(SCHEDULE_LABELS), "yes" if s.eta else "no")
            for s in SAMPLERS.values()]


def schedule_label(name: str, schedule: Optional[str]) -> Optional[str]:
    """A1111's "Schedule type" for an explicit schedule, None for the sampler's default."""
    if schedule is None or schedule == sampler_spec(name).schedule:
        return None
    return SCHEDULE_LABELS.get(schedule, schedule)


__all__ = ["SamplerSpec", "SAMPLERS", "SAMPLER_NAMES", "K_SAMPLERS", "sampler_spec", "check_sampler",
           "schedule_name", "schedule_label", "parse_sampler", "SCHEDULE_LABELS"]
