"""The same app through `flwr run` and a real local SuperLink (simulation runtime)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fedmtl.launch.flwr_run import _json_from, local_superlinks, wait_for_run
from tests.helpers import is_png, stop_local_superlink
from tests.plugin_support import PLUGIN

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _wait(run_id: str, timeout: float = 300) -> dict:
    status = wait_for_run(run_id, [], dict(os.environ), timeout)
    assert status is not None, f"run {run_id} did not finish"
    return status


class _Clock:
    """A clock for ``fedmtl.launch.flwr_run`` that moves only when it sleeps: the polling
    schedule is checked exactly, whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now = round(self.now + seconds, 9)  # no drift from adding 0.2 a hundred times


class _Stream:
    """A ``flwr log --stream`` process that ends at ``ends`` on ``clock``."""

    def __init__(self, clock: _Clock, ends: float) -> None:
        self.clock, self.ends = clock, ends

    def poll(self) -> int | None:
        return 0 if self.clock.now >= self.ends else None


def test_a_streamed_run_is_checked_when_its_log_stream_ends(monkeypatch):
    """``flwr ls`` costs a process start: while ``flwr log --stream`` runs it is read rarely,
    and at once when the stream ends (the run ended)."""
    from fedmtl.launch import flwr_run

    clock, calls = _Clock(), []
    monkeypatch.setattr(flwr_run, "time", clock)
    monkeypatch.setattr(flwr_run, "run_status", lambda *a: calls.append(clock.now) or {
        "status": "finished:completed" if len(calls) > 1 else "running"})
    stream = _Stream(clock, ends=1.5)
    assert flwr_run.wait_for_run("7", [], {}, timeout=60, logs=stream) == {"status": "finished:completed"}
    assert calls == [0.0, 1.6]  # the stream's end is seen at the next of its 0.2 s checks


def test_a_long_stream_is_checked_every_streamed_poll_and_the_timeout_holds(monkeypatch):
    from fedmtl.launch import flwr_run

    clock, calls = _Clock(), []
    monkeypatch.setattr(flwr_run, "time", clock)
    monkeypatch.setattr(flwr_run, "run_status", lambda *a: calls.append(clock.now) or {"status": "running"})
    assert flwr_run.wait_for_run("7", [], {}, timeout=50, logs=_Stream(clock, ends=1e9)) is None
    assert [round(c, 6) for c in calls] == [0.0, 20.0, 40.0, 50.0]


def test_without_a_stream_the_status_polls_slow_down_and_the_timeout_holds(monkeypatch):
    from fedmtl.launch import flwr_run

    clock, calls = _Clock(), []
    monkeypatch.setattr(flwr_run, "time", clock)
    monkeypatch.setattr(flwr_run, "run_status", lambda *a: calls.append(clock.now) or {"status": "running"})
    assert flwr_run.wait_for_run("7", [], {}, timeout=40) is None
    gaps = [round(b - a, 6) for a, b in zip(calls, calls[1:], strict=False)]
    # 2 s, then 1.5 times longer each time up to 10 s (each rounded up to the 0.2 s checks), until the deadline
    assert gaps[:4] == [2.0, 3.0, 4.6, 6.8] and set(gaps[5:-1]) == {10.0} and calls[-1] == pytest.approx(40.0)


