"""``fedmtl sweep --jobs N``: N runs at once, each in a worker process, with the results of ``--jobs 1``.

One module fixture runs the same 4-run sweep of the smoke config in-process twice: with one
job in this process, and with ``--jobs 2`` through the command line; the other tests use
runners injected through ``run_sweep(..., runner=...)`` (module-level functions, which the
workers import by name) that write a finished run folder without training.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedmtl.config import ConfigError
from fedmtl.data import dataset_tasks
from fedmtl.launch.sweep import MANIFEST, check_jobs, plan_sweep, run_sweep, share_cores
from fedmtl.results import RUN_ID_FILE, RUN_MARKER, RunRecorder, create_run_dir, recorded_head_store_dir

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/smoke.toml"
GRID = {"client.lr": [0.05, 0.1]}
SETS = ["run.rounds=1", "engine.backend=inprocess"]


def _env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HOME": str(home), "FLWR_HOME": str(home / ".flwr"), "COLUMNS": "200",
            "FLWR_DISABLE_UPDATE_CHECK": "1"}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The 4-run sweep (2 learning rates × 2 seeds, 1 round, in-process) with one job (here)
    and with ``--jobs 2`` (the command line): ``(folder of jobs 1, folder of jobs 2, the CLI's process)``."""
    root = tmp_path_factory.mktemp("jobs")
    one = root / "one"
    run_sweep(plan_sweep(CONFIG, GRID, 2, one, SETS), report=lambda line: None)
    two = root / "two"
    sets = [arg for s in SETS for arg in ("--set", s)]
    proc = subprocess.run([sys.executable, "-m", "fedmtl", "sweep", str(CONFIG), "--grid", "client.lr=0.05,0.1",
                           "--seeds", "2", *sets, "--out", str(two), "--jobs", "2"],
                          capture_output=True, text=True, timeout=600, cwd=root, env=_env(root / "home"))
    return one, two, proc


def _spans(folder: Path) -> list[tuple[int, int]]:
    """Each run's working time in nanoseconds, from its files' modification times: from its
    ``run-id`` (the first file a run writes; the provenance's ``started`` is to the second only,
    and a one-round run here lasts under a second) to the last file it wrote (its plots)."""
    spans = []
    for run in json.loads((folder / MANIFEST).read_text())["runs"]:
        run_dir = folder / run["folder"]
        written = [p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != RUN_MARKER]
        spans.append(((run_dir / RUN_ID_FILE).stat().st_mtime_ns, max(written)))
    return spans


def _overlap(spans: list[tuple[int, int]]) -> bool:
    """Two runs worked at the same time."""
    return any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])


def test_overlap_compares_spans_finer_than_a_second():
    second = 1_000_000_000
    assert _overlap([(10 * second + 100, 10 * second + 600), (10 * second + 200, 10 * second + 700)])
    assert not _overlap([(10 * second, 10 * second + 500), (10 * second + 500, 10 * second + 900)])


@pytest.mark.slow
def test_jobs_2_gives_the_metrics_of_jobs_1_byte_for_byte(sweeps):
    one, two, proc = sweeps
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = json.loads((two / MANIFEST).read_text())["runs"]
    assert len(runs) == 4 and [r["status"] for r in runs] == ["done"] * 4
    for run in runs:
        assert (two / run["folder"] / "metrics.csv").read_bytes() == (one / run["folder"] / "metrics.csv").read_bytes()


@pytest.mark.slow
def test_jobs_2_runs_two_runs_at_once(sweeps):
    one, two, _ = sweeps
    assert _overlap(_spans(two))
    assert not _overlap(_spans(one))  # the check can fail: one job runs them one after the other


@pytest.mark.slow
def test_the_cli_prints_every_run_once_started_and_once_finished(sweeps):
    _, _, proc = sweeps
    lines = proc.stdout.splitlines()
    assert lines[0].endswith(", 2 at a time"), proc.stdout
    for number in range(1, 5):
        assert sum(line.startswith(f"[{number}/4] ") and line.count(" ... (") == 1 for line in lines) == 1, proc.stdout
        assert sum(line.startswith(f"[{number}/4] ") and "% (worst 10%" in line for line in lines) == 1, proc.stdout
    assert any("4/4 runs finished" in line for line in lines), proc.stdout


