"""Translate an original CompVis / Stability YAML config (`model.params`, `unet_config`, ...) into a ModelConfig.

Defaults are those of the reference constructors when the YAML leaves a field out (e.g. `UNetModel(num_heads=-1,
legacy=True)`, `LatentDiffusion(scale_factor=1.0, parameterization="eps")`), so a YAML means exactly what it meant to
the reference code. Unsupported model classes (depth2img, unCLIP) get a one-line error naming them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

from ldmcli.models import config as C
from ldmcli.errors import UsageError

# The released configs are a few KiB; a config file larger than this is a mistake (a checkpoint passed as --config).
MAX_YAML_BYTES = 1 << 20

_UNET_FIELDS = ("in_channels", "out_channels", "model_channels", "num_res_blocks", "num_heads", "num_head_channels",
                "legacy", "use_spatial_transformer", "transformer_depth", "context_dim",
                "use_linear_in_transformer", "resblock_updown", "use_scale_shift_norm", "num_classes",
                "conv_resample")
_UNET_DEFAULTS = dict(num_heads=-1, num_head_channels=-1, legacy=True, use_spatial_transformer=False,
                      transformer_depth=1, context_dim=None, use_linear_in_transformer=False, resblock_updown=False,
                      use_scale_shift_norm=False, num_classes=None, conv_resample=True)
_AE_FIELDS = ("z_channels", "ch", "num_res_blocks", "resolution", "in_channels", "out_ch", "double_z", "attn_type")


def config_from_yaml(source: Union[str, Path], name: str = "") -> C.ModelConfig:
    """`source`: a path to a .yaml file, or the YAML text itself."""
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
        path = Path(source)
        from ldmcli.loading.files import check_regular_file
        check_regular_file(path, "config")
        try:
            if path.stat().st_size > MAX_YAML_BYTES:
                raise UsageError(f"config {path} is larger than {MAX_YAML_BYTES >> 20} MiB: not a model config")
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read config {path}: {e.strerror if isinstance(e, OSError) else e}") from None
        name = name or path.stem
    else:
        text = source
    doc = parse_yaml(text)
    try:
        return config_from_dict(doc, name or "yaml")
    except (KeyError, TypeError, AttributeError, ValueError) as e:   # ValueError: e.g. `image_size: large`
        raise UsageError(f"config is not an LDM/SD model config (missing or malformed {e})") from None


def yaml_use_ema(path: Path) -> bool:
    """The config's `model.params.use_ema` (True when unset, as `DDPM.__init__` defaults it)."""
    doc = parse_yaml(path.read_text())
    params = (doc.get("model") or {}).get("params") or {}
    return bool(params.get("use_ema", True)) if isinstance(params, dict) else True


def parse_yaml(text: str) -> Dict[str, Any]:
    """PyYAML's safe loader (plain data, no tags that build objects); every failure is a one-line UsageError."""
    import yaml
    if len(text) > MAX_YAML_BYTES:
        raise UsageError(f"config text is larger than {MAX_YAML_BYTES >> 20} MiB: not a model config")
    try:
        doc = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, OverflowError) as e:   # ValueError: e.g. a date like 2020-13-45
        raise UsageError(f"config is not valid YAML: {' '.join(str(e).split())[:300]}") from None
    except RecursionError:   # the composer recurses once per nesting level
        raise UsageError("config is not valid YAML: nested too deeply") from None
    if not isinstance(doc, dict):
        what = "nothing" if doc is None else f"a {type(doc).__name__}"
        raise UsageError(f"config is not an LDM/SD model config (the YAML holds {what}, not a mapping)")
    return doc


def config_from_dict(doc: Dict[str, Any], name: str) -> C.ModelConfig:
    model = doc["model"]
    target, p = model.get("target", ""), model.get("params") or {}
    cls = target.rsplit(".", 1)[-1]
    if cls not in ("LatentDiffusion", "LatentInpaintDiffusion", "LatentUpscaleDiffusion"):
        raise UsageError(f"unsupported model class {cls or '(none)'} in config: ldm runs LatentDiffusion, "
                         f"LatentInpaintDiffusion and LatentUpscaleDiffusion models")
    unet = _unet(p["unet_config"]["params"])
    first = _first_stage(p["first_stage_config"])
    cond = _cond_stage(p.get("cond_stage_config"))
    # LatentDiffusion.__init__: absent key -> "concat" if concat_mode (default True) else "crossattn";
    # forced to None for unconditional models (MODELS.md §3.1)
    ckey = p.get("conditioning_key") or ("concat" if p.get("concat_mode", True) else "crossattn")
    if cond is None:
        ckey = None
    aug = ((p.get("low_scale_config") or {}).get("params") or {})
    sched = aug.get("noise_schedule_config") or {}
    cfg = C.ModelConfig(
        name=name, task=_task(cls, cond, ckey), unet=unet, first_stage=first, cond_stage=cond,
        conditioning_key=ckey, parameterization=p.get("parameterization", "eps"),
        linear_start=float(p.get("linear_start", 1e-4)), linear_end=float(p.get("linear_end", 2e-2)),
        timesteps=int(p.get("timesteps", 1000)), scale_factor=float(p.get("scale_factor", 1.0)),
        latent_size=int(p.get("image_size", 64)), latent_channels=int(p.get("channels", 3)),
        noise_aug_linear_start=float(sched.get("linear_start", 1e-4)),
        noise_aug_linear_end=float(sched.get("linear_end", 2e-2)),
        max_noise_level=int(aug.get("max_noise_level", 350)))
    return cfg.with_(**sampling_defaults(cfg))


