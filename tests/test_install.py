"""`python -m ldmcli.train.install`: a run's exported models become the embedded defaults (registry entries with
file, default_for, size and SHA-256); a partial run installs nothing."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from ldmcli.errors import UsageError
from ldmcli.tasks import TASK_NAMES as TASKS
from ldmcli.train.install import install, main


def _run(tmp_path, tasks=TASKS):
    run = tmp_path / "run"
    run.mkdir()
    for i, t in enumerate(tasks):
        save_file({"w": torch.full((4,), float(i))}, str(run / f"{t}.safetensors"),
                  metadata={"ldmcli_version": f"ldmcli test train task={t}"})
    return run


def test_install_writes_files_and_registry_entries(tmp_path, monkeypatch):
    run, weights = _run(tmp_path), tmp_path / "weights"
    weights.mkdir()
    (weights / "registry.json").write_text(json.dumps({"comment": "kept", "models": {"sd-v1-5": {"task": "txt2img"}}}))
    written = install(run, weights)
    reg = json.loads((weights / "registry.json").read_text())
    assert reg["comment"] == "kept" and "sd-v1-5" in reg["models"]
    for t in TASKS:
        e = reg["models"][f"ldmcli-default-{t}"]
        f = weights / e["file"]
        assert e["default_for"] == t and e["task"] == t and f.read_bytes() == (run / f"{t}.safetensors").read_bytes()
        assert e["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest() and e["bytes"] == f.stat().st_size
        assert e["source"] == f"ldmcli test train task={t}"
    assert set(written) == {f"ldmcli-default-{t}" for t in TASKS}
    assert not [p for p in weights.iterdir() if ".tmp" in p.name]
    import ldmcli.loading.registry as W
    monkeypatch.setattr(W, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(W, "REGISTRY_FILE", weights / "registry.json")
    assert W.default_path("superres") == weights / "ldmcli-default-superres.safetensors"


def test_partial_run_installs_nothing(tmp_path, capsys):
    run, weights = _run(tmp_path, TASKS[:3]), tmp_path / "weights"
    with pytest.raises(UsageError, match="layout2img.safetensors"):
        install(run, weights)
    assert not weights.exists() or not list(weights.iterdir())
    assert main([str(run), str(weights)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main([str(run), str(weights), "--task", "txt2img"]) == 0
    assert (weights / "ldmcli-default-txt2img.safetensors").exists()
