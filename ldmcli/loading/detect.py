"""Tell a checkpoint's family from its tensor names and shapes (MODELS.md §7.9 item 4) — no YAML needed.

Each preset yields a `Signature` computed from its config; a state dict yields one computed from its tensors; the
family is the preset whose signature matches. Ties the weights cannot break (SD2 768-v vs 512-eps, semantic
256 vs 512) are settled by a documented rule; `--config` and `--prediction` override.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from ldmcli.models import config as C
from ldmcli.errors import CheckpointError

UNET = "model.diffusion_model."


@dataclass(frozen=True)
class Signature:
    unet_in: int
    model_channels: int
    levels: int
    context_dim: Optional[int]
    linear_proj: bool
    num_classes: Optional[int]
    first_stage: Tuple            # (kind, embed_dim, n_embed, levels, has_mid_attn)
    cond: Tuple                   # (kind, size) e.g. ("clip", 768), ("bert", 30522), ("class", 1001)

    def differences(self, other: "Signature") -> list:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def signature_of_config(cfg: C.ModelConfig) -> Signature:
    u, fs, cs = cfg.unet, cfg.first_stage, cfg.cond_stage
    return Signature(
        unet_in=u.in_channels, model_channels=u.model_channels, levels=len(u.channel_mult),
        context_dim=u.context_dim if u.use_spatial_transformer else None,
        linear_proj=bool(u.use_spatial_transformer and u.use_linear_in_transformer),
        num_classes=u.num_classes,
        first_stage=(fs.kind, fs.embed_dim, fs.n_embed if fs.kind == "vq" else 0, len(fs.ch_mult),
                     fs.attn_type != "none"),
        cond=_cond_signature_of_config(cs))


def _cond_signature_of_config(cs) -> Tuple:
    if isinstance(cs, C.CLIPTextConfig):
        return ("clip", cs.width)
    if isinstance(cs, C.OpenCLIPTextConfig):
        return ("openclip", cs.width)
    if isinstance(cs, C.BERTConfig):
        return ("bert", cs.vocab_size)
    if isinstance(cs, C.ClassEmbedderConfig):
        return ("class", cs.n_classes)
    if isinstance(cs, C.SpatialRescalerConfig):
        return ("rescaler", cs.in_channels)
    return ("none", 0)


def signature_of_state_dict(sd: Dict[str, torch.Tensor]) -> Signature:
    conv_in = sd.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        raise CheckpointError(_not_a_full_checkpoint(sd))
    n_input_blocks = len({k.split(".")[3] for k in sd if k.startswith(UNET + "input_blocks.")})
    ctx = next((v.shape[1] for k, v in sd.items() if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), None)
    proj = next((v for k, v in sd.items() if k.startswith(UNET) and k.endswith("proj_in.weight")), None)
    label = sd.get(UNET + "label_emb.weight")
    return Signature(
        unet_in=conv_in.shape[1], model_channels=conv_in.shape[0], levels=n_input_blocks // 3,
        context_dim=ctx, linear_proj=proj is not None and proj.ndim == 2,
        num_classes=None if label is None else label.shape[0],
        first_stage=_first_stage_signature(sd), cond=_cond_signature(sd))


def _first_stage_signature(sd) -> Tuple:
    p = "first_stage_model."
    post = sd.get(p + "post_quant_conv.weight")
    if post is None:
        raise CheckpointError("checkpoint has no first_stage_model.* (autoencoder) tensors: a UNet-only file? "
                              "ldm needs the full LatentDiffusion checkpoint")
    levels = len({k.split(".")[3] for k in sd if k.startswith(p + "decoder.up.")})
    mid_attn = (p + "decoder.mid.attn_1.q.weight") in sd
    emb = sd.get(p + "quantize.embedding.weight")
    if emb is not None:
        return ("vq", emb.shape[1], emb.shape[0], levels, mid_attn)
    return ("kl", post.shape[1], 0, levels, mid_attn)


def _cond_signature(sd) -> Tuple:
    p = "cond_stage_model."
    if p + "transformer.text_model.embeddings.token_embedding.weight" in sd:
        return ("clip", sd[p + "transformer.text_model.embeddings.token_embedding.weight"].shape[1])
    if p + "model.token_embedding.weight" in sd:
        return ("openclip", sd[p + "model.token_embedding.weight"].shape[1])
    if p + "transformer.token_emb.weight" in sd:
        return ("bert", sd[p + "transformer.token_emb.weight"].shape[0])
    if p + "embedding.weight" in sd:
        return ("class", sd[p + "embedding.weight"].shape[0])
    if p + "channel_mapper.weight" in sd:
        return ("rescaler", sd[p + "channel_mapper.weight"].shape[1])
    return ("none", 0)


def _not_a_full_checkpoint(sd) -> str:
    keys = list(sd)
    if any(k.startswith("input_blocks.0.0.") for k in keys):
        return "this is a UNet-only file (keys lack the model.diffusion_model. prefix); pass the full checkpoint"
    if any(k.startswith(("down_blocks.", "unet.", "conv_in.")) for k in keys):
        return "this looks like a diffusers-format file; pass an original CompVis/Stability .ckpt or .safetensors"
    if any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys):
        return "this is an autoencoder-only file (no model.diffusion_model.* UNet tensors)"
    if any("text_model" in k or "transformer.resblocks" in k for k in keys):
        return "this is a text-encoder-only file (no model.diffusion_model.* UNet tensors)"
    return f"not an LDM/Stable Diffusion checkpoint (no {UNET}input_blocks.0.0.weight; first key: {keys[0]!r})"


# ----------------------------------------------------------------------------------------------------
def detect_family(sd, path=None, prediction: Optional[str] = None) -> str:
    """The preset name for a state dict. Raises CheckpointError naming the closest family if none matches."""
    from ldmcli.loading.presets import PRESETS
    sig = signature_of_state_dict(sd)
    matches = [n for n, cfg in PRESETS.items() if signature_of_config(cfg) == sig]
    if not matches:
        best = min(PRESETS, key=lambda n: len(signature_of_config(PRESETS[n]).differences(sig)))
        diff = signature_of_config(PRESETS[best]).differences(sig)
        raise CheckpointError(f"unknown checkpoint family: closest is {best}, which differs in {', '.join(diff)}; "
                              f"pass --config with its original YAML")
    return _break_tie(matches, path, prediction)


def _break_tie(matches, path, prediction) -> str:
    """Rules for families the weights cannot tell apart (documented in the README):
    SD2 txt2img: `--prediction v|eps`, else a sidecar `<ckpt>.yaml` saying `parameterization: "v"`, else a file name
    containing "768" or "-v" means the 768 v-model, else the 512 eps base model. Semantic synthesis: "512" in the
    file name, else in its folder's name, picks the 512 finetune. Unconditional VQ-f4 faces/bedrooms: the file name,
    else its folder's name, else celeba. The folder counts because the official layout keeps these checkpoints as
    `models/ldm/<family>/model.ckpt` (semantic_synthesis512, ffhq256, lsun_beds256, celeba256)."""
    if len(matches) == 1:
        return matches[0]
    name = Path(path).name.lower() if path else ""
    folder = Path(path).parent.name.lower() if path else ""
    if "sd2-v" in matches:
        v = prediction == "v" if prediction else (_sidecar_says_v(path) or bool(re.search(r"768|[-_]v[-_.]", name)))
        return "sd2-v" if v else "sd2-base"
    if "ldm-semantic-synthesis512" in matches:
        hints = [n for n in (name, folder) if re.search(r"256|512", n)]   # the first name that says either
        return "ldm-semantic-synthesis512" if hints and "512" in hints[0] else "ldm-semantic-synthesis256"
    for where in (name, folder):
        for hint, family in (("ffhq", "ldm-ffhq256"), ("bed", "ldm-lsun-bedrooms256"), ("celeb", "ldm-celeba256")):
            if hint in where and family in matches:
                return family
    return sorted(matches)[0]


def _sidecar_says_v(path) -> bool:
    if not path:
        return False
    side = Path(path).with_suffix(".yaml")
    try:
        return bool(re.search(r"parameterization:\s*[\"']?v[\"']?", side.read_text()))
    except OSError:
        return False


def resolve_config(sd, path, metadata: Dict[str, str], config, prediction: Optional[str]) -> C.ModelConfig:
    """--config (preset name, ModelConfig or YAML path) > file header config > detection; then --prediction."""
    if isinstance(config, C.ModelConfig):
        cfg = config
    elif isinstance(config, (str, Path)) and str(config).endswith((".yaml", ".yml")):
        from ldmcli.loading.yaml_config import config_from_yaml
        cfg = config_from_yaml(Path(config))
    elif config:
        from ldmcli.loading.presets import preset
        cfg = preset(str(config))
    elif "ldmcli_config" in metadata:
        cfg = config_from_json(_header_json(metadata["ldmcli_config"]))
    else:
        from ldmcli.loading.presets import preset
        cfg = preset(detect_family(sd, path, prediction))
    if prediction:
        cfg = cfg.with_(parameterization=prediction)
    return cfg


# ----------------------------------------------------------------------------------------------------
# configs <-> JSON (self-describing files)
_COND_TYPES = {t.__name__: t for t in (C.CLIPTextConfig, C.OpenCLIPTextConfig, C.BERTConfig,
                                       C.ClassEmbedderConfig, C.SpatialRescalerConfig)}


def config_to_json(cfg: C.ModelConfig) -> dict:
    d = dataclasses.asdict(cfg)
    cs = cfg.cond_stage
    d["cond_stage"] = {"type": type(cs).__name__, **dataclasses.asdict(cs)} if dataclasses.is_dataclass(cs) else cs
    return d


def _header_json(text: str) -> dict:
    """The `ldmcli_config` header string as a JSON object (CheckpointError otherwise)."""
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:   # JSONDecodeError is a ValueError; so is an over-long integer
        raise CheckpointError(f"the config stored in the checkpoint header is not JSON ({str(e)[:100]})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"the config stored in the checkpoint header is a {type(d).__name__}, not an object")
    return d


def _fits(value, hint) -> bool:
    """Whether a JSON value fits a config field's annotation (JSON lists stand for tuples)."""
    import math
    import typing
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_fits(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if hint is int:   # -1 means "derive" for the head counts; 2^31 is far above any real width
        return type(value) is int and -1 <= value < 2**31
    if hint is float:
        return type(value) in (int, float) and math.isfinite(value)
    simple = {bool: bool, str: str, type(None): type(None)}
    return type(value) is simple[hint] if hint in simple else True   # nested configs: checked by their own fields


def _typed(cls, obj, what: str) -> dict:
    """`obj`'s fields checked against `cls`'s annotations, lists as tuples (CheckpointError naming the field)."""
    import typing
    if not isinstance(obj, dict):
        raise CheckpointError(f"the config stored in the checkpoint header: {what} is not an object")
    hints = typing.get_type_hints(cls)
    for k, v in obj.items():
        if k in hints and not _fits(v, hints[k]):
            raise CheckpointError(f"the config stored in the checkpoint header: {what}.{k} = {str(v)[:40]} is not "
                                  f"a valid {getattr(hints[k], '__name__', hints[k])}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}


def config_from_json(d: dict) -> C.ModelConfig:
    try:
        d = _typed(C.ModelConfig, {k: v for k, v in d.items() if k not in ("unet", "first_stage", "cond_stage")},
                   "the model") | {k: d[k] for k in ("unet", "first_stage", "cond_stage") if k in d}
        d["unet"] = C.UNetConfig(**_typed(C.UNetConfig, d["unet"], "unet"))
        d["first_stage"] = C.AutoencoderConfig(**_typed(C.AutoencoderConfig, d["first_stage"], "first_stage"))
        cs = d.get("cond_stage")
        if isinstance(cs, dict):
            cs = dict(cs)
            kind = _COND_TYPES[cs.pop("type")]
            d["cond_stage"] = kind(**_typed(kind, cs, "cond_stage"))
        elif cs is not None and not isinstance(cs, str):
            raise TypeError(f"cond_stage is a {type(cs).__name__}")
        known = {f.name for f in dataclasses.fields(C.ModelConfig)}
        return C.ModelConfig(**{k: v for k, v in d.items() if k in known})
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"the config stored in the checkpoint header is not readable: {e}") from None


def suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.4)
    return f" (did you mean {', '.join(close)}?)" if close else ""
