"""A run folder says what ran: ``config.toml`` holds every resolved value, the rules' and the
methods' parameters with their defaults included, and ``summary.json`` a ``provenance`` block
(versions, git commit, host, platform, start and end times).

One short centralized run (in-process, no Ray) gives a real run folder.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import socket
import subprocess
import tomllib
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pytest

from fedmtl import provenance
from fedmtl.aggregation import WEIGHTINGS
from fedmtl.provenance import PACKAGE_DIR, collect_provenance, git_state
from fedmtl.results import config_fingerprint, create_run_dir
from fedmtl.training.methods import METHODS
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]
RULES = ["client.weighting=fairgrad", "server.weighting=qffl", "server.task-weighting=dwa"]
KEYS = {"fedmtl", "torch", "flwr", "ray", "git_commit", "git_dirty", "python", "host", "platform", "started",
        "finished", "plugins", "resumed_after_round", "forced_resumes"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, object]:
    """A finished one-epoch centralized run with FairGrad on the client, q-FFL and DWA named
    on the server, all without parameters."""
    from fedmtl.training.centralized import run_centralized

    cfg = load_config(ROOT / "configs/centralized_multimnist.toml",
                      ["run.rounds=1", "data.num-clients=2", "data.params.pairs-per-digit=1", *RULES])
    run_dir = create_run_dir(cfg, tmp_path_factory.mktemp("prov") / "run")
    run_centralized(cfg, run_dir, quiet=True)
    return run_dir, cfg


def _utc(text: str) -> datetime:
    stamp = datetime.fromisoformat(text)
    assert stamp.utcoffset().total_seconds() == 0, text
    return stamp


def test_the_summary_holds_provenance_with_every_field(run):
    run_dir, cfg = run
    summary = json.loads((run_dir / "summary.json").read_text())
    block = summary["provenance"]
    assert set(block) == KEYS
    for name in ("fedmtl", "torch", "flwr", "ray"):
        try:
            assert block[name] == metadata.version(name)
        except metadata.PackageNotFoundError:
            assert block[name] is None
    assert isinstance(block["fedmtl"], str) and isinstance(block["torch"], str)
    assert block["python"] == platform.python_version()
    assert block["host"] == socket.gethostname() and block["platform"] == platform.platform()
    assert _utc(block["started"]) <= _utc(block["finished"]) <= datetime.now(UTC)
    assert block["resumed_after_round"] is None and block["plugins"] == {} and block["forced_resumes"] == []
    assert (block["git_commit"], block["git_dirty"]) == tuple(git_state().values())
    if block["git_commit"] is not None:
        assert re.fullmatch(r"[0-9a-f]{40}", block["git_commit"]) and isinstance(block["git_dirty"], bool)
    assert summary["config_fingerprint"] == config_fingerprint(cfg)


def test_config_toml_holds_every_rules_parameters_and_reloads_to_the_same_config(run):
    run_dir, cfg = run
    written = tomllib.loads((run_dir / "config.toml").read_text())
    assert written["client"]["params"] == {"alpha": 1.0, "warm-start": True}
    assert written["server"]["params"] == {"q": 1.0, "lipschitz": 0.0}
    assert written["server"]["task-params"] == {"temperature": 2.0}
    assert written["data"]["params"]["pairs-per-digit"] == 1 and "canvas" in written["data"]["params"]
    assert load_config(run_dir / "config.toml") == cfg  # a centralized run records its config as given


@pytest.mark.parametrize("name", [n for n, rule in WEIGHTINGS.items() if rule.Params.model_fields])
def test_every_rule_lists_its_parameters_with_their_defaults(name):
    rule = WEIGHTINGS.get(name)
    side = "client.weighting" if rule.scope in ("client", "both") else "server.weighting"
    sets = [f"{side}={name}"]
    if name in ("krum", "bulyan", "trimmed-mean"):
        sets += ["data.num-clients=10", "server.min-train-clients=10"]
    cfg = load_config(None, sets)
    params = cfg.client.params if side.startswith("client") else cfg.server.params
    defaults = rule.Params().model_dump(by_alias=True)
    recordable = {k: v for k, v in defaults.items() if v is not None and not isinstance(v, dict)}
    assert params == recordable
    assert load_config(None, sets) == cfg
    reloaded = tomllib.loads(cfg.to_toml())
    assert (reloaded["client"] if side.startswith("client") else reloaded["server"])["params"] == recordable


def test_given_parameters_are_kept_under_their_config_names(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[client]\nweighting = "fairgrad"\n[client.params]\nwarm_start = false\nalpha = 2\n')
    cfg = load_config(path)
    assert cfg.client.params == {"alpha": 2, "warm-start": False}  # as given, under its config name
    (tmp_path / "again.toml").write_text(cfg.to_toml())
    assert load_config(tmp_path / "again.toml") == cfg


@pytest.mark.parametrize("method", [n for n, m in METHODS.items() if m.Params.model_fields])
def test_every_personalization_method_lists_its_options(method):
    cfg = load_config(None, [f"personalization.method={method}"])
    assert set(cfg.personalization.params) == {f.alias or k for k, f in METHODS.get(method).Params.model_fields.items()}
    assert load_config(None, [f"personalization.method={method}"]) == cfg


# -- git ---------------------------------------------------------------------------------------
def test_outside_a_git_checkout_the_commit_is_null(tmp_path):
    copy = tmp_path / "fedmtl"
    copy.mkdir()
    shutil.copy(PACKAGE_DIR / "__init__.py", copy / "__init__.py")
    assert git_state(copy) == {"commit": None, "dirty": None}
    assert collect_provenance(copy)["git_commit"] is None


def test_no_git_binary_or_a_hanging_git_is_null_never_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert git_state() == {"commit": None, "dirty": None}
    monkeypatch.undo()

    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

    monkeypatch.setattr(provenance.subprocess, "run", hang)
    assert git_state() == {"commit": None, "dirty": None}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git binary")
def test_a_checkout_gives_its_commit_and_dirty_flag_only_when_it_tracks_the_package(tmp_path):
    repo, package = tmp_path / "repo", tmp_path / "repo" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True, timeout=60).stdout.strip()

    git("init", "-q")
    assert git_state(package) == {"commit": None, "dirty": None}  # an untracked copy inside a checkout
    git("add", "pkg/__init__.py")
    git("commit", "-q", "-m", "first")
    assert git_state(package) == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (package / "__init__.py").write_text("x = 1\n")
    assert git_state(package) == {"commit": git("rev-parse", "HEAD"), "dirty": True}
