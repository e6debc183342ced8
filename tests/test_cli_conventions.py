"""Command-line conventions: a light ``fedmtl --help``, ``--version``, shipped configs by name,
``--grid key=a,b`` as Hydra's, ``--set`` without ``=`` named, help texts that keep their examples."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedmtl.cli import cli
from fedmtl.config import ConfigError
from fedmtl.launch.sweep import parse_grid_option
from fedmtl.shipped import config_name, resolve_config, shipped_configs

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "flwr", "ray", "pandas", "matplotlib")


def fedmtl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "fedmtl", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_importing_the_command_line_imports_no_heavy_library(tmp_path):
    code = f"import sys, fedmtl.cli\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_help_and_version_work(tmp_path):
    help_ = fedmtl("--help", cwd=tmp_path)
    assert help_.returncode == 0 and "sweep" in help_.stdout and "--version" in help_.stdout
    shown = fedmtl("--version", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.strip() == f"fedmtl {version('fedmtl')}"


def test_sweep_help_keeps_its_bracketed_examples(tmp_path):
    result = fedmtl("sweep", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'server.weighting=[fedavg,qffl]'" in result.stdout
    assert "key=[v1,v2,...]" in result.stdout and "server.weighting=fedavg,qffl" in result.stdout
    assert "\\[" not in result.stdout  # escaped for Rich, printed plain
    run_help = fedmtl("run", "--help", cwd=tmp_path)
    assert "shipped config" in run_help.stdout  # the arguments' help is shown


@pytest.mark.parametrize(("args", "said"), [
    (["runn", "quickstart"], "No such command 'runn'. Did you mean 'run'?"),
    (["data", "descibe"], "No such command 'descibe'. Did you mean 'describe'?"),
])
def test_an_unknown_command_is_suggested_its_close_name_once(args, said):
    """typer and click both added the suggestion: "Did you mean 'run'? Did you mean 'run'?"."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert said in text and text.count("Did you mean") == 1, result.output


# -- shipped configs -------------------------------------------------------------------------
def test_shipped_configs_are_the_repositorys():
    shipped = shipped_configs()
    assert set(shipped) == {p.relative_to(ROOT / "configs").with_suffix("").as_posix()
                            for p in (ROOT / "configs").rglob("*.toml")}
    assert {"quickstart", "smoke", "studies/qffl_paper"} <= set(shipped)
    for spelled in ("quickstart", "quickstart.toml", "configs/quickstart.toml"):
        assert config_name(spelled) == "quickstart"
    assert config_name("configs/studies/qffl_paper.toml") == "studies/qffl_paper"
    assert config_name(ROOT / "nothing.toml") is None


def test_a_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = invoke("validate", "quickstart", "--set", "run.rounds=3")
    assert code == 0, out
    assert 'name = "quickstart"' in out and "rounds = 3" in out
    code, out = invoke("validate", "studies/qffl_paper")
    assert code == 0, out
    assert resolve_config("smoke") == ROOT / "configs" / "smoke.toml"


def test_a_file_that_exists_wins_over_a_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.toml").write_text('[run]\nname = "mine"\n')
    assert resolve_config("quickstart.toml") == Path("quickstart.toml")
    code, out = invoke("validate", "quickstart.toml")
    assert code == 0 and 'name = "mine"' in out, out


def test_an_unknown_name_lists_the_shipped_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = invoke("validate", "quickstrat")
    assert code == 2
    assert "config file 'quickstrat' does not exist, nor is it a shipped config" in out
    assert "quickstart" in out and "studies/qffl_paper" in out and "Traceback" not in out


def test_list_configs_names_and_describes_them():
    code, out = invoke("list", "configs")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"{len(shipped_configs())} shipped configs")
    quickstart = next(line for line in lines if line.startswith("quickstart "))
    assert "20 clients with label-skewed MultiMNIST" in quickstart
    assert any(line.startswith("studies/qffl_paper ") for line in lines)


