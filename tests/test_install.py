"""A fresh install works: every module rtk imports comes from a dependency pyproject.toml declares.

A package that is on a machine only because something else pulled it in (typer once brought
click) keeps the suite green there and breaks ``pip install rtk`` everywhere else. The static
test reads every import statement (and every ``require("module")``) of the shipped packages;
the runtime test imports the CLI and runs every command's ``--help`` with each undeclared
third-party module blocked for rtk's own code.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("toolkit", "engines", "exporters", "benchmarks")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions() -> set[str]:
    """Every distribution pyproject.toml names, in its dependencies or any extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1)) for r in reqs}


def provided_modules() -> set[str]:
    """Top-level modules a declared distribution provides: from installed metadata, or its own name
    for an optional one that is not installed here (tensorrt)."""
    declared = declared_distributions()
    modules = {_norm(d).replace("-", "_") for d in declared}
    for module, dists in md.packages_distributions().items():
        if any(_norm(d) in declared for d in dists):
            modules.add(module)
    return modules


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import statement and every ``require("module")`` call."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (
            isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def test_every_import_of_the_shipped_packages_is_declared():
    allowed = provided_modules() | set(sys.stdlib_module_names) | set(PACKAGES) | {"__future__"}
    undeclared = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in _imports(path)
        if module not in allowed
    ]
    assert not undeclared, "imports no dependency in pyproject.toml provides:\n" + "\n".join(undeclared)


# Runs in a fresh interpreter: a finder placed first on sys.meta_path refuses, for imports made
# from rtk's own files, every top-level module that is neither stdlib, rtk's, nor declared.
_BLOCKED_IMPORT_SCRIPT = r"""
import json, sys
from pathlib import Path

allowed = set(json.loads(sys.argv[1]))
roots = tuple(str(Path(sys.argv[2], p)) for p in json.loads(sys.argv[3]))
blocked = []

class BlockUndeclared:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in allowed:
            return None
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        if frame is not None and frame.f_code.co_filename.startswith(roots):
            blocked.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not declared in pyproject.toml)")
        return None

sys.meta_path.insert(0, BlockUndeclared())

import importlib, pkgutil
for package in json.loads(sys.argv[3]):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)

from toolkit.cli.app import COMMANDS, app
for argv in [["--help"]] + [[name, "--help"] for name, _ in COMMANDS]:
    try:
        app(argv, prog_name="rtk")
    except SystemExit as exc:
        assert exc.code in (0, None), (argv, exc.code)
print(json.dumps(blocked))
"""


def test_the_cli_imports_and_every_help_works_with_undeclared_modules_blocked():
    allowed = provided_modules() | set(sys.stdlib_module_names) | set(PACKAGES) | {"__future__"}
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT_SCRIPT, json.dumps(sorted(allowed)), str(ROOT), json.dumps(PACKAGES)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_click_is_not_needed(monkeypatch):
    # The module that broke a fresh install: typer 0.29 vendors it and no longer installs it.
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['click'] = None; from toolkit.cli.app import main; sys.argv = ['rtk', '--help']; main()"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage" in proc.stdout
