"""Frozen dataclass configs: every hyper-parameter of an LDM, documented once.

The field names follow the original YAML configs (`unet_config.params`, `first_stage_config.params`, ...)
so that `yaml_config.py` is a plain translation and `presets.py` reads like the released configs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Tuple, Union


@dataclass(frozen=True)
class UNetConfig:
    """ADM-style UNet of `ldm.modules.diffusionmodules.openaimodel.UNetModel` (MODELS.md §4, §7.2)."""
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: Tuple[int, ...] = (4, 2, 1)  # downsampling factors ds, not pixel sizes
    num_heads: int = 8                  # -1: derive from num_head_channels
    num_head_channels: int = -1         # -1: derive from num_heads
    legacy: bool = True                 # ST heads: d_head = ch // num_heads after the num_head_channels rule
    use_spatial_transformer: bool = True  # False: ADM AttentionBlock (self-attention only)
    transformer_depth: int = 1
    context_dim: Optional[int] = None
    use_linear_in_transformer: bool = False  # SD2: Linear proj_in/out instead of 1x1 conv
    disable_self_attentions: Optional[Tuple[bool, ...]] = None  # per level; x4 upscaler levels 0-2
    resblock_updown: bool = False
    use_scale_shift_norm: bool = False
    num_classes: Optional[int] = None   # label_emb (class id or x4 noise level)
    conv_resample: bool = True


@dataclass(frozen=True)
class AutoencoderConfig:
    """First stage: `AutoencoderKL` (kind="kl") or `VQModelInterface` (kind="vq") (MODELS.md §5, §7.3)."""
    kind: str = "kl"                    # "kl" | "vq"
    embed_dim: int = 4
    z_channels: int = 4
    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: Tuple[int, ...] = ()  # pixel sizes measured from `resolution`
    attn_type: str = "vanilla"          # "vanilla" | "none" (VQ-f4-noattn: no mid attention either)
    attn_pool_side: int = 0             # 0: exact attention (reference); N: keys pooled to ≤ N a side (AttnBlock)
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    double_z: bool = True               # KL: encoder emits mean and logvar
    n_embed: int = 0                    # VQ codebook size

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class TextTransformerConfig:
    """What the CLIP-family text towers share: causal pre-norm transformer over BPE tokens (MODELS.md §6.2)."""
    vocab_size: int = 49408             # BPE vocabulary (token_embedding rows)
    max_length: int = 77                # context length, start and end tokens included
    width: int = 768                    # hidden size = the UNet's context_dim
    layers: int = 12
    heads: int = 12                     # d_head = width / heads
    mlp_dim: int = 3072                 # hidden size of each block's MLP
    layer: str = "last"                 # "last" | "penultimate" (penultimate keeps the final layer norm)


@dataclass(frozen=True)
class CLIPTextConfig(TextTransformerConfig):
    """SD1 `FrozenCLIPEmbedder`: HF CLIPTextModel ViT-L/14 keys, last hidden state (MODELS.md §6.2, §7.5)."""
    activation: str = "quick_gelu"


@dataclass(frozen=True)
class OpenCLIPTextConfig(TextTransformerConfig):
    """SD2 `FrozenOpenCLIPEmbedder` ViT-H/14 text tower, penultimate layer + ln_final (MODELS.md §6.2, §7.6)."""
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    layer: str = "penultimate"


@dataclass(frozen=True)
class BERTConfig:
    """LDM `BERTEmbedder`: x-transformers pre-norm encoder (MODELS.md §6.1, §7.4).

    tokenizer: "wordpiece" (bert-base-uncased vocab file), "none" (caller passes token ids, layout2img),
    or "words" (the embedded default's closed word vocabulary, see ldmcli/tokenizers).
    """
    vocab_size: int = 30522             # WordPiece ids (bert-base-uncased), or layout tokens for layout2img
    max_seq_len: int = 77               # positions (pos_emb rows)
    n_embed: int = 1280                 # model width = the UNet's context_dim
    n_layer: int = 32                   # attention + feed-forward pairs
    heads: int = 8                      # heads × dim_head is the attention's inner width, whatever n_embed
    dim_head: int = 64
    tokenizer: str = "wordpiece"
    vocab: Tuple[str, ...] = ()         # tokenizer "words": the closed vocabulary, specials first (tokenizers/words.py)


@dataclass(frozen=True)
class ClassEmbedderConfig:
    """`ClassEmbedder`: nn.Embedding(n_classes, embed_dim) -> one context token (MODELS.md §6.3)."""
    n_classes: int = 1000
    embed_dim: int = 512


@dataclass(frozen=True)
class SpatialRescalerConfig:
    """`SpatialRescaler`: n_stages bilinear x0.5 resizes then a 1x1 conv (MODELS.md §6.5)."""
    n_stages: int = 2
    method: str = "bilinear"
    multiplier: float = 0.5
    in_channels: int = 182
    out_channels: int = 3
    bias: bool = False


CondStageConfig = Union[CLIPTextConfig, OpenCLIPTextConfig, BERTConfig, ClassEmbedderConfig,
                        SpatialRescalerConfig, str, None]
# str values: "first_stage" (inpainting_big: cond_stage_model is the first stage),
#             "identity" (bsr_sr: the low-res image itself), "noise_augmentation" (x4 upscaler).


@dataclass(frozen=True)
class ModelConfig:
    """A whole `LatentDiffusion`: UNet + first stage + condition encoder + schedule (MODELS.md §2, §3)."""
    name: str
    task: str                           # txt2img | inpaint | superres | layout2img | semantic2img | class2img | uncond
    unet: UNetConfig
    first_stage: AutoencoderConfig
    cond_stage: CondStageConfig = None
    conditioning_key: Optional[str] = "crossattn"  # None|concat|crossattn|hybrid|hybrid-adm
    parameterization: str = "eps"       # "eps" | "v"
    linear_start: float = 0.00085       # β schedule: linspace(√linear_start, √linear_end, timesteps)²
    linear_end: float = 0.012
    timesteps: int = 1000
    scale_factor: float = 0.18215       # latent = first-stage code × scale_factor (unit variance for the UNet)
    latent_size: int = 64               # native latent H=W at the training resolution
    latent_channels: int = 4            # = the first stage's embed_dim
    # x4 upscaler: ImageConcatWithNoiseAugmentation schedule and cap
    noise_aug_linear_start: float = 1e-4
    noise_aug_linear_end: float = 0.02
    max_noise_level: int = 350          # highest --noise-level the low-res input may be given
    # sampling defaults of the reference scripts for this family
    default_steps: int = 50
    default_guidance: float = 7.5       # classifier-free guidance scale; 1.0 means no unconditional pass
    default_eta: float = 0.0            # DDIM η: 0 deterministic, 1 ancestral (DDPM-like)
    default_schedule: str = ""          # the timestep schedule when the user names none ("": the sampler's own)
    default_match_input: bool = False   # superres/inpaint: pixel-space agreement with the input (tasks/match_input)
    default_detail: float = 1.0         # superres with match_input: share of the model's detail (tasks/match_input)
    default_ensemble: int = 1           # superres: views averaged (flips and rotations of the input; tasks/superres)
    # a job without a prompt (inpaint restoring a picture rather than painting something asked for): its own steps
    # and schedule, when the user sets neither (SamplerSettings.unprompted); 0: default_steps for every job
    default_steps_unprompted: int = 0
    default_schedule_unprompted: str = ""
    version: str = ""                   # free-form provenance (embedded defaults record their training run)
    # class / layout label names of the condition (layout2img, semantic2img, class2img); empty: the public
    # label list shipped in ldmcli/data for the family (OpenImages for layout2img, COCO-Stuff for semantic2img)
    labels: Tuple[str, ...] = ()

    @property
    def image_size(self) -> int:
        return self.latent_size * self.first_stage.downsample_factor

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


__all__ = ["UNetConfig", "AutoencoderConfig", "TextTransformerConfig", "CLIPTextConfig", "OpenCLIPTextConfig",
           "BERTConfig", "ClassEmbedderConfig", "SpatialRescalerConfig", "CondStageConfig", "ModelConfig", "field"]
