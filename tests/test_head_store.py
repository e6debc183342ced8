"""Head stores and deterministic first-visit initialisation."""

from __future__ import annotations

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
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == ["client-3.pt"]


def test_context_store_round_trip():
    state = RecordDict()
    _round_trip(ContextHeadStore(state))
    assert list(state.array_records) == ["fedmtl.heads.3"]
