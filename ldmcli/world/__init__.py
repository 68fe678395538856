"""The shapes world: a procedural dataset with exact ground truth, and an evaluator that reads images back.

ldmcli trains its small default models on this world and proves them with `ldm eval`:
`scenes` (what is where, captions, splits), `render` (pixels, class maps, x4 pairs, masks, `dataset`),
`readback` (objects and class maps recovered from an RGB image alone), `metrics` (per-task scores).
The function `render.render` is not re-exported here, so `ldmcli.world.render` stays the module.

The names below are imported on first use: every `ldm` command reads the world's vocabulary (`vocab`, for its
help), and only training and `ldm eval` need the renderer and the evaluator (and numpy, imported by them).
"""
from ldmcli.lazy import lazy_exports

_EXPORTS = {"summarize": ".metrics", "Detected": ".readback", "read_class_map": ".readback",
            "read_objects": ".readback", "class_map": ".render", "dataset": ".render", "Obj": ".scenes",
            "Scene": ".scenes", "caption": ".scenes", "layout": ".scenes", "parse_caption": ".scenes",
            "sample_scene": ".scenes"}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
