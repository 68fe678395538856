"""Stage 2: a latent diffusion model εθ (and its τθ) on the frozen autoencoder (LDM eq. 2; MODELS.md §3).

  L_LDM = E_{z0, y, ε, t} ‖ε − εθ(z_t, t, τθ(y))‖²,  z0 = scale·sample(E(x)),  z_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε,
  t uniform in 0…T−1. A config with parameterization "v" (the recipes' choice, see recipes.PARAMETERIZATION)
  regresses v = √ᾱ_t·ε − √(1−ᾱ_t)·z0 instead, as SD 2 does.
- scale: the reference's `scale_by_std` — 1/std of posterior samples of the training latents, measured once
  before the first step (over all processes) and stored in the model config.
- The autoencoder is frozen, so each example's posterior (mean, std) is computed once for the whole pool; a step
  draws a fresh sample from it, which is what encoding the image every step would give.
- Conditions are built by the inference tasks' own builders (`CONDITIONS`; tasks/*.py, MODELS.md §6), on a batch:
    txt2img       c_crossattn = τθ(words tokens of the caption)
    inpaint       c_concat = inpaint.sd_condition: [nearest(hole) at latent size, scale·sample(E(x·(hole < 0.5)))],
                  + text (SD style)
    superres      c_concat = superres.bsr_condition: [low-res image in [−1, 1]] (bsr_sr, cond "identity")
    layout2img    c_crossattn = τθ(92 bbox tokens), the objects in a fresh random order each step
    semantic2img  c_concat = semantic2img.semantic_condition: [SpatialRescaler(one-hot class map)]
  The token sequences are built once for the pool by the tokenizer and ldmcli.io.layout, as the tasks build them.
- Condition dropout: with probability uncond_prob an example's τθ input (c_crossattn) becomes the unconditional one
  the tasks use for classifier-free guidance — the prompt "" (inpaint keeps its c_concat, as SD's unconditional
  branch does), the empty layout (padding + crop tokens). The concat-only tasks (superres, semantic2img) have no τθ
  input to drop: their tasks sample without guidance, as bsr_sr and the semantic-synthesis models do.
- Inpainting holes: a quarter the whole image (SD: "in 25 % mask everything"), a quarter one object's box (world
  data), the rest 1-3 random rectangles of 15-50 % of the side.
- A stage's tail (`Tail`, its `tail_*` settings): in its last steps a share of the examples may draw t from the top
  of the schedule, and their predicted z0, decoded by the frozen first stage, add its pixel MSE to L_LDM (superres:
  a model whose default samples one step from t = T − 1 and is judged in pixels); the loop may draw the tail's
  batches from the world scenes alone (inpaint).
- Initialisation as the reference's `zero_module`s: the UNet's output conv, every ResBlock's last conv and every
  attention `proj_out` start at zero, so the untrained model predicts 0 and the blocks start as identities.
- layout2img's coordinate tokens (id = row·n + column of a 90×90 grid, §6.4) start as 2-D Fourier features of their
  grid point (sin/cos of π·k·x and π·k·y, k = 1…width/4) plus a little noise, instead of independent random
  vectors: neighbouring points start with neighbouring embeddings, so what the model learns for one box corner
  carries over to the 8099 others (with independent vectors each point must be learned from the few hundred times
  it is seen; docs/RESULTS.md, "layout2img"). Class ids (the first
  len(labels) ids; they share ids with the grid's top row, told apart by position in the sequence) and padding
  keep the usual N(0, 1). Same architecture and checkpoint layout: only the starting values differ, and all of
  them are trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ldmcli.models.config import BERTConfig, ModelConfig
from ldmcli.models.ldm import LatentDiffusion
from ldmcli.sampling.guidance import predict_x0
from ldmcli.tasks.inpaint import sd_condition
from ldmcli.tasks.semantic2img import semantic_condition
from ldmcli.tasks.superres import bsr_condition
from ldmcli.train.data import Pool
from ldmcli.train.losses import diffusion_loss, q_sample
from ldmcli.train.recipes import LAYOUT_VOCAB


def build_ldm(cfg: ModelConfig, first_stage: Dict[str, torch.Tensor]) -> LatentDiffusion:
    """A fresh LatentDiffusion (seed the global RNG first) on the trained, frozen autoencoder."""
    model = LatentDiffusion(cfg)
    model.first_stage_model.load_state_dict(first_stage, strict=True)
    model.first_stage_model.requires_grad_(False)
    _reference_init(model.model.diffusion_model)
    if cfg.task == "layout2img":
        coordinate_init_(model.cond_stage_model.transformer.token_emb.weight, len(cfg.labels))
    if isinstance(cfg.cond_stage, BERTConfig):
        # the unused LM head (return_embeddings=True) gets no gradient: frozen, so DDP does not wait for it
        model.cond_stage_model.transformer.to_logits.requires_grad_(False)
    return model


@torch.no_grad()
def coordinate_init_(weight: torch.Tensor, n_classes: int, noise: float = 0.1) -> torch.Tensor:
    """Fourier-feature init of the layout token embedding [V, width] in place (see the module docstring)."""
    from ldmcli.io.layout import sections
    vocab, width = weight.shape
    n = sections(vocab)
    ids = torch.arange(n * n, dtype=torch.float64)
    x, y = (ids % n) / (n - 1), (ids // n) / (n - 1)
    k = torch.arange(1, width // 4 + 1, dtype=torch.float64) * math.pi
    feats = torch.cat([torch.sin(x[:, None] * k), torch.cos(x[:, None] * k),
                       torch.sin(y[:, None] * k), torch.cos(y[:, None] * k)], dim=1) * math.sqrt(2)  # unit RMS
    grid = torch.zeros(n * n, width, dtype=torch.float64)
    grid[:, :feats.shape[1]] = feats
    grid += noise * torch.randn(n * n, width, dtype=torch.float64)
    weight[n_classes:n * n] = grid[n_classes:].to(weight.dtype)
    return weight


@torch.no_grad()
def _reference_init(unet: nn.Module) -> None:
    for name, module in unet.named_modules():
        if name == "out.2" or name.endswith(("out_layers.3", "proj_out")):
            for p in module.parameters():
                p.zero_()


@torch.no_grad()
def encode_pool(model: LatentDiffusion, pool: Pool, device, chunk: int = 256) -> None:
    """Add the posterior of every pool image: z_mean, z_std [n, c, h, w] float32 (unscaled)."""
    means, stds = [], []
    fs = model.first_stage_model
    for start in range(0, pool.n_images, chunk):
        x = pool.tensors["image"][start:start + chunk].to(device).float() / 127.5 - 1
        posterior = fs.encode(x)
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    pool.tensors["z_mean"], pool.tensors["z_std"] = torch.cat(means), torch.cat(stds)


@torch.no_grad()
def latent_scale(pool: Pool, seed: int, dist, n: int = 1024) -> float:
    """scale_by_std: 1/std of posterior samples of (up to) the first n pool examples, pooled over processes."""
    g = torch.Generator().manual_seed(seed)
    mean, std = pool.tensors["z_mean"][:n], pool.tensors["z_std"][:n]
    z = (mean + std * torch.randn(mean.shape, generator=g)).double()
    stats = torch.stack([z.sum(), z.pow(2).sum(), torch.tensor(float(z.numel()), dtype=torch.float64)])
    if dist.world > 1:
        import torch.distributed as tdist
        stats = stats.to(dist.device)
        tdist.all_reduce(stats)
        stats = stats.cpu()
    total, squares, count = stats.tolist()
    var = (squares - total * total / count) / max(count - 1, 1)
    return float(1.0 / max(var, 1e-12) ** 0.5)


def training_holes(batch: dict, generator: torch.Generator) -> torch.Tensor:
    """Inpainting holes [B, 1, H, W] in {0, 1} (1 = to fill): whole image, an object's box, or rectangles."""
    x = batch["image"]
    b, _, h, w = x.shape
    dev = x.device
    kind = torch.rand(b, generator=generator, device=dev)
    count = torch.randint(1, 4, (b,), generator=generator, device=dev)
    sides = torch.empty(b, 3, 2, device=dev).uniform_(0.15, 0.5, generator=generator)          # (w, h) / side
    corners = torch.rand(b, 3, 2, generator=generator, device=dev) * (1 - sides)              # (x0, y0) / side
    ys = (torch.arange(h, device=dev) + 0.5) / h
    xs = (torch.arange(w, device=dev) + 0.5) / w
    rects = torch.zeros(b, h, w, dtype=torch.bool, device=dev)
    for r in range(3):
        inside_x = (xs >= corners[:, r, 0, None]) & (xs < (corners[:, r, 0] + sides[:, r, 0])[:, None])  # [B, W]
        inside_y = (ys >= corners[:, r, 1, None]) & (ys < (corners[:, r, 1] + sides[:, r, 1])[:, None])  # [B, H]
        rects |= inside_y[:, :, None] & inside_x[:, None, :] & (count > r)[:, None, None]
    hole = rects.float()
    if "object_mask" in batch:
        obj = batch["object_mask"].float()
        use_obj = (kind >= 0.25) & (kind < 0.5) & (obj.flatten(1).amax(1) > 0)   # folders have no objects
        hole = torch.where(use_obj[:, None, None], obj, hole)
    hole = torch.where((kind < 0.25)[:, None, None], torch.ones_like(hole), hole)
    return hole[:, None]


