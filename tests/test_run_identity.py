"""Resume is exact or refuses: run identity, config fingerprint, the heads a resume needs.

One real run (module fixture) gives a run folder; each test resumes a copy of it, changed the
way a user or an attacker could change it. Refusals happen before Ray starts; one forced
resume runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import MessageType

from fedmtl import protocol as wire
from fedmtl.personalization import DiskHeadStore, RunIdentity
from fedmtl.results import (
    checkpoint_files,
    config_fingerprint,
    head_store_root,
    load_checkpoint,
    read_run_id,
    recorded_head_store_dir,
)
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]
SETS = ["run.rounds=2", "data.num-clients=3"]


def _fedmtl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmtl", *args], capture_output=True, text=True,
                          timeout=900, cwd=cwd)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished two-round run."""
    tmp = tmp_path_factory.mktemp("identity")
    sets = [a for s in SETS for a in ("--set", s)]
    proc = _fedmtl("run", str(ROOT / "configs/smoke.toml"), *sets, "--out", str(tmp / "base"), "-q", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "base"


def _killed_copy(base: Path, dest: Path) -> Path:
    """A copy of ``base`` as if killed during round 2: resumable after round 1."""
    shutil.copytree(base, dest)
    (dest / "summary.json").unlink()
    (dest / "checkpoints" / "round-2.pt").unlink()
    return dest


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_a_run_carries_its_identity_in_checkpoints_and_heads(base_run):
    run_id = read_run_id(base_run)
    cfg = load_config(base_run / "config.toml", [])
    checkpoint, _ = load_checkpoint(base_run)
    assert len(run_id) == 32 and checkpoint["run-id"] == run_id
    assert checkpoint["config-fingerprint"] == config_fingerprint(cfg) and checkpoint["config"]["run.seed"] == 0
    store = DiskHeadStore(base_run / "heads")
    files = sorted((base_run / "heads").glob("client-*.r*.pt"))
    assert files and all(store.read(f)[1] == RunIdentity(run_id, config_fingerprint(cfg)) for f in files)


def test_a_copied_run_folder_resolves_its_heads_inside_the_copy(base_run, tmp_path):
    copy = shutil.copytree(base_run, tmp_path / "copy")
    recorded = tomllib.loads((copy / "config.toml").read_text())
    assert recorded["client"]["head-store-dir"] == "heads"
    cfg = load_config(copy / "config.toml", [])
    assert head_store_root(cfg, copy) == (copy / "heads").resolve()
    # the paths a resume may change leave the fingerprint alone; the seed does not
    assert config_fingerprint(cfg) == config_fingerprint(cfg.with_values(client={"head_store_dir": "/elsewhere"}))
    assert config_fingerprint(cfg) != config_fingerprint(cfg.with_values(run={"seed": 1}))
    assert recorded_head_store_dir(cfg.with_values(client={"head_store_dir": ""})).client.head_store_dir == "heads"


def test_resume_refuses_an_edited_config_in_one_line(base_run, tmp_path):
    run = _killed_copy(base_run, tmp_path / "run")
    text = (run / "config.toml").read_text()
    assert "seed = 0\n" in text
    (run / "config.toml").write_text(text.replace("seed = 0\n", "seed = 1\n", 1))
    line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    assert "run.seed = 1 (was 0)" in line and "--force" in line


def test_resume_refuses_missing_heads(base_run, tmp_path):
    run = _killed_copy(base_run, tmp_path / "run")
    shutil.rmtree(run / "heads")
    line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    assert "trained in round 1" in line and "has none" in line and str(run / "heads") in line


def test_resume_refuses_heads_of_another_run_even_with_force(base_run, tmp_path):
    run = _killed_copy(base_run, tmp_path / "run")
    victim = sorted((run / "heads").glob("client-*.r1.pt"))[0]
    client = int(victim.name.split(".")[0].removeprefix("client-"))
    heads, _ = DiskHeadStore(run / "heads").read(victim)
    DiskHeadStore(run / "heads", RunIdentity("someone-else", "x")).save(client, heads, server_round=1)
    for extra in ([], ["--force"]):
        line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", *extra, cwd=tmp_path))
        assert str(victim) in line and "belongs to run someone-else" in line


def test_resume_names_a_corrupted_head_file_in_one_line(base_run, tmp_path):
    run = _killed_copy(base_run, tmp_path / "run")
    victim = sorted((run / "heads").glob("client-*.r1.pt"))[0]
    victim.write_bytes(b"\x00not heads\n")
    line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    assert str(victim) in line and "unreadable" in line


def test_force_resumes_a_copy_says_what_it_overrides_and_leaves_the_original_alone(base_run, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in (base_run / "heads").iterdir()}
    run = _killed_copy(base_run, tmp_path / "run")
    (run / "config.toml").write_text((run / "config.toml").read_text().replace("seed = 0\n", "seed = 1\n", 1))
    proc = _fedmtl("run", "--resume", str(run), "--force", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: --force: config.toml differs from the run's: run.seed = 1 (was 0): the run continues " \
           "with config.toml as it is now" in proc.stderr
    assert (run / "summary.json").is_file() and [p.name for p in checkpoint_files(run)][-1] == "round-2.pt"
    checkpoint, _ = load_checkpoint(run)
    assert checkpoint["config"]["run.seed"] == 1 and checkpoint["run-id"] == read_run_id(base_run)
    assert {p.name: p.stat().st_mtime_ns for p in (base_run / "heads").iterdir()} == before
    assert any(p.stat().st_mtime_ns > max(before.values()) for p in (run / "heads").glob("client-*.r2.pt"))


# -- the ClientApp, called in-process with hand-built messages (as in tests/test_client_app.py) --
@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 100


def _message(cfg, kind: str, server_round: int, run_id: str) -> Message:
    from fedmtl.data import dataset_input_shape, dataset_tasks
    from fedmtl.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))
    content = RecordDict({
        wire.ARRAYS: ArrayRecord(model.backbone_state()),
        wire.CONFIG: ConfigRecord({**cfg.to_flat(), wire.RUN_ID: run_id}),
        wire.CALL: ConfigRecord(wire.TrainCall(server_round).values()),
    })
    return Message(content=content, dst_node_id=101, message_type=kind)


def test_a_client_replies_one_line_naming_a_bad_head_file(tmp_path, task_identity):
    from fedmtl.clients.app import app

    cfg = load_config(None, ["data.num-clients=3", "data.params.pairs-per-digit=1",
                             "data.params.test-pairs-per-digit=1", f"client.head-store-dir={tmp_path}"])
    context = Context(run_id=1, node_id=101, node_config={"partition-id": 1, "num-partitions": 3},
                      state=RecordDict(), run_config={})
    assert not app(_message(cfg, MessageType.TRAIN, 1, "run-a"), context).has_error()
    saved = tmp_path / "client-1.r1.pt"
    assert DiskHeadStore(tmp_path).read(saved)[1].run_id == "run-a"
    reply = app(_message(cfg, MessageType.TRAIN, 2, "run-b"), context)  # another run sharing the folder
    assert reply.has_error() and "\n" not in reply.error.reason
    assert str(saved) in reply.error.reason and "belongs to run run-a" in reply.error.reason
    saved.write_bytes(b"garbage")
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        reply = app(_message(cfg, kind, 2, "run-a"), context)
        assert reply.has_error() and "\n" not in reply.error.reason
        assert reply.error.reason.startswith(f"client 1: head file '{saved}' is unreadable")
