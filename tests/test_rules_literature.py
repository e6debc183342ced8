"""Rules from the multi-task literature (IMTL-L, GLS, STCH, SLAW, GO4Align): each against
torchjd 0.18's scalariser where it has one (the weights are the gradient of its scalar
loss with respect to the losses) and against hand-computed cases from the papers'
formulas and the authors' code."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torchjd.scalarization import IMTLL as TorchjdIMTLL
from torchjd.scalarization import STCH as TorchjdSTCH
from torchjd.scalarization import GeometricMean as TorchjdGeometricMean

from fedmtl.aggregation import Objectives, make_weighting
from fedmtl.aggregation.weightings.go4align import kmeans_1d

F64 = torch.float64
LITERATURE = ("imtl-l", "geometric-mean", "stch", "slaw", "go4align")
TASKS = ["seg", "depth", "normal"]


def batch(losses, rows: torch.Tensor | None = None, keys=TASKS) -> Objectives:
    losses = torch.as_tensor(losses, dtype=F64)
    return Objectives(updates=rows, losses=losses, task_ids=list(keys[: len(losses)]))


def loss_gradient(scalarise, losses: torch.Tensor) -> torch.Tensor:
    """∂ scalarise(L) / ∂L: the weights a scalarised loss puts on each ∇L_i."""
    values = losses.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(scalarise(values), values)
    return grad


def loss_sequence(steps: int, m: int = 3, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(m, generator=gen, dtype=F64) * torch.tensor([1.0, 3.0, 0.2], dtype=F64)[:m] + 0.05
            for _ in range(steps)]


# -- what each rule reads and where it runs --------------------------------------------
@pytest.mark.parametrize("name", LITERATURE)
def test_loss_only_rules_skip_update_rows(name):
    cls = type(make_weighting(name))
    assert cls.needs_losses and not cls.needs_updates, name
    weights = make_weighting(name)(batch([0.3, 1.2, 0.7]))  # no rows at all
    assert weights.shape == (3,) and torch.isfinite(weights).all() and (weights >= 0).all()


def test_scopes_and_state():
    expected = {"imtl-l": "client", "geometric-mean": "both", "stch": "both", "slaw": "both", "go4align": "both"}
    for name, scope in expected.items():
        assert type(make_weighting(name)).scope == scope, name
    assert type(make_weighting("geometric-mean")).state_attributes == ()
    for name in ("imtl-l", "stch", "slaw", "go4align"):
        assert type(make_weighting(name)).state_attributes, name


@pytest.mark.parametrize(
    "name, params", [("imtl-l", {}), ("stch", {"warmup_epochs": 1}), ("slaw", {"beta": 0.5}),
                     ("go4align", {"num_groups": 2, "step_size": 0.3})],
)
def test_state_dict_round_trip_resumes_exactly(name, params):
    seq = loss_sequence(12)
    original = make_weighting(name, **params)
    for i, losses in enumerate(seq[:6]):
        original(batch(losses))
        if i % 2:
            original.end_epoch()
    resumed = make_weighting(name, **params)
    resumed.load_state_dict(original.state_dict())
    assert resumed.state_dict() == original.state_dict()
    for i, losses in enumerate(seq[6:]):
        torch.testing.assert_close(original(batch(losses)), resumed(batch(losses)), rtol=0, atol=0)
        if i % 2:
            original.end_epoch()
            resumed.end_epoch()


@pytest.mark.parametrize("name", ("imtl-l", "stch", "slaw", "go4align"))
def test_state_is_kept_per_row_key(name):
    """Rows are matched by key, not position: reordering a batch reorders the weights."""
    seq = loss_sequence(8)
    params = {"stch": {"warmup_epochs": 0}, "go4align": {"num_groups": 2, "step_size": 0.5}}.get(name, {})
    a, b = make_weighting(name, **params), make_weighting(name, **params)
    perm = [2, 0, 1]
    for i, losses in enumerate(seq):
        wa = a(batch(losses))
        wb = b(batch(losses[perm], keys=[TASKS[j] for j in perm]))
        torch.testing.assert_close(wb, wa[perm], rtol=1e-12, atol=1e-15)
        if i % 3 == 2:
            a.end_epoch()
            b.end_epoch()


# -- IMTL-L ------------------------------------------------------------------------------
def test_imtl_l_hand_computed_steps():
    rule = make_weighting("imtl-l", lr=0.1)
    first = rule(batch([0.5, 2.0]))
    torch.testing.assert_close(first, torch.tensor([0.5, 0.5], dtype=F64))  # s = 0: mean
    # s ← s − lr (e^s L − 1) = −0.1 · ([0.5, 2] − 1)
    assert rule.scales == pytest.approx({"seg": 0.05, "depth": -0.1})
    second = rule(batch([0.5, 2.0]))
    torch.testing.assert_close(second, torch.tensor([math.exp(0.05) / 2, math.exp(-0.1) / 2], dtype=F64))


def test_imtl_l_matches_torchjd_imtll_trained_by_sgd():
    """Weights = ∂(Σ e^s L − s)/∂L / T, and the scales follow SGD on torchjd's IMTLL."""
    lr = 0.2
    ours = make_weighting("imtl-l", lr=lr)
    theirs = TorchjdIMTLL(3).double()
    optimizer = torch.optim.SGD(theirs.parameters(), lr=lr)
    for losses in loss_sequence(25):
        expected = loss_gradient(theirs, losses) / 3
        torch.testing.assert_close(ours(batch(losses)), expected, rtol=1e-12, atol=1e-14)
        optimizer.zero_grad()
        theirs(losses).backward()
        optimizer.step()
        torch.testing.assert_close(
            torch.tensor([ours.scales[k] for k in TASKS], dtype=F64), theirs.log_scale.detach(), rtol=1e-12, atol=1e-14
        )


