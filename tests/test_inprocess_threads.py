"""Thread safety of what a ClientApp call reaches when the in-process backend runs several calls
at once (``engine.backend = "inprocess"``, :mod:`fedmtl.launch.inprocess`): shared caches of the
data, and whole runs side by side against one call at a time, from cold caches."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fedmtl.data import federation as federation_module
from fedmtl.data.federation import ClientData, Federation, Split

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"


def _tiny_client(client_id: int) -> ClientData:
    split = Split(torch.zeros(1, 1), {})
    return ClientData(client_id, split, split)


@pytest.fixture
def fast_switching():
    """Switch threads after every few bytecodes, so that a race shows within a second."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_a_federation_serves_different_clients_from_threads_while_its_cache_evicts(monkeypatch, fast_switching):
    """``Federation.client`` checks its cache, then pops or reads the client's entry; another
    thread's eviction in between (a federation with more clients than ``CLIENT_CACHE_SIZE``, each
    worker thread asking for a different client) makes it raise ``KeyError``: the client's call
    fails. The cache is made small here so that it happens within a second."""
    monkeypatch.setattr(federation_module, "CLIENT_CACHE_SIZE", 4)
    fed = Federation((1,), [], 16, _tiny_client)
    errors: list[str] = []
    deadline = time.monotonic() + 5

    def serve(worker: int) -> None:
        step = 0
        while time.monotonic() < deadline and not errors:
            client = (worker * 5 + step) % 16  # the workers ask for different clients
            step += 1
            try:
                assert fed.client(client).client_id == client
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(f"client {client}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]


def test_the_first_calls_of_a_run_build_its_federation_once(monkeypatch):
    """The first calls of an in-process run find ``load_federation``'s cache empty, all at once:
    ``functools.lru_cache`` runs the builder in every thread that misses, so each worker builds
    (and holds in memory) its own copy of the dataset, and all but one copy (with the clients
    built in it) are thrown away. The numbers are the same; the time and memory are not."""
    import dataclasses

    from fedmtl import data as data_module
    from fedmtl.validation import load_config

    cfg = load_config(SMOKE, ["data.num-clients=4", "run.seed=987654"])  # a cache key of its own
    entry = data_module.DATASETS.get(cfg.data.dataset)
    builds = []

    def slow_build(data_cfg, seed):
        builds.append(threading.get_ident())
        time.sleep(0.3)  # a real dataset takes seconds (CelebA's tables, MultiMNIST's canvases)
        return entry.build(data_cfg, seed)

    patched = dataclasses.replace(entry, build=slow_build)
    monkeypatch.setattr(data_module.DATASETS, "get", lambda name: patched)
    data_module.load_federation.cache_clear()
    start = threading.Barrier(4)

    def first_call() -> None:
        start.wait()
        data_module.load_federation(cfg.data, cfg.run.seed)

    threads = [threading.Thread(target=first_call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    data_module.load_federation.cache_clear()
    assert len(builds) == 1, f"{len(builds)} worker threads built the same federation"


def _clear_process_caches() -> None:
    """Empty the per-process caches a ClientApp call fills, so that the next run starts cold."""
    from fedmtl.clients import app
    from fedmtl.data import load_federation
    from fedmtl.training.methods import base

    load_federation.cache_clear()
    base._initial_state.cache_clear()
    app._parse_config.cache_clear()


@pytest.mark.slow
def test_clients_side_by_side_from_cold_caches_give_the_numbers_of_one_at_a_time(tmp_path):
    """Four workers first, on empty caches (every client's data, feature skew and task set built
    in the worker threads at once, first visits of a personal model, a rule that seeds torch's
    global generator, fewer SuperNodes than clients), then one worker: the same bytes."""
    import fedmtl

    run = ["data.num-clients=8", "run.rounds=2", "engine.backend=inprocess", "engine.supernodes=4",
           "data.feature-skew=noise", "data.feature-skew-strength=0.5", "data.task-sets=mixed",
           "personalization.method=ditto", "model.heads=personal", "client.weighting=pcgrad"]
    _clear_process_caches()
    side = fedmtl.run(SMOKE, overrides=[*run, "engine.num-cpus=4"], out=tmp_path / "four")
    _clear_process_caches()
    alone = fedmtl.run(SMOKE, overrides=[*run, "engine.max-concurrent-clients=1"], out=tmp_path / "one")
    assert (side.folder / "metrics.csv").read_bytes() == (alone.folder / "metrics.csv").read_bytes()
    from safetensors.torch import load_file

    heads = sorted(p.relative_to(alone.folder) for p in (alone.folder / "heads").rglob("*.safetensors"))
    assert len(heads) >= 8
    for name in heads:
        a, b = (load_file(r / name) for r in (alone.folder, side.folder))
        assert a.keys() == b.keys(), name
        for key, value in a.items():  # heads, the packed weighting state and Ditto's personal model
            assert torch.equal(value, b[key]), (name, key)


def test_a_seeded_block_draws_the_same_while_another_thread_draws_under_the_lock(fast_switching):
    """``seeded_torch_init`` holds :data:`fedmtl.seeds.TORCH_RNG_LOCK`: a thread drawing from
    torch's global generator under the lock (building a model, in a ClientApp call) never lands
    between the seeding and the draws of another thread's seeded block."""
    from fedmtl.seeds import TORCH_RNG_LOCK, Stream, seeded_torch_init

    with seeded_torch_init(Stream.HEAD_INIT, 3, 5):
        expected = torch.rand(64)
    stop, wrong = threading.Event(), []

    def other() -> None:
        while not stop.is_set():
            with TORCH_RNG_LOCK:
                torch.rand(64)

    def seeded() -> None:
        for _ in range(100):
            with seeded_torch_init(Stream.HEAD_INIT, 3, 5):
                got = []
                for _ in range(8):  # several draws, and a pause between them for the other thread
                    got.append(torch.rand(8))
                    time.sleep(0.0001)
            if not torch.equal(torch.cat(got), expected):
                wrong.append(1)

    threads = [threading.Thread(target=other), threading.Thread(target=seeded)]
    for t in threads:
        t.start()
    threads[1].join(timeout=60)
    stop.set()
    threads[0].join(timeout=60)
    assert not wrong, f"{len(wrong)} of 100 seeded blocks drew other numbers"


def test_a_federation_pickles_and_copies_without_its_lock():
    import copy
    import pickle

    fed = Federation((1,), [], 4, _tiny_client)
    fed.client(1)
    for twin in (copy.deepcopy(fed), pickle.loads(pickle.dumps(fed))):
        assert twin.num_clients == 4 and list(twin._cache) == [1]
        assert twin._cache_lock is not fed._cache_lock
        assert twin.client(2).client_id == 2  # a working lock


def test_switch_interval_holds_within_its_block_and_is_put_back_after_an_error():
    from fedmtl.launch.inprocess import SWITCH_INTERVAL_S, switch_interval

    before = sys.getswitchinterval()
    assert before != SWITCH_INTERVAL_S  # Python's default (0.005), or the caller's
    with switch_interval():
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
    assert sys.getswitchinterval() == before
    with pytest.raises(RuntimeError, match="boom"), switch_interval(0.002):
        assert sys.getswitchinterval() == pytest.approx(0.002)
        raise RuntimeError("boom")
    assert sys.getswitchinterval() == before
