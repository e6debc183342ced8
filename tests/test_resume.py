"""Checkpoints, versioned heads and `fedmtl run --resume` after a SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from fedmtl.personalization import DiskHeadStore
from fedmtl.results import CheckpointError, checkpoint_files, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SETS = ["run.rounds=4", "data.num-clients=3", "server.fraction-train=0.67", "client.weighting=rlw"]


def _fedmtl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmtl", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def _sets() -> list[str]:
    return [a for s in SETS for a in ("--set", s)]


def test_disk_store_keeps_the_version_a_resume_needs(tmp_path):
    store = DiskHeadStore(tmp_path)
    for r in (1, 3, 4):
        store.save(7, {"w": torch.full((2,), float(r))}, server_round=r)
    # in round 4 the checkpoints of rounds 2 and 3 are kept: a resume may need the newest
    # version <= 2 (round 1's), so every version stays
    assert sorted(store.versions(7)) == [1, 3, 4]
    assert store.load(7, until_round=3)["w"][0] == 3 and store.load(7)["w"][0] == 4
    assert store.load(7, until_round=2)["w"][0] == 1
    store.save(7, {"w": torch.full((2,), 6.0)}, server_round=6)
    # checkpoints 4 and 5 kept: the newest version <= 4 (4) and newer ones stay, 1 and 3 go
    assert sorted(store.versions(7)) == [4, 6]
    assert store.load(7, until_round=3) is None  # no resume needs a version older than round 4's
    store.save(7, {"w": torch.full((2,), 9.0)}, server_round=14, checkpoint_every=5)
    # checkpoints 5 and 10 kept before round 14: keep the newest version <= 5 (4) and newer ones
    assert sorted(store.versions(7)) == [4, 6, 14]
    assert store.load(8) is None


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    from fedmtl.data import dataset_tasks
    from fedmtl.results import RunRecorder
    from fedmtl.validation import load_config

    cfg = load_config(None, [])
    recorder = RunRecorder(tmp_path, cfg, dataset_tasks(cfg.data))
    for r in (1, 2, 3):
        recorder.save_checkpoint(r, {"backbone": {"w": torch.ones(1) * r}})
    assert [p.name for p in checkpoint_files(tmp_path)] == ["round-2.pt", "round-3.pt"]
    (tmp_path / "checkpoints" / "round-3.pt").write_bytes(b"not a checkpoint")
    state, notes = load_checkpoint(tmp_path)
    assert state["round"] == 2 and len(notes) == 1 and "round-3.pt" in notes[0]
    (tmp_path / "checkpoints" / "round-2.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="round-2.pt"):
        load_checkpoint(tmp_path)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_metrics_as_an_uninterrupted_one(tmp_path):
    config = str(ROOT / "configs/smoke.toml")
    # the uninterrupted reference runs in-process (the same numbers as on Ray, bit for bit:
    # tests/test_simulation.py), without a second Ray start-up; the killed run is on Ray
    whole = _fedmtl("run", config, *_sets(), "--set", "engine.backend=inprocess", "--out", str(tmp_path / "whole"),
                    "-q", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "fedmtl", "run", config, *_sets(), "--out", str(killed), "-q"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (killed.exists() and any(p.name == "round-2.pt" for p in checkpoint_files(killed))):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "summary.json").exists()
    assert not (killed / "stopped.txt").exists()  # a SIGKILL leaves no word: neither summary nor stopped.txt

    # a copy whose metrics.csv lost the rows of a checkpointed round is refused, and left as it is
    broken = tmp_path / "broken"
    shutil.copytree(killed, broken)
    kept = b"".join(line for line in (killed / "metrics.csv").read_bytes().splitlines(keepends=True)
                    if not line.startswith(b"2,"))
    (broken / "metrics.csv").write_bytes(kept)
    refused = _fedmtl("run", "--resume", str(broken), cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "metrics.csv has no training rows of round 2" in refused.stderr
    assert (broken / "metrics.csv").read_bytes() == kept

    # ... and so is one cut at a line end, inside round 2 (every round still has rows)
    lines = (killed / "metrics.csv").read_bytes().splitlines(keepends=True)
    last_of_round_2 = max(i for i, line in enumerate(lines) if line.startswith(b"2,"))
    cut_copy = tmp_path / "cut"
    shutil.copytree(killed, cut_copy)
    (cut_copy / "metrics.csv").write_bytes(b"".join(lines[:last_of_round_2 - 2]))
    refused = _fedmtl("run", "--resume", str(cut_copy), cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "rows were lost" in refused.stderr and "where the checkpoint of round 2 counted" in refused.stderr

    (killed / "stopped.txt").write_text("interrupted by SIGINT\n")  # as an interrupt leaves it
    resumed = _fedmtl("run", "--resume", str(killed), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout
    assert not (killed / "stopped.txt").exists()  # the run went on: the folder no longer says it stopped
    a, b = (pd.read_csv(tmp_path / name / "metrics.csv") for name in ("whole", "killed"))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    ra, rb = (pd.read_csv(tmp_path / name / "rounds.csv").drop(columns="elapsed_s") for name in ("whole", "killed"))
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)
    again = _fedmtl("run", "--resume", str(killed), cwd=tmp_path)
    assert again.returncode == 0 and "nothing to resume" in again.stdout


def test_resume_errors_are_clear(tmp_path):
    proc = _fedmtl("run", "--resume", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "not a run folder" in proc.stderr and "Traceback" not in proc.stderr
    heads = tmp_path.parent / "elsewhere"
    (tmp_path / ".fedmtl-run").touch()
    (tmp_path / "config.toml").write_text(f'[run]\nrounds = 2\n[client]\nhead-store-dir = "{heads}"\n')
    proc = _fedmtl("run", "--resume", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "its heads are not kept in a folder of their own inside it" in proc.stderr
    proc = _fedmtl("run", str(ROOT / "configs/smoke.toml"), "--resume", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "give no CONFIG" in proc.stderr
    proc = _fedmtl("run", "--resume", str(tmp_path), "--out", str(tmp_path / "copy"), cwd=tmp_path)  # was ignored
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: --resume continues a run in its own folder; give no --out (copy the folder to resume a copy)")
    assert not (tmp_path / "copy").exists()


def test_a_run_stopped_before_its_first_checkpoint_starts_again_in_its_folder(tmp_path):
    """Killed during its start-up or first round (its folder holds its config, a run-id and
    what round 1 began to write), a run used to be neither resumable ("nothing to resume") nor
    re-runnable into the same --out; a resume now starts it again from round 1, to the same bytes."""
    sets = [a for s in ("run.rounds=2", "engine.backend=inprocess") for a in ("--set", s)]
    whole = tmp_path / "whole"
    done = _fedmtl("run", str(ROOT / "configs/smoke.toml"), *sets, "--out", str(whole), "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    stopped, by_api = (_stopped_in_round_1(whole, tmp_path / name) for name in ("stopped", "by-api"))
    (stopped / "notes.md").write_text("mine")  # not the run's: kept
    proc = _fedmtl("run", "--resume", str(stopped), "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"note: '{stopped}' has no checkpoint: the run starts again from round 1 in it" in proc.stderr
    assert (stopped / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()
    assert (stopped / "rounds.csv").is_file() and (stopped / "summary.json").is_file()
    assert (stopped / "run-id").read_text() != (whole / "run-id").read_text()  # a new run, in the same folder
    assert (stopped / "notes.md").read_text() == "mine"
    assert "(deleting its heads, metrics.csv, placement.csv, run-id first)" in proc.stderr
    import fedmtl

    with pytest.warns(UserWarning, match="has no checkpoint: the run starts again from round 1"):
        fedmtl.resume(by_api)
    assert (by_api / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()

    # stopped while it wrote its last files (after summary.json): the resume writes them again
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    (cut / "plots" / "clients.png").unlink()
    (cut / "rounds.parquet").unlink()
    proc = _fedmtl("run", "--resume", str(cut), "-q", cwd=tmp_path)
    assert proc.returncode == 0 and "already finished all 2 rounds" in proc.stdout, proc.stderr[-3000:]
    assert "note: it was stopped before writing plots/clients.png, rounds.parquet; writing them now" in proc.stderr
    assert (cut / "plots" / "clients.png").is_file() and (cut / "rounds.parquet").is_file()
    assert (cut / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()

    # stopped during its start-up, before it recorded anything: the folder holds only its marker
    marker_only = tmp_path / "marker-only"
    marker_only.mkdir()
    (marker_only / ".fedmtl-run").touch()
    proc = _fedmtl("run", "--resume", str(marker_only), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: '{marker_only}' holds no config.toml: its run stopped during its start-up, before recording "
        f"anything; run the config again (--out {marker_only} reuses the folder)")
    from fedmtl.launch.interrupt import interrupted_message
    from fedmtl.results import create_run_dir

    assert interrupted_message(marker_only).startswith("interrupted before the run started; nothing was recorded")
    # a folder that recorded rounds and then lost its config.toml is not told to start again
    lost = tmp_path / "lost-config"
    shutil.copytree(whole, lost)
    (lost / "config.toml").unlink()
    proc = _fedmtl("run", "--resume", str(lost), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: '{lost}' has lost its config.toml but holds its run's metrics.csv, rounds.csv, summary.json, "
        "checkpoints: put the config.toml back (the run's own) to resume it")
    assert create_run_dir(None, marker_only) == marker_only.resolve()  # --out takes the folder again


def _stopped_in_round_1(whole: Path, folder: Path) -> Path:
    """A copy of the finished run ``whole`` as a kill in round 1 leaves it: no checkpoint, no
    round recorded, half of round 1's metrics written."""
    shutil.copytree(whole, folder)
    for name in ("checkpoints", "plots"):
        shutil.rmtree(folder / name)
    for name in ("summary.json", "rounds.csv", "participation.csv", *(p.name for p in folder.glob("*.parquet"))):
        (folder / name).unlink(missing_ok=True)
    metrics = (folder / "metrics.csv").read_text().splitlines(keepends=True)
    (folder / "metrics.csv").write_text("".join(metrics[:len(metrics) // 3]))
    return folder


def test_a_folder_fedmtl_did_not_make_is_never_cleared_for_a_restart(tmp_path):
    """A project folder with a config.toml is not a run folder: nothing in it is deleted."""
    import fedmtl
    from fedmtl.resumption import ResumeRefused

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "precious.csv").write_text("1,2\n")
    (project / "metrics.csv").write_text("mine\n")
    (project / "config.toml").write_text((ROOT / "configs/smoke.toml").read_text())
    proc = _fedmtl("run", "--resume", str(project), cwd=tmp_path)
    assert proc.returncode == 2 and "is not a run folder fedmtl made (no .fedmtl-run)" in proc.stderr
    with pytest.raises(ResumeRefused, match="is not a run folder fedmtl made"):
        fedmtl.resume(project)
    assert sorted(p.name for p in project.rglob("*")) == ["config.toml", "data", "metrics.csv", "precious.csv"]


def test_the_advice_after_an_early_stop_names_a_resume_only_where_one_works(tmp_path):
    from fedmtl.launch.interrupt import interrupted_message

    starting = tmp_path / "starting"  # stopped while the engine started: no config.toml yet
    starting.mkdir()
    (starting / ".fedmtl-run").touch()
    assert interrupted_message(starting) == (f"interrupted before the run started; nothing was recorded (run again: "
                                             f"--out {starting} reuses it)")
    federated, centralized = tmp_path / "federated", tmp_path / "centralized"
    for folder, mode in ((federated, "federated"), (centralized, "centralized")):
        shutil.copytree(starting, folder)
        (folder / "config.toml").write_text(f'[run]\nmode = "{mode}"\n')
    assert interrupted_message(federated) == ("interrupted before the first checkpoint; start it again from round 1 "
                                              f"with: fedmtl run --resume {federated}")
    assert interrupted_message(centralized) == (
        f"interrupted before the first checkpoint; nothing to resume in {centralized} (a centralized run has no "
        "checkpoints to continue from; run the baseline again)")
    outside = tmp_path / "outside"  # heads kept outside the folder: a restart would not clear them
    shutil.copytree(federated, outside)
    (outside / "config.toml").write_text(f'[client]\nhead-store-dir = "{tmp_path / "heads"}"\n')
    assert interrupted_message(outside) == (
        f"interrupted before the first checkpoint; nothing to resume in {outside} (it has no checkpoint, and its "
        f"heads are not kept in a folder of their own inside it ({tmp_path / 'heads'}): run its config.toml again "
        "in a new folder)")
    # heads kept in the clients' contexts are lost with the process: checkpoints or not, no resume
    in_memory = tmp_path / "in-memory"
    shutil.copytree(federated, in_memory)
    (in_memory / "config.toml").write_text('[client]\nhead-store = "context"\n')
    (in_memory / "checkpoints").mkdir()
    (in_memory / "checkpoints" / "round-4.pt").write_bytes(b"")
    assert interrupted_message(in_memory) == (
        f"interrupted after round 4; its results so far are in {in_memory}; a resume cannot continue it "
        "(client.head-store = 'context' kept the clients' heads in memory, and they are lost; use 'disk')")
    from fedmtl.cli import failed_run_advice

    assert "--resume" not in failed_run_advice(in_memory, 6) and "run its config again" in failed_run_advice(
        in_memory, 6)
    (federated / "flower-run-id").write_text("42\n")  # submitted with flwr run: its clients may be elsewhere
    assert interrupted_message(federated).endswith(
        f"; nothing to resume in {federated} (it has no checkpoint, and was submitted with flwr run (Flower run 42): "
        "submit its config.toml again)")
    from fedmtl.resumption import ResumeRefused, plan_resume

    with pytest.raises(ResumeRefused, match=r"was submitted with flwr run \(Flower run 42\): submit its config.toml"):
        plan_resume(federated)


def test_reset_deletes_the_runs_files_and_its_head_store_at_any_depth_and_keeps_the_rest(tmp_path):
    from fedmtl.results import reset_run_dir

    run = tmp_path / "run"
    for path in ("sub/heads/clients-0-99/client-0.r1.safetensors", "sub/notes.md", "checkpoints/x", "notes.md"):
        (run / path).parent.mkdir(parents=True, exist_ok=True)
        (run / path).write_text("")
    # forced-resumes.jsonl: a run started again from round 1 has had no forced resume
    for name in (".fedmtl-run", "config.toml", "metrics.csv", "run-id", "forced-resumes.jsonl"):
        (run / name).write_text("")
    (run / "plots").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.png").write_text("")
    deleted = reset_run_dir(run, run / "sub" / "heads")
    assert deleted == ["checkpoints", "forced-resumes.jsonl", "metrics.csv", "plots", "run-id", "sub/heads"]
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == [
        ".fedmtl-run", "config.toml", "notes.md", "sub", "sub/notes.md"]
    assert (tmp_path / "elsewhere" / "keep.png").is_file()  # a link is removed, never followed
    with pytest.raises(ValueError, match="is not a run folder fedmtl made"):
        reset_run_dir(tmp_path / "elsewhere")


def test_a_resumed_run_logs_each_client_error_once(tmp_path):
    """The rounds a resume redoes log their errors again: the log is cut back to the checkpoint
    first, so it ends as an uninterrupted run's, and the closing count is the run's."""
    import fedmtl

    faults = ["data.num-clients=4", "run.rounds=4", "faults.dropout=0.5", "run.seed=3", "server.min-replies=1",
              "server.on-too-few=skip", "engine.backend=inprocess"]
    whole = fedmtl.run(ROOT / "configs/smoke.toml", overrides=faults, out=tmp_path / "whole").folder
    log = (whole / "client-errors.log").read_text()
    assert "round 4 training: client" in log  # the redone round had errors to log twice
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    (killed / "summary.json").unlink()
    (killed / "checkpoints" / "round-4.pt").unlink()
    proc = _fedmtl("run", "--resume", str(killed), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (killed / "client-errors.log").read_text() == log
    errors = log.count(" dropped out of this round")
    assert f"client errors: {errors} in all" in proc.stdout + proc.stderr


def test_a_two_level_plan_s_per_group_rule_states_resume_exactly(tmp_path):
    """tasks-then-clients runs the client rule once per task, each task's group with its own
    instance (TERM's normaliser per task): the checkpoint holds one state per group, and a run
    extended from it gives the rows of an uninterrupted one."""
    import fedmtl

    sets = ["engine.backend=inprocess", "server.plan=tasks-then-clients", "server.weighting=term",
            "server.params={tilt = 2.0}", "data.task-sets=mixed", "data.num-clients=6"]
    whole = fedmtl.run(ROOT / "configs/smoke.toml", overrides=[*sets, "run.rounds=3"], out=tmp_path / "whole")
    fedmtl.run(ROOT / "configs/smoke.toml", overrides=[*sets, "run.rounds=2"], out=tmp_path / "part")
    extended = fedmtl.resume(tmp_path / "part", rounds=3)
    checkpoint, _ = load_checkpoint(extended.folder)
    groups = checkpoint["weightings"]["client"]["per-group"]
    assert sorted(groups) == ["left", "right"] and len({repr(g) for g in groups.values()}) == 2, groups
    pd.testing.assert_frame_equal(pd.read_csv(whole.folder / "metrics.csv"),
                                  pd.read_csv(extended.folder / "metrics.csv"))
