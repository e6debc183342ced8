"""The two-objective toy of CAGrad (``benchmarks/toy.py``): its losses, its Pareto set, and short
runs of two fedmtl rules (mean, MGDA) on it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


def _load_toy():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "toy.py"
    spec = importlib.util.spec_from_file_location("fedmtl_benchmarks_toy", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


toy = _load_toy()


def test_lower_half_is_mirror_symmetric():
    # below x2 = 0 only the quadratic parts count, and f1(x1, x2) = f2(-x1, x2) there
    x = torch.tensor([[3.0, -4.0], [-6.5, -9.0], [0.5, -0.5]], dtype=torch.float64)
    mirrored = x * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    f, g = toy.toy_losses(x), toy.toy_losses(mirrored)
    assert torch.allclose(f[:, 0], g[:, 1]) and torch.allclose(f[:, 1], g[:, 0])


def test_pareto_set_is_where_the_papers_draw_it():
    # the authors' figures draw the set as x1 in [-7, 7] at x2 = -8.3552, the mean's minimiser at its middle
    star = toy.mean_minimiser()
    assert star[1] == pytest.approx(-8.3552, abs=2e-4)
    _, rows = toy.jacobian(torch.tensor(star)[None])
    assert float(rows[0].mean(0).norm()) < 1e-9  # stationary for the mean loss
    front = toy.pareto_set(15)
    assert front[0, 0] == -7 and front[-1, 0] == 7
    _, rows = toy.jacobian(torch.from_numpy(front[1:-1]))
    cosines = torch.nn.functional.cosine_similarity(rows[:, 0], rows[:, 1], dim=1)
    assert torch.allclose(cosines, torch.tensor(-1.0, dtype=torch.float64), atol=1e-9)  # Pareto-stationary
    assert toy.front_distance(front[3] + [0.0, 0.3], front)[0] == pytest.approx(0.3, abs=0.01)


MEAN, MGDA = toy.ToyRule("LS", "mean"), toy.ToyRule("MGDA", "mgda")


@pytest.fixture(scope="module")
def runs():
    """400 Adam steps (lr 1e-2): the mean from (-8.5, -5) and MGDA from (-8.5, 7.5), run together."""
    return toy.run_batch([(MEAN, toy.STARTS[1]), (MGDA, toy.STARTS[0])], steps=400, lr=1e-2)


def test_mean_descends_the_mean_loss_through_conflicts(runs):
    # from (-8.5, -5) the mean gradient runs against f1's for a while: the conflict check sees it
    run = runs[0]
    before = float(toy.toy_losses(torch.tensor(run.start)).mean())
    assert run.losses.mean() < before - 3
    assert run.conflicts > 0 and run.worst_rate < -0.1
    assert np.isfinite(run.path).all() and len(run.path) == 41


def test_mgda_direction_never_conflicts(runs):
    # MGDA's direction d (the min-norm point of the hull) satisfies g_i·d ≥ ‖d‖² ≥ 0 at every step;
    # Adam's step is d rescaled per coordinate, yet over these steps both losses fall
    run = runs[1]
    assert run.conflicts == 0 and run.worst_rate >= -1e-6
    assert (run.losses < toy.toy_losses(torch.tensor(run.start)).numpy()).all()
    assert not run.fallbacks


def test_runs_advanced_together_equal_runs_alone(runs):
    # one Adam over an (n, 2) tensor is n independent Adams: the batch changes nothing
    alone = toy.run_one(MGDA, toy.STARTS[0], steps=50, lr=1e-2)
    assert np.array_equal(alone.path, runs[1].path[:6])
