"""Stage 1: the KL-regularised autoencoder E, D shared by every default model (LDM paper §3.1; MODELS.md §3.2, §5).

Objective per step (losses.py has the terms and why they substitute for LPIPS):
  generator      rec(x, x̂) + kl_weight·KL(q(z|x) ‖ N(0, I)) + [step ≥ disc_start] disc_weight·(−mean D(x̂))
                 with x̂ = D(z), z a posterior sample (the reparameterisation trick)
  discriminator  hinge loss on real x and detached x̂, from step disc_start on
The discriminator is held outside the generator objective's module tree, so DistributedDataParallel of the
autoencoder does not treat its parameters as the autoencoder's; in the generator step it is frozen (gradients
reach x̂, not D's weights). The result is saved as `first_stage_model.*` tensors with the AutoencoderConfig in
the header, which the LDM stages load.

Stage 1b, "decoder" (recipes that have it): the same generator objective with the encoder side frozen, so only the
decoder learns — Stable Diffusion's fine-tuned VAE decoders (ft-EMA, ft-MSE) kept the encoder for the same reason:
the latents, and so every LDM trained on them, do not change. Saved beside the autoencoder as DECODER_FILE.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import nn

from ldmcli.models.config import AutoencoderConfig
from ldmcli.errors import UsageError
from ldmcli.models.autoencoder import AutoencoderKL
from ldmcli.train.losses import (PatchDiscriminator, hinge_discriminator_loss, hinge_generator_loss, kl_per_value,
                                 reconstruction_loss)
from ldmcli.train.loop import Objective, frozen
from ldmcli.train.recipes import StageSettings

AUTOENCODER_FILE = "autoencoder.safetensors"
DECODER_FILE = "decoder.safetensors"        # the same autoencoder after the decoder stage
LOGVAR_INIT = -6.0


class AutoencoderObjective(nn.Module):
    """rec + KL (+ adversarial after the warm-up); leaves the detached reconstruction in the batch for the
    discriminator step that follows in the same training step."""

    def __init__(self, ae: AutoencoderKL, disc: nn.Module, s: StageSettings):
        super().__init__()
        self.ae = ae
        self._disc = (disc,)   # a tuple, not an attribute module: kept out of this module's parameters (see top)
        self.s = s

    def forward(self, batch: dict, generator: torch.Generator, step: int):
        x = batch["image"]
        posterior = self.ae.encode(x)
        eps = torch.randn(posterior.mean.shape, generator=generator, device=x.device)
        rec = self.ae.decode(posterior.mean + posterior.std * eps.to(posterior.mean.dtype))
        loss, metrics = reconstruction_loss(x.float(), rec.float(), self.s.grad_weight,
                                            mse_weight=self.s.mse_weight)
        kl = kl_per_value(posterior.mean.float(), posterior.logvar.float(), x[0].numel())
        loss = loss + self.s.kl_weight * kl
        metrics["kl"] = kl.detach()
        if self.s.disc_weight > 0 and step >= self.s.disc_start:
            with frozen(self._disc[0]) as disc:
                adversarial = hinge_generator_loss(disc(rec).float())
            loss = loss + self.s.disc_weight * adversarial
            metrics["g_adv"] = adversarial.detach()
        batch["reconstruction"] = rec.detach()
        metrics["loss"] = loss.detach()
        return loss, metrics


class DiscriminatorObjective(nn.Module):
    """Hinge loss of the patch discriminator on the step's images and their reconstructions."""

    def __init__(self, disc: nn.Module):
        super().__init__()
        self.disc = disc

    def forward(self, batch: dict, generator: torch.Generator, step: int):
        loss = hinge_discriminator_loss(self.disc(batch["image"]).float(),
                                        self.disc(batch["reconstruction"]).float())
        return loss, {"loss": loss.detach()}


def build_autoencoder(cfg: AutoencoderConfig, s: StageSettings) -> Tuple[AutoencoderKL, List[Objective]]:
    """A freshly initialised autoencoder (seed the global RNG first) and the stage's objectives.

    The posterior starts narrow: quant_conv's log-variance bias is LOGVAR_INIT (σ ≈ 0.05) instead of ≈ 0 (σ ≈ 1),
    so early reconstructions are not drowned in sampling noise (docs/RESULTS.md, "First stage"); the KL term and
    the reconstruction loss move it from there."""
    if cfg.kind != "kl":
        raise UsageError("ldm train builds KL autoencoders only")
    ae = AutoencoderKL(cfg)
    with torch.no_grad():
        ae.quant_conv.bias[cfg.embed_dim:] = LOGVAR_INIT     # channels [mean | logvar] (DiagonalGaussian)
    disc = PatchDiscriminator(cfg.in_channels)
    objectives = [Objective("autoencoder", AutoencoderObjective(ae, disc, s))]
    if s.disc_weight > 0:
        objectives.append(Objective("disc", DiscriminatorObjective(disc), start=s.disc_start))
    return ae, objectives


def build_decoder_stage(cfg: AutoencoderConfig, first_stage: Dict[str, torch.Tensor],
                        s: StageSettings) -> Tuple[AutoencoderKL, List[Objective]]:
    """The trained autoencoder with its encoder side (encoder, quant_conv) frozen, and the objectives that fine-tune
    its decoder side (post_quant_conv, decoder) with the autoencoder stage's loss. Frozen parameters are left out of
    the optimiser, so the encoder, and every latent an LDM is trained on, stays bit for bit what it was."""
    ae = AutoencoderKL(cfg)
    ae.load_state_dict(first_stage, strict=True)
    ae.encoder.requires_grad_(False)
    ae.quant_conv.requires_grad_(False)
    disc = PatchDiscriminator(cfg.in_channels)
    objectives = [Objective("decoder", AutoencoderObjective(ae, disc, s))]
    if s.disc_weight > 0:
        objectives.append(Objective("disc", DiscriminatorObjective(disc), start=s.disc_start))
    return ae, objectives


def save_autoencoder(ae: AutoencoderKL, path, version: str = "") -> Path:
    """float32 `first_stage_model.*` tensors with the AutoencoderConfig (JSON) in the header."""
    from dataclasses import asdict

    from ldmcli.loading.checkpoint import save_safetensors
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {f"first_stage_model.{k}": v.detach().float().cpu() for k, v in ae.state_dict().items()}
    save_safetensors(sd, path, {"ldmcli_autoencoder": json.dumps(asdict(ae.cfg)), "ldmcli_version": version})
    return path


def load_autoencoder(path) -> Tuple[AutoencoderConfig, Dict[str, torch.Tensor]]:
    """(config, `first_stage_model`-relative state dict) of a file written by `save_autoencoder`."""
    from ldmcli.loading.checkpoint import read_checkpoint, split_prefix
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no trained autoencoder at {path}: train it first (ldm train --task autoencoder)")
    sd, meta = read_checkpoint(path)
    if "ldmcli_autoencoder" not in meta:
        raise UsageError(f"{path} was not written by ldm train (no autoencoder config in its header)")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(meta["ldmcli_autoencoder"]).items()}
    return AutoencoderConfig(**fields), split_prefix(sd, "first_stage_model.")


__all__ = ["AUTOENCODER_FILE", "DECODER_FILE", "AutoencoderObjective", "DiscriminatorObjective", "build_autoencoder",
           "build_decoder_stage", "save_autoencoder", "load_autoencoder"]
