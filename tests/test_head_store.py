"""Head stores and deterministic first-visit initialisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import RecordDict

from fedmtl.clients.context_store import ContextHeadStore
from fedmtl.config import ModelSection
from fedmtl.models import build_model
from fedmtl.personalization import (
    DiskHeadStore,
    heads_fingerprint,
    init_heads,
    restore_heads,
)
from fedmtl.tasks import TaskSpec

TASKS = [TaskSpec("left", "multiclass", 10), TaskSpec("right", "multiclass", 10)]


def _model():
    return build_model(ModelSection(backbone="mlp", width=8, head_hidden=4), (4,), TASKS)


def test_init_is_deterministic_per_seed_and_client_and_leaves_global_rng_alone():
    a, b, c, d = _model(), _model(), _model(), _model()
    torch.manual_seed(123)
    state_before = torch.get_rng_state()
    init_heads(a, seed=0, client_id=5)
    assert torch.equal(torch.get_rng_state(), state_before)
    init_heads(b, seed=0, client_id=5)
    init_heads(c, seed=0, client_id=6)
    init_heads(d, seed=1, client_id=5)
    assert heads_fingerprint(a) == heads_fingerprint(b)
    assert heads_fingerprint(a) != heads_fingerprint(c)
    assert heads_fingerprint(a) != heads_fingerprint(d)


def _fingerprint_by_definition(model) -> float:
    """The fingerprint as first written (and as the reference runs' metrics.csv hold it): a
    float64 tensor accumulator, each parameter cast to float64, a fresh ramp each time."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(model.heads.parameters()):
        flat = p.detach().to(torch.float64).flatten()
        ramp = torch.linspace(1.0, 2.0, len(flat), dtype=torch.float64)
        total += (i + 1) * (flat * ramp).sum()
    return float(total)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden", [0, 7])
def test_fingerprint_equals_its_definition_bit_for_bit(dtype, hidden):
    tasks = [TaskSpec("a", "multiclass", 10), TaskSpec("b", "binary", 1), TaskSpec("c", "multiclass", 3)]
    for seed in range(5):
        torch.manual_seed(seed)
        model = build_model(ModelSection(backbone="mlp", width=50, head_hidden=hidden), (4,), tasks).to(dtype)
        with torch.no_grad():
            for p in model.heads.parameters():
                p.mul_(torch.exp(torch.randn(()) * 5))  # magnitudes far apart: rounding shows
        assert heads_fingerprint(model) == _fingerprint_by_definition(model)
        assert heads_fingerprint(model) == heads_fingerprint(model)  # the cached ramps are not changed


def _round_trip(store):
    model = _model()
    assert restore_heads(model, store, seed=0, client_id=3) is False  # first visit
    with torch.no_grad():
        for p in model.heads.parameters():
            p.add_(1.0)
    store.save(3, model.heads_state())
    other = _model()
    assert restore_heads(other, store, seed=0, client_id=3) is True
    for k, v in model.heads_state().items():
        assert torch.equal(other.heads_state()[k], v)
    assert store.load(4) is None


def test_disk_store_round_trip_and_atomic_files(tmp_path):
    store = DiskHeadStore(tmp_path / "heads")
    _round_trip(store)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "heads").rglob("*")) == [
        Path("heads/clients-0-99"), Path("heads/clients-0-99/client-3.safetensors")]


def test_context_store_round_trip():
    state = RecordDict()
    _round_trip(ContextHeadStore(state))
    assert list(state.array_records) == ["fedmtl.heads.3"]