@pytest.mark.parametrize(("answer", "said"), [
    ({"success": False, "error-message": "Connection to the SuperLink is unavailable.\nCheck your network."},
     "the SuperLink no longer lists run 7 (it stopped, or cannot be reached): Connection to the SuperLink is "
     "unavailable. Check your network."),
    (RuntimeError("`flwr ls` failed (exit 1): boom\nagain"), "the SuperLink stopped answering about run 7: "
                                                            "`flwr ls` failed (exit 1): boom again"),
])
def test_a_lost_superlink_is_one_line_from_both_commands(monkeypatch, tmp_path, answer, said):
    """The SuperLink stopped or is unreachable mid-run: `fedmtl flwr-run` ends in one line (exit
    1), not a traceback (`fedmtl deploy local` catches the same error)."""
    from typer.testing import CliRunner

    from fedmtl import cli as fedmtl_cli
    from fedmtl.launch import flwr_run
    from fedmtl.launch.flwr_run import SuperLinkLost, run_status

    def flwr(args, env, timeout=120):  # noqa: ANN001, ANN202 - stands in for the `flwr` command
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(flwr_run, "_flwr", flwr)
    with pytest.raises(SuperLinkLost) as error:
        run_status("7", [], {})
    assert str(error.value).startswith(said) and "\n" not in str(error.value)

    def lost(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise SuperLinkLost(said)

    monkeypatch.setattr(flwr_run, "run_and_check", lost)
    result = CliRunner().invoke(fedmtl_cli.cli, ["flwr-run", str(ROOT / "configs/smoke.toml"), "--superlink-address",
                                                 "127.0.0.1:1", "--insecure"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines() == [f"error: {said}; the rounds the run finished are in its folder "
                                                  "under run.output-dir"]


@pytest.mark.parametrize("stop", ["lost", "interrupted"])
def test_a_local_flwr_run_that_stops_early_names_the_folder_of_its_unfinished_run(monkeypatch, tmp_path, stop):
    """The SuperLink lost or Ctrl-C mid-run: the folder the submitted run wrote is named, as after
    a failed run (it was printed only when the run ended by itself)."""
    from typer.testing import CliRunner

    from fedmtl import cli as fedmtl_cli
    from fedmtl.launch import flwr_run
    from fedmtl.launch.flwr_run import SuperLinkLost

    output = tmp_path / "runs"
    folder = output / "smoke-20261202-120000"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text("")
    (folder / "flower-run-id").write_text("7\n")

    def submitted_then_stopped(*args, on_submitted, **kwargs):  # noqa: ANN002, ANN003, ANN202
        on_submitted("7")
        raise SuperLinkLost("the SuperLink stopped answering about run 7: gone") if stop == "lost" \
            else KeyboardInterrupt

    monkeypatch.setattr(flwr_run, "run_and_check", submitted_then_stopped)
    result = CliRunner().invoke(fedmtl_cli.cli, ["flwr-run", str(ROOT / "configs/smoke.toml"),
                                                 "--set", f"run.output-dir={output}"])
    assert result.exit_code == (1 if stop == "lost" else 130), result.output
    assert f"Folder of the unfinished run: {folder}" in result.output.splitlines(), result.output
    assert "Results:" not in result.output
    assert "--resume" not in result.output  # no checkpoint: nothing to continue

    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "round-3.pt").write_bytes(b"")
    result = CliRunner().invoke(fedmtl_cli.cli, ["flwr-run", str(ROOT / "configs/smoke.toml"),
                                                 "--set", f"run.output-dir={output}"])
    assert (f"once it has stopped, continue it after round 3 with: fedmtl flwr-run --resume {folder}"
            in result.output.splitlines()), result.output


@pytest.mark.parametrize("stop", ["lost", "interrupted"])
def test_a_local_deployment_that_stops_early_names_the_folder_of_its_unfinished_run(monkeypatch, tmp_path, stop):
    """`fedmtl deploy local`, the same (its SuperLink and SuperNodes stand-ins here: the real ones
    are in tests/test_deploy.py)."""
    from typer.testing import CliRunner

    from fedmtl import cli as fedmtl_cli
    from fedmtl.launch import deploy, flwr_run
    from fedmtl.launch.flwr_run import SuperLinkLost

    output = tmp_path / "runs"
    folder = output / "smoke-20261202-120000"
    folder.mkdir(parents=True)
    (folder / "config.toml").write_text("")
    (folder / "flower-run-id").write_text("7\n")
    config = tmp_path / "smoke.toml"
    config.write_text((ROOT / "configs/smoke.toml").read_text().replace("[run]", f'[run]\noutput-dir = "{output}"', 1))

    class StandIn:
        port, env = 1, {}

        def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
            pass

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc):  # noqa: ANN002, ANN204
            return False

        def start(self):  # noqa: ANN201
            pass

        def exited(self):  # noqa: ANN201
            return {}

    def submitted_then_stopped(*args, on_submitted, **kwargs):  # noqa: ANN002, ANN003, ANN202
        on_submitted("7")
        raise SuperLinkLost("the SuperLink stopped answering about run 7: gone") if stop == "lost" \
            else KeyboardInterrupt

    monkeypatch.setattr(deploy, "LocalDeployment", StandIn)
    monkeypatch.setattr(flwr_run, "run_and_check", submitted_then_stopped)
    result = CliRunner().invoke(fedmtl_cli.cli, ["deploy", "local", str(config), "--nodes", "2"])
    assert result.exit_code == (1 if stop == "lost" else 130), result.output
    assert f"Folder of the unfinished run: {folder}" in result.output.splitlines(), result.output


def test_flwr_run_takes_set_as_fedmtl_run_does(monkeypatch):
    from typer.testing import CliRunner

    from fedmtl import cli as fedmtl_cli
    from fedmtl.launch import flwr_run

    seen = {}
    monkeypatch.setattr(flwr_run, "run_and_check", lambda *args, **kwargs: seen.update(kwargs) or 0)
    runner, smoke = CliRunner(), str(ROOT / "configs/smoke.toml")
    result = runner.invoke(fedmtl_cli.cli, ["flwr-run", smoke, "--set", "data.num-clients=4"])
    assert result.exit_code == 0 and seen["overrides"] == ["data.num-clients=4"], result.output
    bad = runner.invoke(fedmtl_cli.cli, ["flwr-run", smoke, "--set", "data.num-clients=zero"])
    assert bad.exit_code == 2 and "data.num-clients" in bad.output and "Traceback" not in bad.output


def test_flwr_run_names_the_run_folder_its_own_flower_run_wrote(monkeypatch, tmp_path):
    """Another submission writing into the same output folder at the same time is not named."""
    from typer.testing import CliRunner

    from fedmtl import cli as fedmtl_cli
    from fedmtl.launch import flwr_run
    from fedmtl.results import write_flower_run_id

    output = tmp_path / "runs"
    for name, flower_run_id in (("ours", 123), ("theirs", 456), ("plain", None)):
        (output / name).mkdir(parents=True)
        (output / name / "config.toml").write_text("")
        if flower_run_id is not None:
            write_flower_run_id(output / name, flower_run_id)

    outcome = {"code": 0}

    def submitted(*args, on_submitted, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        on_submitted("123")
        return outcome["code"]

    monkeypatch.setattr(flwr_run, "run_and_check", submitted)
    args = ["flwr-run", str(ROOT / "configs/smoke.toml"), "--set", f"run.output-dir={output}"]
    result = CliRunner().invoke(fedmtl_cli.cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [f"Results: {output / 'ours'}"]
    # a run that failed (or ran past --timeout) is not announced as results: its folder holds
    # what it recorded so far
    outcome["code"] = 1
    result = CliRunner().invoke(fedmtl_cli.cli, args)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [f"Folder of the unfinished run: {output / 'ours'}"]


def test_streamed_logs_lose_their_colour_codes_off_a_terminal(capsys):
    from fedmtl.launch.flwr_run import stream_logs

    line = "\\x1b[92mINFO \\x1b[0m:      round 1"
    logs = stream_logs([sys.executable, "-c", f"print('{line}')"], dict(os.environ))
    assert logs.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    out = ""
    while "round 1" not in out and time.monotonic() < deadline:
        time.sleep(0.05)
        out += capsys.readouterr().out
    assert out == "INFO :      round 1\n"


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_flwr_run_and_its_checked_wrapper(flwr_home, tmp_path):
    from flwr.cli.constant import LOCAL_SUPERLINK_HTTP_API_PORT

    # `flwr run` reuses whatever local SuperLink already listens on its fixed port
    assert not _port_in_use(int(LOCAL_SUPERLINK_HTTP_API_PORT)), (
        f"a local SuperLink from another FLWR_HOME already listens on port "
        f"{LOCAL_SUPERLINK_HTTP_API_PORT}; stop it (pkill -f flower-superlink) and rerun"
    )
    try:
        # 1. the plain Flower command, exactly as documented, from the repository root:
        #    it succeeds and writes the run folder under ./runs (relative output-dir = the
        #    local SuperLink's working directory)
        before = set((ROOT / "runs").glob("smoke-*"))
        proc = subprocess.run(
            ["flwr", "run", ".", "--run-config", "configs/smoke.toml", "--format", "json"],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
        )
        submitted = _json_from(proc.stdout)
        assert submitted["success"], proc.stdout + proc.stderr
        status = _wait(submitted["run-id"])
        assert status["status"] == "finished:completed", status
        created = set((ROOT / "runs").glob("smoke-*")) - before
        # the folder of this submission, by the Flower run id it records (under load, another
        # submission to the machine's one local SuperLink port can land in ./runs too)
        ours = [d for d in created if (d / "flower-run-id").is_file()
                and (d / "flower-run-id").read_text().strip() == str(submitted["run-id"])]
        assert len(ours) == 1, (created, submitted["run-id"])
        run_dir = ours[0]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["final_round"] == 2 and set(summary["final"]) == {"left", "right"}
        assert is_png(run_dir / "plots" / "accuracy.png")
        shutil.rmtree(run_dir)
        assert local_superlinks(flwr_home)  # `flwr run` leaves its local SuperLink running ...
        stop_local_superlink(flwr_home)  # ... so that `fedmtl flwr-run` below starts its own

        # 2. a ServerApp that fails: `flwr run` itself would exit 0 (the Flower trap), but the
        #    documented command fails, with the reason
        bad = tmp_path / "fails.toml"
        bad.write_text(
            '[run]\nrounds = 1\noutput-dir = "' + str(tmp_path / "bad-runs") + '"\n'
            '[data]\nnum-clients = 20\npartitioner = "dirichlet"\ndirichlet-alpha = 0.001\n'
        )
        proc = subprocess.run(
            [sys.executable, "-m", "fedmtl", "flwr-run", str(bad), "--app-dir", str(ROOT)],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )
        assert proc.returncode == 1
        assert "finished:failed" in proc.stderr
        assert "raise data.dirichlet-alpha or lower data.num-clients" in proc.stderr
        assert "server.max-examples" not in proc.stderr  # the data's own problem, not the server's
        # refused before the ServerApp made a run folder: none is left, none is announced
        assert not (tmp_path / "bad-runs").exists() and "Results:" not in proc.stdout
        assert not local_superlinks(flwr_home)  # the local SuperLink it started is stopped, even on failure

        # 3. the documented command succeeds on a good config, results at run.output-dir; with
        #    Ditto (a personal model per client in its store), both views are measured; a
        #    plugin's weighting (run.plugins) runs in the clients Flower's runtime starts
        plugin = tmp_path / "plugins" / "my_plugin.py"
        plugin.parent.mkdir()
        plugin.write_text(PLUGIN)
        good = tmp_path / "good.toml"
        good.write_text((ROOT / "configs/smoke.toml").read_text().replace(
            '[run]\n', f'[run]\noutput-dir = "{tmp_path / "good-runs"}"\nplugins = ["{plugin}"]\n').replace(
            '[client]\n', '[client]\nweighting = "first-task-heavy"\n') + '\n[personalization]\nmethod = "ditto"\n')
        proc = subprocess.run(
            [sys.executable, "-m", "fedmtl", "flwr-run", str(good), "--app-dir", str(ROOT)],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "finished:completed" in proc.stdout
        assert "\x1b[" not in proc.stdout and "INFO" in proc.stdout  # the streamed log, without colour codes
        summaries = list((tmp_path / "good-runs").glob("smoke-*/summary.json"))
        assert len(summaries) == 1
        flower_run_id = (summaries[0].parent / "flower-run-id").read_text().strip()
        assert f"Flower run {flower_run_id} submitted" in proc.stdout
        assert proc.stdout.strip().splitlines()[-1] == f"Results: {summaries[0].parent}"
        metrics = pd.read_csv(summaries[0].parent / "metrics.csv")
        assert {"test", "test-global"} <= set(metrics.split)
        assert set(metrics[metrics.split == "test-global"].client) == {0, 1}
        weights = metrics[(metrics.split == "train") & (metrics.metric == "weight")]
        assert set(weights.client) == {0, 1}
        assert set(weights[weights.task == "left"].value.round(6)) == {round(2 / 3, 6)}
        assert set(weights[weights.task == "right"].value.round(6)) == {round(1 / 3, 6)}
        assert not local_superlinks(flwr_home)  # no process left behind
    finally:
        stop_local_superlink(flwr_home)


def test_flwr_run_from_a_folder_that_is_no_flower_app_is_one_line(tmp_path):
    """Outside the repository `flwr run` fails with a raw dict of its own; fedmtl says what to do
    before starting anything."""
    from typer.testing import CliRunner

    from fedmtl import cli as fedmtl_cli

    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'other'\n")
    for app_dir in (tmp_path, tmp_path / "missing"):
        result = CliRunner().invoke(fedmtl_cli.cli, ["flwr-run", "smoke", "--app-dir", str(app_dir)])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            f"error: --app-dir '{app_dir}' is not a Flower app folder ({app_dir / 'pyproject.toml'} has no "
            "[tool.flwr.app]): run from the fedmtl repository or pass --app-dir <your fedmtl checkout>"]


def test_the_private_flower_home_of_a_submission_is_removed_when_the_command_exits(tmp_path):
    """`fedmtl flwr-run --superlink-address` and `fedmtl deploy register` write the connection into a
    temporary Flower home; it goes with the command's process (it was left in the temp folder)."""
    script = ("import sys; from fedmtl.launch.flwr_run import connection_env; "
              "env = connection_env('x', '127.0.0.1:1', insecure=True); print(env['FLWR_HOME'])")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    home = Path(done.stdout.strip())
    assert home.parent == tmp_path and home.name.startswith("fedmtl-flwr-home-")
    assert not home.exists() and list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept-home"  # a home the caller names is the caller's: it stays
    script = script.replace("insecure=True)", f"insecure=True, home={str(kept)!r})")
    subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert (kept / "config.toml").is_file()
