"""layout2img: p(z | τθ(bounding-box tokens)) (LDM §4.3.1, Fig. 8; MODELS.md §6.4).

The layout becomes the token sequence of `ldmcli.io.layout` (3 tokens per object, padding, 2 crop tokens), the
model's `BERTEmbedder` (tokenizer "none") encodes it into cross-attention context, and the shared sampler does the
rest. The reference used no guidance (200 DDIM steps, η = 0); with a guidance scale other than 1 the unconditional
input is the empty layout (all padding, crop tokens kept), as a third party did (§6.4).

Labels: the names in the model's config (`cfg.labels`, the embedded defaults), else the shipped OpenImages list
(ldmcli/data), which is empty because MODELS.md does not list the checkpoint's categories — then labels are
category numbers.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Optional, Sequence

import torch

from ldmcli.models.config import BERTConfig
from ldmcli.data import OPENIMAGES, label_id, read_label_file
from ldmcli.errors import UsageError
from ldmcli.io.layout import (LayoutBox, layout_tokens, max_objects, normalised_boxes,
                           unconditional_tokens)
from ldmcli.sampling.pipeline import decode, sample_latents
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.geometry import check_size

_NO_NAMES = ("MODELS.md does not list the OpenImages categories of the layout2img checkpoint "
             "(ldmcli/data/openimages_labels.txt is empty)")


def check_layout_model(cfg) -> BERTConfig:
    """The model's token encoder config; a UsageError for a model that is not a layout-to-image model."""
    cs = cfg.cond_stage
    if cfg.conditioning_key != "crossattn" or not isinstance(cs, BERTConfig) or cs.tokenizer != "none":
        raise UsageError(f"{cfg.name} is a {cfg.task} model, not a layout-to-image model "
                         f"(use ldm-layout2img-openimages256)")
    return cs


def list_labels(model) -> List[str]:
    """The class names a layout may use, in category order (`--list-labels`)."""
    check_layout_model(model.cfg)
    names = list(model.cfg.labels) or list(read_label_file(OPENIMAGES))
    if not names:
        raise UsageError(f"{model.cfg.name}: no label names to list: {_NO_NAMES}; give category numbers instead")
    return names


def layout_condition(model, boxes: Sequence[LayoutBox], height: int, width: int) -> torch.Tensor:
    """The token ids [1, L] of a layout: labels resolved to category numbers, boxes to fractions, then the
    sequence of MODELS.md §6.4."""
    cs = check_layout_model(model.cfg)
    limit = max_objects(cs.max_seq_len)
    if not boxes:
        raise UsageError("the layout has no boxes")
    if len(boxes) > limit:
        raise UsageError(f"the layout has {len(boxes)} boxes; {model.cfg.name} takes at most {limit}")
    boxes = [b if b.where else replace(b, where=f"box {i}") for i, b in enumerate(boxes, 1)]   # for messages
    names = tuple(model.cfg.labels) or read_label_file(OPENIMAGES)
    count = len(names) if names else cs.vocab_size - 1     # unnamed: any id below the padding token
    categories = [label_id(b.label, names, count, b.where, _NO_NAMES) for b in boxes]
    fractions = normalised_boxes(boxes, width, height)
    tokens = layout_tokens(list(zip(categories, fractions)), cs.vocab_size, cs.max_seq_len)
    return torch.tensor([tokens], dtype=torch.long)


def layout2img(model, boxes: Sequence[LayoutBox], *, seeds: List[int], height: Optional[int] = None,
               width: Optional[int] = None, settings: SamplerSettings = SamplerSettings(),
               callback: Optional[Callable] = None):
    """One image per seed with the objects of `boxes` in place. height/width: the output size (default the
    model's native size), which pixel boxes are relative to. Returns a list of PIL images."""
    cs = check_layout_model(model.cfg)
    height = height or model.cfg.image_size
    width = width or model.cfg.image_size
    check_size(model, height, width)
    device = model.device
    tokens = layout_condition(model, boxes, height, width).to(device)
    guided = settings.resolved(model.cfg).guidance_scale != 1
    with torch.inference_mode():
        context = model.get_learned_conditioning(tokens)                       # [1, L, n_embed]
        uncond = None
        if guided:
            empty = torch.tensor([unconditional_tokens(cs.vocab_size, cs.max_seq_len)], device=device)
            uncond = {"c_crossattn": [model.get_learned_conditioning(empty)]}
    f = model.cfg.first_stage.downsample_factor
    shape = (model.cfg.latent_channels, height // f, width // f)
    z = sample_latents(model, {"c_crossattn": [context]}, uncond, shape, seeds, settings, callback=callback)
    return decode(model, z)


__all__ = ["layout2img", "layout_condition", "check_layout_model", "list_labels"]
