"""File safety: run names stay in run.output-dir, a sweep deletes only its own folders and
never through a link, values that cannot run fail in validation, and OSErrors end in one line."""

from __future__ import annotations

import errno
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import torch

from fedmtl.config import MAX_SEED, ConfigError
from fedmtl.launch.sweep import plan_sweep, run_sweep
from fedmtl.models import build_model
from fedmtl.results import RUN_MARKER, create_run_dir
from fedmtl.seeds import LEGACY_TORCH_MIX, Stream, torch_generator
from fedmtl.validation import load_config, model_bytes, most_replies_per_round

ROOT = Path(__file__).resolve().parents[1]


def fedmtl(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmtl", *args], capture_output=True, text=True,
                          timeout=900, cwd=cwd, **kwargs)


def one_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The command failed with ``code`` and one ``error:`` line holding ``words``, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


# -- run names ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".", "a\\b", "a\u0000b", "tab\there", "x" * 101])
def test_a_run_name_must_be_one_folder_name(tmp_path, name):
    (tmp_path / "c.toml").write_text(tomli_w.dumps({"run": {"name": name}}))
    with pytest.raises(ConfigError, match=r"^run\.name = "):
        load_config(tmp_path / "c.toml")
    assert load_config(None, ["run.name=my run.v2"]).run.name == "my run.v2"
    assert load_config(None, [f"run.name={'x' * 100}"]).run.name == "x" * 100


def test_create_run_dir_refuses_a_folder_outside_the_output_dir(tmp_path):
    cfg = load_config(None, [f"run.output-dir={tmp_path / 'runs'}"])
    escaping = cfg.model_copy(update={"run": cfg.run.model_copy(update={"name": "../../x"})})  # past the schema
    with pytest.raises(ValueError, match="outside run.output-dir"):
        create_run_dir(escaping)
    assert list(tmp_path.iterdir()) == []
    made = create_run_dir(cfg)
    assert made.parent == (tmp_path / "runs").resolve() and (made / RUN_MARKER).is_file()


# -- values that validate but cannot run ---------------------------------------------------
def test_the_seed_bound_is_what_every_torch_stream_accepts():
    most_clients = 99_999
    for stream, mix in LEGACY_TORCH_MIX.items():
        keys = {Stream.MODEL_INIT: (MAX_SEED,), Stream.BATCHES: (MAX_SEED, 10**6, most_clients)}.get(
            stream, (MAX_SEED, most_clients))
        assert 0 <= mix(*keys) < 2**63, stream
        torch_generator(stream, *keys)
    # the bound is tight: one more and the feature-skew seed of the last client passes 2**63
    assert LEGACY_TORCH_MIX[Stream.FEATURE_SKEW](MAX_SEED + 1, most_clients) >= 2**63
    assert load_config(None, [f"run.seed={MAX_SEED}"]).run.seed == MAX_SEED
    for bad in (MAX_SEED + 1, "1e23"):
        with pytest.raises(ConfigError, match=r"^run\.seed = "):
            load_config(None, [f"run.seed={bad}"])


def test_a_seed_of_1e23_in_a_file_is_one_line(tmp_path):
    (tmp_path / "c.toml").write_text("[run]\nseed = 1e23\n")
    one_error(fedmtl("validate", str(tmp_path / "c.toml"), cwd=tmp_path), 2, "run.seed")


def test_min_replies_beyond_the_clients_a_round_hears_fails_in_validation():
    base = ["data.num-clients=4", "server.fraction-train=0.5"]
    assert most_replies_per_round(load_config(None, base)) == 2
    with pytest.raises(ConfigError, match=r"server\.min-replies = 3 can never be met.*server\.fraction-train.*"
                                          r"data\.num-clients"):
        load_config(None, [*base, "server.min-replies=3"])
    # retries ask the clients not yet heard: 2, then 1 of the 2 left (half, rounded up), then the last
    retry = [*base, "server.on-too-few=retry", "server.max-retries=2"]
    assert most_replies_per_round(load_config(None, retry)) == 4
    assert load_config(None, [*retry, "server.min-replies=4"]).server.min_replies == 4
    with pytest.raises(ConfigError, match="min-replies = 3"):
        load_config(None, [*base, "server.on-too-few=retry", "server.max-retries=0", "server.min-replies=3"])
    assert load_config(None, [*base, "server.min-train-clients=3", "server.min-replies=3"])


def test_a_model_too_large_for_memory_fails_in_validation(tmp_path):
    cfg = load_config(ROOT / "configs/smoke.toml")
    from fedmtl.data import dataset_input_shape, dataset_tasks

    real = build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))
    assert model_bytes(cfg) == sum(p.numel() * p.element_size() for p in real.parameters())
    assert torch.get_default_device() == torch.device("cpu")  # the meta device was left
    proc = fedmtl("run", str(ROOT / "configs/smoke.toml"), "--set", "model.width=16000000", "--out",
                  str(tmp_path / "r"), cwd=tmp_path)  # within model.width's bound (2**24), beyond memory
    one_error(proc, 2, "model.width = 16000000", "model.head-hidden", "GiB")
    assert not (tmp_path / "r").exists()


# -- a sweep deletes only what it created, never through a link -----------------------------
def _one_run_sweep(out: Path):
    return plan_sweep(ROOT / "configs/centralized_multimnist.toml", {}, 1, out,
                      ["run.rounds=1", "data.num-clients=4", "data.params.pairs-per-digit=1"])


