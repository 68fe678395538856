"""SIGINT and SIGTERM while a command runs: either stops it the way Ctrl-C does, once, with one line.

The first signal raises in the main thread (KeyboardInterrupt for SIGINT, `Terminated`, a KeyboardInterrupt too,
for SIGTERM), so the stack unwinds through every `finally` and `except BaseException`: an atomic write removes its
temporary file, finished images stay, and the guard prints `ldm: error: interrupted` (exit 130) or
`ldm: error: terminated` (exit 143), the codes a shell reports for a process those signals killed.

Signals that arrive while that happens (Ctrl-C pressed twice, a supervisor's SIGTERM after Ctrl-C) are absorbed:
raised inside a cleanup handler they would print a traceback block instead of the line, or stop a cleanup half
way. One that arrives more than GRACE_S after the first (a cleanup that hangs, an interrupt swallowed somewhere)
ends the process at once with the line and the code of the first: asked twice, ldm must stop.

The handlers are installed only while a command runs (`stops_cleanly`), and only over the default dispositions: a
SIGINT that the shell ignores for a background job (`ldm ... &`) stays ignored. Once a stopped command has printed
its line, both signals are ignored for the little that is left of the process (Click's exit, Python's
finalization), so that the exit code stays the documented one.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

from ldmcli.errors import EXIT_INTERRUPTED, EXIT_TERMINATED

GRACE_S = 3.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that it unwinds the same way."""


class _State:
    installed = False
    first: Optional[Tuple[int, float]] = None   # (signal number, time.monotonic()) of the first signal
    reported = False                            # the one line has been printed


def outcome(exc: Optional[BaseException] = None) -> Tuple[str, int]:
    """The message and exit code of an interrupt: those of the first signal received, else of `exc`. Marks the
    line as printed (the caller prints it), so a late signal ends the process without a second one."""
    _State.reported = True
    signum = _State.first[0] if _State.first is not None else None
    if signum == signal.SIGTERM or (signum is None and isinstance(exc, Terminated)):
        return "terminated", EXIT_TERMINATED
    return "interrupted", EXIT_INTERRUPTED


def _handler(signum, frame) -> None:
    if _State.first is None:
        _State.first = (signum, time.monotonic())
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if time.monotonic() - _State.first[1] < GRACE_S:
        return   # still unwinding from the first: let the cleanup and the line finish
    printed = _State.reported
    message, code = outcome()
    if not printed:
        os.write(2, f"ldm: error: {message}\n".encode())
    os._exit(code)   # the cleanup hung: a stale temporary file of this pid is cleared by the next run


def _default(handler) -> bool:
    return handler in (signal.SIG_DFL, signal.default_int_handler)


@contextmanager
def stops_cleanly() -> Iterator[None]:
    """Run the body with SIGINT and SIGTERM turned into interrupts as described above. Re-entrant; a no-op off
    the main thread (where Python cannot install handlers)."""
    if _State.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    mine = [s for s in _SIGNALS if _default(previous[s])]
    _State.installed, _State.first, _State.reported = True, None, False
    for s in mine:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        _State.installed = False
        for s in mine:   # after a signal, ignored: the process is exiting with its line, and Python's
            # finalization puts back the default action of a signal that has a Python handler (death, no code)
            signal.signal(s, previous[s] if _State.first is None else signal.SIG_IGN)


__all__ = ["GRACE_S", "Terminated", "outcome", "stops_cleanly"]
