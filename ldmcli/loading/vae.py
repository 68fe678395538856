"""`--vae FILE`: a standalone KL first stage that replaces the checkpoint's (A1111's "SD VAE").

Layouts read: the CompVis one of `vae-ft-mse-840000-ema-pruned` (`encoder.down.0.block.0...`), with or without the
`first_stage_model.` prefix, and diffusers' AutoencoderKL (`encoder.down_blocks.0.resnets.0...`, attention as
`to_q/to_k/to_v/to_out.0` or the older `query/key/value/proj_attn`), mapped onto the CompVis names by
`diffusers_to_compvis`, the one rename table of this module. The file is read as checkpoints are (never running
code) and must fit the model's first stage tensor for tensor, else a one-line CheckpointError before sampling.
`use_vae` swaps VAEs per job of a batch, keeping the checkpoint's own first stage to restore it bit-exactly.
"""
from __future__ import annotations

import os
import re
import weakref
from typing import Dict, Optional

import torch

from ldmcli.errors import CheckpointError
from ldmcli.loading.checkpoint import StateDict, mismatches, normalize, read_checkpoint

# diffusers name fragment -> CompVis fragment, applied in order to each key (after the block renumbering below)
_RENAMES = (
    (r"\.resnets\.(\d+)\.conv_shortcut\.", r".block.\1.nin_shortcut."), (r"\.resnets\.", ".block."),
    (r"\.downsamplers\.0\.", ".downsample."), (r"\.upsamplers\.0\.", ".upsample."),
    (r"^(encoder|decoder)\.mid_block\.block\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid_block\.block\.1\.", r"\1.mid.block_2."),
    (r"\.mid_block\.attentions\.0\.group_norm\.", ".mid.attn_1.norm."),
    (r"\.mid_block\.attentions\.0\.(to_q|query)\.", ".mid.attn_1.q."),
    (r"\.mid_block\.attentions\.0\.(to_k|key)\.", ".mid.attn_1.k."),
    (r"\.mid_block\.attentions\.0\.(to_v|value)\.", ".mid.attn_1.v."),
    (r"\.mid_block\.attentions\.0\.(to_out\.0|proj_attn)\.", ".mid.attn_1.proj_out."),
    (r"\.conv_norm_out\.", ".norm_out."),
)


def is_diffusers_layout(sd: StateDict) -> bool:
    return any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd)


def diffusers_to_compvis(sd: StateDict) -> StateDict:
    """diffusers AutoencoderKL keys -> CompVis `AutoencoderKL` keys. diffusers numbers the decoder's up blocks from
    the lowest resolution (CompVis `up.{n-1-i}`), and stores the mid attention's q/k/v/out as Linear [C, C]
    (CompVis: 1x1 conv [C, C, 1, 1])."""
    ups = {int(m.group(1)) for k in sd for m in [re.match(r"decoder\.up_blocks\.(\d+)\.", k)] if m}
    n = max(ups) + 1 if ups else 0
    out: Dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = re.sub(r"^encoder\.down_blocks\.", "encoder.down.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{n - 1 - int(m.group(1))}.", k)
        for pattern, repl in _RENAMES:
            k = re.sub(pattern, repl, k)
        if ".mid.attn_1." in k and not k.endswith("norm.weight") and not k.endswith("norm.bias") and v.ndim == 2:
            v = v[:, :, None, None]
        out[k] = v
    return out


def read_vae(path) -> StateDict:
    """The VAE file's tensors under the CompVis first-stage names (no prefix)."""
    raw, _ = read_checkpoint(path)
    sd, _ = normalize(raw, use_ema=False)
    if any(k.startswith("first_stage_model.") for k in sd):
        sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    if is_diffusers_layout(sd):
        sd = diffusers_to_compvis(sd)
    return {k: v for k, v in sd.items() if not k.startswith(("loss.", "model_ema."))}


def apply_vae(model, path) -> None:
    """Replace the model's first-stage weights by those of the VAE file at `path`, in place (its dtype and device
    kept); a CheckpointError naming the first missing or mismatched tensor when the file does not fit."""
    fs = model.first_stage_model
    sd = read_vae(path)
    expected = fs.state_dict()
    name = getattr(path, "name", str(path).rsplit("/", 1)[-1])
    missing, bad = mismatches(expected, sd)
    if missing:
        raise CheckpointError(f"--vae {name} is not a first stage for {model.cfg.name}: it lacks {len(missing)} of "
                              f"{len(expected)} tensors (e.g. {missing[0]}); give an SD VAE (CompVis or diffusers "
                              f"AutoencoderKL layout)")
    if bad:
        k = bad[0]
        raise CheckpointError(f"--vae {name} does not fit {model.cfg.name}: {k} has shape {list(sd[k].shape)}, the "
                              f"model expects {list(expected[k].shape)} ({len(bad)} mismatched tensors)")
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(sd[k].to(t.dtype))


class _Swapped:
    """The VAE in a model now (`key`: its file's path, modification time and size; () for the checkpoint's own)
    and the checkpoint's own first-stage tensors, kept on the CPU from the first swap on."""

    def __init__(self):
        self.key: tuple = ()
        self.saved: Optional[dict] = None


_STATE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _key(path) -> tuple:
    if not path:
        return ()
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def use_vae(model, path=None) -> None:
    """Make the first stage the VAE file's at `path`, or the checkpoint's own when None: the checkpoint's tensors
    are kept before the first swap and put back bit-exactly before another VAE goes in, so in a batch a job's
    image never depends on the VAEs of the jobs before it. A file that does not fit (CheckpointError) leaves the
    checkpoint's own first stage in place."""
    state = _STATE.setdefault(model, _Swapped())
    key = _key(path)
    if state.key == key:
        return
    fs = model.first_stage_model
    if state.saved is None:
        state.saved = {k: t.detach().to("cpu", copy=True) for k, t in fs.state_dict().items()}
    with torch.no_grad():
        for k, t in fs.state_dict().items():
            t.copy_(state.saved[k])
    state.key = ()
    if path:
        apply_vae(model, path)
        state.key = key


__all__ = ["apply_vae", "read_vae", "diffusers_to_compvis", "is_diffusers_layout", "use_vae"]