def shuffle_objects(tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Layout tokens [B, 92] with each example's object triples in a random order, padding kept last and the crop
    tokens in place (taming shuffles the annotations before building the sequence, §6.4)."""
    b = tokens.shape[0]
    triples = tokens[:, :-2].reshape(b, -1, 3)                                  # [B, 92] -> [B, 30, 3]
    keys = torch.rand(triples.shape[:2], generator=generator, device=tokens.device)
    keys = keys + 2.0 * (triples[:, :, 0] == LAYOUT_VOCAB - 1)                  # padding sorts after every object
    order = keys.argsort(dim=1)[:, :, None].expand_as(triples)
    return torch.cat([triples.gather(1, order).reshape(b, -1), tokens[:, -2:]], dim=1)


# ---- conditions: the tasks' builders on a training batch ---------------------------------------------------
# The τθ input of a batch (token ids [B, L]) for the tasks that have one; `generator` draws what varies per step.
TOKENS: Dict[str, Callable[[dict, torch.Generator], torch.Tensor]] = {
    "txt2img": lambda batch, generator: batch["tokens"],
    "inpaint": lambda batch, generator: batch["tokens"],
    "layout2img": lambda batch, generator: shuffle_objects(batch["layout"], generator),
}


@torch.no_grad()
def _inpaint_concat(model: LatentDiffusion, batch: dict, generator: torch.Generator) -> dict:
    return sd_condition(model, batch["image"], training_holes(batch, generator), generator=generator)


# c_concat (and any other part that is never dropped) of a batch, per task
CONCAT: Dict[str, Callable[[LatentDiffusion, dict, torch.Generator], dict]] = {
    "inpaint": _inpaint_concat,
    "superres": lambda model, batch, generator: bsr_condition(batch["lowres"]),
    "semantic2img": lambda model, batch, generator: semantic_condition(model, batch["class_map"]),
}


@dataclass(frozen=True)
class Tail:
    """The tail of an LDM stage (recipes.StageSettings.tail_*): from step `start` on, a share of the
    examples draws t from the top `top` steps, and their predicted z0 is decoded into a pixel loss. A tail draws
    those t whatever its share, so its random stream is the same for every share."""
    start: int
    share: float
    top: int
    pixel_weight: float

    @staticmethod
    def of(s) -> Optional["Tail"]:
        """The tail a StageSettings asks for, or None."""
        if s.tail_steps <= 0:
            return None
        return Tail(s.tail_start, s.tail_top_share, s.tail_top, s.pixel_weight)


class DiffusionObjective(nn.Module):
    """L_LDM for one task; `forward(batch, generator, step) -> (loss, metrics)`."""

    def __init__(self, model: LatentDiffusion, uncond_prob: float, uncond_tokens: Optional[torch.Tensor] = None,
                 tail: Optional[Tail] = None):
        super().__init__()
        self.ldm = model
        self.task = model.cfg.task
        self.uncond_prob = uncond_prob
        self.tail = tail
        self.register_buffer("alphas_cumprod", model.alphas_cumprod.float(), persistent=False)
        self.register_buffer("uncond_tokens", uncond_tokens if uncond_tokens is not None else torch.zeros(0),
                             persistent=False)

    def forward(self, batch: dict, generator: torch.Generator, step: int):
        model = self.ldm
        x = batch["image"]
        b, dev = x.shape[0], x.device
        with torch.no_grad():
            if "z_mean" in batch:
                eps_post = torch.randn(batch["z_mean"].shape, generator=generator, device=dev)
                z0 = model.scale_factor * (batch["z_mean"] + batch["z_std"] * eps_post)
            else:
                z0 = model.encode_first_stage(x, generator=generator)
        T = len(self.alphas_cumprod)
        t = torch.randint(0, T, (b,), generator=generator, device=dev)
        tail = self.tail if self.tail is not None and step >= self.tail.start else None   # None before it begins
        if tail is not None:
            top = torch.randint(T - tail.top, T, (b,), generator=generator, device=dev)
            t = torch.where(torch.rand(b, generator=generator, device=dev) < tail.share, top, t)
        eps = torch.randn(z0.shape, generator=generator, device=dev)
        drop = torch.rand(b, generator=generator, device=dev) < self.uncond_prob
        cond = self.condition(batch, drop, generator)
        z_t = q_sample(z0, t, eps, self.alphas_cumprod)
        pred = model.apply_model(z_t, t, **cond)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        v = model.cfg.parameterization == "v"      # a config may ask for v = √ᾱ·ε − √(1−ᾱ)·z0 (SD 2), not ε
        loss = diffusion_loss(a.sqrt() * eps - (1 - a).sqrt() * z0 if v else eps, pred)
        metrics = {"loss": loss.detach()}
        chosen = t >= T - tail.top if tail is not None and tail.pixel_weight > 0 else None
        if chosen is not None and chosen.any():
            z_c, pred_c, a_c = z_t[chosen], pred[chosen], a[chosen]
            z0_pred = (a_c.sqrt() * z_c - (1 - a_c).sqrt() * pred_c if v
                       else predict_x0(pred_c, z_c, t[chosen], self.alphas_cumprod))
            # through the frozen decoder (no weight of it changes, the gradient reaches the UNet)
            pixels = torch.mean((model.decode_first_stage(z0_pred).float() - x[chosen].float()) ** 2)
            loss = loss + tail.pixel_weight * pixels
            metrics = {"loss": loss.detach(), "pixel_mse": pixels.detach()}
        return loss, metrics

    def condition(self, batch: dict, drop: torch.Tensor, generator: torch.Generator) -> dict:
        """c_crossattn / c_concat as the inference task builds them, the τθ input of dropped examples
        unconditional."""
        cond = {}
        if self.task in TOKENS:
            tokens = TOKENS[self.task](batch, generator)
            tokens = torch.where(drop[:, None], self.uncond_tokens.expand_as(tokens), tokens)
            cond["c_crossattn"] = [self.ldm.get_learned_conditioning(tokens)]
        if self.task in CONCAT:
            cond |= CONCAT[self.task](self.ldm, batch, generator)
        return cond


__all__ = ["build_ldm", "encode_pool", "latent_scale", "training_holes", "shuffle_objects", "TOKENS", "CONCAT",
           "Tail", "DiffusionObjective"]
