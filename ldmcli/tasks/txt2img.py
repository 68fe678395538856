"""txt2img: p(z | τθ(prompt)) with classifier-free guidance against the negative prompt (LDM §4.3.1)."""
from __future__ import annotations

from typing import Callable, List, Optional

from ldmcli.errors import UsageError
from ldmcli.sampling.pipeline import decode, sample_latents
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.geometry import check_size
from ldmcli.prompts import encode as encode_prompts


def txt2img(model, prompt: str, *, negative_prompt: str = "", seeds: List[int], height: Optional[int] = None,
            width: Optional[int] = None, settings: SamplerSettings = SamplerSettings(),
            callback: Optional[Callable] = None):
    """One image per seed for `prompt`. Returns a list of PIL images."""
    if model.cfg.task != "txt2img" or model.cond_stage_model is None:
        raise UsageError(f"{model.cfg.name} is a {model.cfg.task} model, not a text-to-image model")
    height = height or model.cfg.image_size
    width = width or model.cfg.image_size
    check_size(model, height, width)
    f = model.cfg.first_stage.downsample_factor
    context, uncond = encode_prompts(model, prompt, negative_prompt)     # ldmcli/prompts: syntax, chunks, TI
    shape = (model.cfg.latent_channels, height // f, width // f)
    z = sample_latents(model, {"c_crossattn": [context]}, {"c_crossattn": [uncond]}, shape, seeds, settings,
                       callback=callback)
    return decode(model, z)
