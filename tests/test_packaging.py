"""Installed names are namespaced: the apps install as fedmtl.server and fedmtl.clients.

The wheel is built from this checkout and unpacked into a folder that is put first on
``sys.path`` of a fresh interpreter started outside the checkout, so imports resolve to the
installed layout and never to the repository's top-level folders.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fedmtl's wheel, built from this checkout and unpacked (what ``pip install`` lays out)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=600)
    wheel = next(out.glob("fedmtl-*.whl"))
    target = out / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return target


def run_python(code: str, cwd: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(site), "PATH": str(Path(sys.executable).parent), "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_wheel_holds_the_apps_under_fedmtl_only(installed):
    tops = {p.name for p in installed.iterdir() if not p.name.endswith(".dist-info")}
    assert tops == {"fedmtl"}
    for path in ("fedmtl/server/app.py", "fedmtl/server/strategy.py", "fedmtl/clients/app.py",
                 "fedmtl/protocol.py", "fedmtl/launch/simulation.py"):
        assert (installed / path).is_file(), path


def test_no_top_level_server_or_clients_after_install(installed, tmp_path):
    code = ("import importlib.util as u, fedmtl.server.app as s, fedmtl.clients.app as c\n"
            "print(u.find_spec('server'), u.find_spec('clients'))\n"
            "print(s.__file__); print(c.__file__)\n")
    result = run_python(code, tmp_path, installed)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "None None"
    assert all(line.startswith(str(installed / "fedmtl")) for line in lines[1:])


def test_a_users_own_clients_package_is_not_shadowed(installed, tmp_path):
    """In a folder with its own ``clients/`` package, ``import clients`` finds the user's package
    and fedmtl's ClientApp still comes from fedmtl."""
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "__init__.py").write_text("WHO = 'the user'\n")
    code = ("import clients, fedmtl.clients.app as app\n"
            "print(clients.WHO); print(app.app.__class__.__name__); print(app.__file__)\n")
    result = run_python(code, tmp_path, installed)
    assert result.returncode == 0, result.stderr[-3000:]
    who, kind, where = result.stdout.splitlines()
    assert (who, kind) == ("the user", "ClientApp")
    assert where.startswith(str(installed / "fedmtl" / "clients"))


def test_the_wheel_ships_the_configs_and_py_typed(installed):
    """configs/*.toml and configs/studies/*.toml install as fedmtl.configs; py.typed marks the types."""
    assert (installed / "fedmtl" / "py.typed").is_file()
    for folder in ("", "studies"):
        shipped = {p.name for p in (installed / "fedmtl" / "configs" / folder).glob("*.toml")}
        assert shipped == {p.name for p in (ROOT / "configs" / folder).glob("*.toml")}, folder
        assert shipped


def test_shipped_configs_are_read_by_name_from_any_folder(installed, tmp_path):
    """In a folder without configs, ``quickstart`` and ``studies/qffl_paper`` name the installed files;
    an unknown name lists the shipped ones."""
    code = ("from fedmtl.config import ConfigError, read_values\n"
            "from fedmtl.shipped import resolve_config\n"
            "print(resolve_config('quickstart')); print(resolve_config('studies/qffl_paper'))\n"
            "print(read_values('quickstart')['run']['name'])\n"
            "try:\n    read_values('nosuch')\nexcept ConfigError as exc:\n    print(exc)\n")
    result = run_python(code, tmp_path, installed)
    assert result.returncode == 0, result.stderr[-3000:]
    quickstart, study, name, error = result.stdout.splitlines()
    assert quickstart == str(installed / "fedmtl" / "configs" / "quickstart.toml")
    assert study == str(installed / "fedmtl" / "configs" / "studies" / "qffl_paper.toml")
    assert name == "quickstart"
    assert "'nosuch' does not exist" in error and "quickstart" in error and "studies/qffl_paper" in error


def test_the_metadata_states_dependency_ranges_not_pins():
    """pyproject's dependencies are ranges (the Makefile and Dockerfiles pin the CPU torch wheel
    they install first); the package version is fedmtl.__version__."""
    import re
    import tomllib

    import fedmtl

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        assert "==" not in requirement and ">=" in requirement, requirement
    torch = next(r for r in project["dependencies"] if re.match(r"torch\W", r))
    assert "<" in torch.replace("<=", "")
    assert project["version"] == fedmtl.__version__
