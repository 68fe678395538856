"""Export a trained model as an embedded default: one self-describing fp16 `.safetensors` file.

The file holds the CompVis key layout (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`,
MODELS.md §7.1) with the EMA weights in place of the raw ones (what the reference samples with, §3.4), and in its
header the ModelConfig as JSON plus a provenance string (`checkpoint.config_metadata`), so
`ldmcli.loading.checkpoint.load_model` rebuilds the model with no preset and no detection. The BERT encoder's unused
`to_logits` head is left out (the loader zero-fills it, §7.8), which keeps the files small.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch

from ldmcli.loading.checkpoint import config_metadata, save_safetensors
from ldmcli.models.ldm import LatentDiffusion

_SKIPPED = ("cond_stage_model.transformer.to_logits.",)


def version_string(task: str, recipe: str, steps: int, seed: int, data: str) -> str:
    """Provenance of an exported model: what trained it, for how long, on what, from which seed (no git hash)."""
    from ldmcli import __version__
    source = "world" if data == "world" else f"folder:{Path(data).name}"
    return f"ldmcli {__version__} train task={task} recipe={recipe} steps={steps} seed={seed} data={source}"


def export_default(model: LatentDiffusion, path, *, version: str,
                   ema_weights: Optional[Dict[str, torch.Tensor]] = None,
                   dtype: torch.dtype = torch.float16) -> Path:
    """Write `model` (its EMA weights where given, keyed like `model.state_dict()`) to `path` in `dtype`."""
    sd = {k: v.detach() for k, v in model.state_dict().items() if not k.startswith(_SKIPPED)}
    for k, v in (ema_weights or {}).items():
        if k in sd:
            sd[k] = v.detach()
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).cpu().contiguous() for k, v in sd.items()}
    cfg = model.cfg.with_(scale_factor=float(model.scale_factor), version=version)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(sd, path, config_metadata(cfg))
    return path


__all__ = ["version_string", "export_default"]
