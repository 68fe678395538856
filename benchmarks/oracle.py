"""The peer: diffusers' UNet2DConditionModel / AutoencoderKL holding exactly our tensors.

The CompVis-layout state dict of our model goes through diffusers' own single-file converters, configured from an
"original YAML"-shaped dict synthesised from our ModelConfig — so both sides run the identical architecture and
weights. Test/benchmark code only: ldmcli itself never imports diffusers.
"""
from __future__ import annotations

import dataclasses

from ldmcli.models import config as C


def original_config(cfg: C.ModelConfig) -> dict:
    """Our ModelConfig as the dict an original LDM/SD YAML would load to (the fields the converters read)."""
    u, f = cfg.unet, cfg.first_stage
    unet = {k: v for k, v in dataclasses.asdict(u).items()}
    unet["channel_mult"] = list(u.channel_mult)
    unet["attention_resolutions"] = list(u.attention_resolutions)
    if u.num_heads == -1:
        unet.pop("num_heads")
    if u.disable_self_attentions is None:
        unet.pop("disable_self_attentions")
    else:
        unet["disable_self_attentions"] = list(u.disable_self_attentions)
    if u.num_classes is None:
        unet.pop("num_classes")
    dd = dict(double_z=f.double_z, z_channels=f.z_channels, resolution=f.resolution, in_channels=f.in_channels,
              out_ch=f.out_ch, ch=f.ch, ch_mult=list(f.ch_mult), num_res_blocks=f.num_res_blocks,
              attn_resolutions=list(f.attn_resolutions), dropout=0.0)
    return {"model": {"params": {
        "unet_config": {"params": unet},
        "first_stage_config": {"params": {"embed_dim": f.embed_dim, "ddconfig": dd}},
        "image_size": cfg.latent_size, "channels": cfg.latent_channels, "scale_factor": cfg.scale_factor,
        "parameterization": cfg.parameterization}}}


def diffusers_unet(cfg: C.ModelConfig, sd: dict):
    """A diffusers UNet2DConditionModel loaded strictly with the UNet tensors of a CompVis-layout state dict."""
    import diffusers
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint,
                                                     create_unet_diffusers_config_from_ldm)
    orig = original_config(cfg)
    conf = create_unet_diffusers_config_from_ldm(orig, sd, image_size=cfg.image_size)
    u = cfg.unet
    if not u.use_linear_in_transformer:   # the converter only derives per-level heads for SD2-style configs
        widths = [u.model_channels * m for m in u.channel_mult]
        conf["attention_head_dim"] = [w // u.num_head_channels if u.num_head_channels > 0 else u.num_heads
                                      for w in widths]
    unet = diffusers.UNet2DConditionModel(**conf).eval()
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, unet.config), strict=True)
    return unet


def diffusers_vae(cfg: C.ModelConfig, sd: dict):
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    f = cfg.first_stage
    conf = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * len(f.ch_mult),
                up_block_types=["UpDecoderBlock2D"] * len(f.ch_mult), block_out_channels=[f.ch * m for m in f.ch_mult],
                layers_per_block=f.num_res_blocks, latent_channels=f.z_channels, norm_num_groups=32,
                sample_size=f.resolution)
    vae = diffusers.AutoencoderKL(**conf).eval()
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, conf), strict=True)
    return vae


def ddim_scheduler(cfg: C.ModelConfig):
    """The reference's DDIM: uniform "leading" spacing with offset 1, final ᾱ = ᾱ[0], no clipping."""
    import diffusers
    return diffusers.DDIMScheduler(num_train_timesteps=cfg.timesteps, beta_start=cfg.linear_start,
                                   beta_end=cfg.linear_end, beta_schedule="scaled_linear", clip_sample=False,
                                   set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
                                   prediction_type="epsilon" if cfg.parameterization == "eps" else "v_prediction")
