"""The `LatentDiffusion` container: UNet εθ + first stage (E, D) + condition encoder τθ (LDM paper, Fig. 3).

Attribute names reproduce the checkpoint prefixes (`model.diffusion_model.`, `first_stage_model.`,
`cond_stage_model.`), so a CompVis state dict splits by prefix onto these modules (MODELS.md §7.1).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ldmcli.models.config import ModelConfig
from ldmcli.sampling.schedules import alphas_cumprod_from


class DiffusionWrapper(nn.Module):
    """Holds the UNet under the attribute name the checkpoints use (`model.diffusion_model`)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.diffusion_model = unet


class LatentDiffusion(nn.Module):
    """z = scale·E(x); εθ(z_t, t, τθ(y)); x = D(z/scale) — MODELS.md §3."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        from ldmcli.models.autoencoder import build_first_stage
        from ldmcli.models.encoders import build_cond_stage
        from ldmcli.models.unet import UNetModel

        self.cfg = cfg
        self.model = DiffusionWrapper(UNetModel(cfg.unet))
        self.first_stage_model = build_first_stage(cfg.first_stage)
        if cfg.cond_stage == "first_stage":
            # inpainting_big: the condition encoder IS the autoencoder (`__is_first_stage__`), one module
            self.cond_stage_model = None
        elif isinstance(cfg.cond_stage, str) or cfg.cond_stage is None:
            self.cond_stage_model = None   # identity (bsr_sr) or unconditional
        else:
            self.cond_stage_model = build_cond_stage(cfg.cond_stage)
        self.scale_factor = cfg.scale_factor
        self._alphas_cumprod: Optional[torch.Tensor] = None

    # -- schedule ------------------------------------------------------------------------------------
    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t of the model's "linear" schedule, float64 on CPU (MODELS.md §3.3)."""
        if self._alphas_cumprod is None:
            c = self.cfg
            self._alphas_cumprod = alphas_cumprod_from(c.linear_start, c.linear_end, c.timesteps)
        return self._alphas_cumprod

    @property
    def is_vq(self) -> bool:
        return self.cfg.first_stage.kind == "vq"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- first stage ---------------------------------------------------------------------------------
    def encode_first_stage(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
                           sample: bool = True) -> torch.Tensor:
        """z = scale·E(x). KL: a posterior sample (the reference samples; mode() when sample=False);
        VQ: the pre-quantization latent (VQModelInterface.encode)."""
        fs = self.first_stage_model
        x = x.to(next(fs.parameters()).dtype)
        if self.is_vq:
            h = fs.encode(x)
        else:
            posterior = fs.encode(x)
            h = posterior.sample(generator) if sample else posterior.mode()
        return self.scale_factor * h

    def decode_first_stage(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """x = D(z / scale); VQ models re-quantize the predicted latent first, as the reference does."""
        fs = self.first_stage_model
        z = (z / self.scale_factor).to(next(fs.parameters()).dtype)
        if self.is_vq:
            return fs.decode(z, force_not_quantize=force_not_quantize)
        return fs.decode(z)

    # -- conditioning --------------------------------------------------------------------------------
    def get_learned_conditioning(self, c):
        """τθ(y): text → context tokens, class ids → one token, bbox tokens → context, maps → rescaled maps."""
        enc = self.cond_stage_model
        if self.cfg.cond_stage == "first_stage":
            return self.encode_first_stage(c, sample=False) / self.scale_factor
        if enc is None:
            return c
        if isinstance(c, (list, tuple)) and (len(c) == 0 or isinstance(c[0], str)):
            return enc.encode(list(c))
        return enc(c)

    # -- εθ ------------------------------------------------------------------------------------------
    def apply_model(self, x: torch.Tensor, t: torch.Tensor, c_concat: Optional[Sequence[torch.Tensor]] = None,
                    c_crossattn: Optional[Sequence[torch.Tensor]] = None,
                    y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The UNet call for each `conditioning_key` (MODELS.md §3.1): concat joins channels, crossattn joins tokens."""
        unet = self.model.diffusion_model
        if c_concat:
            x = torch.cat([x, *c_concat], dim=1)
        # one context passes as itself (no copy): the same tensor at every step, whose keys and values the UNet's
        # cross-attention can then keep (attention.context_projections_kept)
        context = (c_crossattn[0] if len(c_crossattn) == 1 else torch.cat(list(c_crossattn), dim=1)) \
            if c_crossattn else None
        dtype = self.dtype
        out = unet(x.to(dtype), t, context=None if context is None else context.to(dtype), y=y)
        return out.float()