def test_a_sweep_never_deletes_a_folder_it_did_not_create(tmp_path):
    sweep = _one_run_sweep(tmp_path / "study")
    run_dir = sweep.out / sweep.runs[0].folder
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    lines: list[str] = []
    run_sweep(sweep, report=lines.append)
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert sweep.runs[0].status == "failed" and "fedmtl did not create" in sweep.runs[0].error
    assert any("nothing was deleted" in line for line in lines)


def test_a_sweep_never_follows_a_link_to_delete_elsewhere(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / RUN_MARKER).touch()  # even a folder that looks like fedmtl's
    (elsewhere / "precious.txt").write_text("keep")
    sweep = _one_run_sweep(tmp_path / "study")
    run_dir = sweep.out / sweep.runs[0].folder
    run_dir.parent.mkdir(parents=True)
    run_dir.symlink_to(elsewhere, target_is_directory=True)
    run_sweep(sweep, report=lambda line: None)
    assert (elsewhere / "precious.txt").read_text() == "keep" and (elsewhere / RUN_MARKER).exists()
    assert sweep.runs[0].status == "failed" and "symbolic link" in sweep.runs[0].error
    # a linked combination folder above the run folder is refused the same way
    run_dir.unlink()
    run_dir.parent.rmdir()
    run_dir.parent.symlink_to(elsewhere, target_is_directory=True)
    run_sweep(sweep, report=lambda line: None)
    assert sorted(p.name for p in elsewhere.iterdir()) == [RUN_MARKER, "precious.txt"]
    assert "symbolic link" in sweep.runs[0].error


# -- OSErrors end in one line ----------------------------------------------------------------
def test_an_output_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    proc = fedmtl("run", str(ROOT / "configs/smoke.toml"), "--set", f"run.output-dir={tmp_path / 'file' / 'runs'}",
                  "-q", cwd=tmp_path)
    one_error(proc, 1, f"cannot write {tmp_path / 'file' / 'runs'}", "Not a directory")


def _full_disk() -> None:
    """In the child: files may not grow past 4 KiB (EFBIG, as a full disk; works as root too)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_full_disk_mid_run_is_one_line(tmp_path):
    proc = fedmtl("run", str(ROOT / "configs/centralized_multimnist.toml"), "--out", str(tmp_path / "r"), "-q",
                  "--set", "run.rounds=1", "--set", "data.num-clients=4", "--set", "data.params.pairs-per-digit=1",
                  cwd=tmp_path, preexec_fn=_full_disk)
    one_error(proc, 1, "cannot write", str(tmp_path / "r"), "File too large")


def _disk_full(path: Path):
    def action():
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return action


def test_a_full_disk_says_what_to_do_at_each_stage_of_a_run(tmp_path, capsys):
    import typer

    from fedmtl.cli import _guarded

    started = tmp_path / "started"  # nothing written yet: no folder is left to refuse the same --out
    (started / "checkpoints").mkdir(parents=True)
    (started / ".fedmtl-run").touch()
    with pytest.raises(typer.Exit):
        _guarded(started, _disk_full(started / "config.toml"))
    assert not started.exists()
    finished = tmp_path / "finished"  # only the figures were left
    (finished / "plots").mkdir(parents=True)
    (finished / "summary.json").write_text('{"rounds": 2}')
    (finished / "config.toml").write_text("[run]\nrounds = 2\n")
    with pytest.raises(typer.Exit):
        _guarded(finished, _disk_full(finished / "plots" / "a.png"))
    assert f"the run finished: draw its figures again with: fedmtl plot {finished}" in capsys.readouterr().err
    assert (finished / "summary.json").is_file()
    # a resume extending it to 3 rounds rewrote config.toml before its old summary goes: not finished
    extended = tmp_path / "extended"
    shutil.copytree(finished, extended)
    (extended / "config.toml").write_text("[run]\nrounds = 3\n")
    with pytest.raises(typer.Exit):
        _guarded(extended, _disk_full(extended / "rounds.csv"))
    assert "the run finished" not in capsys.readouterr().err
    # a table moved into place over a folder: the line names the table, not the temporary file
    stopped = tmp_path / "stopped"
    shutil.copytree(finished, stopped)
    (stopped / "summary.json").unlink()
    (stopped / "config.toml").write_text("")
    (stopped / "checkpoints").mkdir()
    (stopped / "checkpoints" / "round-2.pt").write_bytes(b"")

    def replaced() -> None:
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(stopped / ".rounds.csv.x1.tmp"), None,
                                str(stopped / "rounds.csv"))

    with pytest.raises(typer.Exit):
        _guarded(stopped, replaced)
    assert f"cannot write {stopped / 'rounds.csv'}: Is a directory" in capsys.readouterr().err


def test_a_full_disk_while_a_resume_extends_the_run_is_one_line(tmp_path, monkeypatch):
    """Extending a run rewrites its config.toml before anything runs: a full or read-only disk
    there was a 45-line traceback."""
    from typer.testing import CliRunner

    from fedmtl import cli
    from fedmtl import resumption as resume

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text((ROOT / "configs/smoke.toml").read_text())

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / ".config.toml.tmp"))

    monkeypatch.setattr(resume, "plan_resume", full)
    result = CliRunner().invoke(cli.cli, ["run", "--resume", str(run_dir), "--set", "run.rounds=5", "-q"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        f"error: cannot write {run_dir / '.config.toml.tmp'}: No space left on device; the run folder is unchanged"]
