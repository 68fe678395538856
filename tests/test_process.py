"""The `ldm` process as a whole (ldmcli/cli/process.py).

It ends without Python's finalization (0.3–0.4 s after `import torch`) only where that loses nothing: its output
delivered, its exit code kept, and the normal exit kept where a thread, a tracer (coverage) or a child still needs
it; each such case runs a real process whose atexit hook leaves a marker file when Python finalizes. Garbage
collection is paused while the model loads, and in ldm's own process what the load made is frozen."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gc

import pytest
from PIL import Image
from typer.testing import CliRunner

import ldmcli.loading
from ldmcli.cli import process
from ldmcli.cli.app import app

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process ends")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]))

DRIVER = '''
import atexit, sys, threading, time
marker, mode = sys.argv.pop(1), sys.argv.pop(1)
atexit.register(lambda: open(marker, "w").write("finalized"))
if mode == "thread":       # a non-daemon thread still working when the command returns
    def work():
        time.sleep(0.5)
        open(marker + ".thread", "w").write("done")
    threading.Thread(target=work).start()
if mode == "trace":        # what coverage.py and debuggers install
    sys.settrace(lambda *a: None)
if mode == "freeze":       # leaves a marker when the loaded objects are frozen out of collections
    import gc
    frozen = gc.freeze
    def freeze():
        open(marker + ".frozen", "w").write(str(gc.isenabled()))
        frozen()
    gc.freeze = freeze
sys.argv[0] = "ldm"
from ldmcli.cli.app import main
main()
'''


def _ldm(tmp_path: Path, mode: str, *args) -> tuple:
    driver, marker = tmp_path / "driver.py", tmp_path / "finalized"
    driver.write_text(DRIVER)
    r = subprocess.run([sys.executable, str(driver), str(marker), mode, *map(str, args)], capture_output=True,
                       text=True, env=ENV, timeout=300)
    return r, marker


def test_a_finished_image_ends_the_process_at_once_with_its_output_delivered(tmp_path, sd1_file):
    out = tmp_path / "red.png"
    r, marker = _ldm(tmp_path, "plain", "txt2img", "a red circle", "--ckpt", sd1_file, "--steps", "3", "-H", "24",
                     "-W", "24", "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{out}\n"                          # stdout flushed through the pipe before the end
    with Image.open(out) as img:
        img.load()
    assert not marker.exists()                             # no finalization: the 0.3–0.4 s are not spent


def test_ldm_freezes_what_its_model_load_made(tmp_path, sd1_file):
    r, marker = _ldm(tmp_path, "freeze", "txt2img", "a red circle", "--ckpt", sd1_file, "--steps", "2", "-H", "24",
                     "-W", "24", "-o", tmp_path / "red.png", "-q")
    assert r.returncode == 0, r.stderr
    assert Path(f"{marker}.frozen").read_text() == "False"     # frozen once, while collection was still paused


def test_loading_pauses_collection_and_a_caller_in_process_is_not_frozen(monkeypatch, tmp_path, sd1_file):
    seen, load = [], ldmcli.loading.load

    def recording(*args, **kwargs):
        seen.append(gc.isenabled())
        return load(*args, **kwargs)
    monkeypatch.setattr(ldmcli.loading, "load", recording)
    frozen = gc.get_freeze_count()
    r = CliRunner().invoke(app, ["txt2img", "a red circle", "--ckpt", str(sd1_file), "--steps", "2", "-H", "24",
                                 "-W", "24", "-o", str(tmp_path / "red.png"), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert seen == [False]
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen      # many loads in one process: nothing kept past its collection


def test_bad_input_keeps_its_line_and_exit_code(tmp_path):
    r, marker = _ldm(tmp_path, "plain", "txt2img", "", "-o", tmp_path / "x.png")
    assert r.returncode == 2
    assert r.stderr.startswith("ldm: error: ") and r.stderr.count("\n") == 1
    assert not marker.exists()


def test_a_running_thread_gets_the_normal_exit(tmp_path):
    r, marker = _ldm(tmp_path, "thread", "weights", "list")
    assert r.returncode == 0, r.stderr
    assert Path(f"{marker}.thread").read_text() == "done"   # joined, as Python's exit joins it
    assert marker.exists()


def test_a_tracer_gets_the_normal_exit(tmp_path):
    """coverage.py and profilers write their results in Python's exit."""
    r, marker = _ldm(tmp_path, "trace", "weights", "list")
    assert r.returncode == 0, r.stderr
    assert marker.exists()


def test_inductor_or_a_child_process_keep_the_normal_exit(monkeypatch):
    if sys.gettrace() is not None or sys.getprofile() is not None:
        pytest.skip("under a tracer the normal exit is always kept")
    monkeypatch.setattr(process.threading, "enumerate", lambda: [process.threading.main_thread()])

    class Children:
        found: list = []

        @classmethod
        def active_children(cls):
            return cls.found
    monkeypatch.setitem(sys.modules, "multiprocessing", Children)
    monkeypatch.delitem(sys.modules, "torch._inductor", raising=False)
    assert process.can_end_now()
    monkeypatch.setitem(sys.modules, "torch._inductor", object())   # compile workers and caches
    assert not process.can_end_now()
    monkeypatch.delitem(sys.modules, "torch._inductor")
    Children.found = ["a child"]
    assert not process.can_end_now()


@pytest.mark.parametrize("code, status", [(None, 0), (0, 0), (3, 3), (130, 130), ("message", 1)])
def test_exit_codes_are_those_of_sys_exit(code, status, capsys):
    assert process.exit_code(code) == status
    assert capsys.readouterr().err == ("message\n" if code == "message" else "")
