"""The suite leaves nothing behind: temp files of the tests, of ldmcli and of child processes land in pytest's
basetemp (tests/conftest.py), where the session-end check fails a run that did not clean up after itself."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import settings


def test_temp_files_of_this_process_and_its_children_go_under_pytest_basetemp(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    assert Path(tempfile.gettempdir()).is_relative_to(base)
    child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                           capture_output=True, text=True, check=True)
    assert Path(child.stdout.strip()).is_relative_to(base)
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).is_relative_to(base)   # torch._dynamo creates it on import


def test_hypothesis_keeps_no_example_database():
    assert settings.default.database is None   # no .hypothesis/ folder in the working directory