# -- run identity, unreadable files, pruning back to the oldest kept checkpoint ----------------
def test_disk_store_keeps_heads_back_to_the_oldest_kept_checkpoint(tmp_path):
    """Killed in round 3 after a save, with checkpoint round-2 unreadable, a resume falls back
    to round 1: the round-1 heads must still be there."""
    store = DiskHeadStore(tmp_path)
    for r in (1, 2, 3):
        store.save(0, {"w": torch.full((1,), float(r))}, server_round=r)
    assert sorted(store.versions(0)) == [1, 2, 3]
    assert store.load(0, until_round=1)["w"][0] == 1
    store.save(0, {"w": torch.full((1,), 4.0)}, server_round=4)  # checkpoints 2 and 3 kept: round 1 no longer needed
    assert sorted(store.versions(0)) == [2, 3, 4]
    # a client that skipped rounds: the newest version up to the oldest kept checkpoint stays
    store.save(1, {"w": torch.zeros(1)}, server_round=1)
    store.save(1, {"w": torch.ones(1)}, server_round=7)
    assert sorted(store.versions(1)) == [1, 7] and store.load(1, until_round=5)["w"][0] == 0
    # checkpoint-every = 5, round 12: checkpoints 5 and 10 kept; the newest version <= 5 stays
    for r in (3, 4, 6, 12):
        store.save(2, {"w": torch.full((1,), float(r))}, server_round=r, checkpoint_every=5)
    assert sorted(store.versions(2)) == [4, 6, 12]


def test_recorder_keeps_as_many_checkpoints_as_the_head_store_serves(tmp_path):
    from fedmtl.data import dataset_tasks
    from fedmtl.personalization import CHECKPOINTS_KEPT
    from fedmtl.results import RunRecorder, checkpoint_files
    from fedmtl.validation import load_config

    cfg = load_config(None, [])
    recorder = RunRecorder(tmp_path, cfg, dataset_tasks(cfg.data))
    for r in range(1, 6):
        recorder.save_checkpoint(r, {"backbone": {}})
    assert len(checkpoint_files(tmp_path)) == CHECKPOINTS_KEPT


def test_disk_store_refuses_heads_of_another_run(tmp_path):
    from fedmtl.personalization import HeadStoreError, RunIdentity

    mine = DiskHeadStore(tmp_path, RunIdentity("run-a", "cfg"))
    mine.save(3, {"w": torch.ones(2)}, server_round=1)
    assert torch.equal(mine.load(3)["w"], torch.ones(2))
    other = DiskHeadStore(tmp_path, RunIdentity("run-b", "cfg"))
    with pytest.raises(HeadStoreError) as exc:
        other.load(3)
    message = str(exc.value)
    assert "\n" not in message and "client-3.r1.safetensors" in message and "run-a" in message
    assert other.load(4) is None  # a first visit is still a first visit


def test_an_unreadable_head_file_raises_one_line_naming_it(tmp_path):
    from fedmtl.personalization import HeadStoreError

    store = DiskHeadStore(tmp_path)
    store.save(2, {"w": torch.ones(2)}, server_round=1)
    store.path(2, 1).write_bytes(b"\x00garbage\nmore garbage")
    with pytest.raises(HeadStoreError) as exc:
        store.load(2)
    assert "\n" not in str(exc.value) and str(tmp_path / "clients-0-99" / "client-2.r1.safetensors") in str(exc.value)


def test_check_heads_names_missing_foreign_and_unreadable_heads(tmp_path):
    from fedmtl.personalization import RunIdentity, check_heads

    mine = DiskHeadStore(tmp_path, RunIdentity("run-a", "cfg"))
    mine.save(0, {"w": torch.ones(1)}, server_round=2)  # fine
    mine.save(1, {"w": torch.ones(1)}, server_round=1)  # trained in round 2, only round 1 left
    DiskHeadStore(tmp_path, RunIdentity("run-b", "cfg")).save(2, {"w": torch.ones(1)}, server_round=2)
    mine.save(3, {"w": torch.ones(1)}, server_round=1)
    mine.path(3, 1).write_bytes(b"")
    DiskHeadStore(tmp_path, RunIdentity("run-a", "other")).save(4, {"w": torch.ones(1)}, server_round=1)
    mine.save(5, {"w": torch.ones(1)}, server_round=3)  # after the checkpoint: not read by the resume
    found = {p.client: p.kind for p in check_heads(mine, {0: 2, 1: 2, 2: 2, 6: 1}, until_round=2)}
    assert found == {1: "missing", 2: "other-run", 3: "unreadable", 4: "other-config", 6: "missing"}


