"""The architecture rules of docs/architecture.md, checked by import-linter and ruff.

import-linter reads the package as it is installed (``fedmtl.server`` and ``fedmtl.clients``
are the repository's top-level ``server/`` and ``clients/`` folders, mapped by setuptools'
``package-dir``), so the check runs on a staged copy with that layout.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPOSITION_ROOT = {"cli", "api", "launch", "__main__", "server", "clients"}
"""Children of ``fedmtl`` outside the core: the composition root and the two apps."""


def stage_installed_layout(dest: Path) -> Path:
    """Copy the package into ``dest`` with the installed layout; return ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "Dockerfile")
    shutil.copytree(ROOT / "fedmtl", dest / "fedmtl", ignore=ignore)
    shutil.copytree(ROOT / "server", dest / "fedmtl" / "server", ignore=ignore)
    shutil.copytree(ROOT / "clients", dest / "fedmtl" / "clients", ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def lint_imports(stage: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(stage), "PATH": str(BIN), "LANG": "C.UTF-8"}
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=stage, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_hold(tmp_path):
    """No import cycle anywhere; the core imports neither flwr nor the apps; the apps never
    import each other nor the composition root (pyproject's [tool.importlinter])."""
    result = lint_imports(stage_installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_import_contracts_catch_a_violation(tmp_path):
    """The check is not vacuous: a core module importing the server app, and a cycle, break it."""
    stage = stage_installed_layout(tmp_path)
    with (stage / "fedmtl" / "fairness.py").open("a") as handle:
        handle.write("\nimport fedmtl.server.strategy  # noqa\nimport fedmtl.results  # noqa\n")
    result = lint_imports(stage)
    assert result.returncode != 0
    assert "fedmtl.fairness -> fedmtl.server.strategy" in result.stdout
    assert "No import cycles" in result.stdout and "BROKEN" in result.stdout


def test_every_core_module_is_under_the_core_contract():
    """A new core module cannot slip past the rules: the forbidden contract lists them all."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    core_contract = next(c for c in config["contracts"] if c["name"].startswith("The core"))
    listed = {m.removeprefix("fedmtl.") for m in core_contract["source_modules"]}
    children = {p.stem for p in (ROOT / "fedmtl").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert listed == children - COMPOSITION_ROOT
    assert {"flwr", "ray", "fedmtl.server", "fedmtl.clients"} <= set(core_contract["forbidden_modules"])


def test_packaging_lists_every_package():
    """pyproject's explicit package list covers every package folder (the apps and the shipped configs
    included)."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(("fedmtl", *p.parent.relative_to(ROOT / "fedmtl").parts)).rstrip(".")
             for p in (ROOT / "fedmtl").rglob("__init__.py")}
    assert set(tool["packages"]) == found | {"fedmtl.server", "fedmtl.clients", "fedmtl.configs",
                                             "fedmtl.configs.studies"}
    assert tool["package-dir"] == {"fedmtl.server": "server", "fedmtl.clients": "clients", "fedmtl.configs": "configs"}
    assert tool["package-data"] == {"fedmtl": ["py.typed"], "fedmtl.configs": ["*.toml"],
                                    "fedmtl.configs.studies": ["*.toml"]}
    assert {p.name for p in (ROOT / "configs").iterdir() if p.is_dir() and p.name != "__pycache__"} == {"studies"}


def test_the_library_says_it_does_not_depend_on_flower():
    """The claim in fedmtl/__init__.py holds for the core: no core file mentions flwr in an import."""
    for path in (ROOT / "fedmtl").rglob("*.py"):
        rel = path.relative_to(ROOT / "fedmtl").parts
        if rel[0].removesuffix(".py") in COMPOSITION_ROOT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in {"flwr", "ray"} for n in names), f"{path}: {names}"


def test_ruff_is_clean():
    """The linter configured in pyproject.toml ([tool.ruff]) finds nothing."""
    result = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
