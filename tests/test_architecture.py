"""The architecture as a contract: layers that point one way, no cycles, a readable import graph.

The layers (cli → use-cases → benchmarks | exporters → engines → core) are written down as
import-linter contracts in pyproject.toml; these tests run them, show that they do catch an
upward import and a cycle, and check the habits the contracts cannot see: the project's own
imports at the top of files, no module reaching into another's private names, one function that
opens an engine, one declaration of the precision vocabulary.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("toolkit", "engines", "exporters", "benchmarks")
PRECISION_NAMES = {"fp32", "fp16", "bf16", "int8"}
ENGINE_CLASSES = {"EagerEngine", "OrtEngine", "OvEngine", "TrtEngine"}


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _is_project(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in PACKAGES


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's contracts of ``root``/pyproject.toml, on the packages under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)


def test_the_layer_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        # The core importing a use-case: an upward import, through a layer.
        ("toolkit/core/spec.py", "from toolkit.usecases import parity as _upward", "Layers"),
        # An engine importing the benchmark harness, which stands above it.
        ("engines/base.py", "import benchmarks.harness as _upward", "Layers"),
        # Two core modules importing each other: a cycle.
        ("toolkit/core/files.py", "import toolkit.core.outputs as _cycle", "No import cycles"),
        # One runtime importing another.
        ("engines/openvino.py", "import engines.ort as _other", "Each runtime stands alone"),
    ],
)
def test_the_contracts_fail_on_a_bad_import(tmp_path, module, line, broken):
    """A deliberately bad import in a copy of the tree breaks the contract that forbids it."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken_lines = [text for text in result.stdout.splitlines() if " BROKEN" in text]
    assert any(text.startswith(broken) for text in broken_lines), result.stdout


def test_the_projects_own_imports_sit_at_the_top_of_files():
    """An import of rtk's own modules inside a function hides an edge of the graph from a reader;
    one that must be lazy (it pulls in torch, which `rtk --help` must not pay for) says so."""
    hidden = []
    for path in _sources():
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.col_offset == 0:
                continue
            modules = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [a.name for a in getattr(node, "names", [])]
            if isinstance(node, ast.ImportFrom) and node.level:
                modules = ["relative"]
            if any(_is_project(m) or m == "relative" for m in modules) and "# lazy:" not in lines[node.end_lineno - 1]:
                hidden.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not hidden, f"project imports inside functions or blocks, without a '# lazy:' reason: {hidden}"


def test_no_module_imports_another_modules_private_names():
    reached = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and _is_project(node.module):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
                reached += [f"{path.relative_to(ROOT)}: {node.module}.{name}" for name in private]
    assert not reached, reached


def test_exactly_one_public_function_opens_an_engine():
    """Commands and use-cases open engines through toolkit.usecases.opening.open_engine; an engine
    class is built directly only by it, by the exporter's own parity check, and by the benchmarks
    that measure the engine classes themselves on named files (against the bare runtimes, and
    rtk's int8 files against ONNX Runtime's own)."""
    allowed = {"toolkit/usecases/opening.py", "exporters/onnx.py", "benchmarks/overhead.py", "benchmarks/int8_peer.py"}
    builders, openers = [], []
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ENGINE_CLASSES and rel not in allowed:
                builders.append(f"{rel}:{node.lineno} {node.func.id}")
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and "open" in node.name and "engine" in node.name:
                openers.append(f"{rel}: {node.name}")
    assert not builders, builders
    assert openers == ["toolkit/usecases/opening.py: open_engine"]


def test_the_precision_vocabulary_is_declared_once():
    """Module-level tuples, lists or sets of precision names, and Enums of them, live in toolkit.core.precision only."""
    declared = []
    for path in _sources():
        rel = str(path.relative_to(ROOT))
        if rel == "toolkit/core/precision.py":
            continue
        for node in ast.parse(path.read_text()).body:
            values = []
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, (ast.Tuple, ast.List, ast.Set)):
                values = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
            elif isinstance(node, ast.ClassDef):
                values = [s.value.value for s in node.body if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)]
            if len([v for v in values if v in PRECISION_NAMES]) >= 2:
                declared.append(f"{rel}:{node.lineno}")
    assert not declared, f"precision names declared outside toolkit/core/precision.py: {declared}"


def test_the_cli_imports_none_of_the_heavy_packages():
    """`rtk --help` imports every command and stays fast: numpy (50 ms of a 0.27 s `rtk --help`),
    torch, ONNX, ONNX Runtime, OpenVINO, TensorRT, matplotlib, Pillow and scikit-learn load only
    when a command runs, so each command imports its use-case inside its body."""
    heavy = ("numpy", "torch", "torchvision", "onnx", "onnxruntime", "openvino", "tensorrt", "matplotlib", "PIL", "sklearn")
    code = f"import sys, toolkit.cli.app; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
