"""The scores of `ldm eval`: each task's generated images read back (`ldmcli.world.readback`) and compared with the
exact ground truth of their examples (`ldmcli.world.metrics`)."""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence


def _txt2img(exs: List[dict], imgs: list) -> Dict[str, float]:
    """Colour / shape / position / count accuracy of what the caption asks, over all prompts and again over the
    one- and two-object prompts alone (the figures the targets name)."""
    from ldmcli.world import metrics as M
    from ldmcli.world.scenes import parse_caption
    prompts = [parse_caption(ex["caption"]) for ex in exs]
    out = M.txt2img_metrics(prompts, imgs)
    for k, name in ((1, "single"), (2, "two")):
        mine = [i for i, p in enumerate(prompts) if len(p.objects) == k]
        part = M.txt2img_metrics([prompts[i] for i in mine], [imgs[i] for i in mine])
        out |= {f"{name}_colour_acc": part["colour_acc"], f"{name}_shape_acc": part["shape_acc"],
                f"n_{name}_images": part["n_images"]}
    return out


def _inpaint(exs: List[dict], imgs: list) -> Dict[str, float]:
    """Change outside the hole, PSNR inside it beside `diffusion_fill`, and whether the object is back in it."""
    from ldmcli.world import metrics as M
    return M.inpaint_metrics(imgs, [ex["image"] for ex in exs], [ex["mask_object"] for ex in exs],
                             [ex["objects"][ex["mask_object_index"]] for ex in exs])


def _superres(exs: List[dict], imgs: list) -> Dict[str, float]:
    """PSNR / SSIM against the exact render at the output size, beside PIL bicubic."""
    from ldmcli.world import metrics as M
    return M.superres_metrics(imgs, [ex["highres"] for ex in exs], [ex["lowres"] for ex in exs])


def _layout2img(exs: List[dict], imgs: list) -> Dict[str, float]:
    """IoU of the best-overlapping object read back, and its label."""
    from ldmcli.world import metrics as M
    return M.layout2img_metrics([ex["scene"] for ex in exs], imgs)


def _semantic2img(exs: List[dict], imgs: list) -> Dict[str, float]:
    """Pixel accuracy and mIoU of the class map read back."""
    from ldmcli.world import metrics as M
    return M.semantic2img_metrics([ex["class_map"] for ex in exs], imgs)


# task -> (one example per image, the images) -> {metric: value}
SCORERS: Dict[str, Callable[[List[dict], list], Dict[str, float]]] = {
    "txt2img": _txt2img, "inpaint": _inpaint, "superres": _superres, "layout2img": _layout2img,
    "semantic2img": _semantic2img,
}


def score(task: str, examples: Sequence[dict], images: Sequence[Sequence]) -> Dict[str, float]:
    """The task's metrics over every image; images[i] are the images (PIL or uint8 arrays) of examples[i]."""
    pairs = [(ex, img) for ex, imgs in zip(examples, images, strict=True) for img in imgs]
    return SCORERS[task]([p[0] for p in pairs], [p[1] for p in pairs])


__all__ = ["SCORERS", "score"]