@pytest.mark.slow
def test_each_run_of_jobs_2_records_its_share_of_the_cores_and_is_reused_as_finished(sweeps, tmp_path):
    from fedmtl.config import available_cpus

    one, two, _ = sweeps
    share = max(1, available_cpus() // 2)
    for run in json.loads((two / MANIFEST).read_text())["runs"]:
        recorded = (two / run["folder"] / "config.toml").read_text()
        assert f"max-concurrent-clients = {share}" in recorded, recorded
        assert "max-concurrent-clients = 0" in (one / run["folder"] / "config.toml").read_text()
    # the share is where the clients ran, not what they computed: the same sweep finds every run done
    again = run_sweep(plan_sweep(CONFIG, GRID, 2, two, SETS), report=lambda line: None, jobs=2)
    assert [r.status for r in again.runs] == ["skipped"] * 4


@pytest.mark.parametrize(("sets", "jobs", "expected"), [
    ([], 1, []),
    ([], 2, ["engine.max-concurrent-clients=4"]),
    ([], 3, ["engine.max-concurrent-clients=2"]),
    ([], 16, ["engine.max-concurrent-clients=1"]),
    (["engine.max-concurrent-clients=3"], 2, []),  # the config sizes the engine itself
    (["engine.num-cpus=2"], 2, []),
    (["engine.client-num-cpus=2"], 2, ["engine.max-concurrent-clients=2"]),  # 8 CPUs / 2 per client / 2 jobs
    (["engine.client-num-gpus=0.5"], 2, []),
    (["run.mode=centralized", "data.task-sets=all"], 2, []),
])
def test_share_cores_divides_the_clients_at_once_among_the_jobs(monkeypatch, sets, jobs, expected):
    import fedmtl.config

    monkeypatch.setattr(fedmtl.config, "available_cpus", lambda: 8)
    monkeypatch.setattr(fedmtl.config, "engine_thread_cap", lambda: 32)  # any machine's engine pool
    from fedmtl.validation import load_config

    assert share_cores(load_config(CONFIG, ["engine.backend=inprocess", *sets]), jobs) == expected


def test_jobs_above_1_refuse_a_ray_run_before_anything_is_written(tmp_path):
    planned = plan_sweep(CONFIG, GRID, 1, tmp_path / "sw", ["run.rounds=1"])  # engine.backend = "ray"
    with pytest.raises(ConfigError) as refused:
        run_sweep(planned, report=lambda line: None, jobs=2)
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    assert "engine.backend = 'ray'" in message and "--set engine.backend=inprocess" in message
    assert "--jobs 1" in message
    assert not (tmp_path / "sw").exists()
    with pytest.raises(ConfigError, match="--jobs = 0"):
        run_sweep(planned, report=lambda line: None, jobs=0)
    check_jobs(plan_sweep(CONFIG, GRID, 1, tmp_path / "c", ["run.mode=centralized"]), 2)  # no engine: accepted
    # the backend in the grid beats --set: the advice is to drop it from the grid
    gridded = plan_sweep(CONFIG, {"engine.backend": ["ray", "inprocess"]}, 1, tmp_path / "g",
                         ["run.rounds=1", "engine.backend=inprocess"])
    with pytest.raises(ConfigError, match=r"; drop engine.backend from --grid, or use --jobs 1$"):
        check_jobs(gridded, 2)


def test_the_cli_names_a_jobs_below_1(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedmtl", "sweep", str(CONFIG), "--jobs", "0", "--out",
                           str(tmp_path / "sw")], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=_env(tmp_path / "home"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --jobs 0: must be at least 1 (runs at once)"]
    assert not (tmp_path / "sw").exists()


def _finish(cfg, run_dir: Path) -> None:
    """Write a finished run folder without training."""
    create_run_dir(cfg, run_dir)
    RunRecorder(run_dir, recorded_head_store_dir(cfg), dataset_tasks(cfg.data)).finish(None)


def killed_for_seeds_0_and_1(cfg, run_dir: Path, quiet: bool) -> None:
    """A runner whose worker is killed (SIGKILL) in the runs of seeds 0 and 1."""
    if cfg.run.seed in (0, 1):
        os.kill(os.getpid(), signal.SIGKILL)
    _finish(cfg, run_dir)


def test_a_worker_that_dies_fails_only_its_run_and_is_replaced(tmp_path):
    lines: list[str] = []
    planned = plan_sweep(CONFIG, {}, 4, tmp_path / "sw", SETS)
    done = run_sweep(planned, report=lines.append, runner=killed_for_seeds_0_and_1, jobs=2)
    # both first workers died: seeds 2 and 3 ran on their replacements
    assert [r.status for r in done.runs] == ["failed", "failed", "done", "done"]
    for run in done.runs[:2]:
        assert "worker process running this run died (killed by SIGKILL)" in run.error
    manifest = json.loads((tmp_path / "sw" / MANIFEST).read_text())
    assert [r["status"] for r in manifest["runs"]] == ["failed", "failed", "done", "done"]
    assert sum("FAILED: the worker process running this run died" in line for line in lines) == 2
    assert lines[-1].endswith("2/4 runs finished, 2 failed")


def fails_deep_for_seed_0(cfg, run_dir: Path, quiet: bool) -> None:
    """A runner whose run of seed 0 fails deep in a call chain, with a two-line message."""
    def deeper(depth: int) -> None:
        if depth == 0:
            raise ValueError("the data of client 3 does not fit\nits declaration")
        deeper(depth - 1)

    if cfg.run.seed == 0:
        deeper(60)  # a traceback longer than the 2,000 characters kept
    _finish(cfg, run_dir)


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failed_run_records_its_error_in_one_line_and_its_traceback_apart(tmp_path, jobs):
    lines: list[str] = []
    planned = plan_sweep(CONFIG, {}, 2, tmp_path / "sw", SETS)
    done = run_sweep(planned, report=lines.append, runner=fails_deep_for_seed_0, jobs=jobs)
    failed = done.runs[0]
    assert [r.status for r in done.runs] == ["failed", "done"]
    assert failed.error == "ValueError: the data of client 3 does not fit its declaration"
    assert failed.traceback.rstrip().endswith("ValueError: the data of client 3 does not fit\nits declaration")
    assert "in deeper" in failed.traceback and len(failed.traceback) <= 2000
    manifest = json.loads((tmp_path / "sw" / MANIFEST).read_text())["runs"][0]
    assert (manifest["error"], manifest["traceback"]) == (failed.error, failed.traceback)
    assert sum(f"FAILED: {failed.error} (" in line for line in lines) == 1, lines


def waits_until_stopped(cfg, run_dir: Path, quiet: bool) -> None:
    """A runner that writes its pid next to the run folder and sleeps."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    (run_dir.parent / f"{run_dir.name}.pid").write_text(str(os.getpid()))
    time.sleep(300)


def finishes(cfg, run_dir: Path, quiet: bool) -> None:
    _finish(cfg, run_dir)


def test_an_interrupt_stops_the_workers_and_puts_changed_runs_back(tmp_path):
    """Ctrl-C during the reruns of two changed runs: the workers are stopped, each finished run
    is back in its folder, and the runs are left pending."""
    out = tmp_path / "sw"
    run_sweep(plan_sweep(CONFIG, {}, 2, out, SETS), report=lambda line: None, runner=finishes)
    before = {seed: (out / "default" / f"seed-{seed}" / "summary.json").read_bytes() for seed in (0, 1)}
    planned = plan_sweep(CONFIG, {}, 2, out, [*SETS, "run.rounds=2"], rerun_changed=True)
    pids = [out / "default" / f"seed-{seed}.pid" for seed in (0, 1)]

    def interrupt() -> None:
        deadline = time.monotonic() + 240
        while not all(p.is_file() and p.read_text() for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    # a test worker (pytest-xdist) may ignore SIGINT: Ctrl-C's Python default for this test
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(planned, report=lambda line: None, runner=waits_until_stopped, jobs=2)
    finally:
        signal.signal(signal.SIGINT, handler)
    for pid in (int(p.read_text()) for p in pids):
        assert not Path(f"/proc/{pid}").exists()  # stopped and reaped
    assert [r["status"] for r in json.loads((out / MANIFEST).read_text())["runs"]] == ["pending", "pending"]
    for seed, summary in before.items():
        assert (out / "default" / f"seed-{seed}" / "summary.json").read_bytes() == summary
        assert not (out / "default" / f"seed-{seed}.replaced").exists()


def writes_its_pid_and_sleeps(cfg, run_dir: Path, quiet: bool) -> None:
    """A runner that writes its worker's pid into the run folder, then runs on for 2 minutes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"pid-{cfg.run.seed}").write_text(str(os.getpid()))
    time.sleep(120)


SWEEP_TO_KILL = """
import sys
from pathlib import Path
from fedmtl.launch.sweep import plan_sweep, run_sweep
from tests.test_sweep_jobs import CONFIG, SETS, writes_its_pid_and_sleeps

planned = plan_sweep(CONFIG, {}, 2, Path(sys.argv[1]), SETS)
run_sweep(planned, report=lambda line: None, runner=writes_its_pid_and_sleeps, jobs=2)
"""


def test_the_workers_of_a_sweep_killed_outright_end_with_it(tmp_path):
    """A sweep killed with SIGKILL cannot stop its workers: they ran their runs on, orphaned, and
    the same sweep command run again resumed those runs while they still wrote them. The kernel
    now ends them with the sweep (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    sweep = subprocess.Popen([sys.executable, "-c", SWEEP_TO_KILL, str(tmp_path / "sw")], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(pids := sorted(tmp_path.rglob("pid-*"))) < 2:
            assert sweep.poll() is None and time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        workers = [int(p.read_text()) for p in pids]
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait(timeout=30)
        deadline = time.monotonic() + 10
        while alive := [pid for pid in workers if _running(pid)]:
            assert time.monotonic() < deadline, f"workers {alive} outlived the sweep"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """``pid`` is a process that has not ended (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
