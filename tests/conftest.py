"""Shared test set-up: tiny checkpoints written once per session, a one-thread torch fixture, and a private temp
folder inside pytest's basetemp so that a run leaves nothing behind anywhere else (checked when the session ends)."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis.configuration import set_hypothesis_home_dir

sys.path.insert(0, os.path.dirname(__file__))   # tests/tiny.py

# Hypothesis' example database would otherwise grow a .hypothesis/ folder in the working directory; failures still
# print the falsifying example. Its other caches follow the session's temp folder (pytest_sessionstart).
hypothesis_settings.register_profile("ldmcli", database=None)
hypothesis_settings.load_profile("ldmcli")

_TEMP = pytest.StashKey[Path]()
_SAVED = pytest.StashKey[dict]()
_LEFT = pytest.StashKey[list]()


# ---- nothing left behind: tempfile, child processes and hypothesis write under pytest's basetemp ------------------
def pytest_sessionstart(session: pytest.Session) -> None:
    """Route every temp file of this process and of its children ($TMPDIR) into `<basetemp>/tempfile`, and
    torch's compile caches into `<basetemp>/torchinductor` (importing torch._dynamo, as diffusers does, creates
    `<temp folder>/torchinductor_<user>` otherwise).

    Done in a hook, not a fixture, so that environments copied at import time (subprocess `env=` dicts built at
    module level) already carry these variables."""
    base = session.config._tmp_path_factory.getbasetemp()   # what the tmp_path_factory fixture hands out
    temp = base / "tempfile"
    temp.mkdir(exist_ok=True)
    env = {"TMPDIR": str(temp), "TORCHINDUCTOR_CACHE_DIR": str(base / "torchinductor")}
    session.config.stash[_SAVED] = {name: os.environ.get(name) for name in env} | {"tempfile": tempfile.tempdir}
    session.config.stash[_TEMP] = temp
    os.environ.update(env)
    tempfile.tempdir = str(temp)
    set_hypothesis_home_dir(base / "hypothesis")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a passing run that left entries in the private temp folder: some test or library code does not clean
    up after itself (outside pytest those files would pile up in the system temp folder)."""
    temp = session.config.stash.get(_TEMP, None)
    if temp is None:
        return
    saved = session.config.stash[_SAVED]
    tempfile.tempdir = saved.pop("tempfile")
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    left = sorted(p.name for p in temp.iterdir())
    session.config.stash[_LEFT] = left
    if left and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    left = config.stash.get(_LEFT, [])
    if left:
        terminalreporter.write_sep("=", "temporary files left behind", red=True)
        names = ", ".join(left[:8]) + (", ..." if len(left) > 8 else "")
        terminalreporter.write_line(f"{len(left)} in {config.stash[_TEMP]}: {names}")


# ---- shared fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions on a shared 2-core machine run ~100x faster on one thread than on two fighting, and pinned
    golden hashes need one thread (reductions split differently otherwise). Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """Factory: `tiny_ckpt(cfg, seed)` writes the tiny model of `cfg` (seeded random weights, tests/tiny.py) as a
    CompVis-layout safetensors file, `<cfg.name>.safetensors` in a folder of its own, and returns its path.
    `weights=` builds the tensors from another config (same shapes); `edit(state_dict)` changes them first."""
    from ldmcli.loading.checkpoint import config_metadata, save_safetensors
    from tiny import compvis_state_dict, tiny_model

    def write(cfg, seed: int, *, weights=None, edit=None, name: str | None = None) -> Path:
        sd = compvis_state_dict(tiny_model(weights or cfg, seed=seed))
        if edit is not None:
            edit(sd)
        path = tmp_path_factory.mktemp("ckpt") / f"{name or cfg.name}.safetensors"
        save_safetensors(sd, path, config_metadata(cfg))
        return path
    return write


@pytest.fixture(scope="session")
def sd1_file(tiny_ckpt):
    """The tiny SD1 txt2img checkpoint (seed 5) that the CLI, fault, memory, determinism and compile tests share.
    Read-only: a test that needs to change a checkpoint writes its own."""
    from tiny import SD1_TINY
    return tiny_ckpt(SD1_TINY, seed=5)
