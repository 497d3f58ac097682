"""A fresh install works: every module rtk imports comes from a dependency pyproject.toml declares.

A package that is on a machine only because something else pulled it in (typer once brought
click) keeps the suite green there and breaks a fresh ``pip install`` everywhere else. The static
test reads every import statement (and every ``require("module")``) of the shipped packages;
the runtime test imports the CLI and runs every command's ``--help`` with each undeclared
third-party module blocked for rtk's own code.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import shlex
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


# --- the distribution's name, and every install hint --------------------------------------------

#: pip's options that take a value (the value is no distribution).
_PIP_VALUE_OPTIONS = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url", "-f", "--find-links"}


def _hinted_distributions(text: str) -> list[str]:
    """The distributions a text's ``pip install …`` commands name, lower-cased; ``.`` for a checkout."""
    names = []
    for match in re.finditer(r"pip install ([^\n`|&;()#]*)", text):
        try:
            words = shlex.split(match.group(1))
        except ValueError:  # an unbalanced quote in prose
            words = match.group(1).split()
        value = False
        for word in words:
            if value or word in _PIP_VALUE_OPTIONS:
                value = not value
                continue
            if word.startswith("-"):
                continue
            name = re.match(r"[A-Za-z0-9._\-/]*", word).group(0)
            names.append("." if name.startswith((".", "/")) else name.lower())
    return [n for n in names if n]


def _string_constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)] + [
        "".join(v.value for v in n.values if isinstance(v, ast.Constant)) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)
    ]


def test_the_distribution_has_a_name_of_its_own_and_keeps_the_command_and_packages():
    from toolkit.core.errors import DISTRIBUTION

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "resnet-toolkit"  # `rtk` on the index is an unrelated GPIO library
    assert project["scripts"] == {"rtk": "toolkit.cli.app:main"}


def test_no_hint_anywhere_names_another_distribution_than_rtks_own_or_one_it_declares():
    from toolkit.core.errors import DISTRIBUTION

    allowed = declared_distributions() | {DISTRIBUTION, "."}
    texts = [(str(path.relative_to(ROOT)), text) for package in (*PACKAGES, "tests") for path in sorted((ROOT / package).rglob("*.py"))
             for text in _string_constants(path)]
    texts += [("README.md", (ROOT / "README.md").read_text()), (".ci/run", (ROOT / ".ci" / "run").read_text())]
    named = [(where, name) for where, text in texts for name in _hinted_distributions(text)]
    assert named, "the scan found no install command at all: the pattern is broken"
    wrong = [f"{where}: pip install {name}" for where, name in named if name != "." and _norm(name) not in allowed]
    assert not wrong, "install commands naming a distribution rtk neither is nor declares:\n" + "\n".join(wrong)
    assert not re.search(r"pip install \S*'rtk\[", "\n".join(text for _, text in texts))


def _distribution(site: Path, direct_url: dict | None) -> None:
    """An installed distribution of rtk's name in ``site``, as pip leaves one (METADATA, INSTALLER, and direct_url.json: PEP 610)."""
    info = site / "resnet_toolkit-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: resnet-toolkit\nVersion: 0.1.0\n")
    (info / "INSTALLER").write_text("pip\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))


@pytest.mark.parametrize(
    ("install", "expected"),
    [
        ("editable", "cd {checkout} && pip install -e '.[trt]'"),
        ("editable, run from the checkout", "cd {checkout} && pip install -e '.[trt]'"),
        ("wheel", "pip install 'resnet-toolkit[trt]'"),
        ("from a folder, not editable", "pip install 'resnet-toolkit[trt]'"),
        ("not installed, run from this checkout", "cd {root} && pip install -e '.[trt]'"),
    ],
)
def test_install_hints_follow_how_rtk_was_installed(install, expected, tmp_path, monkeypatch):
    from toolkit.core import errors

    checkout = tmp_path / "my checkout"
    records = {
        "editable": {"url": checkout.as_uri(), "dir_info": {"editable": True}},
        "editable, run from the checkout": {"url": checkout.as_uri(), "dir_info": {"editable": True}},
        "wheel": None,
        "from a folder, not editable": {"url": checkout.as_uri(), "dir_info": {}},
    }
    if install in records:
        _distribution(tmp_path / "site", records[install])
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
    else:
        monkeypatch.setattr(md, "distributions", lambda **kw: iter(()))
    if install == "editable, run from the checkout":  # the checkout, first on sys.path, holds the egg-info of its build
        egg = checkout / "resnet_toolkit.egg-info"
        egg.mkdir(parents=True)
        (egg / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: resnet-toolkit\nVersion: 0.1.0\n")
        monkeypatch.syspath_prepend(str(checkout))
    errors.installed_from.cache_clear()
    try:
        hint = errors.install_hint("trt")
        assert hint == expected.format(checkout="'" + str(checkout) + "'", root=ROOT)
        with pytest.raises(errors.RtkError) as raised:  # the hint a missing package is met with
            errors.require("openvino.nothing_here", "a test")
        assert errors.install_hint("openvino") in str(raised.value)
    finally:
        errors.installed_from.cache_clear()


def test_building_without_tensorrt_names_the_extra_and_the_gpu_it_also_needs(cli, tmp_path, monkeypatch):
    import torch

    from exporters.onnx import export_onnx
    from helpers import make_checkpoint
    from toolkit.core.errors import install_hint

    [onnx] = export_onnx(make_checkpoint(tmp_path / "m.pth"), options=None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as where TensorRT is not installed
    built = cli("build", onnx)
    assert built.exit_code == 1 and install_hint("trt") in built.stderr and "'rtk[" not in built.stderr
    if not torch.cuda.is_available():
        assert "TensorRT also needs an NVIDIA GPU with CUDA, and this machine has none" in built.stderr
