"""Tiny models with the real key layouts, random weights, for fast end-to-end and parity tests."""
from __future__ import annotations

import math

import torch

from ldmcli.models import config as C

TINY_VAE = C.AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch=32, ch_mult=(1, 2), resolution=32)
TINY_VQ = C.AutoencoderConfig(kind="vq", embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2), resolution=32,
                              double_z=False, n_embed=64)
TINY_UNET = C.UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
                         attention_resolutions=(1, 2), num_heads=4, context_dim=32)
TINY_CLIP = C.CLIPTextConfig(width=32, layers=2, heads=4, mlp_dim=64)
TINY_OPENCLIP = C.OpenCLIPTextConfig(width=32, layers=3, heads=4, mlp_dim=64)

SD1_TINY = C.ModelConfig(name="tiny-sd1", task="txt2img", unet=TINY_UNET, first_stage=TINY_VAE,
                         cond_stage=TINY_CLIP, latent_size=8, default_steps=4)
SD2_TINY = C.ModelConfig(name="tiny-sd2", task="txt2img",
                         unet=C.UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
                                           attention_resolutions=(1, 2), num_heads=-1, num_head_channels=8,
                                           context_dim=32, use_linear_in_transformer=True),
                         first_stage=TINY_VAE, cond_stage=TINY_OPENCLIP, parameterization="v", latent_size=8,
                         default_steps=4, default_guidance=9.0)
# `ldm sample` (tests/test_sample.py): a cin256-v2-like class model (VQ first stage, the class id as one cross-attention
# token, 1001 classes = ImageNet's 1000 + the null class) and a celeba-like unconditional one (ADM attention, no context)
_VQ_LDM = dict(first_stage=TINY_VQ, linear_start=0.0015, linear_end=0.0195, scale_factor=1.0, latent_size=8,
               latent_channels=3, default_steps=4, default_eta=1.0)
CIN_TINY = C.ModelConfig(name="tiny-cin", task="class2img",
                         unet=C.UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2),
                                           attention_resolutions=(2,), num_heads=-1, num_head_channels=16,
                                           context_dim=32),
                         cond_stage=C.ClassEmbedderConfig(n_classes=1001, embed_dim=32), conditioning_key="crossattn",
                         default_guidance=3.0, **_VQ_LDM)
UNCOND_TINY = C.ModelConfig(name="tiny-uncond", task="uncond",
                            unet=C.UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2),
                                              attention_resolutions=(2,), num_heads=-1, num_head_channels=16,
                                              use_spatial_transformer=False),
                            cond_stage=None, conditioning_key=None, default_guidance=1.0, **_VQ_LDM)


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Seeded non-trivial weights everywhere (norm scales near 1, biases small, zero-init layers too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_final.weight"))):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=g) * min(std * 4, 1.0 / math.sqrt(fan_in)))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return module


def tiny_model(cfg: C.ModelConfig = SD1_TINY, seed: int = 0):
    from ldmcli.models.ldm import LatentDiffusion
    model = LatentDiffusion(cfg)
    randomize_(model, seed)
    return model.eval().requires_grad_(False)


def compvis_state_dict(model) -> dict:
    """The model's tensors under the CompVis checkpoint prefixes (what a real file holds), plus stray keys
    real files carry (schedule buffers, position_ids)."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd["alphas_cumprod"] = model.alphas_cumprod.float()
    if isinstance(model.cfg.cond_stage, C.CLIPTextConfig):
        sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return sd