# -- one folder per 100 clients; stores written before the folders ------------------------------
def test_each_client_s_files_live_in_the_folder_of_its_hundred(tmp_path):
    store = DiskHeadStore(tmp_path)
    for client in (0, 99, 100, 12_345):
        store.save(client, {"w": torch.full((1,), float(client))}, server_round=1)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.safetensors")) == [
        "clients-0-99/client-0.r1.safetensors", "clients-0-99/client-99.r1.safetensors",
        "clients-100-199/client-100.r1.safetensors", "clients-12300-12399/client-12345.r1.safetensors"]
    assert store.clients() == [0, 99, 100, 12_345] and store.load(12_345)["w"][0] == 12_345
    assert sorted(store.index()) == [0, 99, 100, 12_345] and list(store.index()[99]) == [1]
    # a file put in another client's folder is not the client's: it never looks there
    store.path(100, 1).rename(tmp_path / "clients-0-99" / store.path(100, 1).name)
    assert sorted(store.index()) == [0, 99, 12_345] and store.load(100) is None


def _listed_folders(monkeypatch) -> list[str]:
    """The folders ``os.scandir`` lists from now on (names relative to nothing: full paths)."""
    import os

    listed: list[str] = []
    scandir = os.scandir

    def recording(path):  # noqa: ANN001, ANN202 - os.scandir's signature
        listed.append(str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", recording)
    return listed


def test_a_save_lists_its_client_s_folder_only_and_a_resume_check_each_folder_once(tmp_path, monkeypatch):
    from fedmtl.personalization import RunIdentity, check_heads

    store = DiskHeadStore(tmp_path, RunIdentity("run-a", "cfg"))
    for client in range(350):
        store.save(client, {"w": torch.ones(1)}, server_round=1)
    listed = _listed_folders(monkeypatch)
    store.save(123, {"w": torch.ones(1)}, server_round=2)
    assert listed == [str(tmp_path / "clients-100-199")]
    listed.clear()
    assert check_heads(store, {c: 1 for c in range(350)}, until_round=2) == []
    folders = [str(tmp_path / f"clients-{lo}-{lo + 99}") for lo in (0, 100, 200, 300)]
    # the root once: its folders, and the files of a store without folders
    assert sorted(listed) == sorted([str(tmp_path), *folders])


def _flat_file(root: Path, name: str, value: float, run_id: str = "run-a") -> None:
    """A head file where a store written before the folders put it (directly under ``root``)."""
    from fedmtl.atomic import torch_save

    torch_save({"heads": {"w": torch.full((1,), value)}, "run-id": run_id, "config-fingerprint": "cfg"}, root / name)


def test_a_store_written_before_the_folders_is_read_and_moved_into_them(tmp_path):
    from fedmtl.personalization import RunIdentity, check_heads

    for name, value in (("client-7.r1.pt", 1.0), ("client-7.r2.pt", 2.0), ("client-8.r1.pt", 8.0),
                        ("client-9.pt", 9.0)):
        _flat_file(tmp_path, name, value)
    (tmp_path / "notes.txt").write_text("kept")
    store = DiskHeadStore(tmp_path, RunIdentity("run-a", "cfg"))
    assert sorted(store.versions(7)) == [1, 2] and store.load(7)["w"][0] == 2.0
    assert store.load(7, until_round=1)["w"][0] == 1.0
    assert store.load(9)["w"][0] == 9.0  # saved without a round
    assert not (tmp_path / "client-7.r1.pt").exists() and (tmp_path / "client-8.r1.pt").exists()
    # a resume check reads client 8's file where it is (found, not "missing"), and moves nothing
    assert check_heads(store, {7: 2, 8: 1}, until_round=2) == []
    assert check_heads(store, {8: 2}, until_round=2)[0].kind == "missing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client-8.r1.pt", "clients-0-99", "notes.txt"]
    assert store.load(8)["w"][0] == 8.0  # the client moves it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clients-0-99", "notes.txt"]


