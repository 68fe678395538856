"""Signals, pipes and terminals, through a real `ldm` process (issue 17).

- SIGTERM stops a batch the way Ctrl-C does: finished images kept, no partial file, one line, exit 143;
- Ctrl-C pressed again while the first one unwinds changes nothing: one line, exit 130;
- a reader that closes stdout (`ldm ... | head -n 1`) stops the batch with one line and exit 141, and Python's
  "Exception ignored ... BrokenPipeError" never shows;
- on a terminal, the image paths (stdout) and the progress bars (stderr) share the screen without overwriting
  each other: replayed through a small terminal model, every path is a line of its own on the final screen.
"""
from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, pipes and terminals")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))   # carries the TMPDIR


def _default_sigint() -> None:
    """Background jobs start with SIGINT ignored (and ldm keeps it so); these tests are about Ctrl-C reaching ldm."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _batch(tmp_path: Path, ckpt: Path, n_jobs: int, *more: str) -> subprocess.Popen:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("".join(f"prompt number {i}\n" for i in range(n_jobs)))
    return subprocess.Popen([sys.executable, "-m", "ldmcli", "txt2img", "--from-file", str(jobs), "--ckpt", str(ckpt),
                             "--steps", "20", "-H", "24", "-W", "24", "-o", str(tmp_path / "out"), "-q", *more],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=_default_sigint)


def _outputs(tmp_path: Path) -> tuple:
    """(complete PNGs, anything else) in the output folder and beside it."""
    complete, other = [], sorted(p.name for p in tmp_path.iterdir() if p.name not in ("jobs.txt", "out"))
    for p in sorted((tmp_path / "out").iterdir()):
        try:
            with Image.open(p) as img:
                img.load()
            readable = p.suffix == ".png" and not p.name.startswith(".")
        except Exception:  # noqa: BLE001 - unreadable: a partial file
            readable = False
        if readable:
            complete.append(p)
        else:
            other.append(p.name)
    return complete, other


def _interrupt(proc: subprocess.Popen, signals: list) -> tuple:
    """Wait for the first finished image, send `signals` as (signal, delay before it), return (first, rest, err)."""
    try:
        first = proc.stdout.readline()
        for sig, delay in signals:
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(sig)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return first, rest, err


def test_sigterm_stops_a_batch_like_ctrl_c(tmp_path, sd1_file):
    proc = _batch(tmp_path, sd1_file, 200)
    first, rest, err = _interrupt(proc, [(signal.SIGTERM, 0.05)])
    complete, other = _outputs(tmp_path)
    assert proc.returncode == 143, err
    assert err.splitlines() == ["ldm: error: terminated"], err
    assert 1 <= len(complete) < 200 and other == [], other
    assert set([first.strip()] + rest.split()) <= {str(p) for p in complete}   # printed = complete


def test_ctrl_c_pressed_again_while_stopping_changes_nothing(tmp_path, sd1_file):
    """The later presses land while the first unwinds, while the line is printed and while Python finalizes (where
    a Python handler no longer runs and the default action would kill the process without its exit code)."""
    proc = _batch(tmp_path, sd1_file, 200)
    first, rest, err = _interrupt(proc, [(signal.SIGINT, 0.05)] + [(signal.SIGINT, 0.02)] * 8)
    complete, other = _outputs(tmp_path)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["ldm: error: interrupted"], err
    assert 1 <= len(complete) < 200 and other == [], other
    assert set([first.strip()] + rest.split()) <= {str(p) for p in complete}


def test_closed_stdout_stops_the_batch_with_one_line(tmp_path, sd1_file):
    """`ldm ... | head -n 1`: the reader takes one path and goes. The images written stay (a rerun makes the
    rest); the jobs after the one whose path could not be written are not run."""
    proc = _batch(tmp_path, sd1_file, 6)
    try:
        first = proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    complete, other = _outputs(tmp_path)
    assert proc.returncode == 141, err
    assert len(err.splitlines()) == 1 and "Exception ignored" not in err, err
    assert re.fullmatch(r"ldm: error: stdout was closed \(broken pipe\): stopped in job \d, \d more job\(s\) not run; "
                        r"the images written are kept\n", err), err
    assert 2 <= len(complete) < 6 and other == [], other
    assert first.strip() == str(complete[0])


def test_closed_stdout_of_a_listing_is_one_line():
    """Any command, not only a batch: `ldm weights list | head -n 1` with the reader gone before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "ldmcli", "weights", "list"], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    finally:
        os.close(write_end)
    assert r.returncode == 141, r.stderr
    assert r.stderr == "ldm: error: stdout was closed (broken pipe); the rest of the output was not written\n"


