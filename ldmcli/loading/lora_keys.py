"""The one name mapping LoRA files need: diffusers module names (what kohya/sd-scripts and PEFT files use) onto our
CompVis parameter names.

Built per model from its own modules, so it holds exactly the layers the model has: for every Linear/Conv of the
UNet and of the CLIP text encoder it records the diffusers name and where the weight lives here. A `Target` is a
parameter name plus an optional row slice: OpenCLIP (SD 2) fuses q, k, v into one `in_proj_weight` of 3·width
rows, which diffusers splits into `q_proj`/`k_proj`/`v_proj`.

UNet (MODELS.md §4; N = num_res_blocks, level i of L):
    conv_in                           input_blocks.0.0
    down_blocks.i.resnets.j           input_blocks.(1 + i(N+1) + j).0      (j < N)
    down_blocks.i.attentions.j        input_blocks.(1 + i(N+1) + j).1
    down_blocks.i.downsamplers.0.conv input_blocks.(1 + i(N+1) + N).0.op
    mid_block.resnets.0 / attentions.0 / resnets.1     middle_block.0 / .1 / .2
    up_blocks.i.resnets.j / attentions.j               output_blocks.(i(N+1) + j).0 / .1
    up_blocks.i.upsamplers.0.conv     output_blocks.(i(N+1) + N).k.conv     (k = 1, or 2 after an attention layer)
    time_embedding.linear_1/2, conv_out                time_embed.0/2, out.2
ResBlock parts: conv1 = in_layers.2, time_emb_proj = emb_layers.1, conv2 = out_layers.3,
conv_shortcut = skip_connection; a SpatialTransformer's parts have the same names in both.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

from torch import nn

UNET = "model.diffusion_model."
_RESNET = {"in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.3": "conv2",
           "skip_connection": "conv_shortcut"}
_CLIP_MLP = {"c_fc": "fc1", "c_proj": "fc2"}     # OpenCLIP's MLP names → HF CLIP's


class Target(NamedTuple):
    """Where a diffusers module's weight lives in our model: a parameter, and rows [start, stop) of it or None."""
    param: str
    rows: Optional[Tuple[int, int]] = None


def _unet_name(path: str, n_res: int) -> Optional[str]:
    """The diffusers name of UNet module `path` (relative to diffusion_model), None if diffusers has no LoRA name."""
    head, _, rest = path.partition(".")
    if head == "time_embed":
        return {"0": "time_embedding.linear_1", "2": "time_embedding.linear_2"}.get(rest)
    if head == "out":
        return "conv_out" if rest == "2" else None
    block, _, rest = rest.partition(".")
    slot, _, part = rest.partition(".")
    b, per_level = int(block), n_res + 1
    if head == "input_blocks":
        if b == 0:
            return "conv_in" if slot == "0" and not part else None
        level, j = divmod(b - 1, per_level)
        prefix = f"down_blocks.{level}"
    elif head == "output_blocks":
        level, j = divmod(b, per_level)
        prefix = f"up_blocks.{level}"
    else:
        return None
    if part == "op":
        return f"{prefix}.downsamplers.0.conv"
    if part == "conv":
        return f"{prefix}.upsamplers.0.conv"
    return _part(f"{prefix}.{'resnets' if slot == '0' else 'attentions'}.{j}", part)


def _part(prefix: str, part: str) -> Optional[str]:
    if ".resnets." in prefix:
        return f"{prefix}.{_RESNET[part]}" if part in _RESNET else None
    return f"{prefix}.{part}"


def unet_targets(unet: nn.Module, n_res: int) -> Dict[str, Target]:
    """diffusers UNet module name → Target, for every Linear/Conv of our UNet (`n_res` = num_res_blocks)."""
    out = {}
    for path, module in unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        name = _middle_name(path) if path.startswith("middle_block.") else _unet_name(path, n_res)
        if name is not None:
            out[name] = Target(UNET + path + ".weight")
    return out


def _middle_name(path: str) -> Optional[str]:
    """middle_block.K.part: ResBlock, SpatialTransformer, ResBlock."""
    slot, _, part = path[len("middle_block."):].partition(".")
    prefix = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}[slot]
    return _part(prefix, part)


def text_targets(cond_stage: nn.Module, width: int) -> Dict[str, Target]:
    """diffusers/HF CLIP text-encoder module name → Target (SD 1 CLIP as it is; SD 2 OpenCLIP renamed and with its
    fused in_proj split into q/k/v row slices)."""
    out = {}
    for path, module in cond_stage.named_modules():
        if path.startswith("transformer.text_model.") and isinstance(module, nn.Linear):      # HF CLIP (SD 1)
            out[path[len("transformer."):]] = Target(f"cond_stage_model.{path}.weight")
        elif path.startswith("model.transformer.resblocks.") and path.count(".") == 3:      # OpenCLIP (SD 2)
            n = path.split(".")[3]
            layer, here = f"text_model.encoder.layers.{n}", f"cond_stage_model.{path}"
            for k, qkv in enumerate("qkv"):
                out[f"{layer}.self_attn.{qkv}_proj"] = Target(f"{here}.attn.in_proj_weight",
                                                             (k * width, (k + 1) * width))
            out[f"{layer}.self_attn.out_proj"] = Target(f"{here}.attn.out_proj.weight")
            for ours, theirs in _CLIP_MLP.items():
                out[f"{layer}.mlp.{theirs}"] = Target(f"{here}.mlp.{ours}.weight")
    return out


def lora_targets(model) -> Dict[str, Target]:
    """Every LoRA-able layer of an SD-style model under the names files use: `unet.<diffusers name>` and
    `text_encoder.<diffusers name>` (the PEFT layout); kohya names are these with `_` for `.` (see lora.py)."""
    table = {f"unet.{k}": v for k, v in unet_targets(model.model.diffusion_model,
                                                      model.cfg.unet.num_res_blocks).items()}
    cond = getattr(model, "cond_stage_model", None)
    if cond is not None:
        width = getattr(model.cfg.cond_stage, "width", 0)
        table.update({f"text_encoder.{k}": v for k, v in text_targets(cond, width).items()})
    return table


__all__ = ["Target", "lora_targets", "text_targets", "unet_targets"]