# -- the file format: safetensors with the run's identity; pickles of before still read ---------
def test_a_head_file_is_safetensors_with_the_identity_and_round_trips_bit_for_bit(tmp_path):
    from safetensors import safe_open

    from fedmtl.personalization import RunIdentity
    from fedmtl.personalization.head_store import pack_state, unpack_state

    shared = torch.randn(3, 4)
    state = {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(3, dtype=torch.float64),
             "counts": torch.arange(5), "mask": torch.tensor([True, False]), "empty": torch.zeros(0, 2),
             "view": shared[:, 1], "same": shared, "again": shared,
             "__weighting_state__": pack_state({"step": 3, "ema": torch.tensor([0.5, 1e-30])})}
    store = DiskHeadStore(tmp_path, RunIdentity("run-a", "cfg-1"))
    store.save(7, state, server_round=2)
    path = store.path(7, 2)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"fedmtl": "heads", "run-id": "run-a", "config-fingerprint": "cfg-1"}
    heads, written_by = store.read(path)
    assert written_by == RunIdentity("run-a", "cfg-1") and set(heads) == set(state)
    for key, value in state.items():
        assert heads[key].dtype == value.dtype and torch.equal(heads[key], value), key
    assert unpack_state(heads["__weighting_state__"])["step"] == 3


def test_a_safetensors_file_of_something_else_is_not_taken_for_heads(tmp_path):
    from safetensors.torch import save_file

    from fedmtl.personalization import HeadStoreError

    store = DiskHeadStore(tmp_path)
    store.path(4, 1).parent.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(store.path(4, 1)))
    with pytest.raises(HeadStoreError, match="is unreadable \\(not a fedmtl head file\\)"):
        store.load(4)


def test_head_files_of_before_are_read_and_pruned_like_the_new_ones(tmp_path):
    from fedmtl.personalization import RunIdentity

    store = DiskHeadStore(tmp_path, RunIdentity("run-a", "cfg"))
    folder = store.folder(5)
    folder.mkdir(parents=True)
    for server_round in (1, 2):
        _flat_file(folder, f"client-5.r{server_round}.pt", float(server_round))
    assert store.load(5)["w"][0] == 2.0 and store.load(5, until_round=1)["w"][0] == 1.0
    store.save(5, {"w": torch.full((1,), 3.0)}, server_round=3)
    store.save(5, {"w": torch.full((1,), 4.0)}, server_round=4)  # checkpoints 2 and 3 kept: round 1 goes
    assert sorted(p.name for p in folder.iterdir()) == [
        "client-5.r2.pt", "client-5.r3.safetensors", "client-5.r4.safetensors"]
    _flat_file(folder, "client-5.r4.pt", -1.0)  # a round in both formats: the new file is the one written last
    assert store.load(5)["w"][0] == 4.0


# -- what a hostile or damaged store holds --------------------------------------------------------
def test_a_round_in_both_formats_is_the_same_file_for_the_resume_check_and_the_client(tmp_path):
    """A run killed mid-round under the store of before, then resumed, re-runs that round: the
    round's heads exist in both formats, and both readers must take the new one."""
    from fedmtl.personalization import RunIdentity, check_heads

    mine = DiskHeadStore(tmp_path, RunIdentity("run-a", "cfg"))
    for client in range(40):  # enough names that the listing's order varies
        mine.save(client, {"w": torch.full((1,), 1.0)}, server_round=3)
        _flat_file(mine.folder(client), f"client-{client}.r3.pt", -1.0, run_id="run-old")
    assert check_heads(mine, {c: 3 for c in range(40)}, until_round=3) == []
    assert all(mine.load(c)["w"][0] == 1.0 for c in range(40))
    assert {c: v[3].suffix for c, v in mine.index().items()} == {c: ".safetensors" for c in range(40)}


@pytest.mark.parametrize("name", [
    "client-007.r1.safetensors", "client-1.r01.safetensors", "client-1.r\u00b2.pt", "client-\u0661.r1.safetensors",
    "client-1.r1.safetensors.tmp", ".client-1.r1.pt.x.tmp", "client-+1.r1.pt", "client-1.r-1.pt", "client-1.r1.PT"])
