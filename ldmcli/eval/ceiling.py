"""The first-stage ceiling of `ldm eval` ("autoencoder"): no sampling, the exact renders of eval scenes through the
first stage (encode, decode) and read back like generated images.

No LDM draws a shape its autoencoder cannot reconstruct, so these scores bound every task's; they have no target.
By default the txt2img model's first stage is used (all embedded defaults share one).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from ldmcli.eval.examples import DEFAULT_N, eval_examples

CEILING = "autoencoder"   # its name among the tasks of `ldm eval` (evaluated with "all")
Progress = Callable[[str, int, int], None]   # progress(task, examples done, examples in all)


class _FirstStage:
    """What `autoencoder_ceiling` needs of a model, for a first-stage file of `ldm train`."""

    def __init__(self, ae, device, image_size: int):
        from types import SimpleNamespace
        self.ae, self.device, self.cfg = ae.to(device).eval(), device, SimpleNamespace(image_size=image_size)

    def encode_first_stage(self, x, sample: bool = False):
        return self.ae.encode(x).mode()

    def decode_first_stage(self, z):
        return self.ae.decode(z)


def first_stage_model(path, device: str = "cpu"):
    """For the ceiling: a task model (its first stage is used), or `ldm train`'s <run>/autoencoder.safetensors, so
    a first stage can be judged before any LDM is trained on it."""
    from ldmcli.loading import load, pick_device
    if Path(path).suffix == ".safetensors":
        from ldmcli.loading.checkpoint import safetensors_metadata
        try:
            meta = safetensors_metadata(path)
        except Exception:       # noqa: BLE001 - not readable here: load() gives the one-line diagnosis
            meta = {}
        if "ldmcli_autoencoder" in meta:
            from ldmcli.models.autoencoder import AutoencoderKL
            from ldmcli.train.autoencoder_stage import load_autoencoder
            cfg, sd = load_autoencoder(path)
            ae = AutoencoderKL(cfg)
            ae.load_state_dict(sd, strict=True)
            return _FirstStage(ae, pick_device(device), cfg.resolution)
    return load(str(path), device=device)[0]


def reconstruct(model, images: list) -> list:
    """The first stage's reconstructions (encode, decode: the posterior mode) of same-size RGB images, as PIL images.
    Rounded, not images.tensor_to_pil's reference truncation: that loses a level on some pixels even when nothing
    else does, and these rows are about the first stage alone."""
    import torch
    from PIL import Image
    x = torch.stack([torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1) for im in images])
    with torch.inference_mode():
        y = model.decode_first_stage(model.encode_first_stage((x / 127.5 - 1).to(model.device), sample=False))
    y = ((y.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in y]


def autoencoder_ceiling(model, n: int = DEFAULT_N, progress: Optional[Progress] = None,
                        chunk: int = 16, split: str = "eval") -> Dict[str, float]:
    """The read-back scores of the first stage's reconstructions of the exact renders of n scenes of `split` (mode
    of the posterior): PSNR, colour / shape / position accuracy, object-pixel accuracy of the class map. Adds
    n_images and seconds."""
    from ldmcli.world import metrics as M
    start = time.perf_counter()
    examples = eval_examples("semantic2img", n, model.cfg.image_size, split)
    if progress:
        progress(CEILING, 0, len(examples))
    exact, rebuilt = [ex["image"].convert("RGB") for ex in examples], []
    for i in range(0, len(exact), chunk):
        y = reconstruct(model, exact[i:i + chunk])
        rebuilt += y
        if progress:
            for done in range(len(rebuilt) - len(y) + 1, len(rebuilt) + 1):
                progress(CEILING, done, len(examples))
    t2i = M.txt2img_metrics([ex["scene"] for ex in examples], rebuilt)
    sem = M.semantic2img_metrics([ex["class_map"] for ex in examples], rebuilt)
    psnr = float(np.mean([min(M.psnr(a, b), M.PSNR_CAP) for a, b in zip(rebuilt, exact)]))
    return {"psnr": psnr, "colour_acc": t2i["colour_acc"], "shape_acc": t2i["shape_acc"],
            "position_acc": t2i["position_acc"], "object_pixel_acc": sem["object_pixel_acc"],
            "n_images": float(len(examples)), "seconds": time.perf_counter() - start}


__all__ = ["CEILING", "Progress", "first_stage_model", "reconstruct", "autoencoder_ceiling"]
