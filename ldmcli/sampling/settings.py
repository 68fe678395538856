"""The sampling knobs every subcommand shares, and their resolution against a model family's defaults.

No torch here: the CLI builds and checks settings before a model loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from ldmcli.errors import UsageError
from ldmcli.sampling.table import SCHEDULE_LABELS, check_sampler, parse_sampler

NOISE_DEVICES = ("auto", "cpu")


@dataclass(frozen=True)
class SamplerSettings:
    """The sampling knobs shared by every subcommand; None means "the model family's reference default"."""
    sampler: str = "ddim"
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    eta: Optional[float] = None
    karras: bool = False
    noise_device: Optional[str] = None   # "cpu": noise drawn on the CPU, identical across devices; "auto"/None: the
                                         # model's device
    schedule: Optional[str] = None       # a key of table.SCHEDULE_LABELS; None: the sampler's default (or the one
                                         # its A1111 display name carries, "DPM++ 2M Karras")
    # the config these settings were resolved against: resolving again for it is free (the runner resolves once,
    # the task and the pipeline get the same object back)
    resolved_for: Optional[object] = field(default=None, compare=False, repr=False)

    def resolved(self, cfg) -> "SamplerSettings":
        """Every None replaced by the family's default (`cfg`: a ModelConfig), and every value checked."""
        if self.resolved_for is cfg:
            return self
        sampler, schedule = self._sampler_and_schedule()
        schedule = schedule or cfg.default_schedule or None       # the model's own, where the user names none
        steps = cfg.default_steps if self.steps is None else self.steps
        if not 1 <= steps <= cfg.timesteps:
            raise UsageError(f"--steps must be between 1 and {cfg.timesteps}, got {steps}")
        # the family's default η is a DDIM setting (e.g. η=1 for the LDM super-resolution helper); other
        # samplers get η only when the user passes one (PLMS then refuses a non-zero value)
        eta = self.eta if self.eta is not None else (cfg.default_eta if sampler == "ddim" else 0.0)
        if self.noise_device not in (None, *NOISE_DEVICES):
            raise UsageError(f"--noise-device must be auto or cpu, got {self.noise_device!r}")
        check_sampler(sampler, eta)
        return SamplerSettings(sampler, steps,
                               cfg.default_guidance if self.guidance_scale is None else self.guidance_scale,
                               eta, schedule == "karras", None if self.noise_device == "auto" else self.noise_device,
                               schedule=schedule, resolved_for=cfg)

    def unprompted(self, cfg) -> "SamplerSettings":
        """These settings for a job without a prompt: the model's steps and schedule for that case
        (`cfg.default_steps_unprompted`, e.g. one step on the trailing schedule, the posterior mean, for the embedded
        inpaint model) when it has them and the user chose neither steps nor a schedule; else unchanged."""
        if self.resolved_for is not None or self.steps is not None or not cfg.default_steps_unprompted:
            return self
        if self._sampler_and_schedule()[1] is not None:
            return self
        return replace(self, steps=cfg.default_steps_unprompted, schedule=cfg.default_schedule_unprompted or None)

    def _sampler_and_schedule(self):
        """The canonical sampler and the explicit schedule: --schedule, --karras or the display name's, which must
        agree (None when none is asked for: the sampler's default)."""
        sampler, named = parse_sampler(self.sampler)
        asked = {s for s in (self.schedule, named, "karras" if self.karras else None) if s is not None}
        if len(asked) > 1:
            raise UsageError(f"conflicting schedules: {', '.join(sorted(asked))}")
        schedule = asked.pop() if asked else None
        if schedule is not None and schedule not in SCHEDULE_LABELS:
            raise UsageError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULE_LABELS)}")
        return sampler, schedule


__all__ = ["SamplerSettings", "NOISE_DEVICES"]
