"""sample: p(z) and p(z | class) — the paper's unconditional (CelebA-HQ, FFHQ, LSUN) and class-conditional ImageNet
LDMs (LDM §4.1, §4.3; MODELS.md §2 rows cin256 … lsun_churches256, §6.3, §10.1).

Class-conditional models embed the class id with their `ClassEmbedder` into one cross-attention token
(`get_learned_conditioning(ids)` → c_crossattn [1, 1, 512]); unconditional ones take no condition at all (εθ(z_t, t)).
cin256-v2 was trained with an extra, unconditional class (id n_classes − 1 = 1000): classifier-free guidance takes
that class as the unconditional input, as the reference notebook does (scale 3.0, MODELS.md §6.3, §10.1). cin256 (v1)
and the unconditional models have no such input, so a guidance scale other than 1 is refused for them.

Classes: an id, or a name (case-insensitive) from the model's config labels, else the ImageNet names
(ldmcli/data/imagenet.py) for a 1000-class embedding (1001 with the null class). `unconditional` names the null
class. A class model given no class is refused rather than sampled unconditionally: an unset shell variable should
not silently turn into unconditional images; `--class unconditional` asks for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from ldmcli.data import label_id, normalise_name
from ldmcli.data.imagenet import IMAGENET_CLASSES, NO_IMAGENET_NAMES, imagenet_names
from ldmcli.errors import UsageError
from ldmcli.models.config import ClassEmbedderConfig
from ldmcli.sampling.pipeline import decode, sample_latents
from ldmcli.sampling.settings import SamplerSettings
from ldmcli.tasks.geometry import check_size

UNCONDITIONAL = "unconditional"   # the name of the null class (cin256-v2's id 1000)
Label = Union[int, str, None]


@dataclass(frozen=True)
class ClassSpace:
    """What `--class` may name for a class-conditional model.

    count: rows of the class embedding (ids 0 … count − 1, the null class included).
    names: the names of the real classes in id order; () when unknown (ids only).
    null: the unconditional class used for guidance, or None (no guidance possible).
    why_no_names: why `names` is empty, for messages.
    """
    count: int
    names: Tuple[str, ...]
    null: Optional[int]
    why_no_names: str = ""


def class_space(model) -> Optional[ClassSpace]:
    """The class space of a class-conditional model, None for an unconditional one; a UsageError for any other
    model. Real classes: the config's labels when it has them, else ImageNet's 1000 for a 1000- or 1001-row
    embedding; one more row than real classes is the null class."""
    cfg = model.cfg
    cs = cfg.cond_stage
    if cs is None and cfg.conditioning_key is None:
        return None
    if not isinstance(cs, ClassEmbedderConfig):
        raise UsageError(f"{cfg.name} is a {cfg.task} model, not a class-conditional or unconditional one "
                         f"(use ldm {cfg.task})")
    why = ""
    if cfg.labels:
        names, real = tuple(cfg.labels), len(cfg.labels)
    elif cs.n_classes in (IMAGENET_CLASSES, IMAGENET_CLASSES + 1):
        names, real = imagenet_names(), IMAGENET_CLASSES
        why = "" if names else NO_IMAGENET_NAMES
    else:
        names, real, why = (), cs.n_classes, f"{cfg.name}'s config names no classes"
    null = cs.n_classes - 1 if cs.n_classes == real + 1 else None
    return ClassSpace(cs.n_classes, names, null, why)


def resolve_class(model, label: Label) -> Optional[int]:
    """The class id of `label` (an id, a string of digits, a name or "unconditional"); None for an unconditional
    model. A missing class for a class model, or a class for an unconditional one, is a UsageError."""
    space = class_space(model)
    name = model.cfg.name
    if space is None:
        if label is not None:
            raise UsageError(f"{name} is an unconditional model: it takes no --class")
        return None
    if label is None:
        extra = f", or {UNCONDITIONAL} for its null class" if space.null is not None else ""
        raise UsageError(f"{name} is class-conditional: give --class (an id 0-{space.count - 1} or a name, see "
                         f"--list-labels{extra})")
    if isinstance(label, str) and normalise_name(label) == UNCONDITIONAL:
        if space.null is None:
            raise UsageError(f"{name} has no unconditional class; give a class id or name")
        return space.null
    return label_id(label, space.names, space.count, "--class", space.why_no_names)


def class_name(model, class_id: int) -> str:
    """The name of a class id ("" when names are unknown)."""
    space = class_space(model)
    if space is None:
        return ""
    if class_id == space.null:
        return UNCONDITIONAL
    return space.names[class_id] if class_id < len(space.names) else ""


def class_record(model, label: Label) -> Dict[str, object]:
    """The image record's class fields ({} for an unconditional model): the id and name the label resolved to."""
    class_id = resolve_class(model, label)
    return {} if class_id is None else {"class_id": class_id, "class_name": class_name(model, class_id)}


def list_labels(model) -> List[str]:
    """`--list-labels`: the class names in id order, then "unconditional" for the null class when there is one."""
    space = class_space(model)
    if space is None:
        raise UsageError(f"{model.cfg.name} is an unconditional model: it has no class labels")
    if not space.names:
        raise UsageError(f"{model.cfg.name}: no class names to list: {space.why_no_names}; class ids "
                         f"0-{space.count - 1} still work")
    return list(space.names) + ([UNCONDITIONAL] if space.null is not None else [])


def class_condition(model, class_id: Optional[int], guided: bool):
    """(cond, uncond) of `sample_latents`: the class token as c_crossattn and, with guidance, the null class's token
    (MODELS.md §6.3, §9.5); ({}, None) for an unconditional model. A guided run without a null class is refused."""
    space = class_space(model)
    if guided and (space is None or space.null is None):
        what = "is unconditional: there is nothing to guide" if space is None else \
            "has no unconditional class for classifier-free guidance"
        raise UsageError(f"{model.cfg.name} {what}; leave --scale at 1")
    if space is None:
        return {}, None
    device = model.device
    with torch.inference_mode():
        context = model.get_learned_conditioning(torch.tensor([class_id], device=device))     # [1, 1, embed_dim]
        uncond = None
        if guided:
            uncond = {"c_crossattn": [model.get_learned_conditioning(torch.tensor([space.null], device=device))]}
    return {"c_crossattn": [context]}, uncond


def sample(model, label: Label = None, *, seeds: List[int], height: Optional[int] = None,
           width: Optional[int] = None, settings: SamplerSettings = SamplerSettings(),
           callback: Optional[Callable] = None):
    """One image per seed of class `label` (None for an unconditional model). height/width: the output size
    (default the model's native size). Returns a list of PIL images."""
    class_id = resolve_class(model, label)
    guided = settings.resolved(model.cfg).guidance_scale != 1
    cond, uncond = class_condition(model, class_id, guided)
    height = height or model.cfg.image_size
    width = width or model.cfg.image_size
    check_size(model, height, width)
    f = model.cfg.first_stage.downsample_factor
    shape = (model.cfg.latent_channels, height // f, width // f)
    z = sample_latents(model, cond, uncond, shape, seeds, settings, callback=callback)
    return decode(model, z)


__all__ = ["UNCONDITIONAL", "ClassSpace", "class_space", "resolve_class", "class_name", "class_record",
           "class_condition", "list_labels", "sample"]
