"""Names a package exports but imports on first use (PEP 562), so importing the package stays cheap: `import ldmcli`
does not import torch, and the command line reads the shapes world's vocabulary without its renderer."""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Dict


def lazy_exports(package: str, table: Dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package`: `name` is `table[name]`'s attribute of that name (a module path;
    relative to `package` when it starts with "."), imported on first use and kept in the package's namespace."""
    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        setattr(sys.modules[package], name, value)
        return value
    return __getattr__


__all__ = ["lazy_exports"]
