"""The scripts in examples/ run as written against the embedded defaults (slow, `make test-all`; skipped when
weights/ has none). The default run checks, without a model, that they still name what ldmcli provides: the Python
examples' imports resolve, and batch.sh calls existing subcommands with existing options."""
from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldmcli.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _defaults_present() -> bool:
    from ldmcli.loading.registry import default_path
    from ldmcli.tasks import TASK_NAMES as TASKS
    try:
        for t in TASKS:
            default_path(t)
    except UsageError:
        return False
    return True


needs_defaults = pytest.mark.skipif(not _defaults_present(), reason="no embedded defaults in weights/ (make weights)")


def _run(args, cwd, **kw):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.mark.parametrize("script", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_python_example_imports_resolve(script):
    tree = ast.parse(script.read_text(), str(script))
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module.startswith("ldmcli")]
    assert imports
    for node in imports:
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name), f"{script.name}: {node.module} has no {alias.name}"


def _ldm_calls(script: Path):
    """(subcommand, [options]) for every `ldm ...` command line of a shell script, up to its pipe/redirect/`)`."""
    for line in script.read_text().splitlines():
        m = re.search(r"(?:^|[|(]\s*)ldm\s+(.*)", line)
        if m and not line.lstrip().startswith("#"):
            words = shlex.split(re.split(r"\s(?:\|\|?|>|&&)\s|\)\s*$", m.group(1))[0])
            yield words[0], [w for w in words[1:] if re.fullmatch(r"--?[A-Za-z][\w-]*", w)]


def test_batch_script_calls_existing_commands_and_options():
    import typer
    from ldmcli.cli.app import app
    subprocess.run(["bash", "-n", str(EXAMPLES / "batch.sh")], check=True)
    commands = typer.main.get_command(app).commands
    calls = list(_ldm_calls(EXAMPLES / "batch.sh"))
    assert len(calls) >= 10
    for name, options in calls:
        assert name in commands, name
        known = {o for p in commands[name].params for o in p.opts + p.secondary_opts}
        assert set(options) <= known, (name, set(options) - known)


@pytest.mark.slow   # runs every example on the embedded defaults
@needs_defaults
def test_python_examples(tmp_path):
    size = 32
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(tmp_path / "photo.png")
    mask = np.zeros((size, size), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "small.png")
    py = sys.executable
    _run([py, EXAMPLES / "txt2img.py", "a red circle"], tmp_path)
    _run([py, EXAMPLES / "inpaint.py", "photo.png", "mask.png"], tmp_path)
    _run([py, EXAMPLES / "superres.py", "small.png"], tmp_path)
    _run([py, EXAMPLES / "layout2img.py"], tmp_path)
    _run([py, EXAMPLES / "semantic2img.py"], tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert {"upscaled.png", "layout-0.png", "layout-1.png", "semantic-0.png", "semantic-1.png"} <= set(pngs), pngs
    assert Image.open(tmp_path / "upscaled.png").size == (32, 32)
    inpainted = [p for p in tmp_path.glob("*.png") if "inpaint" in p.name]
    assert inpainted, pngs
    out = np.asarray(Image.open(inpainted[0]).convert("RGB"))
    from ldmcli.io.images import load_mask
    keep = load_mask(str(tmp_path / "mask.png"), size=(size, size), blur=2) == 0   # the example feathers by 2 px
    assert keep.sum() >= 256 and (out[keep] == 128).all()   # outside the feathered mask: the input, exactly


@pytest.mark.slow
@needs_defaults
def test_batch_script(tmp_path):
    r = _run(["bash", EXAMPLES / "batch.sh", str(tmp_path / "out")], tmp_path)
    assert "replay identical" in r.stdout and "(bad input)" in r.stdout
    for name in ("square-x4.png", "inpainted.png", "layout.png", "semantic.png"):
        assert (tmp_path / "out" / name).exists(), name
    assert len(list((tmp_path / "out" / "txt2img").glob("*.png"))) == 3
