"""A sweep never reuses a finished run whose config differs from the one it now asks for.

The runs are written by an injected runner (``run_sweep(..., runner=...)``) that records a run
folder the way a real run does (``create_run_dir`` and ``RunRecorder``: ``config.toml`` and a
``summary.json`` with the config's fingerprint) without training, so no Ray starts. One CLI
call checks the refusal end to end; it too stops before anything runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedmtl.config import ConfigError
from fedmtl.data import dataset_tasks
from fedmtl.launch.sweep import (
    MANIFEST,
    ChangedRunsError,
    DamagedRunsError,
    describe_changes,
    finished_changes,
    plan_sweep,
    run_sweep,
)
from fedmtl.results import RUN_MARKER, RunRecorder, config_fingerprint, create_run_dir, recorded_head_store_dir
from fedmtl.validation import load_config
from tests.plugin_support import restored_registries

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/smoke.toml"
GRID = {"client.lr": [0.05, 0.1]}


class Recorder:
    """A runner that writes a finished run folder without training, and lists what it ran."""

    def __init__(self) -> None:
        self.ran: list[Path] = []

    def __call__(self, cfg, run_dir: Path, quiet: bool) -> None:
        self.ran.append(run_dir)
        create_run_dir(cfg, run_dir)
        RunRecorder(run_dir, recorded_head_store_dir(cfg), dataset_tasks(cfg.data)).finish(None)


def _sweep(out: Path, *sets: str, grid: dict | None = None, rerun_changed: bool = False, runner=None):
    """Plan and run a sweep of the smoke config; return (sweep, runner, report lines)."""
    runner = runner or Recorder()
    lines: list[str] = []
    planned = plan_sweep(CONFIG, GRID if grid is None else grid, 1, out, list(sets), rerun_changed=rerun_changed)
    return run_sweep(planned, report=lines.append, runner=runner), runner, lines


def _state(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_each_run_records_the_fingerprint_of_its_config(tmp_path):
    done, runner, _ = _sweep(tmp_path / "sw", "run.rounds=1")
    assert [r.status for r in done.runs] == ["done", "done"] and len(runner.ran) == 2
    for run in done.runs:
        summary = json.loads((tmp_path / "sw" / run.folder / "summary.json").read_text())
        assert summary["config_fingerprint"] == config_fingerprint(done.config_of(run))


def test_a_changed_config_is_refused_before_anything_runs_naming_the_keys(tmp_path):
    out = tmp_path / "sw"
    _sweep(out, "run.rounds=1")
    before = _state(out)
    with pytest.raises(ChangedRunsError) as refused:
        _sweep(out, "run.rounds=2")
    lines = str(refused.value).splitlines()
    assert "2 finished run(s)" in lines[0] and "--rerun-changed" in lines[0]
    assert lines[1:] == ["  lr=0.05/seed-0: run.rounds: 1 → 2", "  lr=0.1/seed-0: run.rounds: 1 → 2"]
    assert _state(out) == before  # nothing ran, not even sweep.json was written


def test_run_sweep_checks_again_and_its_argument_wins(tmp_path):
    out = tmp_path / "sw"
    _sweep(out, "run.rounds=1")
    planned = plan_sweep(CONFIG, GRID, 1, out, ["run.rounds=2"], rerun_changed=True)
    runner, before = Recorder(), _state(out)
    with pytest.raises(ChangedRunsError, match="run.rounds: 1 → 2"):
        run_sweep(planned, report=lambda line: None, runner=runner, rerun_changed=False)
    assert runner.ran == [] and _state(out) == before


def test_rerun_changed_runs_only_the_changed_runs_and_replaces_their_folders(tmp_path):
    out = tmp_path / "sw"
    _sweep(out, "run.rounds=1", grid={"client.lr": [0.05]})  # lr=0.05: 1 round
    _sweep(out, "run.rounds=2", grid={"client.lr": [0.1]})  # lr=0.1: 2 rounds
    old = out / "lr=0.05/seed-0"
    (old / "stale.txt").write_text("from the 1-round run")
    kept = _state(out / "lr=0.1/seed-0")
    done, runner, lines = _sweep(out, "run.rounds=2", rerun_changed=True)
    assert runner.ran == [old]
    assert not (old / "stale.txt").exists()
    assert json.loads((old / "summary.json").read_text())["config_fingerprint"] == config_fingerprint(
        done.config_of(done.runs[0]))
    assert _state(out / "lr=0.1/seed-0") == kept
    assert "1 already finished, 1 changed, 1 to run" in lines[0]
    assert any("lr=0.05 seed 0 (changed: run.rounds: 1 → 2) ..." in line for line in lines)
    runs = json.loads((out / MANIFEST).read_text())["runs"]
    assert [(r["status"], r["changed"]) for r in runs] == [("done", ["run.rounds: 1 → 2"]), ("skipped", [])]
    again, runner, lines = _sweep(out, "run.rounds=2")  # now everything is the sweep's
    assert runner.ran == [] and "2 already finished, 0 changed, 0 to run" in lines[0]


class Failing(Recorder):
    """A runner whose run starts writing its folder, then fails (or is interrupted)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def __call__(self, cfg, run_dir: Path, quiet: bool) -> None:
        self.ran.append(run_dir)
        create_run_dir(cfg, run_dir)
        (run_dir / "metrics.csv").write_text("half a run")
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("the engine died"), KeyboardInterrupt()])
def test_a_changed_run_whose_rerun_fails_keeps_its_finished_folder(tmp_path, error):
    out = tmp_path / "sw"
    _sweep(out, "run.rounds=1", grid={"client.lr": [0.05]})
    old = out / "lr=0.05/seed-0"
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    if isinstance(error, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            _sweep(out, "run.rounds=2", grid={"client.lr": [0.05]}, rerun_changed=True, runner=Failing(error))
    else:
        done, runner, _ = _sweep(out, "run.rounds=2", grid={"client.lr": [0.05]}, rerun_changed=True,
                                 runner=Failing(error))
        assert runner.ran == [old] and done.runs[0].status == "failed"
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    assert not old.with_name(old.name + ".replaced").exists()
    # a successful rerun replaces it and leaves no set-aside copy
    done, _, _ = _sweep(out, "run.rounds=2", grid={"client.lr": [0.05]}, rerun_changed=True)
    assert json.loads((old / "summary.json").read_text())["config_fingerprint"] == config_fingerprint(
        done.config_of(done.runs[0]))
    assert not old.with_name(old.name + ".replaced").exists()


@pytest.mark.parametrize("sets", [
    ["run.output-dir=elsewhere", "client.head-store-dir=store", "engine.num-cpus=2", "run.name=renamed"],
    ["engine.max-concurrent-clients=1", "engine.supernodes=1", "engine.address="],
])
def test_names_folders_and_where_ray_runs_are_not_differences(tmp_path, sets):
    out = tmp_path / "sw"
    _sweep(out, "run.rounds=1")
    _, runner, lines = _sweep(out, "run.rounds=1", *sets)
    assert runner.ran == [] and "2 already finished, 0 changed, 0 to run" in lines[0]


def test_a_run_without_a_fingerprint_is_compared_by_its_config_toml(tmp_path):
    out = tmp_path / "sw"
    done, _, _ = _sweep(out, "server.weighting=qffl", grid={})
    summary_path = out / done.runs[0].folder / "summary.json"
    summary = json.loads(summary_path.read_text())
    del summary["config_fingerprint"]  # as a run written before fingerprints
    summary_path.write_text(json.dumps(summary))
    _, runner, lines = _sweep(out, "server.weighting=qffl", grid={})
    assert runner.ran == [] and "0 changed" in lines[0]
    with pytest.raises(ChangedRunsError) as refused:
        _sweep(out, "server.weighting=qffl", "server.params.q=5", grid={})
    assert str(refused.value).splitlines()[1] == "  default/seed-0: server.params.q: 1.0 → 5"


def test_a_finished_run_whose_config_is_unknown_counts_as_changed(tmp_path):
    out = tmp_path / "sw"
    done, _, _ = _sweep(out, "run.rounds=1", grid={})
    run_dir, cfg = out / done.runs[0].folder, done.config_of(done.runs[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["config_fingerprint"] = "0" * 16
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert finished_changes(cfg, run_dir) == []  # config.toml decides: the same config
    (run_dir / "config.toml").write_text("[run]\nrounds = 0\n")
    assert finished_changes(cfg, run_dir)[0].startswith("config.toml: no longer loads (run.rounds = 0")
    (run_dir / "config.toml").unlink()
    assert finished_changes(cfg, run_dir) == ["config.toml: missing (the config it ran is unknown)"]


def test_a_changed_folder_fedmtl_did_not_create_is_not_deleted(tmp_path):
    out = tmp_path / "sw"
    done, _, _ = _sweep(out, "run.rounds=1", grid={})
    run_dir = out / done.runs[0].folder
    (run_dir / RUN_MARKER).unlink()
    done, runner, lines = _sweep(out, "run.rounds=2", grid={}, rerun_changed=True)
    assert runner.ran == [] and (run_dir / "summary.json").is_file()
    assert done.runs[0].status == "failed"
    assert "holds a finished run of another config that fedmtl did not create" in done.runs[0].error
    assert any("nothing was deleted" in line for line in lines)


def test_unfinished_runs_are_not_changed_runs(tmp_path):
    out = tmp_path / "sw"
    done, _, _ = _sweep(out, "run.rounds=1", grid={})
    run_dir = out / done.runs[0].folder
    (run_dir / "summary.json").unlink()  # interrupted: the runner decides (resume or clear), as before
    calls: list[Path] = []

    def resume(cfg, folder: Path, quiet: bool) -> None:
        calls.append(folder)
        (folder / "summary.json").write_text('{"final": {}}')

    _, _, lines = _sweep(out, "run.rounds=2", grid={}, runner=resume)
    assert calls == [run_dir] and "0 already finished, 0 changed, 1 to run" in lines[0]


def test_describe_changes_names_added_and_removed_keys():
    assert describe_changes({"a.x": 1, "a.y": "mean", "a.z": True}, {"a.x": 2, "a.y": "mean", "a.w": 0.5}) == [
        "a.w: unset → 0.5", "a.x: 1 → 2", "a.z: true → unset"]


def test_the_cli_refuses_a_changed_sweep_in_one_line_per_run(tmp_path):
    out = tmp_path / "sw"
    _sweep(out, "run.rounds=1")
    proc = subprocess.run(
        [sys.executable, "-m", "fedmtl", "sweep", str(CONFIG), "--grid", "client.lr=[0.05,0.1]", "--set",
         "run.rounds=2", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and "--rerun-changed" in lines[0]
    assert lines[1:] == ["error:   lr=0.05/seed-0: run.rounds: 1 → 2", "error:   lr=0.1/seed-0: run.rounds: 1 → 2"]
    assert proc.stdout == ""


@pytest.mark.parametrize(("seeds", "message"), [
    (0, "--seeds = 0: must be between 1 and 100,000 (seeds per combination)"),
    (10**11, "--seeds = 100000000000: must be between 1 and 100,000 (seeds per combination)"),
    (2.5, "--seeds = 2.5: must be a whole number of seeds"),
    (True, "--seeds = True: must be a whole number of seeds"),
])
def test_a_number_of_seeds_out_of_bounds_is_refused_before_any_seed_is_listed(tmp_path, seeds, message):
    from fedmtl.config import ConfigError

    with pytest.raises(ConfigError) as info:
        plan_sweep(CONFIG, GRID, seeds, tmp_path / "out")
    assert str(info.value) == message and not (tmp_path / "out").exists()


def test_a_second_sweep_into_a_folder_in_use_is_refused_before_it_writes(tmp_path):
    """Two sweeps at once into one folder overwrote each other's sweep.json (one said a run had
    failed that had finished) and could clear a run the other was starting: the second is refused
    in one line, having written nothing; once the first ends, the folder is free."""
    from typer.testing import CliRunner

    from fedmtl.cli import cli
    from fedmtl.folder_lock import RunFolderBusy, holding_sweep

    out = tmp_path / "sw"
    out.mkdir()
    with holding_sweep(out):  # the first sweep, still running
        with pytest.raises(RunFolderBusy, match="in use by another fedmtl process \\(a sweep into it\\)"):
            _sweep(out, "run.rounds=1")
        assert not (out / MANIFEST).exists()
        result = CliRunner().invoke(cli, ["sweep", str(CONFIG), "--grid", "client.lr=0.05,0.1", "--out", str(out)])
        assert result.exit_code == 1 and not (out / MANIFEST).exists()
        assert result.output.strip().splitlines()[-1] == (
            f"error: '{out}' is in use by another fedmtl process (a sweep into it); wait for it to end, or stop it")
    done, runner, _ = _sweep(out, "run.rounds=1")
    assert [r.status for r in done.runs] == ["done", "done"]


registries = pytest.fixture(restored_registries, name="registries")


def test_a_finished_run_of_a_plugin_file_edited_since_is_a_change(tmp_path, registries):
    """The config is the same, but the rule's file says something else now: its finished runs
    computed other numbers, so the sweep refuses them as changed (and reruns them when asked)."""
    plugin = tmp_path / "rule.py"
    rule = ("import torch\nfrom fedmtl.aggregation import Weighting, register\n\n\n@register('edited-rule')\n"
            "class Edited(Weighting):\n    def compute(self, objectives):\n"
            "        return torch.full((len(objectives),), {w}, dtype=torch.float64)\n")
    plugin.write_text(rule.format(w="0.5"))
    out, sets = tmp_path / "sw", ("run.rounds=1", f'run.plugins=["{plugin}"]', "client.weighting=edited-rule")
    _sweep(out, *sets, grid={"client.lr": [0.05]})
    again, runner, _ = _sweep(out, *sets, grid={"client.lr": [0.05]})
    assert runner.ran == [] and again.runs[0].status == "skipped"  # unchanged: reused
    plugin.write_text(rule.format(w="0.25"))
    with pytest.raises(ChangedRunsError) as refused:
        _sweep(out, *sets, grid={"client.lr": [0.05]})
    line = str(refused.value).splitlines()[1]
    assert line.startswith(f"  lr=0.05/seed-0: {plugin}: ") and "the plugin's text changed since the run" in line
    _, runner, _ = _sweep(out, *sets, grid={"client.lr": [0.05]}, rerun_changed=True)
    assert runner.ran == [out / "lr=0.05/seed-0"]


@pytest.mark.parametrize(("text", "problem"), [
    ("{}", "has no final table of per-task statistics"),
    ('{"final": {"left": 0.5}}', "has no final table of per-task statistics"),
    ("[]", "holds list, not a table"),
    ('{"final": ', "cannot be read (Expecting value: line 1 column 11 (char 10))"),
])
def test_a_finished_run_with_a_damaged_summary_is_refused_and_kept(tmp_path, text, problem):
    out = tmp_path / "sw"
    _sweep(out, "run.rounds=1")
    damaged = out / "lr=0.05/seed-0/summary.json"
    damaged.write_text(text)
    before = _state(out)
    with pytest.raises(DamagedRunsError) as caught:
        _sweep(out, "run.rounds=1")
    lines = str(caught.value).splitlines()
    assert "put the files back, or delete the run's folder to run it again" in lines[0]
    assert lines[1:] == [f"  lr=0.05/seed-0/summary.json: {problem}"]
    assert damaged.read_text() == text
    assert {p: t for p, t in _state(out).items() if p.name != ".lock"} == {
        p: t for p, t in before.items() if p.name != ".lock"}


def test_a_finished_run_whose_tables_lost_rows_is_refused_and_kept(tmp_path):
    """A sweep run again counted a finished run whose metrics.csv had lost its last rows as done."""
    from fedmtl.launch.sweep import execute_run

    out = tmp_path / "sw"
    sets, grid = ("run.rounds=1", "engine.backend=inprocess"), {"client.lr": [0.05]}
    _sweep(out, *sets, grid=grid, runner=execute_run)  # a real run: its checkpoint counts its rows
    metrics = out / "lr=0.05/seed-0/metrics.csv"
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(b"".join(lines[:-3]))
    before = _state(out)
    with pytest.raises(DamagedRunsError) as caught:
        _sweep(out, *sets, grid=grid)
    shown = str(caught.value).splitlines()
    assert len(shown) == 2 and shown[1].startswith("  lr=0.05/seed-0: metrics.csv has ")
    assert "rows were lost" in shown[1]
    assert {p: t for p, t in _state(out).items() if p.name != ".lock"} == {
        p: t for p, t in before.items() if p.name != ".lock"}


def test_the_cli_refuses_a_sweep_with_a_damaged_summary_without_a_traceback(tmp_path):
    out = tmp_path / "sw"
    _sweep(out, "run.rounds=1")
    (out / "lr=0.1/seed-0/summary.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "fedmtl", "sweep", str(CONFIG), "--grid", "client.lr=[0.05,0.1]", "--set",
         "run.rounds=1", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[1:] == [
        "error:   lr=0.1/seed-0/summary.json: has no final table of per-task statistics"]


@pytest.mark.parametrize(("grid", "said"), [
    ({"run.seed": [1, 2]}, "--grid run.seed: a sweep sets run.seed for every run itself, so the grid's values "
                           "would be ignored; the seeds are --seeds"),
    ({"run.name": ["a", "b"]}, "--grid run.name: a sweep sets run.name for every run itself"),
    ({"client.lr": [0.05, 0.05]}, "sweep run 'client.lr=0.05': its folder 'lr=0.05' is another combination's"),
])
def test_a_grid_the_sweep_would_not_run_as_written_is_refused_before_anything_runs(tmp_path, grid, said):
    """A grid over run.seed ran seed 0 twice, in folders named seed=1 and seed=2 (found by a
    newcomer pass); a value listed twice ran one folder twice."""
    with pytest.raises(ConfigError, match=re.escape(said)):
        plan_sweep(CONFIG, grid, 1, tmp_path / "sw", ["run.rounds=1"])
    assert not (tmp_path / "sw").exists()


def test_a_sweep_into_a_run_folder_or_a_file_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    Recorder()(load_config(CONFIG, ["run.rounds=1"]), run_dir, True)  # a finished run's folder
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(ConfigError, match=re.escape(f"--out '{run_dir}' is a run's folder")):
        plan_sweep(CONFIG, GRID, 1, run_dir, ["run.rounds=1"])
    assert sorted(p.name for p in run_dir.iterdir()) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file: give the sweep a folder"):
        plan_sweep(CONFIG, GRID, 1, tmp_path / "file", ["run.rounds=1"])


@pytest.mark.parametrize("jobs", ["2", 1.5, True])
def test_jobs_that_is_not_a_whole_number_is_one_line(tmp_path, jobs):
    planned = plan_sweep(CONFIG, GRID, 1, tmp_path / "sw", ["run.rounds=1"])
    with pytest.raises(ConfigError, match=re.escape(f"--jobs = {jobs!r}: must be a whole number of runs at once")):
        run_sweep(planned, jobs=jobs, runner=Recorder())