def test_handlers_are_installed_only_while_a_command_runs():
    from ldmcli.cli.signals import stops_cleanly
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stops_cleanly():
        inside = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert inside[0] not in before and inside[1] not in before
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_an_ignored_sigint_stays_ignored():
    """A shell starts `ldm ... &` with SIGINT ignored: Ctrl-C at that shell is not meant for it."""
    from ldmcli.cli.signals import stops_cleanly
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stops_cleanly():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


# --- one terminal for stdout and stderr -----------------------------------------------------------------------------
def screen(data: str, width: int) -> list:
    """The lines a terminal shows after `data` (no scrolling limit): enough of a VT100 for rich's live display,
    which redraws its bars by moving the cursor up over them and erasing each line."""
    lines, row, col = [[]], 0, 0
    for m in re.finditer(r"\x1b\[([?0-9;]*)([A-Za-z])|\x1b\][^\x07]*\x07|\x1b.|(\r)|(\n)|([^\x1b\r\n])", data):
        final, params = m.group(2), m.group(1) or ""
        n = int(params) if params.isdigit() else None
        if m.group(3):
            col = 0
        elif m.group(4):
            row += 1
        elif m.group(5):
            if col >= width:
                row, col = row + 1, 0
            while len(lines) <= row:
                lines.append([])
            line = lines[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = m.group(5)
            col += 1
        elif final == "A":
            row = max(0, row - (n or 1))
        elif final == "B":
            row += n or 1
        elif final == "C":
            col += n or 1
        elif final == "D":
            col = max(0, col - (n or 1))
        elif final == "G":
            col = (n or 1) - 1
        elif final == "K" and row < len(lines):
            line = lines[row]
            lines[row] = [] if n == 2 else line[:col] if not n else [" "] * col + line[col:]
        while len(lines) <= row:
            lines.append([])
    return ["".join(line).rstrip() for line in lines]


def test_screen_model_reads_a_redraw():
    assert screen("bar 1/2\r\x1b[2Kbar 2/2\r\npath\x1b[1A\r\x1b[2Kover\n", 80) == ["over", "path"]


def test_paths_and_progress_share_one_terminal(tmp_path, sd1_file):
    import fcntl
    import pty
    import termios
    master, slave = pty.openpty()
    rows, cols = 50, 160
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in ENV.items() if k not in ("NO_COLOR", "COLUMNS", "LINES", "TERM")}
    proc = subprocess.Popen([sys.executable, "-m", "ldmcli", "txt2img", "a red circle", "--ckpt", str(sd1_file),
                             "--steps", "4", "-H", "24", "-W", "24", "-n", "8", "-o", str(tmp_path / "out")],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=dict(env, TERM="xterm"))
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:   # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    shown = screen(b"".join(chunks).decode("utf-8", "replace"), cols)
    paths = sorted(str(p) for p in (tmp_path / "out").glob("*.png"))
    assert proc.returncode == 0, shown
    assert len(paths) == 8
    assert sorted(line for line in shown if line in paths) == paths, "\n".join(shown)   # each on a line of its own
    assert any(line.startswith("txt2img") and "1/1" in line for line in shown), "\n".join(shown)   # the batch bar
