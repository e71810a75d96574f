"""The package layout is a rule, not a habit: import-linter's contracts in pyproject.toml
(layers in data-flow order, no cycles, no torch below ``encoders``) hold, an upward
import or a cycle makes them fail, and packages reach each other only through the public
API their ``__init__`` names (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "harness"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True
    )


def test_lint_imports_keeps_every_contract():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("file", "code", "broken"),
    [
        ("core/upward.py", "from harness.cli import main\n", "harness.core.upward -> harness.cli"),
        ("data/loop_a.py", "from harness.data import loop_b\n", "No import cycles"),
        ("stats/heavy.py", "import torch\n", "harness.stats.heavy -> torch"),
    ],
    ids=["upward-import", "cycle", "torch-in-stats"],
)
def test_a_broken_rule_fails_lint_imports(tmp_path, file, code, broken):
    """A copy of the package with one bad import, checked with the same config."""
    shutil.copytree(PACKAGE, tmp_path / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "harness" / file).write_text(code)
    if file == "data/loop_a.py":
        (tmp_path / "harness" / "data" / "loop_b.py").write_text(
            "from harness.data import loop_a\n"
        )
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert "BROKEN" in done.stdout and broken in done.stdout, done.stdout


def test_no_module_is_part_of_an_import_cycle():
    """Every import of every module, lazy ones in functions included: none leads back."""
    graph = grimp.build_graph("harness")
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported.startswith(importer + ".") or importer.startswith(imported + "."):
                continue  # a package and its own module: grimp cannot chain them
            back = graph.find_shortest_chain(imported, importer, as_packages=False)
            if back:
                cycles.append(" -> ".join((importer, *back)))
    assert cycles == []


def _harness_imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text())
    return [
        (node.module, [a.name for a in node.names])
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness.")
    ]


def test_packages_use_each_other_only_through_their_public_api():
    """``from harness.encoders import load_encoder``, never ``harness.encoders.load``, and
    only names the package's ``__init__`` lists: everything else is private to it."""
    wrong = []
    for path in sorted(PACKAGE.glob("*/*.py")):
        own = path.parent.name
        for module, names in _harness_imports(path):
            parts = module.split(".")
            if parts[1] == own:
                continue
            if len(parts) > 2:
                wrong.append(f"{path.relative_to(ROOT)}: from {module} import ...")
                continue
            public = set(importlib.import_module(module).__all__)
            where = path.relative_to(ROOT)
            wrong += [
                f"{where}: {module}.{n} is not in its __all__" for n in names if n not in public
            ]
    assert wrong == []


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_every_public_name_resolves_and_none_hides_a_module(package):
    """A public name that is also a module's name would be shadowed by that module as
    soon as it is imported, so none may be."""
    module = importlib.import_module(f"harness.{package}")
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    shadowed = [name for name in module.__all__ if (PACKAGE / package / f"{name}.py").exists()]
    assert missing == [] and shadowed == []
