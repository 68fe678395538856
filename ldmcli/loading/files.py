"""Model files on disk: what may be opened as a checkpoint or a config (no torch here: the CLI checks early)."""
from __future__ import annotations

from pathlib import Path

from ldmcli.errors import UsageError


def check_regular_file(path: Path, what: str, error=UsageError) -> None:
    """A model file must be a regular file (or a link to one): a device (/dev/zero) or a FIFO would be read
    forever, growing memory, before any check on its content could run. Missing files and folders are left to
    the caller's own messages."""
    import stat
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise error(f"{what} {path} is {kind}; pass a .ckpt, .safetensors or .yaml file")


__all__ = ["check_regular_file"]
