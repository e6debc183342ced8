"""Resume is exact or refuses: run identity, config fingerprint, the heads a resume needs;
and heads lost during a run are refused, never silently re-initialised.

One real run (module fixture) gives a run folder; each test resumes a copy of it (with
``fedmtl run --resume`` or through a sweep), changed the way a user or an attacker could
change it. Refusals happen before the engine starts; one forced resume and one sweep resume
run. The runs use the in-process engine (``engine.backend = "inprocess"``, recorded in the run's
``config.toml``, so the resumes run in-process too): a run's identity, not the engine, is the
subject. The heads tests drive the real strategy and the real ClientApp in-process (no Ray).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import MessageType

from fedmtl import protocol as wire
from fedmtl.personalization import DiskHeadStore, RunIdentity
from fedmtl.results import (
    checkpoint_files,
    config_fingerprint,
    forget_heads,
    head_store_root,
    load_checkpoint,
    read_run_id,
    recorded_head_store_dir,
)
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]
SETS = ["run.rounds=2", "data.num-clients=3", "engine.backend=inprocess"]


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
    files = sorted((base_run / "heads").rglob("client-*.r*.safetensors"))
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


def _on_a_terminal(*args: str, cwd: Path) -> tuple[int, str]:
    """``fedmtl *args`` with its stderr on a pseudo-terminal: its exit code and what it wrote there."""
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "fedmtl", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=follower, env={**os.environ, "TERM": "xterm"})
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the process closed its side
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    return proc.wait(timeout=900), seen.decode(errors="replace")


def test_a_terminal_sees_the_resume_check_under_way_unless_quiet(base_run, tmp_path):
    """Reading every client's heads takes seconds in a large federation: on a terminal the
    check says so while it runs (off a terminal, or with --quiet, it prints nothing)."""
    run = _killed_copy(base_run, tmp_path / "run")
    shutil.rmtree(run / "heads")
    checking = "checking checkpoint round 1 and the clients' heads before resuming"
    code, text = _on_a_terminal("run", "--resume", str(run), cwd=tmp_path)
    assert code == 2 and checking in text and "trained in round 1 but" in text, text[-2000:]
    code, text = _on_a_terminal("run", "--resume", str(run), "-q", cwd=tmp_path)
    assert code == 2 and checking not in text and "trained in round 1 but" in text, text[-2000:]


def test_resume_refuses_heads_of_another_run_even_with_force(base_run, tmp_path):
    run = _killed_copy(base_run, tmp_path / "run")
    victim = sorted((run / "heads").rglob("client-*.r1.safetensors"))[0]
    client = int(victim.name.split(".")[0].removeprefix("client-"))
    heads, _ = DiskHeadStore(run / "heads").read(victim)
    DiskHeadStore(run / "heads", RunIdentity("someone-else", "x")).save(client, heads, server_round=1)
    for extra in ([], ["--force"]):
        line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", *extra, cwd=tmp_path))
        assert str(victim) in line and "belongs to run someone-else" in line


def test_resume_names_a_corrupted_head_file_in_one_line(base_run, tmp_path):
    run = _killed_copy(base_run, tmp_path / "run")
    victim = sorted((run / "heads").rglob("client-*.r1.safetensors"))[0]
    victim.write_bytes(b"\x00not heads\n")
    line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    assert str(victim) in line and "unreadable" in line


def test_resuming_a_finished_run_whose_tables_lost_rows_is_refused(base_run, tmp_path):
    """A resume of a finished run said 'nothing to resume' (exit 0) and left the damage: rows of
    the last round lost from metrics.csv, its last row from rounds.csv, or participation.csv."""
    run = shutil.copytree(base_run, tmp_path / "run")
    metrics = run / "metrics.csv"
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(b"".join(lines[:-3]))
    line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    assert f"cannot resume '{run}': it finished all 2 rounds, but metrics.csv has" in line
    assert "rows were lost" in line and "run its config.toml again into another folder" in line
    metrics.write_bytes(b"".join(lines))
    rounds = run / "rounds.csv"
    rounds.write_bytes(b"".join(rounds.read_bytes().splitlines(keepends=True)[:-1]))
    line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    assert "rounds.csv has no row of round 2" in line
    shutil.copy(base_run / "rounds.csv", rounds)
    (run / "participation.csv").unlink()  # a report would say the run did not record participation
    line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    assert "but participation.csv is missing, yet summary.json records the run's participation" in line
    (run / "participation.csv").write_bytes((base_run / "participation.csv").read_bytes()[:-3])  # cut short
    line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    assert "but participation.csv cannot be read (it ends in the middle of a row: the file was cut short)" in line
    assert "cuts its tables back" not in line  # written once, at the end: no resume cuts it back
    shutil.copy(base_run / "participation.csv", run / "participation.csv")
    damages = [(b'{"final": ', "summary.json cannot be read ("), (b"[]", "summary.json holds no run summary")]
    for damaged, said in damages:
        (run / "summary.json").write_bytes(damaged)  # the report refuses it; the resume said 'nothing to resume'
        line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
        assert f"cannot resume '{run}': it finished all 2 rounds, but {said}" in line, line


def _rewrite_heads(run: Path, path: Path, heads: dict) -> None:
    """Write ``heads`` at ``path`` as the run itself would (its identity, round 1)."""
    client = int(path.name.split(".")[0].removeprefix("client-"))
    cfg = load_config(run / "config.toml", [])
    DiskHeadStore(run / "heads", RunIdentity(read_run_id(run), config_fingerprint(cfg))).save(
        client, heads, server_round=1)


def _edited(run: Path, victim: Path) -> None:
    """One weight of the file's first tensor moved by 0.01."""
    heads, _ = DiskHeadStore(run / "heads").read(victim)
    first = next(iter(heads))
    heads[first] = heads[first].clone()
    heads[first].view(-1)[0] += 0.01
    _rewrite_heads(run, victim, heads)