def test_imtl_l_drives_every_scaled_loss_to_one():
    rule = make_weighting("imtl-l", lr=0.5)
    losses = torch.tensor([0.02, 1.0, 40.0], dtype=F64)
    for _ in range(200):
        weights = rule(batch(losses))
    torch.testing.assert_close(weights * 3 * losses, torch.ones(3, dtype=F64), rtol=1e-9, atol=1e-9)


# -- GLS (geometric mean) ----------------------------------------------------------------
def test_geometric_mean_hand_computed():
    weights = make_weighting("geometric-mean")(batch([1.0, 4.0]))
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.25], dtype=F64))  # G = 2, G / (T L_i)
    torch.testing.assert_close(
        make_weighting("geometric-mean")(batch([0.7, 0.7, 0.7])), torch.full((3,), 1 / 3, dtype=F64)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_mean_is_the_gradient_of_torchjd_geometric_mean(seed):
    losses = torch.rand(5, generator=torch.Generator().manual_seed(seed), dtype=F64) * 10 + 1e-3
    keys = [f"t{i}" for i in range(5)]
    ours = make_weighting("geometric-mean")(batch(losses, keys=keys))
    torch.testing.assert_close(ours, loss_gradient(TorchjdGeometricMean(), losses), rtol=1e-12, atol=1e-14)
    # sum G / H ≥ 1 (H the harmonic mean)
    harmonic = 5 / (1 / losses).sum()
    assert float(ours.sum()) == pytest.approx(float(losses.log().mean().exp() / harmonic), rel=1e-12)


# -- STCH --------------------------------------------------------------------------------
def official_stch_weights(losses: torch.Tensor, nadir: torch.Tensor, mu: float) -> torch.Tensor:
    """The authors' post-warm-up loss (Xi-L/STCH, STCH_MTL/LibMTL/weighting/STCH.py),
    written from its formula: T μ log Σ exp((log(L/z + 1e-20) − max) / μ); its gradient
    with respect to L, divided by T."""
    t = len(losses)

    def loss(values: torch.Tensor) -> torch.Tensor:
        f = torch.log(values / nadir + 1e-20)
        shifted = f - f.detach().max()
        return mu * torch.log(torch.exp(shifted / mu).sum()) * t

    return loss_gradient(loss, losses) / t


@pytest.mark.parametrize("mu", [1.0, 0.1])
def test_stch_warm_up_reference_epoch_then_smooth_max(mu):
    warmup = 2
    rule = make_weighting("stch", mu=mu, warmup_epochs=warmup)
    epochs = [loss_sequence(3, seed=s) for s in range(warmup + 3)]
    for e, epoch in enumerate(epochs):
        for losses in epoch:
            weights = rule(batch(losses))
            if e <= warmup:  # warm-up, then the epoch that measures the reference: Σ log L
                torch.testing.assert_close(weights, 1 / (3 * losses), rtol=1e-14, atol=0)
            else:
                nadir = torch.stack(epochs[warmup]).mean(dim=0)
                torch.testing.assert_close(weights, official_stch_weights(losses, nadir, mu), rtol=1e-10, atol=1e-12)
                theirs = TorchjdSTCH(mu, weights=torch.ones(3, dtype=F64), reference=nadir.log())
                torch.testing.assert_close(
                    weights, loss_gradient(lambda v, s=theirs: s(v.log()), losses), rtol=1e-10, atol=1e-12
                )
        rule.end_epoch()
    torch.testing.assert_close(
        torch.tensor([rule.reference[k] for k in TASKS], dtype=F64), torch.stack(epochs[warmup]).mean(dim=0)
    )


def test_stch_small_mu_puts_the_weight_on_the_worst_normalised_loss():
    rule = make_weighting("stch", mu=0.01, warmup_epochs=0)
    rule(batch([1.0, 1.0, 1.0]))
    rule.end_epoch()  # reference = 1 for every task
    weights = rule(batch([0.5, 0.9, 0.6]))
    assert int(weights.argmax()) == 1
    torch.testing.assert_close(weights * torch.tensor([0.5, 0.9, 0.6], dtype=F64), torch.tensor([0, 1, 0.0], dtype=F64),
                               atol=1e-10, rtol=0)


def test_stch_new_rows_after_the_warm_up_get_a_reference_first():
    rule = make_weighting("stch", warmup_epochs=0)
    rule(batch([1.0, 2.0], keys=["a", "b"]))
    rule.end_epoch()
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=F64)
    torch.testing.assert_close(rule(batch(losses, keys=["a", "b", "c"])), 1 / (3 * losses))  # c has none yet
    rule.end_epoch()
    assert rule.reference == pytest.approx({"a": 1.0, "b": 2.0, "c": 4.0})