def sampling_defaults(cfg: C.ModelConfig) -> Dict[str, Any]:
    """The reference scripts' settings per task (MODELS.md §2 README notes, §6)."""
    if cfg.task == "txt2img":
        sd = isinstance(cfg.cond_stage, (C.CLIPTextConfig, C.OpenCLIPTextConfig))
        return dict(default_steps=50, default_guidance=7.5 if sd else 5.0, default_eta=0.0)
    if cfg.task == "inpaint":
        text = cfg.conditioning_key == "hybrid"
        return dict(default_steps=50, default_guidance=7.5 if text else 1.0, default_eta=0.0)
    if cfg.task == "superres":
        x4 = cfg.conditioning_key == "hybrid-adm"
        return dict(default_steps=75 if x4 else 100, default_guidance=9.0 if x4 else 1.0,
                    default_eta=0.0 if x4 else 1.0)
    if cfg.task == "layout2img":
        return dict(default_steps=200, default_guidance=1.0, default_eta=0.0)
    if cfg.task == "class2img":     # cin256-v2 (a null class: 1001 rows) is guided at 3.0 in its notebook
        null = getattr(cfg.cond_stage, "n_classes", 0) == 1001
        return dict(default_steps=200, default_guidance=3.0 if null else 1.0, default_eta=1.0)
    return dict(default_steps=200, default_guidance=1.0, default_eta=0.0)


def _task(cls: str, cond, ckey) -> str:
    if cls == "LatentInpaintDiffusion" or cond == "first_stage":
        return "inpaint"
    if cls == "LatentUpscaleDiffusion" or (cond == "identity" and ckey == "concat"):
        return "superres"
    if cond == "identity":
        raise UsageError("unsupported config: an identity condition through cross-attention is a retrieval-augmented "
                         "model (RDM), which ldm does not run")
    if isinstance(cond, C.SpatialRescalerConfig):
        return "semantic2img"
    if isinstance(cond, C.BERTConfig) and cond.tokenizer == "none":
        return "layout2img"
    if isinstance(cond, C.ClassEmbedderConfig):
        return "class2img"
    if cond is None or ckey is None:
        return "uncond"
    return "txt2img"


def _tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else ((v,) if v is not None else ())


def _unet(p: Dict[str, Any]) -> C.UNetConfig:
    kw = {k: p.get(k, _UNET_DEFAULTS.get(k)) for k in _UNET_FIELDS if k in p or k in _UNET_DEFAULTS}
    if kw.get("num_classes") == "sequential":
        raise UsageError("unsupported UNet option num_classes: sequential (unCLIP models are out of scope)")
    dsa = p.get("disable_self_attentions")
    return C.UNetConfig(**kw, channel_mult=_tuple(p["channel_mult"]),
                        attention_resolutions=_tuple(p["attention_resolutions"]),
                        disable_self_attentions=_tuple(dsa) if dsa is not None else None)


def _first_stage(fs: Dict[str, Any]) -> C.AutoencoderConfig:
    cls = fs["target"].rsplit(".", 1)[-1]
    p = fs.get("params") or {}
    dd = p["ddconfig"]
    kw = {k: dd[k] for k in _AE_FIELDS if k in dd}
    if cls == "AutoencoderKL":
        return C.AutoencoderConfig(kind="kl", embed_dim=int(p["embed_dim"]), ch_mult=_tuple(dd["ch_mult"]),
                                   attn_resolutions=_tuple(dd.get("attn_resolutions")), **kw)
    if cls in ("VQModelInterface", "VQModel"):
        return C.AutoencoderConfig(kind="vq", embed_dim=int(p["embed_dim"]), n_embed=int(p["n_embed"]),
                                   ch_mult=_tuple(dd["ch_mult"]),
                                   attn_resolutions=_tuple(dd.get("attn_resolutions")), **kw)
    raise UsageError(f"unsupported first stage {cls} in config (AutoencoderKL, VQModelInterface)")


def _cond_stage(cs) -> C.CondStageConfig:
    if cs in (None, "__is_unconditional__"):
        return None
    if cs == "__is_first_stage__":
        return "first_stage"
    cls = cs["target"].rsplit(".", 1)[-1]
    p = cs.get("params") or {}
    if cls == "Identity":
        return "identity"
    if cls == "FrozenCLIPEmbedder":
        return C.CLIPTextConfig(max_length=int(p.get("max_length", 77)))
    if cls == "FrozenOpenCLIPEmbedder":
        if p.get("arch", "ViT-H-14") != "ViT-H-14":
            raise UsageError(f"unsupported OpenCLIP text tower {p['arch']} (ViT-H-14 only)")
        return C.OpenCLIPTextConfig(layer=p.get("layer", "last"), max_length=int(p.get("max_length", 77)))
    if cls == "BERTEmbedder":
        return C.BERTConfig(n_embed=int(p["n_embed"]), n_layer=int(p["n_layer"]),
                            vocab_size=int(p.get("vocab_size", 30522)), max_seq_len=int(p.get("max_seq_len", 77)),
                            tokenizer="wordpiece" if p.get("use_tokenizer", True) else "none")
    if cls == "ClassEmbedder":
        return C.ClassEmbedderConfig(n_classes=int(p.get("n_classes", 1000)), embed_dim=int(p["embed_dim"]))
    if cls == "SpatialRescaler":
        return C.SpatialRescalerConfig(n_stages=int(p.get("n_stages", 1)), method=p.get("method", "bilinear"),
                                       multiplier=float(p.get("multiplier", 0.5)),
                                       in_channels=int(p.get("in_channels", 3)),
                                       out_channels=int(p["out_channels"]) if p.get("out_channels") else 3,
                                       bias=bool(p.get("bias", False)))
    raise UsageError(f"unsupported condition encoder {cls} in config")


__all__ = ["config_from_yaml", "config_from_dict", "parse_yaml", "sampling_defaults"]
