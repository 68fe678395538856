"""The one place an error becomes a line: every command runs inside `guarded`, which maps errors to one stderr
line and the documented exit code (ldmcli/errors.py): 0 ok, 1 runtime failure, 2 bad input, 3 partial batch
failure, 130 interrupted."""
from __future__ import annotations

import sys

from typer.core import TyperGroup

from ldmcli.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, LdmError, one_line


def guarded(fn, *, debug: bool = False) -> int:
    """Run `fn`; map errors to one stderr line and the documented exit code."""
    try:
        rc = fn()
        return 0 if rc is None else rc
    except LdmError as e:
        error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_RUNTIME
    except MemoryError:
        error("out of memory")
        return EXIT_RUNTIME
    except Exception as e:  # noqa: BLE001 - the one place a traceback becomes a line
        if debug:
            raise
        first = str(e).splitlines()[0] if str(e).strip() else ""
        if "out of memory" in str(e).lower():
            error(f"out of memory: {first[:200]} (try a smaller size, --n-samples 1 or --device cpu)")
        else:
            error(f"internal error: {type(e).__name__}: {first[:300]} (rerun with --debug)")
        return EXIT_RUNTIME


def error(message) -> None:
    """`ldm: error: <message>` on stderr, folded onto one line (a file name may hold a newline)."""
    sys.stderr.write(f"ldm: error: {one_line(message)}\n")
    sys.stderr.flush()


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
        sys.stderr.write("ldm: interrupted\n")
        code = EXIT_INTERRUPTED
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
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        sys.exit(_exit_code(lambda: super(OneLineErrors, self).main(*args, standalone_mode=False, **kwargs)))


__all__ = ["guarded", "error", "OneLineErrors"]