# -- SLAW --------------------------------------------------------------------------------
def test_slaw_weights_are_inverse_standard_deviations_of_the_losses_seen():
    """Within the code's arithmetic-mean phase (≤ 100 calls at β = 0.99) the moments are
    plain means: s_i is the population standard deviation of the losses seen so far."""
    rule = make_weighting("slaw")
    seq = loss_sequence(30)
    torch.testing.assert_close(rule(batch(seq[0])), torch.full((3,), 1 / 3, dtype=F64))  # no spread yet
    for n in range(2, 31):
        weights = rule(batch(seq[n - 1]))
        std = np.std(torch.stack(seq[:n]).numpy(), axis=0)
        expected = (1 / np.maximum(std, 1e-5)) / (1 / np.maximum(std, 1e-5)).sum()
        np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-9)


def test_slaw_switches_to_exponential_averages_after_round_1_over_1_minus_beta_calls():
    rule = make_weighting("slaw", beta=0.5)  # threshold round(1 / 0.5) = 2 arithmetic steps
    for losses in ([1.0, 2.0], [3.0, 2.0], [2.0, 6.0]):
        weights = rule(batch(losses))
    # task 1: means 1 → 2 (arithmetic) → .5·2 + .5·2 = 2; squares 1 → 5 → .5·5 + .5·4 = 4.5: var .5
    # task 2: means 2 → 2 → 4; squares 4 → 4 → .5·4 + .5·36 = 20: var 4
    inverse = torch.tensor([1 / math.sqrt(0.5), 1 / 2.0], dtype=F64)
    torch.testing.assert_close(weights, inverse / inverse.sum())


def test_slaw_floors_a_constant_loss_at_eps_and_waits_for_new_rows():
    rule = make_weighting("slaw", eps=1e-3)
    rule(batch([1.0, 1.0]))
    weights = rule(batch([1.0, 3.0]))  # task 1 constant: s = 0 → 1/eps; task 2: s = 1
    torch.testing.assert_close(weights, torch.tensor([1e3, 1.0], dtype=F64) / 1001)
    torch.testing.assert_close(rule(batch([1.0, 3.0, 5.0])), torch.full((3,), 1 / 3, dtype=F64))