# -- --set and --grid ------------------------------------------------------------------------
def test_a_set_without_equals_names_it_and_the_fix(tmp_path):
    smoke = str(ROOT / "configs" / "smoke.toml")
    code, out = invoke("validate", smoke, "--set", "run.rounds", "3")
    assert code == 2
    assert "--set 'run.rounds' has no '='" in out and "--set run.rounds=3" in out
    assert "unexpected extra argument" not in out.lower()
    code, out = invoke("run", smoke, "--set", "run.rounds")
    assert code == 2 and "--set run.rounds=VALUE" in out
    code, out = invoke("validate", smoke, "--set", "run.rounds 3")  # one quoted argument with a space
    assert code == 2
    assert out.strip().splitlines() == ["error: --set 'run.rounds 3' has no '=': write --set run.rounds=3"]
    with pytest.raises(ConfigError, match=r"--set expects key=value, got 'rounds': write --set rounds=VALUE"):
        from fedmtl.config import parse_override

        parse_override("rounds")
    code, out = invoke("validate", smoke, "stray")
    assert code == 2 and "unexpected extra argument: stray" in out


@pytest.mark.parametrize(("text", "values"), [
    ("server.weighting=fedavg,qffl", ["fedavg", "qffl"]),
    ("server.weighting=[fedavg, qffl]", ["fedavg", "qffl"]),
    ("server.weighting=[fedavg,qffl]", ["fedavg", "qffl"]),
    ("client.lr=0.1,0.01", [0.1, 0.01]),
    ("client.lr=[0.5, 1]", [0.5, 1]),
    ("client.lr=0.1", [0.1]),
    ("server.params={q = 1, lipschitz = 2},{q = 5}", [{"q": 1, "lipschitz": 2}, {"q": 5}]),
    ("server.params=[{q = 1, lipschitz = 2}, {q = 5}]", [{"q": 1, "lipschitz": 2}, {"q": 5}]),
    ('faults.corrupt-kinds="nan,inf",huge', ["nan,inf", "huge"]),
    ("faults.corrupt-kinds='nan,inf'", ["nan,inf"]),
    ("model.heads=[[1, 2], [3]]", [[1, 2], [3]]),
    ('run.name="a[b",c', ["a[b", "c"]),  # a bracket inside quotes is text
])
def test_grid_values_split_as_hydra_and_as_a_list(text, values):
    assert parse_grid_option(text)[1] == values


@pytest.mark.parametrize(("text", "message"), [
    ("server.weighting", "key=v1,v2,... or key=\\[v1,v2,...\\]"),
    ("server.weighting=fedavg,,qffl", "an empty value"),
    ("server.weighting=[]", "the list of values is empty"),
    ("weighting=fedavg,qffl", "must be 'section.key'"),
    ("server.weighting=[fedavg, qffl", "a '\\[' is not closed"),
    ("server.params={q = 1,{q = 5}", "a '\\{' is not closed"),
])
def test_bad_grids_are_named(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid_option(text)


def _commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_commands_help_is_reflowed_prose_without_rst_markup():
    """Rich printed a docstring's line breaks and then wrapped the lines again at the
    terminal's width (ragged lines), and ``code`` spans as double backticks."""
    import typer

    commands = list(_commands(typer.main.get_command(cli)))
    assert len(commands) > 10
    for name, command in commands:
        assert "``" not in (command.help or "") and "``" not in (command.short_help or ""), name
        for paragraph in (command.help or "").split("\n\n"):
            lines = paragraph.splitlines()
            assert len(lines) == 1 or lines[0].endswith(":"), (name, paragraph)  # an example list
    runner = CliRunner()
    narrow = runner.invoke(cli, ["flwr-run", "--help"], env={"COLUMNS": "80"}).output
    assert "waits for the run and exits 1" in " ".join(narrow.split())
    assert "for the\n" not in narrow  # no line broken where the docstring broke it
