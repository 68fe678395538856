"""The 1000 ImageNet class names, in class-id order, for the class-conditional LDMs (cin256, cin256-v2; MODELS.md §6.3).

No copy ships with ldmcli and none can be downloaded: the names are read from the `IMAGENET_CLASSNAMES` tuple that
open_clip_torch ships in `open_clip/zero_shot_metadata.py` (the curated short names of the CLIP zero-shot
evaluation, e.g. 1 "goldfish", 25 "fire salamander"). The file is parsed with `ast`, never imported: importing
open_clip imports torchvision, which ldmcli does not need. Without open_clip the names are unknown and class ids
still work.
"""
from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple

IMAGENET_CLASSES = 1000
NO_IMAGENET_NAMES = ("the ImageNet class names come from the open_clip_torch package, which is not installed "
                     "(pip install --no-deps open_clip_torch)")


def _metadata_file() -> Optional[Path]:
    """open_clip's zero_shot_metadata.py, found without importing the package (find_spec of a top-level name only
    locates it)."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "zero_shot_metadata.py"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=1)
def imagenet_names() -> Tuple[str, ...]:
    """The 1000 class names in id order; () when open_clip is not installed or its list is not 1000 strings."""
    path = _metadata_file()
    if path is None:
        return ()
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return ()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "IMAGENET_CLASSNAMES"):
            try:
                names = ast.literal_eval(node.value)
            except ValueError:
                return ()
            ok = len(names) == IMAGENET_CLASSES and all(isinstance(n, str) for n in names)
            return tuple(names) if ok else ()
    return ()


__all__ = ["IMAGENET_CLASSES", "NO_IMAGENET_NAMES", "imagenet_names"]
