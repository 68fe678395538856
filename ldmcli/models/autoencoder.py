"""First-stage autoencoders E, D of LDM: `AutoencoderKL` and `VQModelInterface` (MODELS.md §3.2, §5, §7.3).

Both expose `encode(x)` / `decode(z)` in the unscaled latent space; `scale_factor` belongs to the LDM container.
Images are NCHW in [-1, 1]. Module names are the `first_stage_model.*` checkpoint keys.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ldmcli.models.config import AutoencoderConfig
from .autoencoder_blocks import Decoder, Encoder


class DiagonalGaussian:
    """Posterior q(z|x) = N(mean, exp(logvar)) of the KL autoencoder (`DiagonalGaussianDistribution`).

    `parameters` [B, 2·e, h, w] splits into mean and logvar along channels; logvar is clamped to [-30, 20].
    """

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """z = mean + std·ε. ε is drawn in float32 on the generator's device, so a seed gives the same ε in any
        dtype, then moved to the posterior's device and dtype."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
        return self.mean + self.std * eps.to(self.mean.device, self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder: encode → DiagonalGaussian(quant_conv(E(x))); decode → D(post_quant_conv(z))."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if not cfg.double_z:
            raise ValueError("AutoencoderKL needs double_z=True (the encoder emits mean and logvar)")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


class VectorQuantizer(nn.Module):
    """Inference half of taming's `VectorQuantizer2`: replace each latent vector by its nearest codebook entry.

    Distances ‖h‖² + ‖e‖² − 2·h·e as in the reference, computed in float32 (an fp16 argmin can pick a different
    code) and in chunks of positions so that large latents do not materialise a [positions, n_embed] matrix at once.
    """

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def indices(self, h: torch.Tensor) -> torch.Tensor:
        """Codebook index per position: h [B, e, H, W] -> [B, H, W] (int64)."""
        b, e, height, width = h.shape
        flat = h.permute(0, 2, 3, 1).reshape(-1, e).float()  # [B·H·W, e]
        codebook = self.embedding.weight.float()  # [n_embed, e]
        codebook_sq = codebook.pow(2).sum(1)
        rows = max(1, 2 ** 24 // codebook.shape[0])
        idx = [(z.pow(2).sum(1, keepdim=True) + codebook_sq - 2 * z @ codebook.t()).argmin(1)
               for z in flat.split(rows)]
        return torch.cat(idx).reshape(b, height, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, e, H, W] -> the nearest codebook vectors, same shape and dtype."""
        h_q = self.embedding(self.indices(h))  # [B, H, W, e]
        return h_q.permute(0, 3, 1, 2).to(h.dtype).contiguous()


class VQModel(nn.Module):
    """Vector-quantised autoencoder as LDM uses it (`VQModelInterface`).

    encode returns the *pre-quantisation* latent quant_conv(E(x)); decode re-quantises first unless
    `force_not_quantize`, as the reference's `decode_first_stage` does (MODELS.md §3.2, §11 #21).
    """

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.n_embed <= 0:
            raise ValueError("VQModel needs a codebook size n_embed > 0")
        self.cfg = cfg
        # The encoder emits z_channels here whatever double_z says: the VQ YAMLs set it false, the config default
        # (True) is the KL one.
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def quantize_latent(self, h: torch.Tensor) -> torch.Tensor:
        return self.quantize(h)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        if not force_not_quantize:
            h = self.quantize_latent(h)
        return self.decoder(self.post_quant_conv(h))


def build_first_stage(cfg: AutoencoderConfig) -> nn.Module:
    """The first-stage model for `cfg.kind` ("kl" | "vq"); respects an ambient `torch.device("meta")`."""
    if cfg.kind == "kl":
        return AutoencoderKL(cfg)
    if cfg.kind == "vq":
        return VQModel(cfg)
    raise ValueError(f"unknown first-stage kind {cfg.kind!r}; expected 'kl' or 'vq'")


__all__ = ["DiagonalGaussian", "AutoencoderKL", "VectorQuantizer", "VQModel", "build_first_stage"]
