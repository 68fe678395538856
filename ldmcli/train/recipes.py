"""The five embedded default models and how they are trained: model configs and hyper-parameters per recipe.

Two recipes. "cpu": 32 px images (8x8 latents), UNet + τθ of 1.1-2.3 M parameters, thousands of steps per
stage, sized for two CPU cores. "gpu": 64 px images (16x16 latents), 1.6-3.5 M parameters, tens of thousands of
steps. Both use a 1.6 M-parameter autoencoder. The five exported files (each carrying its own fp16 copy of the
autoencoder) must stay under 50 MB together (`tests/test_train.py` checks the sum).
Why each setting is what it is, with the measurements: docs/RESULTS.md.

All models share one KL-f4 autoencoder (4 latent channels), trained first. The f4 factor is what the ×4
super-resolution model needs (its latent has the low-res image's size, MODELS.md §6.6). Each model has the
structure of its public counterpart:

  txt2img      crossattn; τθ a small BERTEmbedder with the closed word tokenizer, trained jointly (§6.1)
  inpaint      hybrid, SD-inpainting style: UNet input [z_t, mask, scale·E(masked image)] + text (§6.7)
  superres     concat, bsr_sr style: UNet input [z_t, low-res image], cond "identity" (§6.6)
  layout2img   crossattn on the 92 bbox tokens of §6.4 through a BERTEmbedder (tokenizer "none"), trained jointly
  semantic2img concat of SpatialRescaler(one-hot class map over background + 6 shapes) (§6.5)

Widths: every norm layer of the reference architectures is GroupNorm with 32 groups. At 32 channels each group is
one channel, i.e. an instance norm that erases each channel's mean over the image: a decoder that ends in one
cannot reproduce the colour of a flat background, and a UNet that ends in one can hardly set the per-channel
mean of its prediction, which decides the colours it samples. So the autoencoder has 96 channels (3 per group)
at every level and the UNets 64 (2 per group) (docs/RESULTS.md, "First stage").

Schedule: the LDM "linear" β schedule 0.0015 → 0.0195 (ᾱ_T ≈ 1.4e-4, §3.3), 1000 steps; v-prediction (see
PARAMETERIZATION below for why not ε).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

from ldmcli.models.config import (AutoencoderConfig, BERTConfig, ModelConfig, SpatialRescalerConfig, UNetConfig)
from ldmcli.errors import UsageError
from ldmcli.tasks import TASK_NAMES
from ldmcli.world.vocab import COLOURS, SHAPES

LDM_TASKS = TASK_NAMES
# The stages of `ldm train`, in training order. "decoder" fine-tunes the autoencoder's decoder with its encoder
# frozen (as Stable Diffusion's ft-MSE/ft-EMA decoders do): the latents every LDM trains on are unchanged, so it only
# sharpens what they decode; a recipe without a "decoder" stage skips it.
# "superres-decoder" comes last: it tunes the exported superres model's decoder on its UNet's own one-step latents
# (train/prediction_decoder_stage.py).
TASKS = ("autoencoder", "decoder", "photo-autoencoder") + LDM_TASKS + ("superres-decoder",)
# The defaults that must work on real pictures train on dead-leaves images (world/deadleaves.py) mixed with the
# shapes world, through their own "photo" autoencoder trained on the same mix; the text, layout and semantic
# defaults keep the shapes world and its autoencoder (docs/RESULTS.md, "Photographs").
PHOTO_TASKS = ("superres", "inpaint")
# Stage k's seed is mix(seed, SEED_INDEX[k]); the index is the one each stage got when it was added, so a new stage
# leaves the seeds (and the trained weights) of the others as they were.
SEED_INDEX = {"autoencoder": 0, "txt2img": 1, "inpaint": 2, "superres": 3, "layout2img": 4, "semantic2img": 5,
              "decoder": 6, "photo-autoencoder": 7, "superres-decoder": 8}
RECIPES = ("cpu", "gpu")

# What the UNet predicts. The paper's L_LDM has εθ predict ε; the recipes use SD 2's v = √ᾱ·ε − √(1−ᾱ)·z0 instead
# (ldm_stage trains either, every task samples either): on 8x8 latents of flat-coloured images the ε loss barely
# rewards using the condition, since the colours it decides stay visible in z_t until late t, where ε-errors cost
# almost nothing (docs/RESULTS.md, "Parameterization"). "eps" here gives the paper's objective.
PARAMETERIZATION = "v"

LAYOUT_VOCAB = 8192        # bbox token vocabulary of the public layout2img model (MODELS.md §6.4)
LAYOUT_LENGTH = 92         # 30 objects × 3 tokens + 2 crop tokens
# layout2img labels: every colour-shape pair the shapes world draws ("red circle"), colour-major
WORLD_LABELS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
# semantic2img classes: index 0 background, 1 + SHAPES index for each shape (the world's class maps)
WORLD_CLASSES = ("background",) + SHAPES


@dataclass(frozen=True)
class StageSettings:
    """Optimisation of one stage: AdamW with linear warm-up then cosine decay to `min_lr_ratio`·lr.

    batch_size is per process (torchrun multiplies it by the world size). ema_decay 0 disables EMA.
    uncond_prob: share of training examples whose condition is replaced by the unconditional one (CFG).
    Autoencoder only: kl_weight scales the KL term (relative to the per-pixel reconstruction, as in the
    reference's per-sample sums), grad_weight the image-gradient term, disc_weight the patch-discriminator hinge
    loss, which starts at step disc_start (0 weight: no discriminator).
    """
    steps: int
    batch_size: int
    lr: float
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    uncond_prob: float = 0.1
    log_every: int = 25
    ckpt_every: int = 250
    kl_weight: float = 1e-6
    grad_weight: float = 0.5
    mse_weight: float = 0.0
    disc_weight: float = 0.0
    disc_start: int = 0
    leaves: Optional[int] = None   # photo stages: dead-leaves pictures in the pool (None: Recipe.photo_leaves)
    thin_leaves: float = 0.0       # LDM photo stages: share of the leaves' ellipses and rectangles drawn as strokes
    world: Optional[int] = None    # LDM stages: world scenes in the pool (None: Recipe.ldm_pool_size or pool_size)
    # LDM stages: pixels a side of the pool's pictures (None: Recipe.image_size). A convolutional model (superres)
    # may learn on larger pictures than its recipe's, where fewer latent cells touch the border than at 8x8
    image_size: Optional[int] = None
    # LDM stages: the last `tail_steps` of `steps` run at the schedule's floor learning rate and may change what the
    # stage learns at its end (docs/RESULTS.md). `tail_top_share` of their examples draw t from the top `tail_top`
    # steps, and those examples' predicted z0 is decoded and its pixel MSE (weight `pixel_weight`) added to L_LDM:
    # for a model whose default samples one step from t = T − 1 and is judged in pixels (superres); the other
    # examples keep L_LDM over all t, so every sampler still works. `tail_world_only`: the tail draws only the
    # pool's world scenes, with their captions (inpaint: the text-guided painting that the captionless dead leaves
    # of a photo pool dilute)
    tail_steps: int = 0
    tail_top_share: float = 0.0
    tail_top: int = 100
    pixel_weight: float = 0.0
    tail_world_only: bool = False
    # superres-decoder: the one-step latents' pixel loss on what the default's back-projection keeps of the error
    # (prediction_decoder_stage.py)
    back_projected_loss: bool = False

    @property
    def tail_start(self) -> int:
        """The tail's first step (`steps` for a stage without one)."""
        return self.steps - self.tail_steps


@dataclass(frozen=True)
class Recipe:
    """Everything that differs between the cpu and gpu recipes."""
    name: str
    image_size: int
    pool_size: int                          # examples rendered (world) or loaded (folder) before training
    autoencoder: AutoencoderConfig
    models: Dict[str, ModelConfig]          # the LDM configs, text vocabulary and scale_factor filled in later
    stages: Dict[str, StageSettings] = field(default_factory=dict)
    text_length: int = 40                   # token length of the words tokenizer (world captions need ~30)
    ldm_pool_size: int = 0                  # world examples of the LDM stages (0: pool_size)
    # captions per world scene for the text stages (txt2img, inpaint): 1 keeps each scene's one caption; k > 1 adds
    # k - 1 captions with the attribute dropout drawn again (data.Pool), so bare prompts ("a red circle") are seen
    # on k times as many scenes (docs/RESULTS.md, "txt2img", "inpaint")
    caption_variants: int = 1
    photo_autoencoder: Optional[AutoencoderConfig] = None   # the first stage of PHOTO_TASKS (None: the shared one)
    photo_leaves: int = 0                   # dead-leaves images in the pools of the photo stages


PHOTO_ATTN_POOL_SIDE = 64       # AutoencoderConfig.attn_pool_side of the photo models' first stage


# ---- building blocks ------------------------------------------------------------------------------------------
def _first_stage(ch: int, res_blocks: int, size: int) -> AutoencoderConfig:
    """KL-f4: three levels of `ch` channels (ch_mult 1, 1, 1), 4 latent channels."""
    return AutoencoderConfig(kind="kl", embed_dim=4, z_channels=4, ch=ch, ch_mult=(1, 1, 1),
                             num_res_blocks=res_blocks, attn_resolutions=(), resolution=size)


def _unet(in_ch: int, width: int, mult: Tuple[int, ...], res_blocks: int, attn: Tuple[int, ...],
          context_dim: Optional[int]) -> UNetConfig:
    """Cross-attention (SpatialTransformer, 4 heads) when there is a context, else ADM self-attention with
    32-channel heads."""
    if context_dim is None:
        return UNetConfig(in_channels=in_ch, out_channels=4, model_channels=width, channel_mult=mult,
                          num_res_blocks=res_blocks, attention_resolutions=attn, num_heads=-1,
                          num_head_channels=32, use_spatial_transformer=False, context_dim=None)
    return UNetConfig(in_channels=in_ch, out_channels=4, model_channels=width, channel_mult=mult,
                      num_res_blocks=res_blocks, attention_resolutions=attn, num_heads=4, num_head_channels=-1,
                      legacy=False, use_spatial_transformer=True, transformer_depth=1, context_dim=context_dim)


def _text(width: int, layers: int) -> BERTConfig:
    """The jointly trained text encoder; vocab and vocab_size come from the data (`model_config`)."""
    return BERTConfig(vocab_size=len(_PLACEHOLDER_VOCAB), max_seq_len=40, n_embed=width, n_layer=layers, heads=4,
                      dim_head=width // 4, tokenizer="words", vocab=_PLACEHOLDER_VOCAB)


_PLACEHOLDER_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def _layout_encoder(width: int, layers: int) -> BERTConfig:
    return BERTConfig(vocab_size=LAYOUT_VOCAB, max_seq_len=LAYOUT_LENGTH, n_embed=width, n_layer=layers, heads=4,
                      dim_head=width // 4, tokenizer="none")


@dataclass(frozen=True)
class Sizes:
    """Widths and depths of a recipe's models (see the module docstring for why no width is under 64)."""
    image: int                       # pixels; the latent is image / 4
    ae_width: int                    # autoencoder channels at every level
    ae_res_blocks: int
    width: int                       # UNet model_channels
    mult: Tuple[int, ...]            # UNet channel_mult
    res_blocks: int
    cross_attention: Tuple[int, ...]  # downsampling factors with a SpatialTransformer (text, layout)
    self_attention: Tuple[int, ...]   # downsampling factors with an AttentionBlock (concat models)
    text_width: int
    text_layers: int
    layout_width: int
    layout_layers: int
    photo_ae_res_blocks: int = 0     # the photo autoencoder's (same width): textures need more than flat shapes


def _models(z: Sizes) -> Dict[str, ModelConfig]:
    fs = _first_stage(z.ae_width, z.ae_res_blocks, z.image)
    # photographs come at any size: the attention's keys are pooled to 64 cells a side above that (exact below it;
    # 55 dB from the exact decode at 512 px, docs/RESULTS.md "Photographs"), so a large picture costs its pixels,
    # not their square
    photo = replace(_first_stage(z.ae_width, z.photo_ae_res_blocks, z.image), attn_pool_side=PHOTO_ATTN_POOL_SIDE)
    sched = dict(parameterization=PARAMETERIZATION, linear_start=0.0015, linear_end=0.0195, timesteps=1000,
                 scale_factor=1.0, latent_size=z.image // 4, latent_channels=4, default_steps=50, default_eta=0.0)
    unet = dict(width=z.width, mult=z.mult, res_blocks=z.res_blocks)
    cross = dict(unet, attn=z.cross_attention)
    concat = dict(unet, attn=z.self_attention, context_dim=None)
    text = _text(z.text_width, z.text_layers)
    rescaler = SpatialRescalerConfig(n_stages=2, method="bilinear", multiplier=0.5, in_channels=len(WORLD_CLASSES),
                                     out_channels=4, bias=False)
    return {
        # 35 DDIM steps: the same eval scores as 50, faster; guidance 3: higher scales trade two-object colours for
        # single-object shape (docs/RESULTS.md, "Sampling defaults")
        "txt2img": ModelConfig("ldmcli-default-txt2img", "txt2img", _unet(4, context_dim=z.text_width, **cross),
                               fs, text, "crossattn", default_guidance=3.0, **dict(sched, default_steps=35)),
        # without a prompt (restoring a picture): one step on the trailing schedule, the model's posterior mean, the
        # best hole PSNR on dead-leaves val pictures among 1-3 steps and 50 (docs/RESULTS.md, "Photographs")
        "inpaint": ModelConfig("ldmcli-default-inpaint", "inpaint", _unet(9, context_dim=z.text_width, **cross),
                               photo, text, "hybrid", default_guidance=3.0, default_match_input=True,
                               default_steps_unprompted=1, default_schedule_unprompted="trailing", **sched),
        # no attention: super-resolution is local, and a purely convolutional UNet runs on any image size in one
        # pass, so there are no tiles and no tile seams. One DDIM step on the trailing schedule (from t = 999: the
        # posterior mean; the best PSNR over bicubic on dead-leaves val pictures among 1-20 steps, η 0 or 1); the
        # mean of 8 views (flips, rotations) and 0.9 of its detail over the back-projected bicubic: the best of
        # detail 0.5-1 on the val pictures with the decoder tuned for the back-projection (superres-decoder stage;
        # ldm eval --task photos --split val; docs/RESULTS.md, "Photographs")
        "superres": ModelConfig("ldmcli-default-superres", "superres", _unet(7, **dict(concat, attn=())), photo,
                                "identity", "concat", default_guidance=1.0, default_match_input=True,
                                default_detail=0.9, default_ensemble=8,
                                **dict(sched, default_steps=1, default_eta=0.0, default_schedule="trailing")),
        "layout2img": ModelConfig("ldmcli-default-layout2img", "layout2img",
                                  _unet(4, context_dim=z.layout_width, **cross), fs,
                                  _layout_encoder(z.layout_width, z.layout_layers), "crossattn",
                                  default_guidance=2.0, labels=WORLD_LABELS, **sched),
        "semantic2img": ModelConfig("ldmcli-default-semantic2img", "semantic2img", _unet(8, **concat), fs, rescaler,
                                    "concat", default_guidance=1.0, labels=WORLD_CLASSES, **sched),
    }


# ---- the two recipes ------------------------------------------------------------------------------------------
CPU_SIZES = Sizes(image=32, ae_width=96, ae_res_blocks=0, width=64, mult=(1, 1), res_blocks=1,
                  cross_attention=(1, 2), self_attention=(2,), text_width=64, text_layers=2, layout_width=64,
                  layout_layers=2, photo_ae_res_blocks=1)
GPU_SIZES = Sizes(image=64, ae_width=96, ae_res_blocks=0, width=64, mult=(1, 1, 1), res_blocks=1,
                  cross_attention=(1, 2, 4), self_attention=(2, 4), text_width=128, text_layers=4,
                  layout_width=96, layout_layers=2, photo_ae_res_blocks=1)


def _cpu() -> Recipe:
    # Steps per stage: what two CPU cores train in a couple of hours altogether, most of them for the compositional
    # task (text); the autoencoder's 5·MSE term keeps small objects, which L1 alone lets go; the LDM pool (8192
    # scenes) is large enough that held-out captions are new combinations, not a memorised list (docs/RESULTS.md)
    ldm = StageSettings(steps=5000, batch_size=32, lr=1e-3, warmup=100, ema_decay=0.995, ckpt_every=500)
    models = _models(CPU_SIZES)
    return Recipe("cpu", image_size=CPU_SIZES.image, pool_size=2048, ldm_pool_size=8192, caption_variants=4,
                  autoencoder=models["txt2img"].first_stage, models=models,
                  photo_autoencoder=models["superres"].first_stage, photo_leaves=6144,
                  stages={"autoencoder": StageSettings(steps=4000, batch_size=16, lr=1e-3, warmup=150, ckpt_every=400,
                                                       disc_weight=0.05, disc_start=2750, mse_weight=5.0),
                          # encoder frozen, so the LDMs' latents stay as they are; it sharpens what they decode
                          # (docs/RESULTS.md, "First stage")
                          "decoder": StageSettings(steps=3000, batch_size=32, lr=3e-4, warmup=100, ckpt_every=500,
                                                   mse_weight=5.0),
                          # no discriminator: what superres and inpaint are judged on in photos is PSNR
                          "photo-autoencoder": StageSettings(steps=3000, batch_size=16, lr=1e-3, warmup=150,
                                                             ckpt_every=500, mse_weight=5.0),
                          "txt2img": replace(ldm, steps=18000),
                          # twice the shapes-only steps: about two fifths of its pool is dead leaves, and with 8000
                          # steps the text-guided painting fell to 0.075 objects in the hole (12000: 0.122), then
                          # 2000 on the captioned world scenes alone (0.143; docs/RESULTS.md, "Photographs")
                          "inpaint": replace(ldm, steps=14000, tail_steps=2000, tail_world_only=True),
                          # a pool of 4x the dead leaves: 36000 steps over the shared pool overfit it (training
                          # loss halved, val gain +1.23 -> +0.85 dB; docs/RESULTS.md, "Photographs"); then 4000
                          # steps tuned for the default's one step (StageSettings.tail_*); half the leaves' ellipses
                          # and rectangles are strokes, which with the superres-decoder stage lifted val +0.11 / +0.09
                          "superres": replace(ldm, steps=22000, leaves=24576, tail_steps=4000, tail_top_share=0.5,
                                              tail_top=100, pixel_weight=10.0, thin_leaves=0.5),
                          "layout2img": replace(ldm, steps=6000),
                          "semantic2img": replace(ldm, steps=8000),
                          # the decoder learns the one-step latents it is handed (posterior means, which the
                          # autoencoder never trained on) beside the encoder's, judged on what the back-projection
                          # keeps of their errors; 64 px pictures of its own, a constant learning rate
                          # (docs/RESULTS.md, "Photographs")
                          "superres-decoder": StageSettings(steps=4000, batch_size=8, lr=1e-4, warmup=0,
                                                            min_lr_ratio=1.0, grad_clip=0.0, ckpt_every=500,
                                                            leaves=2048, world=512, image_size=64,
                                                            back_projected_loss=True)})


def _gpu() -> Recipe:
    # 64 px lifts the shape bound of the 32 px first stage (docs/RESULTS.md, "First stage"); the LDM stages need a GPU
    ldm = StageSettings(steps=40000, batch_size=128, lr=4e-4, warmup=1000, weight_decay=0.01, ema_decay=0.9999,
                        log_every=100, ckpt_every=2000)
    models = _models(GPU_SIZES)
    return Recipe("gpu", image_size=GPU_SIZES.image, pool_size=100_000, autoencoder=models["txt2img"].first_stage,
                  models=models, photo_autoencoder=models["superres"].first_stage, photo_leaves=100_000,
                  stages={"autoencoder": StageSettings(steps=30000, batch_size=64, lr=1e-3, warmup=500, log_every=100,
                                                       ckpt_every=2000, disc_weight=0.1, disc_start=15000,
                                                       mse_weight=5.0),
                          "photo-autoencoder": StageSettings(steps=30000, batch_size=64, lr=1e-3, warmup=500,
                                                             log_every=100, ckpt_every=2000, mse_weight=5.0),
                          **{t: ldm for t in LDM_TASKS}})


def recipe(name: str) -> Recipe:
    """The recipe called `name` ("cpu" or "gpu")."""
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return _cpu() if name == "cpu" else _gpu()


def takes_text(cfg: ModelConfig) -> bool:
    """Whether the model's τθ is the jointly trained words encoder, whose vocabulary comes from the data."""
    return isinstance(cfg.cond_stage, BERTConfig) and cfg.cond_stage.tokenizer == "words"


def model_config(rec: Recipe, task: str, vocab: Tuple[str, ...] = (), text_length: Optional[int] = None,
                 scale_factor: float = 1.0, version: str = "") -> ModelConfig:
    """The ModelConfig of `task` under `rec`, with the text vocabulary (txt2img, inpaint), the measured latent
    scale factor and the provenance string filled in."""
    if task not in rec.models:
        raise UsageError(f"unknown model task {task!r}; choose one of {', '.join(rec.models)}")
    cfg = rec.models[task]
    cs = cfg.cond_stage
    if takes_text(cfg):
        if not vocab:
            raise UsageError(f"{task} needs the text vocabulary of its training data")
        cs = replace(cs, vocab=tuple(vocab), vocab_size=len(vocab), max_seq_len=text_length or rec.text_length)
    return cfg.with_(cond_stage=cs, scale_factor=float(scale_factor), version=version)


def with_overrides(settings: StageSettings, steps: Optional[int] = None, batch_size: Optional[int] = None,
                   lr: Optional[float] = None) -> StageSettings:
    """The stage settings with the command line's --steps/--batch-size/--lr applied (warm-up and the
    discriminator start keep their share of the run when --steps changes it)."""
    out = settings
    if steps is not None:
        if steps < 1:
            raise UsageError(f"--steps must be at least 1, got {steps}")
        ratio = steps / settings.steps
        out = replace(out, steps=steps, warmup=min(int(settings.warmup * ratio), steps // 2),
                      disc_start=int(settings.disc_start * ratio),
                      tail_steps=min(int(settings.tail_steps * ratio), steps // 2))
    if batch_size is not None:
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        out = replace(out, batch_size=batch_size)
    if lr is not None:
        if not lr > 0:
            raise UsageError(f"--lr must be positive, got {lr}")
        out = replace(out, lr=lr)
    return out


__all__ = ["LDM_TASKS", "TASKS", "PHOTO_TASKS", "RECIPES", "WORLD_LABELS", "WORLD_CLASSES", "LAYOUT_VOCAB",
           "LAYOUT_LENGTH",
           "StageSettings", "Sizes", "Recipe", "CPU_SIZES", "GPU_SIZES", "recipe", "takes_text", "model_config",
           "with_overrides"]
