"""The one place an error becomes a line: every command runs inside `guarded`, which maps errors to one stderr
line and the documented exit code (ldmcli/errors.py): 0 ok, 1 runtime failure, 2 bad input, 3 partial batch
failure, 130 interrupted, 141 stdout closed, 143 terminated. SIGINT and SIGTERM stop a command as in
ldmcli/cli/signals.py."""
from __future__ import annotations

import os
import sys

from typer.core import TyperGroup

from ldmcli.cli.signals import outcome, stops_cleanly
from ldmcli.errors import EXIT_BROKEN_PIPE, EXIT_RUNTIME, EXIT_USAGE, LdmError, OutputClosed, one_line


def guarded(fn, *, debug: bool = False) -> int:
    """Run `fn`; map errors to one stderr line and the documented exit code."""
    try:
        with stops_cleanly():
            rc = fn()
            sys.stdout.flush()   # the output is delivered here, where a reader that went away can be reported
        return 0 if rc is None else rc
    except LdmError as e:
        error(str(e))
        return e.exit_code
    except KeyboardInterrupt as e:   # Ctrl-C, and SIGTERM (signals.Terminated)
        return _stopped(e)
    except BrokenPipeError as e:
        if isinstance(e, OutputClosed) or _stdout_closed():
            return _output_closed(e)
        return _internal(e, debug)
    except MemoryError:
        error("out of memory")
        return EXIT_RUNTIME
    except Exception as e:  # noqa: BLE001 - the one place a traceback becomes a line
        return _internal(e, debug)


def _internal(e: Exception, debug: bool) -> int:
    if debug:
        raise e
    first = str(e).splitlines()[0] if str(e).strip() else ""
    if "out of memory" in str(e).lower():
        error(f"out of memory: {first[:200]} (try a smaller size, --n-samples 1 or --device cpu)")
    else:
        error(f"internal error: {type(e).__name__}: {first[:300]} (rerun with --debug)")
    return EXIT_RUNTIME


def _stopped(e: KeyboardInterrupt) -> int:
    message, code = outcome(e)
    error(message)
    return code


def _stdout_closed() -> bool:
    """Whether stdout's reader is gone (a pipe whose read end is closed polls as an error), so that a broken pipe
    of anything else is not blamed on stdout."""
    import select
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):   # no poll (Windows), no descriptor: stdout is the likely one
        return True


def _output_closed(e: BrokenPipeError) -> int:
    """One line for a reader that went away; stdout then points at /dev/null, so that Python's own flush at exit
    does not print "Exception ignored ... BrokenPipeError" (the recipe of Python's signal module docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):   # a stdout without a file descriptor (tests): nothing to do
        pass
    error(e if isinstance(e, OutputClosed) else
          "stdout was closed (broken pipe); the rest of the output was not written")
    return EXIT_BROKEN_PIPE


def error(message) -> None:
    """`ldm: error: <message>` on stderr, folded onto one line (a file name may hold a newline)."""
    try:
        sys.stderr.write(f"ldm: error: {one_line(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):   # stderr gone too (`ldm ... 2>&1 | head`): the exit code still tells
        pass


def _usage_line(e) -> str:
    """A Click usage error as one line: the message, then where help is (Click prints four lines)."""
    message = " ".join(e.format_message().split())
    ctx = getattr(e, "ctx", None)
    where = f"{ctx.command_path} --help" if ctx is not None else "ldm --help"
    return f"ldm: error: {message} (see '{where}')"


def _click_errors(name: str) -> tuple:
    """The Click exception class `name` as raised here: Typer ≥ 0.20 runs a vendored Click (typer._click), older
    Typer the click package; both where both exist."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _exit_code(invoke) -> int:
    """Run Click without its own error printing (`invoke()` = main with standalone_mode=False), so every error is
    one stderr line and a documented exit code."""
    try:
        code = invoke()
    except _click_errors("NoArgsIsHelpError") as e:   # plain `ldm`: the help, as Click would show it
        sys.stdout.write(e.ctx.get_help() + "\n")
        code = 0
    except _click_errors("UsageError") as e:
        sys.stderr.write(_usage_line(e) + "\n")
        code = EXIT_USAGE
    except _click_errors("Abort"):                   # Ctrl-C or EOF at a Click prompt
        message, code = outcome()
        error(message)
    except _click_errors("ClickException") as e:     # e.g. a file option that cannot be opened
        sys.stderr.write(f"ldm: error: {' '.join(e.format_message().split())}\n")
        code = e.exit_code
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    return code if isinstance(code, int) else 0


class OneLineErrors(TyperGroup):
    """The app's group: however it is invoked (the `ldm` script, `python -m ldmcli`, Click's test runner), a usage
    error is one line, not Click's four-line usage block."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        with stops_cleanly():   # from parsing to the exit code: a signal anywhere gives its one line
            if not standalone_mode:
                return super().main(*args, standalone_mode=False, **kwargs)
            try:
                code = _exit_code(lambda: super(OneLineErrors, self).main(*args, standalone_mode=False, **kwargs))
            except KeyboardInterrupt as e:   # while an error line was being printed
                code = _stopped(e)
        sys.exit(code)

    def invoke(self, ctx):
        """An interrupt outside `guarded` (a command's imports) ends here, before Click's own handler would add a
        blank line to the one line."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            return _stopped(e)


__all__ = ["guarded", "error", "OneLineErrors"]
