"""Errors that the CLI turns into one line on stderr and a documented exit code.

Exit codes: 0 success, 1 runtime failure, 2 bad input or usage, 3 partial batch failure, 130 interrupted (SIGINT,
Ctrl-C), 141 stdout closed by its reader (`ldm ... | head -n 1`: the batch stops), 143 terminated (SIGTERM). The
last three are what a shell reports for a process killed by SIGINT, SIGPIPE and SIGTERM (128 + the signal), so a
script's `$?` reads the same whether ldm stopped cleanly or was killed; finished images are kept in all three.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
EXIT_TERMINATED = 143


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


class OutputClosed(BrokenPipeError):
    """stdout's reader went away (`ldm ... | head -n 1`). Not an LdmError, so no per-job handler takes it for a
    failed job: the batch stops, the images written stay, and the CLI exits EXIT_BROKEN_PIPE."""
    exit_code = EXIT_BROKEN_PIPE


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