# -- GO4Align ----------------------------------------------------------------------------
def official_go4align(losses_seq, num_groups: int, eta: float) -> torch.Tensor:
    """The authors' weights (autumn9999/GO4Align, GO4ALIGN in methods/cluster_methods.py),
    written from their formula with an exhaustive k-means, divided by T."""
    t = len(losses_seq[0])
    p = torch.full((t,), 1 / t, dtype=F64)
    for losses in losses_seq:
        p = p * torch.exp(-eta * losses)
        p = p / p.sum()
        gamma = losses.sum() / losses * p
    best, best_cost = None, math.inf
    for labels in itertools.product(range(num_groups), repeat=t):  # every assignment
        cost = _within(gamma.tolist(), list(labels))
        if cost < best_cost - 1e-15:
            best, best_cost = labels, cost
    weights = torch.zeros(t, dtype=F64)
    for g in set(best):
        members = torch.tensor([label == g for label in best])
        weights[members] = gamma[members].mean()
    return weights / t


@pytest.mark.parametrize("num_groups", [1, 2, 3])
def test_go4align_matches_the_authors_formula(num_groups):
    seq = loss_sequence(6, seed=4)
    rule = make_weighting("go4align", num_groups=num_groups, step_size=0.5)
    for n, losses in enumerate(seq, start=1):
        weights = rule(batch(losses))
        torch.testing.assert_close(weights, official_go4align(seq[:n], num_groups, 0.5), rtol=1e-12, atol=1e-14)


def test_go4align_hand_computed_two_groups():
    losses = torch.tensor([1.0, 1.1, 4.0], dtype=F64)
    weights = make_weighting("go4align", num_groups=2, step_size=0.0)(batch(losses))
    gamma = 6.1 / losses / 3  # p stays uniform at η = 0
    near = (gamma[0] + gamma[1]) / 2
    torch.testing.assert_close(weights, torch.stack([near, near, gamma[2]]) / 3)
    one_group = make_weighting("go4align")(batch([0.8, 0.8, 0.8]))  # equal losses: the mean
    torch.testing.assert_close(one_group, torch.full((3,), 1 / 3, dtype=F64), rtol=1e-12, atol=0)


def test_go4align_risk_guided_probabilities_favour_low_loss_tasks():
    rule = make_weighting("go4align", step_size=0.1)
    for _ in range(5):
        rule(batch([0.5, 1.0, 2.0]))
    probs = [math.exp(rule.log_probs[k]) for k in TASKS]
    expected = torch.softmax(-0.5 * torch.tensor([0.5, 1.0, 2.0], dtype=F64), dim=0)  # 5 steps of η = 0.1
    np.testing.assert_allclose(probs, expected.numpy(), rtol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_kmeans_1d_is_the_exhaustive_optimum_and_order_free(seed):
    gen = np.random.default_rng(seed)
    values = [float(v) for v in np.round(gen.random(6) * 4, 1)]  # with repeated values
    for k in (1, 2, 3):
        labels = kmeans_1d(values, k)
        cost = _within(values, labels)
        best = min(_within(values, list(lab)) for lab in itertools.product(range(k), repeat=len(values)))
        assert cost == pytest.approx(best, abs=1e-12)
        assert all(labels[i] == labels[j] for i in range(6) for j in range(6) if values[i] == values[j])
        perm = gen.permutation(6).tolist()
        permuted = kmeans_1d([values[i] for i in perm], k)
        means = {label: np.mean([v for v, lab in zip(values, labels, strict=True) if lab == label]) for label in labels}
        means_p = {label: np.mean([values[i] for i, lab in zip(perm, permuted, strict=True) if lab == label])
                   for label in permuted}
        assert [means_p[lab] for lab in permuted] == pytest.approx([means[labels[i]] for i in perm])


def _within(values: list[float], labels: list[int]) -> float:
    total = 0.0
    for g in set(labels):
        members = [v for v, lab in zip(values, labels, strict=True) if lab == g]
        mean = sum(members) / len(members)
        total += sum((v - mean) ** 2 for v in members)
    return total
