"""What every task shares: sampler settings, seeded noise → guided sampling → decoding.

A task only builds its condition (`c_concat`, `c_crossattn`, `y`) and calls `generate`; this is the paper's
"one shared latent sampler" (LDM §3.3): encode condition → denoiser → seeded noise → sample → decode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ldmcli.errors import UsageError

Cond = Dict[str, object]   # {"c_concat": [Tensor], "c_crossattn": [Tensor], "y": Tensor}


@dataclass(frozen=True)
class SamplerSettings:
    """The sampling knobs shared by every subcommand; None means "the model family's reference default"."""
    sampler: str = "ddim"
    steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    eta: Optional[float] = None
    karras: bool = False
    noise_device: Optional[str] = None   # "cpu": initial noise identical across devices

    def resolved(self, cfg) -> "SamplerSettings":
        from ldmcli.sampling import SAMPLERS
        if self.sampler not in SAMPLERS:
            raise UsageError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        steps = cfg.default_steps if self.steps is None else self.steps
        if not 1 <= steps <= cfg.timesteps:
            raise UsageError(f"--steps must be between 1 and {cfg.timesteps}, got {steps}")
        # the family's default η is a DDIM setting (e.g. η=1 for the LDM super-resolution helper); other
        # samplers get η only when the user passes one (PLMS then refuses a non-zero value)
        eta = self.eta if self.eta is not None else (cfg.default_eta if self.sampler == "ddim" else 0.0)
        return SamplerSettings(self.sampler, steps,
                               cfg.default_guidance if self.guidance_scale is None else self.guidance_scale,
                               eta, self.karras, self.noise_device)


def repeat_cond(cond: Cond, n: int) -> Cond:
    """Tile a batch-1 condition to n samples (tensors along dim 0, lists element-wise)."""
    def rep(v):
        if isinstance(v, torch.Tensor):
            return v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v
        if isinstance(v, (list, tuple)):
            return [rep(e) for e in v]
        return v
    return {k: rep(v) for k, v in cond.items()}


def sample_latents(model, cond: Cond, uncond: Optional[Cond], shape: Sequence[int], seeds: List[int],
                   settings: SamplerSettings, callback: Optional[Callable] = None,
                   x0_known: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run the shared sampler on εθ with classifier-free guidance; one latent per seed."""
    from ldmcli.guidance import cfg_model, eps_model
    from ldmcli.sampling import initial_noise, sample, seeded_noise

    s = settings.resolved(model.cfg)
    device = model.device
    n = len(seeds)
    cond = repeat_cond(cond, n)
    uncond = repeat_cond(uncond, n) if uncond is not None else None

    def apply(x, t, c):
        return model.apply_model(x, t, **c)

    guided = cfg_model(apply, cond, uncond, s.guidance_scale)
    eps = eps_model(guided, model.cfg.parameterization, model.alphas_cumprod)
    x_T = initial_noise((n, *shape), seeds, device=device, dtype=torch.float32, noise_device=s.noise_device)
    # ancestral noise: a second, independent stream per sample, so a sample never depends on its batch
    noise = seeded_noise([(sd + 0x5EED) % 2**64 for sd in seeds], device=device, dtype=torch.float32)
    with torch.inference_mode():
        return sample(s.sampler, eps, x_T, model.alphas_cumprod, s.steps, eta=s.eta, karras=s.karras,
                      noise=noise, callback=callback, x0_known=x0_known, mask=mask)


def decode(model, z: torch.Tensor):
    """Latents → list of PIL images (clamp((x+1)/2)·255, truncated to uint8 as the reference scripts do)."""
    from ldmcli.images import tensor_to_pil
    with torch.inference_mode():
        x = model.decode_first_stage(z.to(model.device))
    return tensor_to_pil(x.float().cpu())


def check_size(model, height: int, width: int) -> None:
    """Sizes must be multiples of f·2^(levels−1): the first stage's factor times the UNet's down-sampling."""
    m = model.cfg.first_stage.downsample_factor * latent_multiple(model)
    for name, v in (("height", height), ("width", width)):
        if v <= 0 or v % m:
            raise UsageError(f"--{name} must be a positive multiple of {m} for this model, got {v}")


def latent_multiple(model) -> int:
    """Latent sides must be multiples of 2^(levels−1): the UNet halves them that often and joins skips by size."""
    return 2 ** (len(model.cfg.unet.channel_mult) - 1)


def pad_to_multiple(x: torch.Tensor, multiple: int, value: Optional[float] = None) -> torch.Tensor:
    """Pad [B, C, H, W] at the bottom and right up to multiples of `multiple`: mirror the image (reflect) where it
    is large enough, else repeat its edge; a constant `value` instead when given (masks). Callers crop back."""
    import torch.nn.functional as F
    h, w = x.shape[-2:]
    pad = (0, -w % multiple, 0, -h % multiple)   # (left, right, top, bottom)
    if not any(pad):
        return x
    if value is not None:
        return F.pad(x, pad, mode="constant", value=value)
    return F.pad(x, pad, mode="reflect" if pad[1] < w and pad[3] < h else "replicate")


def side_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for a sample's other randomness (posterior sample, noise augmentation), on its own stream:
    drawn from `seed` itself it would repeat the numbers of x_T, which has the same seed and often the same shape."""
    return torch.Generator().manual_seed((int(seed) + stream) % 2**64)


def job_option(job, name: str, default, kind: type):
    """A task option from a batch job's `extra` dict, checked: kind is bool, int or float (an int passes as float)."""
    value = job.extra.get(name, default)
    if value is None or (kind is float and type(value) is int):
        return value if value is None else float(value)
    if type(value) is not kind:
        raise UsageError(f"option {name!r} should be {kind.__name__}, got {value!r}")
    return value
