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


def read_text_file(path, what: str, limit: int) -> str:
    """A small UTF-8 text file (a layout, a palette): one InputError line for a folder, an unreadable file, one over
    `limit` bytes (so a wrong file or `/dev/zero` is refused rather than parsed) or bytes that are not UTF-8."""
    from ldmcli.errors import InputError
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except IsADirectoryError:
        raise InputError(f"{what} {path}: is a directory, not a file") from None
    except OSError as e:
        raise InputError(f"{what} {path}: {e.strerror or 'cannot be read'}") from None
    if len(data) > limit:
        raise InputError(f"{what} {path}: larger than {limit >> 20} MiB; not a {what} file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{what} {path}: not UTF-8 text") from None
