"""Training losses: the first stage's regularised reconstruction loss and the latent diffusion loss L_LDM.

Autoencoder (LDM paper §3.1 and App. G; the reference `LPIPSWithDiscriminator`): reconstruction + small KL +
perceptual + patch-adversarial. No pretrained perceptual network (LPIPS's VGG) is available offline, so the
perceptual term is replaced by a documented substitute that needs no weights:
  rec  = mean |x − x̂|  +  grad_weight · mean over 3 scales (1, ½, ¼, average-pooled) of |∇x − ∇x̂|
where ∇ are the horizontal and vertical finite differences: it rewards sharp, correctly placed edges, which an
L1 loss alone under-weights (the blur that LPIPS penalises shows up as weak gradients); plus mse_weight · MSE,
whose gradient grows with the error, so a missing object outweighs texture noise the autoencoder cannot
reproduce (L1's gradient has the same size on every pixel; docs/RESULTS.md has the measurement).
  KL   = Σ over latent elements of ½(μ² + σ² − 1 − log σ²), per sample, divided by the number of image values
         (3·H·W), so kl_weight has the meaning of the reference's (whose sums are per sample, not per value);
  adv  = −mean D(x̂) (hinge generator loss), D a small PatchGAN discriminator trained with the hinge loss
         mean relu(1 − D(x)) + mean relu(1 + D(x̂)), switched on after a warm-up (disc_start), with a fixed
         weight (the reference's adaptive weight needs the decoder's last-layer gradients; a constant is simpler
         and stable at these sizes).
Diffusion (LDM eq. 2): L_LDM = E ‖ε − εθ(z_t, t, τθ(y))‖², z_t = √ᾱ_t·z_0 + √(1−ᾱ_t)·ε, t uniform.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def kl_per_value(mean: torch.Tensor, logvar: torch.Tensor, values_per_sample: int) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) summed over each sample's latent, averaged over the batch, per image value."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean() / values_per_sample


def _gradients(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def reconstruction_loss(x: torch.Tensor, rec: torch.Tensor, grad_weight: float, scales: int = 3,
                        mse_weight: float = 0.0) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """L1 + grad_weight · multi-scale image-gradient L1 (the perceptual substitute, see the module docstring)
    + mse_weight · mean squared error."""
    l1 = (x - rec).abs().mean()
    terms = []
    a, b = x, rec
    for level in range(scales):
        if level:
            if min(a.shape[-2:]) < 4:    # too small to halve again
                break
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        terms += [(ga - gb).abs().mean() for ga, gb in zip(_gradients(a), _gradients(b))]
    grad = torch.stack(terms).mean()
    metrics = {"l1": l1.detach(), "grad_l1": grad.detach()}
    loss = l1 + grad_weight * grad
    if mse_weight:
        mse = (x - rec).pow(2).mean()
        loss = loss + mse_weight * mse
        metrics["mse"] = mse.detach()
    return loss, metrics


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix's NLayerDiscriminator shape): 4×4 convs, stride 2, 2, 1, 1, LeakyReLU(0.2), one logit per
    overlapping patch. GroupNorm instead of BatchNorm, so batch statistics never couple processes or batches."""

    def __init__(self, in_channels: int = 3, ch: int = 32, n_layers: int = 2):
        super().__init__()
        layers: list = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = ch
        for k in range(1, n_layers + 1):
            stride = 2 if k < n_layers else 1
            layers += [nn.Conv2d(width, 2 * width, 4, stride, 1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2)]
            width *= 2
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def q_sample(z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """z_t = √ᾱ_t·z_0 + √(1−ᾱ_t)·ε (DDPM eq. 4), ᾱ indexed per sample."""
    a = alphas_cumprod[t].to(z0.dtype).view(-1, *([1] * (z0.ndim - 1)))   # [B] -> [B, 1, 1, 1]
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def diffusion_loss(eps: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
    """L_LDM's ‖ε − εθ‖², averaged over elements (the reference's `l2` loss with `simple` weighting)."""
    return F.mse_loss(eps_pred.float(), eps.float())


__all__ = ["kl_per_value", "reconstruction_loss", "PatchDiscriminator", "hinge_discriminator_loss",
           "hinge_generator_loss", "q_sample", "diffusion_loss"]
