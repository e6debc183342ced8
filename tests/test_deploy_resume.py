"""Resuming a deployment run: ``fedmtl flwr-run --resume RUN_DIR`` on real SuperLink and
SuperNode processes (loopback), and the command's refusals.

The run is stopped with ``flwr stop`` after its first checkpoint (what a user does to a run, or
what a lost ServerApp leaves); the resumed run must end with the per-client rows of a run that
was never stopped: those of an in-process simulation of the same config, which a deployment run
reproduces byte for byte.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedmtl.launch.flwr_run import _flwr, resolved_run_config, wait_for_run
from fedmtl.results import FLOWER_RUN_FILE, RUN_MARKER
from tests.deploy_support import processes, wait_for

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, runs: Path, rounds: int) -> Path:
    config = tmp_path / "deploy.toml"
    config.write_text((ROOT / "configs/smoke.toml").read_text()
                      # evaluated after the last round only: each message starts a ClientApp process
                      .replace("[run]\n", f'[run]\noutput-dir = "{runs}"\nevaluate-every = 10\n')
                      .replace("rounds = 2", f"rounds = {rounds}"))
    return config


def _fedmtl(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmtl", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.mark.slow
def test_a_stopped_deployment_run_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path, flwr_home):
    from fedmtl.folder_lock import RunFolderBusy, refuse_if_busy
    from fedmtl.launch.deploy import CONNECTION, LocalDeployment
    from fedmtl.validation import load_config

    runs = tmp_path / "runs"
    config = _config(tmp_path, runs, rounds=2)
    with LocalDeployment(tmp_path / "deploy", nodes=2, tls=False, auth=False) as deployment:
        deployment.start()
        submitted = _flwr(["run", str(ROOT), CONNECTION, "--run-config",
                           str(resolved_run_config(load_config(config), tmp_path)), "--format", "json"],
                          deployment.env, timeout=600)
        run_id = str(submitted["run-id"])
        run_dir = wait_for(lambda: next((d for d in runs.glob("smoke-*") if (d / "checkpoints/round-1.pt").is_file()),
                                        None), 300, "the checkpoint of round 1")
        stopped = subprocess.run(["flwr", "stop", run_id, CONNECTION], env=deployment.env, capture_output=True,
                                 text=True, timeout=120)
        assert "successfully stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        status = wait_for_run(run_id, [CONNECTION], deployment.env, 120)
        assert status is not None and status["status"] == "finished:stopped", status
        assert not (run_dir / "summary.json").is_file()

        def free() -> bool:  # the stopped ServerApp process ends (and lets go of its folder) a little later
            try:
                refuse_if_busy(run_dir)
            except RunFolderBusy:
                return False
            return True

        wait_for(free, 120, "the stopped ServerApp to let go of its run folder")

        resumed = _fedmtl("flwr-run", "--resume", str(run_dir), "--superlink-address", f"127.0.0.1:{deployment.port}",
                          "--insecure", "--app-dir", str(ROOT), env=deployment.env, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert f"Resuming {run_dir} after round" in resumed.stdout
        assert "finished:completed" in resumed.stdout
        new_id = (run_dir / "flower-run-id").read_text().strip()
        assert new_id != run_id  # the folder names the submission that finished it

        again = _fedmtl("flwr-run", "--resume", str(run_dir), "--superlink-address", f"127.0.0.1:{deployment.port}",
                        "--insecure", "--app-dir", str(ROOT), env=deployment.env, cwd=tmp_path)
        assert again.returncode == 0 and "already finished its 2 rounds: nothing to resume" in again.stdout
    assert_the_server_leaves_a_finished_run_alone_and_refuses_a_folder_without_a_checkpoint(run_dir, tmp_path)

    simulated = _fedmtl("run", str(config), "--set", "engine.backend=inprocess", "--out", str(tmp_path / "sim"),
                        "-q", cwd=tmp_path)
    assert simulated.returncode == 0, simulated.stderr[-3000:]
    for table in ("metrics.csv", "participation.csv"):
        assert (run_dir / table).read_bytes() == (tmp_path / "sim" / table).read_bytes(), table
    assert not processes(str(tmp_path / "deploy"))


def test_flwr_run_resume_refusals_are_one_line_and_submit_nothing(tmp_path, flwr_home):
    config = _config(tmp_path, tmp_path / "runs", rounds=2)
    both = _fedmtl("flwr-run", str(config), "--resume", str(tmp_path), "--app-dir", str(ROOT))
    assert both.returncode == 2 and "give either CONFIG (a new run) or --resume RUN_DIR" in both.stderr
    neither = _fedmtl("flwr-run", "--app-dir", str(ROOT))
    assert neither.returncode == 2 and "give CONFIG (a new run) or --resume RUN_DIR" in neither.stderr
    sets = _fedmtl("flwr-run", "--resume", str(tmp_path), "--set", "run.rounds=5", "--app-dir", str(ROOT))
    assert sets.returncode == 2 and "--set does not go with --resume" in sets.stderr
    missing = _fedmtl("flwr-run", "--resume", str(tmp_path / "nope"), "--app-dir", str(ROOT))
    assert missing.returncode == 2 and "does not exist: nothing to resume" in missing.stderr
    not_a_run = _fedmtl("flwr-run", "--resume", str(tmp_path), "--app-dir", str(ROOT))
    assert not_a_run.returncode == 2 and "is not a run folder (no config.toml)" in not_a_run.stderr
    for proc in (both, neither, sets, missing, not_a_run):
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "submitted" not in proc.stdout


def test_a_submission_s_resume_keys_are_not_the_experiment_s():
    from fedmtl.config import RESUME_HEADS_ON_NODES, RESUME_RUN_DIR, SUBMISSION_DEFAULTS, ConfigError
    from fedmtl.server.app import submission
    from fedmtl.validation import config_from_flat, load_config

    flat = {**load_config(None, ["run.rounds=3"]).to_flat(), **SUBMISSION_DEFAULTS}
    values, resume, heads_on_nodes = submission(flat)
    assert resume is None and heads_on_nodes is False
    assert config_from_flat(values).run.rounds == 3  # the keys are gone: the config reads
    values, resume, heads_on_nodes = submission({**flat, RESUME_RUN_DIR: "/srv/runs/a", RESUME_HEADS_ON_NODES: True})
    assert resume == Path("/srv/runs/a") and heads_on_nodes is True and RESUME_RUN_DIR not in values
    # `flwr run --run-config 'resume.heads-on-nodes="false"'` passes text: "false" is no (bool("false") is True)
    for text, meant in (("false", False), ("False", False), ("true", True), (" TRUE ", True)):
        assert submission({**flat, RESUME_HEADS_ON_NODES: text})[2] is meant, text
    for bad in ("no", "", 1, 0.0):
        said = f"^resume.heads-on-nodes = {re.escape(repr(bad))}: must be true or false$"
        with pytest.raises(ConfigError, match=said):
            submission({**flat, RESUME_HEADS_ON_NODES: bad})


def test_a_resume_that_skips_the_heads_in_the_folder_still_checks_everything_else(tmp_path, monkeypatch):
    """``heads_on_nodes``: the clients' heads are on their hosts, so heads missing from the
    folder are no problem there; the tables and the config still are."""
    from fedmtl import results
    from fedmtl.validation import load_config

    cfg = load_config(None)
    checkpoint = {"round": 1, "run-id": "r", "config": results.resume_config(cfg)}
    monkeypatch.setattr(results, "head_problems", lambda *args, **kwargs: [results.ResumeProblem("heads missing")])
    monkeypatch.setattr(results, "table_problems", lambda *args: [])
    monkeypatch.setattr(results, "read_run_id", lambda run_dir: "r")
    assert [p.message for p in results.resume_problems(tmp_path, cfg, checkpoint)] == ["heads missing"]
    assert results.resume_problems(tmp_path, cfg, checkpoint, heads=False) == []
    edited = cfg.with_values(client={"lr": 0.5})
    assert "client.lr = 0.5" in results.resume_problems(tmp_path, edited, checkpoint, heads=False)[0].message
    monkeypatch.setattr(results, "table_problems", lambda *args: ["metrics.csv lacks round 1"])
    assert "metrics.csv lacks round 1" in results.resume_problems(tmp_path, cfg, checkpoint, heads=False)[0].message



def assert_the_server_leaves_a_finished_run_alone_and_refuses_a_folder_without_a_checkpoint(run_dir: Path,
                                                                                           tmp_path: Path) -> None:
    """What the ServerApp itself does with ``resume.run-dir`` before it touches the grid (a
    submission the command line would not make: the grid is never used, ``None``)."""
    from fedmtl.resumption import ResumeRefused
    from fedmtl.server.app import resume_submitted

    assert resume_submitted(None, run_dir, heads_on_nodes=True, quiet=True) == run_dir  # finished: left alone
    assert not (run_dir / "stopped.txt").exists()
    started = tmp_path / "started"  # a submitted run stopped before its first checkpoint
    started.mkdir()
    (started / "config.toml").write_text((run_dir / "config.toml").read_text())
    (started / RUN_MARKER).write_text("")
    (started / FLOWER_RUN_FILE).write_text("7\n")
    with pytest.raises(ResumeRefused, match="was submitted with flwr run .Flower run 7.: submit its config.toml again"):
        resume_submitted(None, started, heads_on_nodes=True)


def test_a_submitted_resume_of_a_folder_without_a_checkpoint_is_refused_not_restarted(tmp_path):
    """``fedmtl run --resume`` starts such a folder again from round 1; a submitted resume
    (``restart=False``, the ServerApp's and ``flwr-run --resume``'s) refuses it and deletes nothing."""
    from fedmtl.resumption import ResumeRefused, plan_resume
    from fedmtl.server.app import resume_submitted

    folder = tmp_path / "run"
    (folder / "heads").mkdir(parents=True)
    (folder / "config.toml").write_text((ROOT / "configs/smoke.toml").read_text())
    (folder / RUN_MARKER).write_text("")
    (folder / "metrics.csv").write_text("round,client,task,split,metric,value\n")
    assert plan_resume(folder).restart is not None  # fedmtl run --resume would start it again
    for refuse in (lambda: plan_resume(folder, restart=False), lambda: resume_submitted(None, folder, True)):
        with pytest.raises(ResumeRefused, match="it has no checkpoint to continue from; submit its config.toml again"):
            refuse()
    assert (folder / "metrics.csv").is_file()
