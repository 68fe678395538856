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
