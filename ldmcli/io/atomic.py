"""Writing a file all or nothing: the one atomic write of ldmcli (images, checkpoints, training states, registry).

The data goes to a temporary file beside the target, created exclusively and without following links (a link
planted at the temporary name cannot redirect the write), is fsynced, then renamed over the target: a reader
sees the old file or the new one, never half of one, and an existing file survives any failure. Temporary names
carry the writer's pid (`.<name>.tmp-<pid>`), so `clear_stale` can remove those of processes that died.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import BinaryIO, Callable, Union

PathLike = Union[str, Path]
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a fresh temporary file beside `path`, then move it over `path` atomically.

    Missing parent folders are created. On any error (KeyboardInterrupt included) the temporary file is removed
    and the error propagates unchanged; OSErrors keep their errno for the caller's message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileExistsError:   # left by an earlier process with our pid, or planted: never written through
        os.unlink(tmp)
        fd = os.open(tmp, flags, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; best effort, since not every platform lets a directory be fsynced."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    except OSError as e:
        return e.errno != errno.ESRCH
    return True


def clear_stale(folder: PathLike) -> int:
    """Remove the temporary files in `folder` left by writers that are no longer running (killed mid-write);
    returns how many. Links and folders with such names are removed without being followed."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            m = _TMP.match(entry.name)
            if m and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


__all__ = ["atomic_write", "write_bytes_atomic", "clear_stale", "temp_name"]
