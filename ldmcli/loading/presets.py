"""Every public LDM / Stable Diffusion family as a frozen ModelConfig (MODELS.md §2, §4, §5, §6).

Each preset is the released YAML config in dataclass form; `tests/test_presets.py` translates the original YAMLs
with `yaml_config.py` and checks they agree, then builds every preset on the meta device and checks its tensor
names, shapes and parameter counts.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Dict

from ldmcli.models.config import (AutoencoderConfig, BERTConfig, ClassEmbedderConfig, CLIPTextConfig, ModelConfig,
                           OpenCLIPTextConfig, SpatialRescalerConfig, UNetConfig)
from ldmcli.errors import UsageError

# ---- first stages (MODELS.md §5) -----------------------------------------------------------------------------
KL_F8 = AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch_mult=(1, 2, 4, 4))
KL_F4_4CH = AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch_mult=(1, 2, 4))
VQ_F4 = AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, ch_mult=(1, 2, 4), double_z=False, n_embed=8192)
VQ_F4_NOATTN = AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, ch_mult=(1, 2, 4), double_z=False,
                                 n_embed=8192, attn_type="none")
VQ_F8 = AutoencoderConfig(kind="vq", embed_dim=4, z_channels=4, ch_mult=(1, 2, 2, 4), double_z=False,
                          n_embed=16384, attn_resolutions=(32,))

# ---- UNets (MODELS.md §4) ---------------------------------------------------------------------------------------
_SD = dict(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_resolutions=(4, 2, 1),
           use_spatial_transformer=True, transformer_depth=1, legacy=False)
_SD1 = dict(_SD, num_heads=8, num_head_channels=-1, context_dim=768)
_SD2 = dict(_SD, num_heads=-1, num_head_channels=64, context_dim=1024, use_linear_in_transformer=True)
_AB = dict(use_spatial_transformer=False, context_dim=None)          # ADM self-attention blocks, no text

SD_UNET = UNetConfig(in_channels=4, out_channels=4, **_SD1)
SD2_UNET = UNetConfig(in_channels=4, out_channels=4, **_SD2)
FACES_UNET = UNetConfig(in_channels=3, out_channels=3, model_channels=224, channel_mult=(1, 2, 3, 4),
                        attention_resolutions=(8, 4, 2), num_heads=-1, num_head_channels=32, **_AB)

_SD_SCHED = dict(linear_start=0.00085, linear_end=0.012, scale_factor=0.18215, latent_size=64, latent_channels=4)
_VQ_SCHED = dict(linear_start=0.0015, scale_factor=1.0, latent_size=64, latent_channels=3)
_SD_SAMPLING = dict(default_steps=50, default_guidance=7.5, default_eta=0.0)
_LDM_SAMPLING = dict(default_steps=200, default_guidance=1.0, default_eta=0.0)

SD1 = ModelConfig("sd1", "txt2img", SD_UNET, KL_F8, CLIPTextConfig(), "crossattn", **_SD_SCHED, **_SD_SAMPLING)
SD1_INPAINTING = ModelConfig("sd1-inpainting", "inpaint", UNetConfig(in_channels=9, out_channels=4, **_SD1), KL_F8,
                             CLIPTextConfig(), "hybrid", **_SD_SCHED, **_SD_SAMPLING)
SD2_BASE = ModelConfig("sd2-base", "txt2img", SD2_UNET, KL_F8, OpenCLIPTextConfig(), "crossattn",
                       **_SD_SCHED, **_SD_SAMPLING)
SD2_V = SD2_BASE.with_(name="sd2-v", parameterization="v", latent_size=96)
SD2_INPAINTING = ModelConfig("sd2-inpainting", "inpaint", UNetConfig(in_channels=9, out_channels=4, **_SD2), KL_F8,
                             OpenCLIPTextConfig(), "hybrid", **_SD_SCHED, **_SD_SAMPLING)
SD_X4_UPSCALER = ModelConfig(
    "sd-x4-upscaler", "superres",
    UNetConfig(in_channels=7, out_channels=4, model_channels=256, channel_mult=(1, 2, 2, 4),
               attention_resolutions=(2, 4, 8), num_heads=8, num_head_channels=-1, legacy=False,
               use_spatial_transformer=True, context_dim=1024, use_linear_in_transformer=True,
               disable_self_attentions=(True, True, True, False), num_classes=1000),
    KL_F4_4CH, OpenCLIPTextConfig(), "hybrid-adm", parameterization="v", linear_start=1e-4, linear_end=0.02,
    scale_factor=0.08333, latent_size=128, latent_channels=4, noise_aug_linear_start=1e-4,
    noise_aug_linear_end=0.02, max_noise_level=350, default_steps=75, default_guidance=9.0, default_eta=0.0)

LDM_TXT2IMG_F8_LARGE = ModelConfig(
    "ldm-txt2img-f8-large", "txt2img",
    UNetConfig(in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4),
               attention_resolutions=(4, 2, 1), num_heads=8, num_head_channels=-1, legacy=False,
               use_spatial_transformer=True, context_dim=1280),
    KL_F8, BERTConfig(n_embed=1280, n_layer=32), "crossattn", linear_start=0.00085, linear_end=0.012,
    scale_factor=0.18215, latent_size=32, latent_channels=4, default_steps=50, default_guidance=5.0, default_eta=0.0)
LDM_TEXT2IMG256 = ModelConfig(
    "ldm-text2img256", "txt2img",
    UNetConfig(in_channels=3, out_channels=3, model_channels=192, channel_mult=(1, 2, 3, 5),
               attention_resolutions=(8, 4, 2), num_heads=-1, num_head_channels=32, use_spatial_transformer=True,
               context_dim=640),
    VQ_F4, BERTConfig(n_embed=640, n_layer=32), "crossattn", linear_end=0.0195, **_VQ_SCHED,
    default_steps=50, default_guidance=5.0, default_eta=0.0)
LDM_BSR_SR = ModelConfig(
    "ldm-bsr-sr", "superres",
    UNetConfig(in_channels=6, out_channels=3, model_channels=160, channel_mult=(1, 2, 2, 4),
               attention_resolutions=(16, 8), num_heads=-1, num_head_channels=32, **_AB),
    VQ_F4, "identity", "concat", linear_end=0.0155, **_VQ_SCHED,
    default_steps=100, default_guidance=1.0, default_eta=1.0)
LDM_INPAINTING_BIG = ModelConfig(
    "ldm-inpainting-big", "inpaint",
    UNetConfig(in_channels=7, out_channels=3, model_channels=256, channel_mult=(1, 2, 3, 4),
               attention_resolutions=(8, 4, 2), num_heads=8, num_head_channels=-1, resblock_updown=True, **_AB),
    VQ_F4_NOATTN, "first_stage", "concat", linear_end=0.0205, **_VQ_SCHED,
    default_steps=50, default_guidance=1.0, default_eta=0.0)
LDM_LAYOUT2IMG = ModelConfig(
    "ldm-layout2img-openimages256", "layout2img",
    UNetConfig(in_channels=3, out_channels=3, model_channels=128, channel_mult=(1, 2, 3, 4),
               attention_resolutions=(8, 4, 2), num_heads=-1, num_head_channels=32, use_spatial_transformer=True,
               transformer_depth=3, context_dim=512),
    VQ_F4, BERTConfig(n_embed=512, n_layer=16, vocab_size=8192, max_seq_len=92, tokenizer="none"), "crossattn",
    linear_end=0.0205, **_VQ_SCHED, **_LDM_SAMPLING)
_SEMANTIC_UNET = UNetConfig(in_channels=6, out_channels=3, model_channels=128, channel_mult=(1, 4, 8),
                            attention_resolutions=(32, 16, 8), num_heads=8, num_head_channels=-1, **_AB)
LDM_SEMANTIC256 = ModelConfig(
    "ldm-semantic-synthesis256", "semantic2img", _SEMANTIC_UNET, VQ_F4,
    SpatialRescalerConfig(n_stages=2, in_channels=182, out_channels=3), "concat", linear_end=0.0205, **_VQ_SCHED,
    **_LDM_SAMPLING)
LDM_SEMANTIC512 = LDM_SEMANTIC256.with_(name="ldm-semantic-synthesis512", latent_size=128)
LDM_CIN256 = ModelConfig(
    "ldm-cin256", "class2img",
    UNetConfig(in_channels=4, out_channels=4, model_channels=256, channel_mult=(1, 2, 4),
               attention_resolutions=(4, 2, 1), num_heads=-1, num_head_channels=32, use_spatial_transformer=True,
               context_dim=512),
    VQ_F8, ClassEmbedderConfig(n_classes=1000, embed_dim=512), "crossattn", linear_start=0.0015, linear_end=0.0195,
    scale_factor=1.0, latent_size=32, latent_channels=4, default_steps=200, default_guidance=1.0, default_eta=1.0)
LDM_CIN256_V2 = ModelConfig(
    "ldm-cin256-v2", "class2img",
    UNetConfig(in_channels=3, out_channels=3, model_channels=192, channel_mult=(1, 2, 3, 5),
               attention_resolutions=(8, 4, 2), num_heads=1, num_head_channels=-1, use_spatial_transformer=True,
               context_dim=512),
    VQ_F4, ClassEmbedderConfig(n_classes=1001, embed_dim=512), "crossattn", linear_end=0.0195, **_VQ_SCHED,
    default_steps=200, default_guidance=3.0, default_eta=1.0)   # guidance: the reference notebook's (§6.3)
LDM_CELEBA256 = ModelConfig("ldm-celeba256", "uncond", FACES_UNET, VQ_F4, None, None, linear_end=0.0195,
                            **_VQ_SCHED, **_LDM_SAMPLING)
LDM_FFHQ256 = LDM_CELEBA256.with_(name="ldm-ffhq256", default_eta=1.0)
LDM_LSUN_BEDROOMS256 = LDM_CELEBA256.with_(name="ldm-lsun-bedrooms256", default_eta=1.0)
LDM_LSUN_CHURCHES256 = ModelConfig(
    "ldm-lsun-churches256", "uncond",
    UNetConfig(in_channels=4, out_channels=4, model_channels=192, channel_mult=(1, 2, 2, 4, 4),
               attention_resolutions=(1, 2, 4, 8), num_heads=8, num_head_channels=-1, use_scale_shift_norm=True,
               resblock_updown=True, **_AB),
    KL_F8, None, None, linear_start=0.0015, linear_end=0.0155, scale_factor=1.0,  # real value: checkpoint buffer
    latent_size=32, latent_channels=4, default_steps=400, default_guidance=1.0, default_eta=0.0)

PRESETS: Dict[str, ModelConfig] = {c.name: c for c in (
    SD1, SD1_INPAINTING, SD2_BASE, SD2_V, SD2_INPAINTING, SD_X4_UPSCALER, LDM_TXT2IMG_F8_LARGE, LDM_TEXT2IMG256,
    LDM_BSR_SR, LDM_INPAINTING_BIG, LDM_LAYOUT2IMG, LDM_SEMANTIC256, LDM_SEMANTIC512, LDM_CIN256, LDM_CIN256_V2,
    LDM_CELEBA256, LDM_FFHQ256, LDM_LSUN_BEDROOMS256, LDM_LSUN_CHURCHES256)}

PRESET_ALIASES: Dict[str, str] = {
    "sd15": "sd1", "sd1.5": "sd1", "sd-v1-5": "sd1", "sd14": "sd1", "sd1.4": "sd1", "v1-inference": "sd1",
    "sd15-inpainting": "sd1-inpainting", "sd1.5-inpainting": "sd1-inpainting",
    "v1-inpainting-inference": "sd1-inpainting",
    "sd2": "sd2-base", "sd21-base": "sd2-base", "sd2.1-base": "sd2-base", "v2-inference": "sd2-base",
    "sd21": "sd2-v", "sd2.1": "sd2-v", "sd2-768": "sd2-v", "v2-inference-v": "sd2-v",
    "v2-inpainting-inference": "sd2-inpainting", "x4-upscaler": "sd-x4-upscaler", "x4-upscaling": "sd-x4-upscaler",
    "txt2img-f8-large": "ldm-txt2img-f8-large", "text2img-large": "ldm-txt2img-f8-large",
    "bsr_sr": "ldm-bsr-sr", "bsr-sr": "ldm-bsr-sr", "inpainting_big": "ldm-inpainting-big",
    "layout2img": "ldm-layout2img-openimages256", "semantic_synthesis256": "ldm-semantic-synthesis256",
    "semantic_synthesis512": "ldm-semantic-synthesis512", "cin256": "ldm-cin256", "cin256-v2": "ldm-cin256-v2",
}


def preset(name: str) -> ModelConfig:
    """The preset called `name` (or an alias); unknown names get the nearest suggestions."""
    key = name.strip().lower()
    key = PRESET_ALIASES.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    near = difflib.get_close_matches(key, list(PRESETS) + list(PRESET_ALIASES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(PRESETS)}"
    raise UsageError(f"unknown model config {name!r} (not a preset name or .yaml file){hint}")


__all__ = ["PRESETS", "PRESET_ALIASES", "preset"]


# Families whose reference config says `use_ema: False` (v1-inference, every SD 2 inference config, x4-upscaling,
# txt2img-1p4B-eval, cin256-v2; MODELS.md §3.4): the reference runs the plain `model.*` UNet weights even when a
# "full" file holds `model_ema.*` too. sd1-inpainting's config leaves use_ema at True, but the reference inpainting
# demos never enter `ema_scope()`, so it runs the plain weights as well (MODELS.md §11 #16).
PLAIN_WEIGHTS = frozenset({"sd1", "sd1-inpainting", "sd2-base", "sd2-v", "sd2-inpainting", "sd-x4-upscaler",
                           "ldm-txt2img-f8-large", "ldm-cin256-v2"})


def ema_default(cfg: ModelConfig, config=None) -> bool:
    """Whether the reference runs a file's EMA weights for this family: an original YAML's own `use_ema` (default
    True, as `DDPM.__init__`), else False for the PLAIN_WEIGHTS families and True for the others (the LDM task
    models, and ldmcli's own files, whose EMA weights are their release weights)."""
    if isinstance(config, (str, Path)) and str(config).endswith((".yaml", ".yml")):
        from ldmcli.loading.yaml_config import yaml_use_ema
        return yaml_use_ema(Path(config))
    return cfg.name not in PLAIN_WEIGHTS