def _replaced(run: Path, victim: Path) -> None:
    """The file of another client of the same round in its place."""
    other = next(p for p in sorted((run / "heads").rglob("client-*.r1.safetensors")) if p != victim)
    _rewrite_heads(run, victim, DiskHeadStore(run / "heads").read(other)[0])


@pytest.mark.parametrize("change", [_edited, _replaced])
def test_resume_refuses_heads_edited_or_replaced_since_the_checkpoint(base_run, tmp_path, change):
    """The check before a resume looked at each head file's round and identity only: a file
    edited or replaced under the same identity passed, the client refused every later round,
    and the resumed run finished without it (exit 0, other numbers than the run's)."""
    run = _killed_copy(base_run, tmp_path / "run")
    victim = sorted((run / "heads").rglob("client-*.r1.safetensors"))[0]
    client = int(victim.name.split(".")[0].removeprefix("client-"))
    change(run, victim)
    line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    assert f"head file '{victim}' has heads-fingerprint" in line and "--force" in line
    assert f"client {client}'s training of round 1 left (replaced or edited since)" in line
    proc = _fedmtl("run", "--resume", str(run), "-q", "--force", cwd=tmp_path)  # it trains from them
    assert proc.returncode == 0 and "these clients train from the heads they find" in proc.stderr, proc.stderr
    rounds = pd.read_csv(run / "rounds.csv")
    assert list(rounds["rejected"]) == [0, 0] and list(rounds["aggregated"]) == [3, 3]


