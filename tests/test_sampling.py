"""The server's client sampling: ``server.sampling = "uniform"`` (unchanged) or ``"proportional"``
to each client's number of training examples n_k (q-FFL's sampling, Li et al., ICLR 2020).

The statistical checks draw many rounds with a fixed seed (so they are deterministic) and
allow each client's frequency to be 5 binomial standard deviations from its probability,
``5 √(π(1−π)/draws)``: a correct sampler fails such a bound with probability about 6e-7 per
client (normal approximation), while a sampler that ignored n_k misses it by tens of σ here.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from fedmtl.config import ConfigError
from fedmtl.screening import KnownClients
from fedmtl.seeds import Stream, rng
from fedmtl.server.discovery import ClientDirectory
from fedmtl.server.roster import Roster, training_sizes
from fedmtl.validation import load_config

DRAWS = 10_000
SIGMAS = 5.0


def _config(num_clients: int, *sets: str):
    return load_config(None, ["data.dataset=synthetic", "data.partitioner=natural", "data.params.num-tasks=1",
                              f"data.num-clients={num_clients}", "model.backbone=mlp", *sets])


def _directory(num_clients: int) -> ClientDirectory:
    directory = ClientDirectory(num_clients)
    directory.clients = {c: 1000 + c for c in range(num_clients)}
    return directory


def _roster(sizes: list[int], sampling: str = "proportional", seed: int = 0) -> Roster:
    cfg = _config(len(sizes), f"server.sampling={sampling}", f"run.seed={seed}")
    return Roster(cfg, _directory(len(sizes)), lambda client: sizes[client])


def _within(frequencies: np.ndarray, probabilities: np.ndarray) -> None:
    tolerance = SIGMAS * np.sqrt(probabilities * (1 - probabilities) / DRAWS)
    assert np.all(np.abs(frequencies - probabilities) <= tolerance), (frequencies, probabilities, tolerance)


def test_one_client_a_round_is_drawn_with_probability_proportional_to_its_size():
    sizes = [1, 2, 3, 4, 10, 30]
    roster = _roster(sizes)
    counts = np.zeros(len(sizes))
    for _ in range(DRAWS):
        drawn = roster.sample_train(0.01, 1)  # ⌈0.01 × 6⌉ = 1 client a round
        assert len(drawn) == 1
        counts[drawn] += 1
    _within(counts / DRAWS, np.array(sizes) / sum(sizes))
    # a uniform draw would give each client 1/6: the largest client is far from it
    assert abs(counts[-1] / DRAWS - 1 / 6) > 50 * math.sqrt((1 / 6) * (5 / 6) / DRAWS)


def test_several_clients_a_round_are_drawn_without_replacement_each_draw_proportional_among_the_rest():
    # the paper's code: np.random.choice(..., replace=False, p=n_k / Σ n): client i is in a round
    # of two with probability π_i = p_i + Σ_{j≠i} p_j p_i / (1 − p_j)
    sizes = [1, 2, 3, 4]
    p = np.array(sizes) / sum(sizes)
    inclusion = np.array([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)])
    assert math.isclose(inclusion.sum(), 2.0)
    roster = _roster(sizes)
    counts = np.zeros(4)
    for _ in range(DRAWS):
        drawn = roster.sample_train(0.5, 1)
        assert len(drawn) == len(set(drawn)) == 2 and drawn == sorted(drawn)
        counts[drawn] += 1
    _within(counts / DRAWS, inclusion)


def test_retries_draw_from_the_pool_only_in_proportion_to_the_sizes_there():
    sizes = [100, 1, 3, 1000]
    roster = _roster(sizes)
    counts = np.zeros(4)
    for _ in range(DRAWS):
        drawn = roster.sample_train(0.01, 1, pool=[1, 2])
        assert set(drawn) <= {1, 2}
        counts[drawn] += 1
    _within(counts[[1, 2]] / DRAWS, np.array([0.25, 0.75]))


def test_all_clients_asked_need_no_draw():
    roster = _roster([5, 6, 7])
    state = dict(roster.rng.bit_generator.state)
    assert roster.sample_train(1.0, 1) == [0, 1, 2]
    assert roster.rng.bit_generator.state == state


def test_uniform_sampling_draws_exactly_what_it_drew_before():
    sizes = [1, 2, 3, 4, 10, 30, 7, 9, 11, 50]
    roster = _roster(sizes, "uniform", seed=3)
    reference = rng(3, Stream.SAMPLING)  # the sampling of every earlier run: choice(ids, k, replace=False)
    for _ in range(50):
        expected = sorted(int(i) for i in reference.choice(list(range(10)), size=3, replace=False))
        assert roster.sample_train(0.3, 1) == expected
    assert _config(4).server.sampling == "uniform"  # the default


def test_proportional_sampling_needs_the_sizes_the_server_knows_only_when_it_builds_the_data():
    with pytest.raises(ConfigError) as error:
        _config(4, "server.sampling=proportional", "server.max-examples=500")
    message = str(error.value)
    assert "\n" not in message and "server.sampling = 'proportional'" in message and "max-examples" in message
    # a roster asked to draw proportionally without the sizes says so in one line
    cfg = _config(4, "server.sampling=proportional")
    with pytest.raises(ValueError, match=r"^server.sampling = 'proportional' needs every client's number") as error:
        Roster(cfg, _directory(4))
    assert "\n" not in str(error.value)
    # the sizes the server knows are the clients' training splits (server.max-examples = 0), else none
    assert training_sizes(KnownClients(cfg.data, cfg.run.seed, 500)) is None
    sizes = training_sizes(KnownClients(cfg.data, cfg.run.seed, 0))
    from fedmtl.data import load_federation

    federation = load_federation(cfg.data, cfg.run.seed)
    assert [sizes(c) for c in range(4)] == [len(federation.build_client(c).train) for c in range(4)]


def test_a_resumed_server_samples_what_the_uninterrupted_one_would(tmp_path):
    from fedmtl.data import dataset_tasks
    from fedmtl.progress import Progress
    from fedmtl.results import RunRecorder
    from fedmtl.server.strategy import FedMTLStrategy

    def server(folder: str) -> FedMTLStrategy:
        (tmp_path / folder).mkdir()
        recorder = RunRecorder(tmp_path / folder, cfg, dataset_tasks(cfg.data))
        return FedMTLStrategy(cfg, _directory(8), recorder, Progress(cfg.run.rounds, enabled=False))

    cfg = _config(8, "server.sampling=proportional", "server.fraction-train=0.25", "server.weighting=mean",
                  "model.heads=global", "run.seed=5")
    first = server("first")
    before = [first.roster.sample_train(0.25, 1) for _ in range(3)]
    checkpoint = first.checkpoint_state(3) | {"round": 3}
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)  # as a run's checkpoint is written and read back
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    after = [first.roster.sample_train(0.25, 1) for _ in range(20)]
    resumed = server("resumed")
    resumed.restore(checkpoint)
    assert resumed.first_round == 4
    assert [resumed.roster.sample_train(0.25, 1) for _ in range(20)] == after
    # and a fresh server starts from the beginning of the stream
    fresh = server("fresh")
    assert [fresh.roster.sample_train(0.25, 1) for _ in range(3)] == before
