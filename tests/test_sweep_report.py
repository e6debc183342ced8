"""Sweeps (grid × seeds, resumable) and reports (table and figures) over real runs.

The federated sweep runs in-process (``engine.backend = "inprocess"``: Flower's Simulation
Engine without Ray's start-up): sweeps and reports, not the engine, are the subject."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedmtl.config import ConfigError
from fedmtl.launch.sweep import folder_name, parse_grid_option, plan_sweep
from fedmtl.report import find_run_dirs, pareto_front
from tests.helpers import is_png

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("client_cdf.png", "fairness_accuracy.png", "round_curves.png", "client_task_heatmap.png")


def fedmtl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmtl", *args], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


# -- grid parsing and planning -----------------------------------------------------------
def test_grid_values_are_toml_or_bare_words():
    assert parse_grid_option("server.weighting=[fedavg, qffl]") == ("server.weighting", ["fedavg", "qffl"])
    assert parse_grid_option("client.lr=[0.1, 0.05]") == ("client.lr", [0.1, 0.05])
    assert parse_grid_option("server.params=[{q = 0}, {q = 1, lipschitz = 2}]") == (
        "server.params", [{"q": 0}, {"q": 1, "lipschitz": 2}])
    assert parse_grid_option("client.params=[{alpha=1}, {alpha=2}]")[1] == [{"alpha": 1}, {"alpha": 2}]
    assert parse_grid_option("run.rounds=3") == ("run.rounds", [3])
    for bad in ("server.weighting", "weighting=[a]", "run.rounds=[]"):
        with pytest.raises(ConfigError):
            parse_grid_option(bad)


def test_folder_names_are_short_safe_and_distinct():
    assert folder_name({"server.weighting": "qffl", "server.params": {"q": 1}}) == "weighting=qffl__params=q=1"
    both = folder_name({"client.params": {"alpha": 1}, "server.params": {"q": 1}})
    assert both == "client.params=alpha=1__server.params=q=1"
    odd = folder_name({"run.name": "a b/c"})
    assert "/" not in odd and " " not in odd and odd != folder_name({"run.name": "a b_c"})


def test_plan_expands_grid_times_seeds_and_validates_every_run(tmp_path):
    grid = dict([parse_grid_option("client.lr=[0.1, 0.05]"), parse_grid_option("run.rounds=[1, 2]")])
    sweep = plan_sweep(ROOT / "configs/smoke.toml", grid, 3, tmp_path, ["run.seed=7"])
    assert len(sweep.runs) == 12 and sweep.seeds == [7, 8, 9]
    assert len({r.folder for r in sweep.runs}) == 12
    cfg = sweep.config_of(sweep.runs[-1])
    assert (cfg.client.lr, cfg.run.rounds, cfg.run.seed) == (0.05, 2, 9)
    with pytest.raises(ConfigError, match=r"sweep run 'server.weighting=fedavg server.params=\{q = 1\}': ") as info:
        plan_sweep(None, {"server.weighting": ["fedavg"], "server.params": [{"q": 1}]}, 1, tmp_path)
    assert "\n" not in str(info.value)  # one line: the run, then why
    with pytest.raises(ConfigError, match="client.lr"):
        plan_sweep(None, {"client.lr": [-1.0]}, 1, tmp_path)


def test_pareto_front_by_hand():
    points = [(1.0, 1.0), (2.0, 0.5), (0.5, 2.0), (0.9, 0.9), (2.0, 0.4)]
    assert pareto_front(points) == [2, 0, 1]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # ties dominate neither


# -- a real sweep, resumed, then the report ----------------------------------------------
@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """2 configurations × 2 seeds of the centralized baseline, then 2 federated runs."""
    out = tmp_path_factory.mktemp("sweep") / "study"
    common = ["--set", "run.rounds=2", "--set", "data.num-clients=4"]
    first = fedmtl("sweep", str(ROOT / "configs/centralized_multimnist.toml"), "--grid", "client.lr=[0.05, 0.1]",
                   "--seeds", "2", "--out", str(out / "centralized"), *common,
                   "--set", "data.params.pairs-per-digit=1", cwd=out.parent)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "4 to run" in first.stdout and "4/4 runs finished" in first.stdout
    return out


def test_sweep_writes_one_finished_run_folder_per_combination_and_seed(sweep_dir):
    manifest = json.loads((sweep_dir / "centralized" / "sweep.json").read_text())
    assert manifest["grid"] == {"client.lr": [0.05, 0.1]} and manifest["seeds"] == [0, 1]
    assert [r["status"] for r in manifest["runs"]] == ["done"] * 4
    for run in manifest["runs"]:
        folder = sweep_dir / "centralized" / run["folder"]
        assert (folder / "summary.json").is_file()
        config = (folder / "config.toml").read_text()
        assert f"seed = {run['seed']}" in config and f"lr = {run['values']['client.lr']}" in config


def test_a_rerun_skips_finished_runs_and_redoes_an_interrupted_one(sweep_dir):
    # (centralized runs have no checkpoint: the interrupted one is run again from scratch)
    folder = sweep_dir / "centralized"
    manifest = json.loads((folder / "sweep.json").read_text())
    broken = folder / manifest["runs"][1]["folder"]
    (broken / "summary.json").unlink()  # as if the run had been killed before it finished
    untouched = (folder / manifest["runs"][0]["folder"] / "metrics.csv").stat().st_mtime_ns
    again = fedmtl("sweep", str(ROOT / "configs/centralized_multimnist.toml"), "--grid", "client.lr=[0.05, 0.1]",
                   "--seeds", "2", "--out", str(folder), "--set", "run.rounds=2", "--set", "data.num-clients=4",
                   "--set", "data.params.pairs-per-digit=1", cwd=sweep_dir)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "3 already finished, 0 changed, 1 to run" in again.stdout
    assert (broken / "summary.json").is_file()
    assert (folder / manifest["runs"][0]["folder"] / "metrics.csv").stat().st_mtime_ns == untouched
    statuses = [r["status"] for r in json.loads((folder / "sweep.json").read_text())["runs"]]
    assert statuses == ["skipped", "done", "skipped", "skipped"]


def test_a_bad_grid_value_fails_before_any_run(tmp_path):
    proc = fedmtl("sweep", str(ROOT / "configs/smoke.toml"), "--grid", "client.weighting=[mean, fairgrd]",
                  "--out", str(tmp_path / "s"), cwd=tmp_path)
    assert proc.returncode == 2 and "fairgrd" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_federated_sweep_and_report_over_both_sweeps(sweep_dir):
    sim = fedmtl("sweep", str(ROOT / "configs/smoke.toml"), "--grid", "server.weighting=[fedavg, qffl]",
                 "--out", str(sweep_dir / "federated"), "--set", "run.rounds=1", "--set", "data.num-clients=3",
                 "--set", "engine.backend=inprocess", cwd=sweep_dir)
    assert sim.returncode == 0, sim.stdout[-3000:] + sim.stderr[-3000:]
    for name in ("weighting=fedavg", "weighting=qffl"):
        assert (sweep_dir / "federated" / name / "seed-0" / "summary.json").is_file()

    report = fedmtl("report", str(sweep_dir / "centralized"), "--out", str(sweep_dir / "report"),
                    "--reference", "client.lr=0.05", cwd=sweep_dir)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    text = (sweep_dir / "report" / "report.md").read_text()
    main = text.split("## Against the reference", 1)[0]
    rows = [line for line in main.splitlines() if line.startswith("| client.lr=") and " [" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| client.lr=0.05", "| client.lr=0.1"]
    # every statistic a mean [95% interval] over the 2 seeds; Δm% with a paired interval, none for the reference
    # (an interval reaching beyond what the statistic can be is cut, and says so)
    assert all(" | 2 | t, 2 seeds | " in row or " | 2 | t, 2 seeds, cut to [" in row for row in rows)
    assert rows[0].endswith("| – (reference) |")
    assert rows[1].count(" [") == rows[0].count(" [") + 1 >= 9
    assert "## Placement" not in text  # centralized runs have no clients to place
    tidy = pd.read_csv(sweep_dir / "report" / "report.csv")
    ref = tidy[(tidy["configuration"] == "client.lr=0.05") & (tidy["statistic"] == "delta_m")].iloc[0]
    assert math.isnan(ref["mean"]) and ref["interval"] == "reference" and ref["seeds"] == 2  # no Δ with itself
    left = tidy[(tidy["configuration"] == "client.lr=0.1") & (tidy["statistic"] == "left.mean")].iloc[0]
    runs = sorted((sweep_dir / "centralized").glob("lr=0.1/seed-*/summary.json"))
    means = [100 * json.loads(p.read_text())["final"]["left"]["mean"] for p in runs]
    assert left["mean"] == pytest.approx(sum(means) / 2)
    assert left["std"] == pytest.approx(abs(means[0] - means[1]) / math.sqrt(2))
    for name in FIGURES:
        assert is_png(sweep_dir / "report" / name), name

    from fedmtl.report import make_report

    make_report([sweep_dir], sweep_dir / "report-all")  # in process: the CLI is checked above
    text = (sweep_dir / "report-all" / "report.md").read_text()
    assert "6 runs in 4 configurations" in text
    assert "server.weighting=qffl" in text and "run.mode=centralized" in text
    # the federated runs' replies were all computed on this machine's CPU: recorded, but no table
    assert "## Placement" not in text
    for name in ("weighting=fedavg", "weighting=qffl"):
        placed = json.loads((sweep_dir / "federated" / name / "seed-0" / "summary.json").read_text())["placement"]
        # 3 clients train and evaluate in the one round of each run
        assert all(where.endswith("/cpu") for where in placed) and sum(placed.values()) == 6
    for name in FIGURES:
        assert is_png(sweep_dir / "report-all" / name), name


def test_report_errors_are_clear(tmp_path):
    proc = fedmtl("report", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "holds no finished run" in proc.stderr and "Traceback" not in proc.stderr
    proc = fedmtl("report", str(tmp_path / "missing"), cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    (tmp_path / "metrics.csv").write_text("round\n")  # a run's file given for its folder: was "cannot write"
    with pytest.raises(FileNotFoundError, match="metrics.csv' is a file, not a folder: give run folders"):
        find_run_dirs([tmp_path / "metrics.csv"])
    (tmp_path / "stopped.txt").write_text("ClientsFailed: round 2: no client replied\nstopped at: ...\n")
    with pytest.raises(FileNotFoundError, match=r"no summary.json under it\); its run stopped: ClientsFailed: round 2"):
        find_run_dirs([tmp_path])


def test_keep_and_skip_invalid_drop_combinations(tmp_path):
    grid = {"server.weighting": ["fedavg", "qffl"], "server.params": [{}, {"q": 1.0}]}
    kept = plan_sweep(None, grid, 1, tmp_path,
                      keep=lambda v: (v["server.weighting"] == "fedavg") == (not v["server.params"]))
    assert [r.label for r in kept.runs] == ["server.weighting=fedavg server.params={}",
                                            "server.weighting=qffl server.params={q = 1.0}"]
    lines = []
    skipped = plan_sweep(None, grid, 1, tmp_path, skip_invalid=True, report=lines.append)
    assert len(skipped.runs) == 3 and len(lines) == 1 and "fedavg server.params={q = 1.0}" in lines[0]
    with pytest.raises(ConfigError, match="no valid combination"):
        plan_sweep(None, {"server.params": [{"q": 1.0}]}, 1, tmp_path, skip_invalid=True, report=lines.append)


def test_report_never_writes_through_a_link_and_says_when_it_replaces_one(sweep_dir, tmp_path):
    out, target = tmp_path / "rep", tmp_path / "target.md"
    out.mkdir()
    target.write_text("precious")
    (out / "report.md").symlink_to(target)
    refused = fedmtl("report", str(sweep_dir / "centralized"), "--out", str(out), cwd=tmp_path)
    assert refused.returncode == 2 and "report.md' is a symbolic link" in refused.stderr, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    assert target.read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["report.md"]
    (out / "report.md").unlink()
    first = fedmtl("report", str(sweep_dir / "centralized"), "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0 and "replaced" not in first.stderr, first.stderr[-3000:]
    again = fedmtl("report", str(sweep_dir / "centralized"), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0 and f"note: replaced the earlier report in {out}" in again.stderr