def test_the_kept_check_finds_heads_of_a_client_that_has_not_trained(tmp_path):
    """A head file copied to a client that has not trained yet locked it out of the whole rest
    of the run (it refuses every call naming fresh heads)."""
    from fedmtl.data import dataset_input_shape, dataset_tasks
    from fedmtl.models import build_model
    from fedmtl.personalization import check_kept, kept_fingerprint, save_client_state

    cfg = load_config(ROOT / "configs/smoke.toml", [])
    model = build_model(cfg.model, dataset_input_shape(cfg.data), dataset_tasks(cfg.data))
    store = DiskHeadStore(tmp_path / "heads", RunIdentity("run", "config"))
    save_client_state(store, 0, model, {}, server_round=1)
    ledger = {0: (1, kept_fingerprint(model, {}, True))}
    assert check_kept(store, ledger, 1, lambda client: model, True) == []
    save_client_state(store, 1, model, {}, server_round=1)  # client 1 never trained
    (problem,) = check_kept(store, ledger, 1, lambda client: model, True)
    assert problem.client == 1 and problem.kind == "unexpected" and "has not trained in this run" in problem.message
    assert check_kept(store, {**ledger, 1: None}, 1, lambda client: model, True) == []  # unknown: not checked
    assert check_kept(store, ledger, 0, lambda client: model, True) == []  # files of later rounds are not read


def test_a_run_killed_under_the_head_files_of_before_resumes_to_the_same_numbers(base_run, tmp_path):
    """A run whose heads were written before 2026-12-01 (``torch.save`` pickles, all directly
    under ``heads/``) resumes with today's store: the files are found, moved into their folders
    and read, and the run ends with the metrics of the run never killed; a refused resume
    moves nothing."""
    run = _killed_copy(base_run, tmp_path / "run")
    store = DiskHeadStore(run / "heads")
    for path in sorted((run / "heads").rglob("*.safetensors")):
        heads, identity = store.read(path)
        legacy = {"heads": heads, "run-id": identity.run_id, "config-fingerprint": identity.config}
        torch.save(legacy, run / "heads" / path.with_suffix(".pt").name)
        path.unlink()
    for folder in (run / "heads").glob("clients-*"):
        folder.rmdir()
    assert sorted(p.name for p in (run / "heads").iterdir()) and not list((run / "heads").rglob("*.safetensors"))
    # a refused resume moves nothing
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("seed = 0\n", "seed = 1\n", 1))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert "run.seed = 1 (was 0)" in _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    (run / "config.toml").write_text(text)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != "config.toml"} == {
        p: t for p, t in before.items() if p.name != "config.toml"}
    proc = _fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "metrics.csv").read_text() == (base_run / "metrics.csv").read_text()
    assert not list((run / "heads").glob("*.pt"))  # all moved into the folders


