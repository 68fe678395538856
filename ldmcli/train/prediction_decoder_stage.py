"""Stage "superres-decoder": the superres model's decoder fine-tuned on the latents its own UNet hands it.

The embedded superres samples one step from t = T − 1, so the latent it decodes is the UNet's posterior mean, a kind
of latent the photo autoencoder's decoder never saw: it learnt to decode the encoder's. This stage keeps the UNet and
the encoder frozen and fine-tunes the decoder side (post_quant_conv, decoder) with pixel MSE on a pool of its own
(pictures no earlier stage drew): every picture twice, once as the UNet's one-step latent from its ÷4 image, once as
the encoder's latent (the posterior mean), so that multi-step sampling, whose last latents are of the encoder's
kind, keeps a decoder made for them. The UNet is frozen, so each one-step latent is computed once, before training.

`back_projected` (the cpu recipe): the one-step latents' loss is taken on what the default's back-projection keeps of
the error (match_input.kept_error), plus PLAIN_SHARE of the plain error so that a result without --match-input keeps
its colours; the encoder's latents keep plain MSE (multi-step sampling, the autoencoder's own reconstructions).
Measurements: docs/RESULTS.md, "Photographs".
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ldmcli.tasks.match_input import kept_error
from ldmcli.train.data import Pool, mix_seed

STAGE = "superres-decoder"
TASK = "superres"                 # the exported model whose decoder the stage tunes
DECODER_SIDE = ("post_quant_conv.", "decoder.")
PLAIN_SHARE = 0.1                 # back_projected: weight of the plain error beside what the back-projection keeps


class PredictionDecoderObjective(nn.Module):
    """Pixel MSE of the first stage's decode of `batch["latent"]` (model space: scaled) against `batch["image"]`;
    with `back_projected`, on the examples whose `batch["one_step"]` is 1 the MSE of what the back-projection keeps
    of the error plus PLAIN_SHARE of the plain MSE (module docstring).

    cpu_bf16: the decode runs under bfloat16 autocast on the CPU (weights, gradients and optimiser stay float32):
    half the time a step on cores with native bf16, where this stage is otherwise the cpu recipe's slowest per step
    (the decoder's full-resolution convolutions, forward and backward). On CUDA the loop's own autocast applies."""

    def __init__(self, first_stage: nn.Module, scale_factor: float, cpu_bf16: bool = False,
                 back_projected: bool = False):
        super().__init__()
        self.first_stage = first_stage
        self.scale_factor = scale_factor
        self.cpu_bf16 = cpu_bf16
        self.back_projected = back_projected

    def forward(self, batch: dict, generator: torch.Generator, step: int):
        z = batch["latent"] / self.scale_factor
        bf16 = self.cpu_bf16 and z.device.type == "cpu"
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            rec = self.first_stage.decode(z)
        if not self.back_projected:
            loss = F.mse_loss(rec.float(), batch["image"].float())
            return loss, {"loss": loss.detach()}
        error = rec.float() - batch["image"].float()
        one_step = batch["one_step"].float().view(-1, 1, 1, 1)
        squared = error ** 2
        loss = (one_step * (kept_error(error) ** 2 + PLAIN_SHARE * squared) + (1 - one_step) * squared).mean()
        return loss, {"loss": loss.detach(), "mse": squared.mean().detach()}


def freeze_all_but_decoder(first_stage: nn.Module) -> None:
    """Only the decoder side learns: the encoder side, and with it every latent the UNet was trained on, stays."""
    for name, p in first_stage.named_parameters():
        p.requires_grad_(name.startswith(DECODER_SIDE))


@torch.no_grad()
def latent_pool(model, pool: Pool, seed: int, device, chunk: int = 64) -> Pool:
    """The training pool of the stage: `pool`'s images twice, examples 0 … n − 1 with the UNet's latent sampled
    with the model's default settings (its one step) from each image's low-res version (`one_step` 1), n … 2n − 1
    with the encoder's posterior mean (`one_step` 0); latents in model space (scaled). Each sample's noise seed is
    mix(seed, index)."""
    from ldmcli.sampling.pipeline import sample_latents
    from ldmcli.sampling.settings import SamplerSettings
    from ldmcli.tasks.superres import bsr_condition
    settings = SamplerSettings().resolved(model.cfg)
    images, lowres = pool.tensors["image"], pool.tensors["lowres"]
    n = images.shape[0]
    sampled, encoded = [], []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        lr = lowres[start:stop].to(device).float() / 127.5 - 1
        shape = (model.cfg.latent_channels, *lr.shape[-2:])
        seeds = [mix_seed(seed, i) for i in range(start, stop)]
        sampled.append(sample_latents(model, bsr_condition(lr), None, shape, seeds, settings).float().cpu())
        x = images[start:stop].to(device).float() / 127.5 - 1
        encoded.append(model.encode_first_stage(x, sample=False).float().cpu())
    latents = torch.cat(sampled + encoded)
    one_step = torch.cat([torch.ones(n), torch.zeros(n)])
    return Pool({"image": torch.cat([images, images]), "latent": latents, "one_step": one_step})


def tuned_decoder(state: dict) -> dict:
    """The decoder-side tensors of a finished state's first stage (keys relative to the first stage)."""
    module = state["objectives"][STAGE]["module"]
    prefix = "first_stage."
    return {k[len(prefix):]: v for k, v in module.items() if k[len(prefix):].startswith(DECODER_SIDE)}


__all__ = ["STAGE", "TASK", "DECODER_SIDE", "PLAIN_SHARE", "PredictionDecoderObjective", "freeze_all_but_decoder",
           "latent_pool", "tuned_decoder"]
