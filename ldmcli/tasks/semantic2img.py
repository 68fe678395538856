"""semantic2img: p(z | τθ(one-hot segmentation map)) with concat conditioning (LDM §4.3.2; MODELS.md §6.5).

The map's class ids become a one-hot map [1, classes, H, W]; the model's `SpatialRescaler` (two bilinear ×0.5
resizes, then a 1×1 conv, through `get_learned_conditioning`) turns it into a [1, 3, H/4, W/4] map that is
concatenated to the latent at every step. The UNet is convolutional, so a map of any size runs at its full size,
as the paper applies the 256² model to larger maps; with a `tile_size` (latent cells) the denoiser runs on
overlapping tiles instead (sampling/tiling.py) and the result is decoded by tiles. The map is mirror-padded to the
model's multiple and the image cropped back, so the output has the map's size. No guidance (the reference has no
unconditional map).

Class names: `cfg.labels` (embedded defaults), else the shipped COCO-Stuff list (ldmcli/data), which is empty
because MODELS.md does not list the names — then maps and palettes use class ids.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import numpy as np
import torch

from ldmcli.models.config import SpatialRescalerConfig
from ldmcli.data import COCOSTUFF, read_label_file
from ldmcli.errors import UsageError
from ldmcli.io.segmap import check_class_ids, one_hot
from ldmcli.sampling.memory import unet_fits
from ldmcli.sampling.pipeline import Cond, decode, sample_latents
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.geometry import latent_multiple, pad_to_multiple, plan_tiling

NO_NAMES = ("MODELS.md does not list the COCO-Stuff class names of the semantic-synthesis checkpoints "
             "(ldmcli/data/cocostuff_labels.txt is empty)")


def check_semantic_model(cfg) -> SpatialRescalerConfig:
    """The model's map encoder config; a UsageError for a model that is not a semantic-synthesis model."""
    cs = cfg.cond_stage
    if cfg.conditioning_key != "concat" or not isinstance(cs, SpatialRescalerConfig):
        raise UsageError(f"{cfg.name} is a {cfg.task} model, not a semantic-synthesis model "
                         f"(use ldm-semantic-synthesis256 or ldm-semantic-synthesis512)")
    return cs


def class_names(model) -> tuple:
    """The model's class names in id order (possibly empty)."""
    return tuple(model.cfg.labels) or read_label_file(COCOSTUFF)


def list_labels(model) -> List[str]:
    """The class names, in id order (`--list-labels`)."""
    cs = check_semantic_model(model.cfg)
    names = list(class_names(model))
    if not names:
        raise UsageError(f"{model.cfg.name}: no class names to list: {NO_NAMES}; maps use class ids "
                         f"0-{cs.in_channels - 1}")
    return names


def semantic_condition(model, seg: torch.Tensor) -> Cond:
    """c_concat = SpatialRescaler(one-hot(seg)): ids [H, W] → [1, classes, H, W] → [1, out, H·mⁿ, W·mⁿ] (a batch of
    maps [B, H, W], as training gives, → [B, out, H·mⁿ, W·mⁿ])."""
    cs = check_semantic_model(model.cfg)
    x = one_hot(seg, cs.in_channels, dtype=model.dtype, device=model.device)   # {0, 1} is exact in fp16/bf16
    return {"c_concat": [model.get_learned_conditioning(x)]}


def semantic2img(model, segmap: np.ndarray, *, seeds: List[int], settings: SamplerSettings = SamplerSettings(),
                 tile_size: Optional[int] = None, tile_overlap: Optional[int] = None,
                 callback: Optional[Callable] = None):
    """One image of the map's size per seed for `segmap` (int class ids [H, W], checked against the model's class
    count). tile_size / tile_overlap: latent cells; with neither given, the map runs in one pass, or in tiles of the
    model's native latent size when one pass would not fit in memory (the paper's large-image mode either way).
    Returns a list of PIL images."""
    cs = check_semantic_model(model.cfg)
    if settings.resolved(model.cfg).guidance_scale != 1:
        raise UsageError(f"{model.cfg.name} has no unconditional input for guidance; leave --scale at 1")
    seg = np.asarray(segmap)
    if seg.ndim != 2 or seg.size == 0:
        raise UsageError(f"a segmentation map is a non-empty [H, W] array of class ids, got shape {seg.shape}")
    check_class_ids(seg, cs.in_channels)
    height, width = seg.shape
    f = model.cfg.first_stage.downsample_factor
    ids = torch.from_numpy(seg.astype(np.float32))[None, None]            # [1, 1, H, W], ids exact in float32
    ids = pad_to_multiple(ids, f * latent_multiple(model))[0, 0].long()   # mirrored, as images are
    latent_hw = (ids.shape[0] // f, ids.shape[1] // f)
    with torch.inference_mode():
        cond = semantic_condition(model, ids)
    if tuple(cond["c_concat"][0].shape[-2:]) != latent_hw:
        raise UsageError(f"{model.cfg.name}: the map encoder's output {tuple(cond['c_concat'][0].shape[-2:])} does "
                         f"not match the latent {latent_hw} (n_stages/multiplier vs the first stage's factor {f})")
    tiling = None
    if tile_size is not None or tile_overlap is not None or not unet_fits(model, *latent_hw, batch=1):
        tiling = plan_tiling(model, latent_hw, tile_size, tile_overlap)
    shape = (model.cfg.latent_channels, *latent_hw)
    z = sample_latents(model, cond, None, shape, seeds, settings, callback=callback, tiling=tiling)
    return [img.crop((0, 0, width, height)) for img in decode(model, z, tiling)]


__all__ = ["NO_NAMES", "semantic2img", "semantic_condition", "check_semantic_model", "class_names", "list_labels"]