def test_force_resumes_a_copy_says_what_it_overrides_and_leaves_the_original_alone(base_run, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in (base_run / "heads").rglob("*.safetensors")}
    run = _killed_copy(base_run, tmp_path / "run")
    (run / "config.toml").write_text((run / "config.toml").read_text().replace("seed = 0\n", "seed = 1\n", 1))
    proc = _fedmtl("run", "--resume", str(run), "--force", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: --force: config.toml differs from the run's: run.seed = 1 (was 0): the run continues " \
           "with config.toml as it is now" in proc.stderr
    assert (run / "summary.json").is_file() and [p.name for p in checkpoint_files(run)][-1] == "round-2.pt"
    checkpoint, _ = load_checkpoint(run)
    assert checkpoint["config"]["run.seed"] == 1 and checkpoint["run-id"] == read_run_id(base_run)
    assert {p.name: p.stat().st_mtime_ns for p in (base_run / "heads").rglob("*.safetensors")} == before
    assert any(p.stat().st_mtime_ns > max(before.values()) for p in (run / "heads").rglob("client-*.r2.safetensors"))


@pytest.mark.parametrize(("edit", "said"), [
    (('head-store = "disk"', 'head-store = "context"'),
     "client.head-store = 'context' kept the clients' heads in memory, and they are lost; use 'disk'"),
    (('mode = "federated"', 'mode = "centralized"'), "a centralized run has no checkpoints to continue from"),
])
def test_runs_whose_state_is_not_on_disk_are_refused_by_the_command_line_and_the_api(base_run, tmp_path, edit,
                                                                                       said):
    import fedmtl
    from fedmtl.resumption import ResumeRefused

    run = _killed_copy(base_run, tmp_path / "run")
    text = (run / "config.toml").read_text()
    assert edit[0] in text
    (run / "config.toml").write_text(text.replace(edit[0], edit[1], 1))  # only config.toml is read to refuse
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    line = _one_error_line(_fedmtl("run", "--resume", str(run), "-q", cwd=tmp_path))
    assert line.startswith(f"error: cannot resume '{run}': {said}"), line
    with pytest.raises(ResumeRefused, match=re.escape(said)):
        fedmtl.resume(run)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


def test_the_python_api_refuses_and_forces_as_the_command_line_does(base_run, tmp_path):
    run = _killed_copy(base_run, tmp_path / "run")
    (run / "config.toml").write_text((run / "config.toml").read_text().replace("seed = 0\n", "seed = 1\n", 1))
    code = textwrap.dedent(f"""
        import json, warnings
        import fedmtl
        from fedmtl.resumption import ResumeRefused

        try:
            fedmtl.resume({str(run)!r})
            refused = ""
        except ResumeRefused as exc:
            refused = str(exc)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fedmtl.resume({str(run)!r}, force=True)
        print(json.dumps({{"refused": refused, "warned": [str(w.message) for w in seen
                                                         if w.category is UserWarning]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    refused, warned = said["refused"], said["warned"]
    assert refused.startswith(f"cannot resume '{run}': config.toml differs from the run's: run.seed = 1 (was 0); ")
    assert refused.endswith("; force=True resumes anyway") and "\n" not in refused
    assert warned[0] == ("force: config.toml differs from the run's: run.seed = 1 (was 0): the run continues "
                         "with config.toml as it is now")
    assert len(warned) == 2 and warned[1].count("was written under another config") == 3, warned
    assert warned[1].endswith(": these heads are used as they are")
    assert (run / "summary.json").is_file() and [p.name for p in checkpoint_files(run)][-1] == "round-2.pt"
    checkpoint, _ = load_checkpoint(run)
    assert checkpoint["config"]["run.seed"] == 1 and checkpoint["run-id"] == read_run_id(base_run)


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
    saved = DiskHeadStore(tmp_path).path(1, 1)
    assert DiskHeadStore(tmp_path).read(saved)[1].run_id == "run-a"
    reply = app(_message(cfg, MessageType.TRAIN, 2, "run-b"), context)  # another run sharing the folder
    assert reply.has_error() and "\n" not in reply.error.reason
    assert str(saved) in reply.error.reason and "belongs to run run-a" in reply.error.reason
    saved.write_bytes(b"garbage")
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        reply = app(_message(cfg, kind, 2, "run-a"), context)
        assert reply.has_error() and "\n" not in reply.error.reason
        assert reply.error.reason.startswith(f"client 1: head file '{saved}' is unreadable")


# -- heads deleted or replaced during a run: refused and counted, never re-initialised -----
class InProcessClients:
    """A grid whose clients are the real ClientApp called in-process (a node and a Context per
    client, as in the tests above); ``before(kind, server_round, grid)`` runs before each
    exchange is answered."""

    def __init__(self, num_clients: int, before) -> None:
        self.contexts = {100 + c: Context(run_id=1, node_id=100 + c, state=RecordDict(), run_config={},
                                          node_config={"partition-id": c, "num-partitions": num_clients})
                         for c in range(num_clients)}
        self.before = before
        self.ids = itertools.count()
        self.calls: list[tuple[str, wire.TrainCall]] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        from fedmtl.clients.app import app

        calls = [wire.read_call(dict(m.content[wire.CALL].items())) for m in messages]
        self.calls += [(m.metadata.message_type, c) for m, c in zip(messages, calls, strict=True)]
        self.before(messages[0].metadata.message_type, calls[0].server_round, self)
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"
        return [app(msg, self.contexts[msg.metadata.dst_node_id]) for msg in messages]


class FlowerLog(logging.Handler):
    """The messages the server logs (Flower's logger)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_in_process(tmp_path: Path, before, *sets: str):
    """Three clients, three rounds, every client trains and evaluates every round, through the
    real strategy and the real ClientApp: the strategy, the grid, rounds.csv and the log."""
    from fedmtl.data import dataset_input_shape, dataset_tasks
    from fedmtl.models import build_model
    from fedmtl.progress import Progress
    from fedmtl.results import RunRecorder
    from fedmtl.seeds import Stream, seeded_torch_init
    from fedmtl.server.discovery import ClientDirectory
    from fedmtl.server.strategy import FedMTLStrategy

    cfg = load_config(None, ["data.num-clients=3", "data.params.pairs-per-digit=1",
                             "data.params.test-pairs-per-digit=1", "run.rounds=3", "server.fraction-train=1",
                             "server.fraction-evaluate=1", "server.min-replies=1",
                             f"client.head-store-dir={tmp_path / 'heads'}", *sets])
    directory = ClientDirectory(3)
    directory.infos = {100 + c: (c, 3) for c in range(3)}
    directory.clients = {c: 100 + c for c in range(3)}
    tasks = dataset_tasks(cfg.data)
    (tmp_path / "run").mkdir()
    recorder = RunRecorder(tmp_path / "run", cfg, tasks)
    strategy = FedMTLStrategy(cfg, directory, recorder, Progress(cfg.run.rounds, enabled=False))
    strategy.config_record[wire.RUN_ID] = recorder.run_id
    with seeded_torch_init(Stream.MODEL_INIT, cfg.run.seed):
        model = build_model(cfg.model, dataset_input_shape(cfg.data), tasks)
    grid, log = InProcessClients(3, before), FlowerLog()
    logging.getLogger("flwr").addHandler(log)
    try:
        strategy.start(grid, ArrayRecord(model.federated_state(cfg.model.heads == "global")))  # type: ignore[arg-type]
    finally:
        logging.getLogger("flwr").removeHandler(log)
    return strategy, grid, pd.read_csv(tmp_path / "run" / "rounds.csv"), log.lines


def lose_heads_of_client_1(how: str, folder: Path):
    """Before round 2's training: delete client 1's heads (from ``folder`` or its node's
    context), or replace them by client 0's."""
    def before(kind: str, server_round: int, grid: InProcessClients) -> None:
        if kind != MessageType.TRAIN or server_round != 2:
            return
        if how == "deleted from the context":
            del grid.contexts[101].state["fedmtl.heads.1"]
        elif how == "deleted":
            for path in folder.rglob("client-1.*"):
                path.unlink()
        else:
            store = DiskHeadStore(folder)
            shutil.copyfile(store.path(0, 1), store.path(1, 1))
    return before


@pytest.mark.parametrize(("how", "store", "reason"), [
    ("deleted", "disk", "refused: client 1's heads are missing from '{heads}' (its last training left"),
    ("replaced", "disk", "refused: client 1's heads in '{heads}' have heads-fingerprint"),
    ("deleted from the context", "context", "refused: client 1's heads are missing from its node's context"),
])
def test_heads_lost_between_rounds_are_refused_and_counted_not_reinitialised(tmp_path, task_identity, how, store,
                                                                             reason):
    _, grid, rounds, log = run_in_process(tmp_path, lose_heads_of_client_1(how, tmp_path / "heads"),
                                          f"client.head-store={store}")
    # client 1 refuses every call after the loss: counted as rejected (training) and as an
    # evaluation failure, and its update is never aggregated again
    assert list(rounds["rejected"]) == [0, 1, 1] and list(rounds["aggregated"]) == [3, 2, 2]
    assert list(rounds["evaluate_failures"]) == [0, 1, 1] and list(rounds["evaluated"]) == [3, 2, 2]
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv", dtype={"task": str})
    assert set(metrics[(metrics.client == 1) & (metrics.split == "train")]["round"]) == {1}
    if store == "disk":
        assert not list((tmp_path / "heads").rglob("client-1.r[23].safetensors"))  # it never trained from other heads
    # logged once per refusal, with the client's reason
    expected = reason.format(heads=tmp_path / "heads")
    for server_round in (2, 3):
        lines = [line for line in log if line.startswith(f"round {server_round}") and "client 1" in line]
        assert len(lines) == 2 and all(expected in line for line in lines), lines
    # what the server names: fresh heads in round 1, then each client's last heads-fingerprint-out
    heads_out = metrics[metrics.metric == wire.HEADS_OUT].set_index(["round", "client"])["value"]
    train = [(c.server_round, c.client, c.fresh_heads, c.heads_in) for kind, c in grid.calls if kind == "train"]
    assert train[:3] == [(1, c, True, None) for c in range(3)]
    assert train[3:] == [(r, c, False, heads_out[(r - 1 if c != 1 else 1, c)]) for r in (2, 3) for c in range(3)]


def test_the_servers_record_of_the_heads_is_checkpointed_and_restored(tmp_path, task_identity):
    from fedmtl.server.strategy import FedMTLStrategy

    strategy, _, _, _ = run_in_process(tmp_path, lose_heads_of_client_1("deleted", tmp_path / "heads"))
    checkpoint, _ = load_checkpoint(tmp_path / "run")  # as a resume reads it (weights_only)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv", dtype={"task": str})
    heads_out = metrics[metrics.metric == wire.HEADS_OUT].set_index(["round", "client"])["value"]
    assert checkpoint["heads"] == {0: (3, heads_out[(3, 0)]), 1: (1, heads_out[(1, 1)]), 2: (3, heads_out[(3, 2)])}
    resumed = FedMTLStrategy(strategy.cfg, strategy.roster.directory, strategy.recorder, strategy.progress)
    resumed.restore(checkpoint)
    assert [resumed.heads.expected(c, training=True) for c in range(3)] == [
        {"heads_in": heads_out[(3, 0)]}, {"heads_in": heads_out[(1, 1)]}, {"heads_in": heads_out[(3, 2)]}]
    # `--force` over missing heads: those clients are no longer checked (until their next reply)
    forget_heads(checkpoint, [1])
    resumed.restore(checkpoint)
    assert [resumed.heads.expected(c, training=True) for c in range(3)] == [
        {"heads_in": heads_out[(3, 0)]}, {}, {"heads_in": heads_out[(3, 2)]}]
    # a checkpoint written before the server kept this record: nothing is checked until each
    # client's next reply, rather than refusing every client
    resumed.restore({k: v for k, v in checkpoint.items() if k != "heads"})
    assert [resumed.heads.expected(c, training=True) for c in range(3)] == [{}, {}, {}]
    # a method keeping state of its own (Ditto): the record of an older fedmtl holds fingerprints
    # of the heads alone, which its clients no longer send: not checked until their next reply
    assert checkpoint["heads-fingerprints"] == "kept"
    ditto = FedMTLStrategy(strategy.cfg.with_values(personalization={"method": "ditto"}), strategy.roster.directory,
                           strategy.recorder, strategy.progress)
    ditto.restore(checkpoint)
    assert ditto.heads.expected(0, training=True) == {"heads_in": heads_out[(3, 0)]}
    ditto.restore({k: v for k, v in checkpoint.items() if k != "heads-fingerprints"})
    assert [ditto.heads.expected(c, training=True) for c in range(3)] == [{}, {}, {}]
    resumed.restore({k: v for k, v in checkpoint.items() if k != "heads-fingerprints"})  # fedper: comparable
    assert resumed.heads.expected(0, training=True) == {"heads_in": heads_out[(3, 0)]}


def test_global_heads_are_not_checked(tmp_path, task_identity):
    _, grid, rounds, _ = run_in_process(tmp_path, lose_heads_of_client_1("deleted", tmp_path / "heads"),
                                        "model.heads=global")
    assert list(rounds["rejected"]) == [0, 0, 0] and list(rounds["evaluate_failures"]) == [0, 0, 0]
    assert all(c.heads_in is None and not c.fresh_heads for _, c in grid.calls)


def test_a_personal_model_replaced_under_global_heads_is_refused(tmp_path, task_identity):
    """Ditto (as APFL) keeps a whole personal model in the head store, with global heads too:
    what the client keeps is checked as personal heads are (``Method.keeps_state``), and client
    0's personal model copied over client 1's is refused, not used for client 1."""
    from fedmtl.training.methods import METHODS

    assert [m for m in METHODS.names() if METHODS.get(m).keeps_state] == ["apfl", "ditto", "local"]
    _, grid, rounds, log = run_in_process(tmp_path, lose_heads_of_client_1("replaced", tmp_path / "heads"),
                                          "model.heads=global", "personalization.method=ditto")
    assert list(rounds["rejected"]) == [0, 1, 1] and list(rounds["evaluate_failures"]) == [0, 1, 1]
    assert any("refused: client 1's heads in" in line and "have heads-fingerprint" in line for line in log), log
    train = [(c.server_round, c.client, c.fresh_heads, c.heads_in) for kind, c in grid.calls if kind == "train"]
    assert train[:3] == [(1, c, True, None) for c in range(3)] and all(h is not None for *_, h in train[3:])


# -- a sweep continues an interrupted run only as `fedmtl run --resume` would ----------------
def _sweep_with(base_run: Path, tmp_path: Path, *sets: str):
    """A sweep (smoke config, no grid, one seed) whose one run folder is a killed copy of
    ``base_run``; ``sets`` are the sweep's own overrides besides the base run's."""
    from fedmtl.launch.sweep import plan_sweep

    planned = plan_sweep(ROOT / "configs/smoke.toml", {}, 1, tmp_path / "study", [*SETS, *sets])
    run = _killed_copy(base_run, tmp_path / "study" / planned.runs[0].folder)
    return planned, run


@pytest.mark.parametrize(("change", "sets", "said"), [
    ("heads deleted", [], "trained in round 1 but '{run}/heads/clients-0-99' has none"),
    ("config edited", [], "config.toml differs from the run's: run.seed = 1 (was 0)"),
    ("sweep changed", ["run.rounds=3"], "config.toml differs from the sweep's: run.rounds = 3 (was 2)"),
    # it once deleted the folder, its rounds and the user's notes, and ran it again
    ("checkpoints unreadable", [], "no checkpoint of it loads (checkpoint '{run}/checkpoints/round-1.pt' is unusable"),
])
def test_a_sweep_refuses_to_resume_a_run_that_would_not_be_exact(base_run, tmp_path, change, sets, said):
    from fedmtl.launch.sweep import run_sweep

    planned, run = _sweep_with(base_run, tmp_path, *sets)
    if change == "heads deleted":
        shutil.rmtree(run / "heads")
    elif change == "config edited":
        (run / "config.toml").write_text((run / "config.toml").read_text().replace("seed = 0\n", "seed = 1\n", 1))
    elif change == "checkpoints unreadable":
        (run / "checkpoints" / "round-1.pt").write_bytes(b"not a checkpoint")
        (run / "NOTES.txt").write_text("mine")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    lines: list[str] = []
    done = run_sweep(planned, report=lines.append)
    assert done.runs[0].status == "failed" and not (run / "summary.json").exists()
    error = done.runs[0].error
    assert error.startswith(f"ResumeRefused: cannot resume '{run}': ") and "\n" not in error, error
    assert said.format(run=run.resolve()) in error, error
    assert any(f"FAILED: {error} (" in line for line in lines), lines
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing ran, nothing was written


def test_a_sweep_resumes_an_exact_interrupted_run(base_run, tmp_path):
    from fedmtl.launch.sweep import run_sweep

    planned, run = _sweep_with(base_run, tmp_path)
    done = run_sweep(planned, report=lambda line: None)
    assert done.runs[0].status == "done", done.runs[0].error
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics.csv"), pd.read_csv(base_run / "metrics.csv"))
    resumed, original = pd.read_csv(run / "rounds.csv"), pd.read_csv(base_run / "rounds.csv")
    pd.testing.assert_frame_equal(resumed.drop(columns="elapsed_s"), original.drop(columns="elapsed_s"))
