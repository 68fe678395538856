"""Errors that the CLI turns into one line on stderr and a documented exit code.

Exit codes: 0 success, 1 runtime failure, 2 bad input or usage, 3 partial batch failure, 130 interrupted.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


class LdmError(Exception):
    """Base error: `str(err)` is the one-line message shown to the user."""
    exit_code = EXIT_RUNTIME


class UsageError(LdmError):
    """Bad input: a missing or malformed file, an option out of range, a wrong checkpoint."""
    exit_code = EXIT_USAGE


class CheckpointError(UsageError):
    """A checkpoint that cannot be read, is not a known family, or misses keys."""


class InputError(UsageError):
    """An input image, mask, layout or map that cannot be used."""


def one_line(message, limit: int = 0) -> str:
    """A message (or an exception) folded onto one line: Pillow's, json's and torch's messages may hold newlines,
    and a file name may too. An exception with no message gives its class name. limit > 0 cuts the line."""
    text = " ".join(str(message).split())
    if not text and isinstance(message, BaseException):
        text = type(message).__name__
    return text[:limit] if limit > 0 else text


def close_matches(word: str, choices, n: int = 3, cutoff: float = 0.6) -> list:
    """The choices nearest to `word` (difflib's ratio), best first: the "did you mean" of every message."""
    import difflib
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)
