"""Ctrl-C (SIGINT) and SIGTERM stop ``fedmtl run`` and ``fedmtl sweep`` at once, keep the
completed rounds, say how to continue, and leave no Ray or Flower process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
STOP_WITHIN_S = 10.0


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, session id, state) of a process, ``None`` when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[4]), fields[0]


def family(root: int) -> set[int]:
    """Living processes below ``root`` or in its session (Ray's and Flower's, for a command
    started as a session leader)."""
    stats = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(int(p.name)))}
    found = {pid for pid, (_, sid, _) in stats.items() if sid == root and pid != root}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _) in stats.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def running(pids: set[int]) -> dict[int, str]:
    """Those of ``pids`` still running (zombies left to a non-reaping init do not count)."""
    left = {}
    for pid in pids:
        stat = _stat(pid)
        if stat is not None and stat[2] != "Z":
            left[pid] = _cmdline(pid)
    return left


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return ""


def interrupt_when(
    args: list[str], ready: Path, sig: int, cwd: Path
) -> tuple[subprocess.Popen, str, float, dict[int, str]]:
    """Start ``fedmtl ARGS`` in its own session, send ``sig`` once ``ready`` (a rounds.csv) has
    a round; return the process, its stderr, the seconds it took to exit, and every process
    it started (pid: command line, recorded while it ran)."""
    env = dict(os.environ, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    proc = subprocess.Popen([sys.executable, "-m", "fedmtl", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env, start_new_session=True)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            seen.update({p: c for p in family(proc.pid) if (c := _cmdline(p))})  # the latest: after exec
            if ready.is_file() and len(pd.read_csv(ready)) >= 1:
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.3)
        else:
            pytest.fail("no round finished in 900 s")
        seen.update({p: c for p in family(proc.pid) if (c := _cmdline(p))})
        os.kill(proc.pid, sig)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    time.sleep(1.0)  # let the kernel finish tearing the killed ones down
    return proc, err, took, seen


def test_ctrl_c_stops_a_run_keeps_its_rounds_and_leaves_no_process(tmp_path):
    out = tmp_path / "run"
    proc, err, took, seen = interrupt_when(
        ["run", str(ROOT / "configs/smoke.toml"), "--out", str(out), "-q", "--set", "run.rounds=50"],
        out / "rounds.csv", signal.SIGINT, tmp_path)
    assert proc.returncode == 130, err[-3000:]
    assert took < STOP_WITHIN_S, took
    assert f"continue with: fedmtl run --resume {out}" in err and "Traceback" not in err, err[-3000:]
    assert "interrupted after round" in err
    assert any("raylet" in cmd for cmd in seen.values()), "no Ray process was seen while it ran"
    assert running(set(seen)) == {}, running(set(seen))
    # every completed round's files: its rounds.csv row, its checkpoint, its metrics
    rounds = pd.read_csv(out / "rounds.csv")
    done = int(err.split("interrupted after round ", 1)[1].split(";", 1)[0])
    assert done >= 1 and list(rounds["round"])[:done] == list(range(1, done + 1))
    assert (out / "checkpoints" / f"round-{done}.pt").is_file()
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(range(1, done + 1)) <= set(metrics["round"])
    assert not (out / "summary.json").exists()
    stopped = (out / "stopped.txt").read_text().splitlines()  # the folder says why it stopped
    assert stopped[0] == "interrupted by SIGINT" and f"newest checkpoint: round {done}" in stopped, stopped


ORPHANED_ON_THE_WAY_OUT = """
import os, signal, subprocess, sys, time
from fedmtl.launch.interrupt import Stopped, finish_interrupted, stop_on_signals

sleeper = "import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; " \\
          "time.sleep(120)']); print(child.pid, flush=True); time.sleep(120)"
