"""Plugin code that draws from torch's global generator (a backbone's dropout, a rule's
``torch.rand``) gives the same numbers in every run with the seed: the generator is seeded per
client call and per server round (:func:`fedmtl.seeds.seeded_global_rng`)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from fedmtl.seeds import Stream, draws_at_random, seeded_global_rng
from tests.plugin_support import PLUGIN, restored_registries

# the in-process runs import the plugins into this process: the names go with the test
registries = pytest.fixture(restored_registries, name="registries")

RANDOM_PARTS = '''
import torch
from torch import nn

from fedmtl.aggregation import Weighting, register
from fedmtl.models import BACKBONES


@BACKBONES.register("mlp-dropout")
class DropoutMLP(nn.Module):
    """A vector backbone with dropout (draws from torch's global generator when training)."""

    input_rank = 1

    def __init__(self, input_shape, out_dim=16):
        super().__init__()
        self.out_dim = out_dim
        self.layers = nn.Sequential(nn.Linear(input_shape[0], out_dim), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x):
        return self.layers(x)


@register("noisy-mean")
class NoisyMean(Weighting):
    """Random positive weights from torch's global generator."""

    scope = "both"

    def compute(self, objectives):
        weights = torch.rand(len(objectives), dtype=torch.float64) + 0.1
        return weights / weights.sum()
'''


def _run(tmp_path, name, clients_at_once):
    from fedmtl import api

    sets = [f'run.plugins=["{tmp_path / "blobs.py"}", "{tmp_path / "random_parts.py"}"]', "data.dataset=blobs",
            "data.params={}",
            "data.num-clients=4", "model.backbone=mlp-dropout", "server.weighting=noisy-mean",
            "client.weighting=noisy-mean", "run.rounds=2", "server.fraction-train=1.0", "engine.backend=inprocess",
            f"engine.max-concurrent-clients={clients_at_once}", "client.lr=0.2"]
    result = api.run("smoke", sets, out=tmp_path / name)
    return pd.read_csv(result.folder / "metrics.csv")


def test_dropout_and_rule_draws_are_the_same_whoever_runs_them_and_whatever_ran_before(tmp_path, monkeypatch,
                                                                                       registries):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "blobs.py").write_text(PLUGIN)
    (tmp_path / "random_parts.py").write_text(RANDOM_PARTS)
    alone = _run(tmp_path, "alone", 1)
    torch.manual_seed(12345)  # another state of the global generator before the run
    side_by_side = _run(tmp_path, "side-by-side", 2)
    pd.testing.assert_frame_equal(alone, side_by_side)
    weights = alone[alone["metric"] == "aggregation-weight"]["value"] if "metric" in alone else alone
    assert len(weights) and weights.nunique() > 1  # the rule did draw: its weights are not all equal


def test_the_global_generator_is_seeded_for_the_block_and_restored_after():
    torch.manual_seed(7)
    expected_after = torch.rand(3)
    torch.manual_seed(7)
    with seeded_global_rng(Stream.CLIENT_CALL, 0, 1, 0, 2, 0):
        first = torch.rand(3)
    assert torch.equal(torch.rand(3), expected_after)  # the caller's stream goes on as if untouched
    with seeded_global_rng(Stream.CLIENT_CALL, 0, 1, 0, 2, 0, exclusive=True):
        assert torch.equal(torch.rand(3), first)  # same keys, same draws
    with seeded_global_rng(Stream.CLIENT_CALL, 0, 1, 0, 3, 0):
        assert not torch.equal(torch.rand(3), first)  # another client, other draws


def test_a_model_with_dropout_draws_at_random():
    assert draws_at_random(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
    assert draws_at_random(torch.nn.Sequential(torch.nn.AlphaDropout(0.1)))
    assert not draws_at_random(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
