"""The `ldm` process as a whole: how it loads (garbage collection paused) and how it ends (without Python's
finalization, when nothing is left that needs it).

After `import torch`, Python's own exit takes 0.3–0.4 s on a 2-core host (measured 2026-12-06: `python -c "import
torch"` 1.40–1.96 s, the same with `os._exit(0)` at the end 1.09–1.38 s): it tears down thousands of modules and
runs torch's exit callbacks, none of which leaves anything on disk. Every file ldm writes is closed (atomic writers,
`with` blocks) before its command returns, so the process can end at once — in a pipeline of thousands of `ldm`
processes that is a fifth of each default image's time.

The shortcut is taken only where it loses nothing: stdout and stderr flushed (a flush that fails goes the normal
way, where Python reports it), no other thread still running, no child process, no Inductor (its compile workers and
caches), no tracer or profiler (coverage, cProfile write their results at exit). Anything else ends the normal way.
Only the `ldm` entry point uses it; code that calls the Typer app itself gets SystemExit as usual.
"""
from __future__ import annotations

import gc
import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


def exit_code(code) -> int:
    """The status `sys.exit(code)` would give: None is 0, an int itself, anything else is printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def can_end_now() -> bool:
    """Whether ending without finalization loses nothing (see the module's doc)."""
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return False
    monitoring = getattr(sys, "monitoring", None)          # Python >= 3.12: coverage's sys.monitoring core
    if monitoring is not None and any(monitoring.get_tool(i) is not None for i in range(6)):
        return False
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return False
    if "torch._inductor" in sys.modules:
        return False
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is not None and multiprocessing.active_children():
        return False
    return True


def end(code) -> None:
    """End the process with `code` (as sys.exit takes it), skipping finalization where `can_end_now`."""
    status = exit_code(code)
    if can_end_now():
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):   # a closed or broken stream: Python's own exit reports it as it always has
            sys.exit(status)
        if "logging" in sys.modules:
            sys.modules["logging"].shutdown()
        os._exit(status)
    sys.exit(status)


class Process:
    """Set by the `ldm` entry point: the process is ldm's own, ends when its command does, and loads one model."""
    is_ldm = False


@contextmanager
def collection_paused() -> Iterator[None]:
    """No garbage collection while the body runs (loading a model); in ldm's own process, what it made is then
    frozen out of later collections.

    `import torch` and building a model make hundreds of thousands of objects that live as long as the process,
    and Python's collector walks them again and again while they are made; after the body, all of them sit in the
    youngest generation and the next allocation would walk them once more. Measured on the default txt2img image,
    process start to exit (2026-12-06, Intel host, 12 runs each, paired): 1.76 s median paused and frozen, 1.90 s
    paused only, 1.95 s without. Freezing keeps any cycle that was garbage at that moment, which one load in a
    process of its own can afford; code that loads many models in one process (tests, a library caller) gets the
    pause alone."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if Process.is_ldm:
            gc.freeze()
        if was_enabled:
            gc.enable()


__all__ = ["end", "can_end_now", "exit_code", "collection_paused", "Process"]
