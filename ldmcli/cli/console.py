"""The stderr console: log lines, warnings, one-line errors and progress.

stdout belongs to the data (`-o -` PNGs, the paths and listings that scripts parse): the runner writes its lines
with `Console.data` (or `write_data` where no console exists yet), which go above the progress bars when stdout
and stderr are one terminal, so neither overwrites the other. Progress is a rich bar when stderr is a terminal, a
plain `sampling: step 10/50` line every ~10 % when it is not (logs, CI), and nothing at all with quiet=True.
quiet silences log lines and progress, never warnings, errors or data.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional, TextIO, TypeVar

from ldmcli.errors import OutputClosed, one_line

T = TypeVar("T")
Advance = Callable[..., None]  # advance(n=1): n more steps done


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _same_terminal(a, b) -> bool:
    """Whether streams a and b are one terminal (`ldm ...` typed at a shell: both are the shell's tty)."""
    try:
        return _isatty(a) and _isatty(b) and os.path.sameopenfile(a.fileno(), b.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def write_data(line: str) -> None:
    """`line` on stdout, flushed: a script reads each path as its image is done. A reader that has gone away
    (`ldm ... | head -n 1`) raises OutputClosed, which stops the batch."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed("stdout was closed (broken pipe)") from None


def _plain_steps(print_line: Callable[[str], None], total: int, desc: str) -> Advance:
    """advance() printing `desc: step k/total` each time k reaches a new tenth of total (every step if total < 10)."""
    done = 0
    prefix = f"{desc}: " if desc else ""

    def advance(n: int = 1) -> None:
        nonlocal done
        before, done = done, min(done + n, total)
        if done * 10 // total > before * 10 // total:
            print_line(f"{prefix}step {done}/{total}")
    return advance


class Console:
    """Messages for the person at the shell, on stderr (or on `stream`, for tests)."""

    def __init__(self, quiet: bool = False, stream: Optional[TextIO] = None):
        self.quiet = quiet
        self._stream = stream
        self._live = None  # the rich Progress that nested progress bars share while one is shown

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr  # looked up late: tests swap sys.stderr

    def _print(self, line: str) -> None:
        if self._live is not None:  # above the live bars, not through them
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)

    def data(self, line: str) -> None:
        """A line of data for stdout. While progress bars are drawn on the same terminal it is printed through
        their display, above them: written straight to stdout it would land where the bars are redrawn next."""
        if self._live is not None and _same_terminal(sys.stdout, self.stream):
            from rich.text import Text   # no markup, emoji or highlighting in a file name
            self._live.console.print(Text(line), soft_wrap=True)
        else:
            write_data(line)

    def log(self, msg) -> None:
        if not self.quiet:
            self._print(str(msg))

    def warn(self, msg) -> None:
        self._print(f"ldm: warning: {one_line(msg)}")

    def error(self, msg) -> None:
        """`ldm: error: <msg>` on one line, whatever newlines the message holds."""
        self._print(f"ldm: error: {one_line(msg)}")

    @contextmanager
    def progress(self, total: int, desc: str = "") -> Iterator[Advance]:
        """`with console.progress(50, "sampling") as advance:` ... `advance()` once a step. Progress bars nest
        (a batch bar around a per-image bar); on a terminal they share one rich display."""
        if self.quiet or total <= 0:
            yield lambda n=1: None
        elif _isatty(self.stream):
            with self._rich_task(total, desc) as advance:
                yield advance
        else:
            yield _plain_steps(self._print, total, desc)

    def track(self, items: Iterable[T], total: Optional[int] = None, desc: str = "") -> Iterator[T]:
        """`for x in console.track(items, desc=...)`: `progress` over an iterable (total defaults to len)."""
        with self.progress(len(items) if total is None else total, desc) as advance:
            for item in items:
                yield item
                advance()

    @contextmanager
    def _rich_task(self, total: int, desc: str) -> Iterator[Advance]:
        from rich.console import Console as RichConsole  # only a terminal pays for importing rich
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        outer = self._live is None
        if outer:  # redirect_stdout=False: rich would otherwise reroute print() on stdout to its console (stderr)
            self._live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=RichConsole(file=self.stream), redirect_stdout=False)
            self._live.start()
        live = self._live
        task = live.add_task(desc, total=total)
        try:
            yield lambda n=1: live.advance(task, n)
        finally:
            if outer:
                live.stop()
                self._live = None
            else:
                live.remove_task(task)