parent = subprocess.Popen([sys.executable, "-c", sleeper], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
print(parent.stdout.readline().strip(), flush=True)
try:
    with stop_on_signals():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(60)
except Stopped as stopped:
    parent.kill()  # as Flower's own ray.shutdown kills the raylet: its child runs on, orphaned
    parent.wait()
    finish_interrupted(stopped, None)
"""


def test_a_process_orphaned_on_the_way_out_is_stopped_too(tmp_path):
    """Flower shuts Ray down while the interrupt unwinds, before fedmtl stops what is left: a
    Ray worker orphaned by its raylet then is no longer a descendant, yet it was started by
    the run and must be stopped (it could run on for a second or more, busy in a task)."""
    proc = subprocess.run([sys.executable, "-c", ORPHANED_ON_THE_WAY_OUT], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    orphan = int(proc.stdout.split()[0])
    try:
        assert proc.returncode == 130 and "interrupted before the run started" in proc.stderr, proc.stderr
        assert running({orphan}) == {}, "the orphaned grandchild was left running"
    finally:
        if running({orphan}):
            os.kill(orphan, signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_stops_a_sweep_and_names_the_command_that_continues(tmp_path):
    out = tmp_path / "study"
    proc, err, took, seen = interrupt_when(
        ["sweep", str(ROOT / "configs/smoke.toml"), "--out", str(out), "--set", "run.rounds=50"],
        out / "default" / "seed-0" / "rounds.csv", signal.SIGTERM, tmp_path)
    assert proc.returncode == 143, err[-3000:]
    assert took < STOP_WITHIN_S, took
    assert "continue with: the same command: fedmtl sweep" in err and "Traceback" not in err, err[-3000:]
    assert any("raylet" in cmd for cmd in seen.values()) and running(set(seen)) == {}, running(set(seen))
    assert (out / "default" / "seed-0" / "checkpoints").is_dir()
    assert any((out / "default" / "seed-0" / "checkpoints").glob("round-*.pt"))


def test_flwr_run_stops_the_local_superlink_it_started_even_when_interrupted(tmp_path):
    """`fedmtl flwr-run`'s guard (no Flower here: a stand-in named flower-superlink, detached
    in its own session as `flwr run` starts the real one): stopped when the block ends with an
    interrupt; one that ran before the block is left alone."""
    from fedmtl.launch.flwr_run import local_superlinks, own_local_superlink

    home = tmp_path / "flwr-home"
    (home / "local-superlink").mkdir(parents=True)
    stand_in = tmp_path / "flower-superlink"
    stand_in.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    stand_in.chmod(0o755)

    def start() -> subprocess.Popen:
        return subprocess.Popen([str(stand_in), "--log-file", str(home / "local-superlink" / "superlink.log")],
                                start_new_session=True)

    earlier = start()
    try:
        deadline = time.monotonic() + 10
        while earlier.pid not in local_superlinks(home) and time.monotonic() < deadline:
            time.sleep(0.05)
        started = None
        with pytest.raises(KeyboardInterrupt), own_local_superlink({"FLWR_HOME": str(home)}):
            started = start()
            while started.pid not in local_superlinks(home):
                time.sleep(0.05)
            raise KeyboardInterrupt
        assert started is not None and started.wait(timeout=10) is not None
        assert local_superlinks(home) == {earlier.pid}
    finally:
        earlier.kill()
        earlier.wait()


SIGNAL_DURING_HEADER = """
import os, signal, sys
import fedmtl.cli as cli

def header(*args, **kwargs):  # the signal comes while the header prints: after the folder exists
    os.kill(os.getpid(), signal.SIGTERM)

cli._header = header
sys.argv = ["fedmtl", "run", sys.argv[1], "--set", "run.rounds=1", "--set", "engine.backend=inprocess",
            "--out", sys.argv[2]]
cli.main()
"""


def test_a_sigterm_while_the_header_prints_is_handled_and_the_folder_reused(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HOME": str(tmp_path), "FLWR_HOME": str(tmp_path / ".flwr")}
    proc = subprocess.run([sys.executable, "-c", SIGNAL_DURING_HEADER, str(ROOT / "configs/smoke.toml"), str(out)],
                          capture_output=True, text=True, timeout=120, env=env)
    # handled: the interrupt's own line and exit code, not the default action (killed by signal 15)
    assert proc.returncode == 143, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.strip().splitlines()[-1] == (
        f"interrupted before the run started; nothing was recorded (run again: --out {out} reuses it)"), proc.stderr
    from fedmtl.results import RUN_MARKER, create_run_dir
    from fedmtl.validation import load_config

    assert [p.name for p in out.iterdir()] == [RUN_MARKER]
    assert create_run_dir(load_config(ROOT / "configs/smoke.toml"), out) == out  # what --out does: reused


def test_an_interrupt_after_the_run_finished_says_so_and_names_a_missing_figure(tmp_path, monkeypatch):
    import fedmtl
    from fedmtl.launch.interrupt import interrupted_message

    monkeypatch.setenv("HOME", str(tmp_path))
    run_dir = tmp_path / "run"
    fedmtl.run(ROOT / "configs/smoke.toml", ["run.rounds=1", "engine.backend=inprocess"], out=run_dir)
    assert interrupted_message(run_dir) == f"interrupted after the run finished; its results are complete in {run_dir}"
    (run_dir / "plots" / "accuracy.png").unlink()  # stopped while it drew its figures
    message = interrupted_message(run_dir)
    assert message == ("interrupted after the run finished, while it wrote its last files (plots/accuracy.png); "
                       f"write them with: fedmtl run --resume {run_dir}")
    # the command it names writes the missing figure
    resumed = subprocess.run([sys.executable, "-m", "fedmtl", "run", "--resume", str(run_dir)], capture_output=True,
                             text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "plots" / "accuracy.png").is_file()
    # a resume that extends it has rewritten config.toml before its old summary goes: not finished
    from fedmtl.results import extend_run
    from fedmtl.validation import load_config

    extend_run(run_dir, load_config(run_dir / "config.toml"), 2, 1)
    assert interrupted_message(run_dir) == f"interrupted after round 1; continue with: fedmtl run --resume {run_dir}"


def test_an_interrupt_after_a_centralized_run_finished_names_fedmtl_plot_not_a_resume(tmp_path, monkeypatch):
    import fedmtl
    from fedmtl.launch.interrupt import interrupted_message

    monkeypatch.setenv("HOME", str(tmp_path))
    run_dir = tmp_path / "run"
    fedmtl.run(ROOT / "configs/smoke.toml", ["run.mode=centralized", "run.rounds=1"], out=run_dir)
    assert interrupted_message(run_dir) == f"interrupted after the run finished; its results are complete in {run_dir}"
    (run_dir / "plots" / "accuracy.png").unlink()
    assert interrupted_message(run_dir) == (  # a centralized run cannot be resumed: its figures are drawn again
        "interrupted after the run finished, while it wrote its last files (plots/accuracy.png); its tables are "
        f"complete; draw its figures with: fedmtl plot {run_dir}")
