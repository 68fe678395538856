"""The layout the redesign promises, kept true: no import cycles, small files, a map of every folder, one task table
that the CLI, the batch runner and `ldm eval` read, and a public API that imports no torch until used."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ldmcli"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set) -> set:
    """The ldmcli modules `path` imports anywhere (function-level imports included), resolved to modules."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports pkg.mod; `from mod import name` imports mod
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("ldmcli"):
                out.add(name)
    return out


def _graph() -> dict:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) - {_module_name(f)} for f in files}


def test_no_module_imports_a_module_that_imports_it_back():
    graph = _graph()
    cycles = set()

    def visit(node, stack, on_stack):
        for nxt in graph.get(node, ()):
            if nxt in on_stack:
                cycles.add(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, stack + [nxt], on_stack | {nxt})
    seen: set = set()
    for start in graph:
        if start not in seen:
            seen.add(start)
            visit(start, [start], {start})
    assert not cycles, sorted(cycles)[:5]


def test_no_file_over_the_size_limit():
    long = {str(f.relative_to(ROOT)): n for f in PACKAGE.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_architecture_map_names_every_folder():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    folders = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"}
    missing = sorted(f for f in folders if f"`{f}/`" not in text)
    assert not missing, missing


def test_every_subcommand_is_a_row_of_the_task_table():
    from ldmcli.cli.app import app
    from ldmcli.tasks import TASKS
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert set(TASKS) <= commands
    for row in TASKS.values():
        assert row.function().__name__ == row.name


def test_public_api_is_lazy_and_complete():
    code = ("import sys, ldmcli; assert 'torch' not in sys.modules; "
            "names = ['load', 'SamplerSettings', 'txt2img', 'inpaint', 'superres', 'layout2img', 'semantic2img', 'sample']; "
            "[getattr(ldmcli, n) for n in names]; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("module", ["ldmcli.cli.app", "ldmcli.tasks", "ldmcli.cli.jobs"])
def test_cli_modules_import_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
