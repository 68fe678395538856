"""User-given paths."""
from __future__ import annotations

from pathlib import Path


def expand_user(path: str) -> Path:
    """`path` with a leading ~ or ~name expanded; as written when there is no such home directory ("~name/..." for a
    user this machine has not, or no HOME), so the caller's own "no such file" check reports it in one line."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)