def test_names_the_store_never_writes_are_not_head_files(tmp_path, name):
    from fedmtl.personalization import RunIdentity, check_heads

    store = DiskHeadStore(tmp_path, RunIdentity("run-a", "cfg"))
    for folder in (tmp_path, store.folder(1)):
        folder.mkdir(exist_ok=True)
        _flat_file(folder, name, 5.0)
    assert store.index() == {} and store.versions(1) == {} and store.versions(7) == {}
    assert check_heads(store, {}, until_round=1) == [] and store.load(1) is None


def test_a_file_where_the_client_s_folder_belongs_gives_one_line(tmp_path):
    from fedmtl.personalization import HeadStoreError, check_heads

    store = DiskHeadStore(tmp_path)
    store.folder(3).write_text("not a folder")
    assert store.load(3) is None and check_heads(store, {}, until_round=1) == []
    with pytest.raises(HeadStoreError) as exc:
        store.save(3, {"w": torch.ones(1)}, server_round=1)
    assert "\n" not in str(exc.value) and f"head file '{store.path(3, 1)}' cannot be written" in str(exc.value)


def test_tensors_the_format_cannot_hold_are_named_in_one_line(tmp_path):
    from fedmtl.personalization import HeadStoreError

    store = DiskHeadStore(tmp_path)
    for key, value, said in [("z", torch.ones(2, dtype=torch.complex64), "'z' has dtype torch.complex64"),
                             ("s", torch.eye(2).to_sparse(), "'s' is a torch.sparse_coo tensor"),
                             ("__metadata__", torch.ones(1), "'__metadata__' is the name the format gives")]:
        with pytest.raises(HeadStoreError) as exc:
            store.save(2, {"w": torch.ones(1), key: value}, server_round=1)
        assert "\n" not in str(exc.value) and said in str(exc.value) and "client 2's heads" in str(exc.value)
    assert store.versions(2) == {}  # nothing half-written


def test_moving_files_of_before_skips_what_another_process_moved_and_takes_the_newest_first(tmp_path, monkeypatch):
    import os

    from fedmtl.personalization import RunIdentity

    for server_round in (1, 2, 3):
        _flat_file(tmp_path, f"client-4.r{server_round}.pt", float(server_round))
    store = DiskHeadStore(tmp_path, RunIdentity("run-a", "cfg"))
    replace, calls = os.replace, []

    def cut_short(src, dst):  # noqa: ANN001, ANN202 - os.replace's signature
        calls.append(Path(src).name)
        if len(calls) == 2:  # another process took this one
            Path(src).unlink()
            raise FileNotFoundError(src)
        if len(calls) == 3:  # killed before the last move
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", cut_short)
    with pytest.raises(KeyboardInterrupt):
        store.adopt_flat_files(4)
    assert calls == ["client-4.r3.pt", "client-4.r2.pt", "client-4.r1.pt"]
    monkeypatch.setattr(os, "replace", replace)
    assert store.load(4)["w"][0] == 3.0  # the newest heads moved first


def test_what_a_client_keeps_is_fingerprinted_heads_and_method_state_alike():
    from fedmtl.personalization import kept_fingerprint, state_fingerprint

    a = {"model.w": torch.ones(3), "lambda": torch.tensor(0.1, dtype=torch.float64)}
    assert state_fingerprint(a) == state_fingerprint(dict(reversed(a.items())))  # key order, not insertion
    assert state_fingerprint(a) != state_fingerprint({**a, "lambda": torch.tensor(0.2, dtype=torch.float64)})
    assert state_fingerprint(a) != state_fingerprint({"model.w": torch.ones(3)}) and state_fingerprint({}) == 0.0
    assert state_fingerprint({"n": torch.tensor([3], dtype=torch.int64)}) == 3.0  # integer buffers too
    model = build_model(ModelSection(), (1, 36, 36), TASKS)
    assert kept_fingerprint(model, a, personal_heads=True) == heads_fingerprint(model) + state_fingerprint(a)
    assert kept_fingerprint(model, a, personal_heads=False) == state_fingerprint(a)  # global heads come from the server
