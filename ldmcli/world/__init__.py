"""The shapes world: a procedural dataset with exact ground truth, and an evaluator that reads images back.

ldmcli trains its small default models on this world and proves them with `ldm eval`:
`scenes` (what is where, captions, splits), `render` (pixels, class maps, x4 pairs, masks, `dataset`),
`readback` (objects and class maps recovered from an RGB image alone), `metrics` (per-task scores).
The function `render.render` is not re-exported here, so `ldmcli.world.render` stays the module.
"""
from .metrics import summarize
from .readback import Detected, read_class_map, read_objects
from .render import class_map, dataset
from .scenes import Obj, Scene, caption, layout, parse_caption, sample_scene

__all__ = ["Obj", "Scene", "sample_scene", "caption", "parse_caption", "layout", "class_map", "dataset",
           "Detected", "read_objects", "read_class_map", "summarize"]
