"""The property suite: every registered rule × every property it guarantees, one test case each.

Cases are generated from the registry at collection time (``<rule>-<property>``, e.g.
``upgrad-non-conflicting``): a rule is checked for the universal properties it does not opt out
of and for the properties its paper claims (:func:`fedmtl.aggregation.properties.guaranteed`),
so a newly registered rule is covered without touching this file. Each case runs its property's
check over the matrices below and reports every sample that fails, not only the first.

Inputs (``tests/aggregation_samplers.py``): seeded float64 matrices with positive losses,
example counts, client and task ids, in six families — ``normal``, ``rank-deficient``,
``ill-conditioned`` (cond ≥ 1e12), ``pareto-stationary`` (a planted ``w > 0`` with
``Σ w_i g_i = 0``), ``near-parallel`` (|cos| > 1 − 1e-6, one direction or both) and
``non-strongly-stationary`` (a checked certificate that no ``w > 0`` has ``Gᵀw = 0``) — and
scales 1e-12, 1e-6, 1, 1e6, 1e12. Rules are built with their default parameters by
``make_rule(name, RuleContext(client_lr=0.05))``, a fresh instance for every run that is
compared with another (runs of registered rules are cached by rule and input: a run from a
fresh instance is the same whichever check asks for it). A rule with state runs each input
three times (losses decreasing between calls, ``end_epoch()`` after each call) and the property
must hold at every call; compared runs start from fresh instances and see the same sequence
(permuted, scaled or row-scaled alike), and for permutation invariance also a sequence whose
row order changes between calls (state must follow the rows' keys, not their positions).

Which matrices each property is checked on (torchjd's ``tests/unit/aggregation`` checks
structure on scaled and typical matrices, non-conflicting, permutation invariance and
linearity under scaling on typical matrices — zero, random, strongly and non-strongly
stationary — and strong stationarity on non-strongly-stationary ones; we follow it):

==========================  ==========================================================================
property                    matrices
==========================  ==========================================================================
well-formed                 every family at every scale, a single row, all-zero rows
nonnegative-weights         the same as well-formed
permutation-invariant       every family at scale 1, two permutations each (reversal, a random one)
homogeneous                 every family, each scale compared with scale 1
non-conflicting             every family at scale 1; normal and Pareto-stationary at 1e-12 and 1e12
linear-under-scaling        normal, rank-deficient, Pareto-stationary, non-strongly-stationary;
                            two draws of c₁, c₂ ~ U(0, 1)ᵐ and α, β ~ U(0, 1) each
strongly-stationary         every sample with a certificate that no w > 0 has Gᵀw = 0 (the
                            non-strongly-stationary family, the full-row-rank normal samples, the
                            one-direction near-parallel one), at every scale
==========================  ==========================================================================

Tolerances are relative to the rows' scale ``S = sqrt(tr(G Gᵀ) / m)`` (the root-mean-square row
norm, the size of a mean-like direction), so they are the same at every scale. The worst values
measured on correct rules are given for each (a real violation is of order 1e-3 to 1):

- permutation-invariant: ``‖d(PG) − d(G)‖ ≤ 1e-5 S``. Exact rules differ by rounding (≤ 1e-15 S);
  rules solved iteratively by ``1e-13``-``1e-10`` S (MGDA, α-fair, Aligned-MTL); CAGrad's
  interior-point solve (torchjd's cvxpy/CLARABEL call, tolerance about 1e-8) is amplified by
  ``c‖g₀‖/‖g_w‖`` near the Pareto front: 3e-7 S with ``c = 1`` on ill-conditioned rows in this
  suite, and up to 7.2e-6 S (1.4e-5 S between two calls in one process, CLARABEL's warm start)
  on the rows ``[[1, 0], [-1, 1], [.2, -1], [.5, .5]]`` with the default c = 0.4, found by an
  independent check, which also measured torchjd's CAGrad up to 7e-6 S off the exact solution
  (SLSQP at ``ftol = 1e-16``), and another (2026-12-04) up to 4e-5 S (1.8e-4 of ‖d‖) on T = 6
  conflicting rows with c = 0.5, its objective above the exact one by 2e-11 to 1e-9; fedmtl
  takes torchjd's solve as it is (it equals torchjd's CAGrad to 1e-10);
- homogeneous: ``‖d(sG) − s d(G)‖ ≤ 1e-5 s S`` (the same solvers; CAGrad with ``c = 1``: 3e-6);
- nonnegative-weights: ``w_i ≥ −1e-12 max_j |w_j|`` (every weighting measured gives w ≥ 0 exactly);
- non-conflicting: ``g_iᵀd ≥ −(1e-6 ‖g_i‖ S + ε w_i tr(G Gᵀ))`` for every row, with ``ε`` the
  rule's ridge (its ``reg_eps`` parameter, 0 for most rules; UPGrad and DualProj solve torchjd's
  dual-cone projection with ``A/tr(A) + εI``, which guarantees exactly ``g_iᵀd ≥ −ε w_i tr(A)``;
  measured beyond it: 4e-15). MGDA: 4e-13; the α-fair rules' regularised fallback on
  Pareto-stationary rows: 6e-7. torchjd's own check compares ``‖(Gd)₊‖`` with ``‖Gd‖``
  (atol 9e-4, float32), which is quadratic in a violation and so much weaker;
- linear-under-scaling: ``‖d(diag(αc₁+βc₂)G) − α d(diag(c₁)G) − β d(diag(c₂)G)‖ ≤ (1e-6 + 500 ε) S``
  with ``S`` the largest of the three matrices' scales and ``ε`` the ridge. Mean and FedAvg:
  1e-16. UPGrad is linear only without its ridge: rows scaled by ``c_i`` with
  ``c_i² ‖g_i‖² ≲ ε tr(A)`` lose their constraint; measured 3.1e-2 S = 310 ε at the default
  ``ε = 1e-4``, falling in proportion to ``ε`` (torchjd's check allows 1e-2 on unit-scale rows);
- strongly-stationary: ``‖d‖ ≥ 1e-3 S`` (torchjd's threshold, relative here: a zero direction is
  ~1e-16 S; UPGrad measured ≥ 0.59 S).

Beyond the defaults, :data:`VARIANTS` checks parameters under which a paper states a property
(CAGrad with c ≥ 1 is non-conflicting; FairGrad's claims hold for every α > 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

import fedmtl.aggregation  # noqa: F401  (registers every rule)
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.properties import (
    OPT_OUTS,
    PROPERTIES,
    UNIVERSAL,
    applies,
    guaranteed,
    unknown_claims,
)
from fedmtl.aggregation.registry import RULES, make_rule
from fedmtl.aggregation.rule import Combined, Rule, RuleContext, Weighting
from tests.aggregation_samplers import (
    SAMPLES,
    SCALES,
    Sample,
    at_scales,
    edge_cases,
    not_strongly_stationary,
    of,
)

CONTEXT = RuleContext(client_lr=0.05)
"""What the suite tells every rule (q-FFL derives ``L = 1/η`` from it)."""

STATEFUL_CALLS = 3
"""Calls per run for a rule with state (enough for DWA's two epochs of history)."""

PERMUTATION_RTOL = 1e-5
HOMOGENEITY_RTOL = 1e-5
NONNEGATIVE_RTOL = 1e-12
NON_CONFLICTING_TOL = 1e-6
LINEARITY_RTOL = 1e-6
LINEARITY_PER_RIDGE = 500.0
STATIONARITY_THRESHOLD = 1e-3

Make = Callable[[], Rule]


# -- running a rule -----------------------------------------------------------------------
def losses_at(losses: torch.Tensor, call: int) -> torch.Tensor:
    """The losses seen at the ``call``-th call: each decreases at a rate that grows with it
    (a function of the row's own loss, so permuting rows permutes it alike)."""
    return losses * torch.exp(-0.2 * call * losses)


class Fresh:
    """Builds a fresh instance of the registered rule ``name`` with ``params`` (its defaults
    when none are given)."""

    def __init__(self, name: str, **params: Any) -> None:
        self.name, self.params = name, params

    def __call__(self) -> Rule:
        return make_rule(self.name, CONTEXT, **self.params)

    def __repr__(self) -> str:
        return self.name + (f"({', '.join(f'{k}={v}' for k, v in self.params.items())})" if self.params else "")


_RUNS: dict[tuple[str, tuple[str, ...]], list[Combined]] = {}
"""Results of registered rules by (rule and parameters, input ids): a run starts from a fresh
instance, so it is the same whichever property asks for it (well-formed and nonnegative-weights
share runs, and every comparison shares its reference run)."""


def run(make: Make, inputs: Sample | list[Sample]) -> list[Combined]:
    """A fresh rule's results: one call on the first input, or, for a rule with state,
    :data:`STATEFUL_CALLS` calls (``end_epoch()`` after each), call ``t`` on ``inputs[t]`` (the
    same sample throughout when one is given) with the losses of :func:`losses_at`."""
    sequence = [inputs] * STATEFUL_CALLS if isinstance(inputs, Sample) else list(inputs)
    key = (repr(make), tuple(x.id for x in sequence)) if isinstance(make, Fresh) else None
    if key in _RUNS:
        return _RUNS[key]
    rule = make()
    calls = STATEFUL_CALLS if type(rule).state_attributes else 1
    results = []
    for call in range(calls):
        sample = sequence[call]
        results.append(rule.combine(sample.objectives(losses_at(sample.losses, call))))
        rule.end_epoch()
    if key is not None:
        _RUNS[key] = results
    return results


def directions(make: Make, inputs: Sample | list[Sample]) -> list[torch.Tensor]:
    return [r.direction.to(torch.float64) for r in run(make, inputs)]


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm())


# -- one check per property ------------------------------------------------------------------
class PropertyViolation(AssertionError):
    """A rule does not have a property on one input (the message says by how much)."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise PropertyViolation(message)


def ridge(rule: Rule) -> float:
    """The ridge ε a rule adds to its trace-normalised Gramian (its ``reg_eps`` parameter; 0 when
    it has none). UPGrad and DualProj (torchjd's dual-cone projector) solve with ``A/tr(A) + εI``:
    their guarantees hold up to it."""
    return float(getattr(rule.params, "reg_eps", 0.0))


def check_well_formed(make: Make, sample: Sample) -> None:
    """A direction of the rows' width with finite entries (a weighting: ``m`` finite weights);
    the call does not raise."""
    m, p = sample.rows.shape
    for call, result in enumerate(run(make, sample)):
        d, w = result.direction, result.weights
        require(d.shape == (p,), f"call {call}: direction of shape {tuple(d.shape)}, expected ({p},)")
        require(bool(torch.isfinite(d).all()), f"call {call}: non-finite direction {d.tolist()}")
        if w is not None:
            require(w.shape == (m,), f"call {call}: weights of shape {tuple(w.shape)}, expected ({m},)")
            require(bool(torch.isfinite(w).all()), f"call {call}: non-finite weights {w.tolist()}")


def permutations(m: int) -> list[list[int]]:
    """The reversal and one seeded random permutation that differs from both it and the identity."""
    orders = [list(range(m))[::-1]]
    gen = torch.Generator().manual_seed(m)
    for _ in range(20):
        order = torch.randperm(m, generator=gen).tolist()
        if order != list(range(m)) and order not in orders:
            orders.append(order)
            break
    return orders


def check_permutation_invariant(make: Make, sample: Sample) -> None:
    """``d(PG) = d(G)`` (losses, counts and ids permuted alike), to ``PERMUTATION_RTOL · S``.

    A rule with state also sees the rows in a different order at every call (permuted, as
    given, permuted): state must follow the rows' keys, not their positions."""
    reference = directions(make, sample)
    for order in permutations(sample.m):
        permuted = sample.permuted(order)
        for sequence in ([permuted] * STATEFUL_CALLS, [permuted, sample, permuted]):
            for call, (d, d_perm) in enumerate(zip(reference, directions(make, sequence), strict=True)):
                gap = _gap(d, d_perm) / sample.scale
                orders = "" if sequence[1] is permuted else " (order changing between calls)"
                require(gap <= PERMUTATION_RTOL, f"call {call}, order {order}{orders}: ‖d(PG) − d(G)‖ = {gap:.3g} S")
            if not type(make()).state_attributes:
                break


def check_homogeneous(make: Make, sample: Sample) -> None:
    """``d(sG) = s d(G)`` for every scale ``s``, to ``HOMOGENEITY_RTOL · s · S``."""
    reference = directions(make, sample)
    for s in SCALES:
        if s == 1.0:
            continue
        for call, (d, d_s) in enumerate(zip(reference, directions(make, sample.scaled(s)), strict=True)):
            gap = _gap(d_s, s * d) / (s * sample.scale)
            require(gap <= HOMOGENEITY_RTOL, f"call {call}, s = {s:g}: ‖d(sG) − s d(G)‖ = {gap:.3g} s S")


def check_nonnegative_weights(make: Make, sample: Sample) -> None:
    """``w_i ≥ −NONNEGATIVE_RTOL · max_j |w_j|``."""
    for call, result in enumerate(run(make, sample)):
        w = result.weights
        require(w is not None, "no weights (an aggregator)")
        floor = -NONNEGATIVE_RTOL * float(w.abs().max())
        require(float(w.min()) >= floor, f"call {call}: negative weights {[round(x, 6) for x in w.tolist()]}")


def check_non_conflicting(make: Make, sample: Sample) -> None:
    """``g_iᵀd ≥ −(NON_CONFLICTING_TOL · ‖g_i‖ · S + ε · w_i · tr(G Gᵀ))`` for every row ``i``.

    ``ε`` is the rule's ridge (:func:`ridge`, 0 for most rules): a dual-cone projection solved
    with ``A + ε tr(A) I`` guarantees ``(A w)_i ≥ −ε tr(A) w_i``, exactly this bound."""
    g = sample.rows
    eps = ridge(make())
    trace = float(g.pow(2).sum())
    for call, result in enumerate(run(make, sample)):
        d = result.direction.to(torch.float64)
        w = result.weights if result.weights is not None else torch.zeros(sample.m, dtype=torch.float64)
        products = g @ d
        slack = eps * w.clamp_min(0) * trace
        excess = (-(products + slack)) / (g.norm(dim=1).clamp_min(1e-300) * sample.scale)
        bad = (excess > NON_CONFLICTING_TOL).nonzero().flatten().tolist()
        require(
            not bad,
            f"call {call}: rows {bad} conflict, g_iᵀd = {[float(products[i]) for i in bad]} "
            f"(−{[f'{float(excess[i]):.3g}' for i in bad]} ‖g_i‖ S beyond the ridge)",
        )


def linearity_draws(sample: Sample, draws: int = 2) -> list[tuple[torch.Tensor, torch.Tensor, float, float]]:
    """Seeded ``(c₁, c₂, α, β)``: ``c ~ U(0, 1)ᵐ``, ``α, β ~ U(0, 1)`` (as torchjd's check)."""
    gen = torch.Generator().manual_seed(1000 + sample.m)
    out = []
    for _ in range(draws):
        c1, c2 = (torch.rand(sample.m, generator=gen, dtype=torch.float64) for _ in range(2))
        alpha, beta = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        out.append((c1, c2, alpha, beta))
    return out


def check_linear_under_scaling(make: Make, sample: Sample) -> None:
    """``d(diag(αc₁ + βc₂) G) = α d(diag(c₁) G) + β d(diag(c₂) G)``, to
    ``(LINEARITY_RTOL + LINEARITY_PER_RIDGE · ε) · S`` (``S`` the largest scale of the three
    matrices, ``ε`` the rule's ridge)."""
    tol = LINEARITY_RTOL + LINEARITY_PER_RIDGE * ridge(make())
    for k, (c1, c2, alpha, beta) in enumerate(linearity_draws(sample)):
        mixed = alpha * c1 + beta * c2
        parts = [sample.row_scaled(c, f"{label}{k}") for c, label in ((c1, "c1-"), (c2, "c2-"), (mixed, "c-"))]
        scale = max(p.scale for p in parts)
        d1, d2, d = (directions(make, p) for p in parts)
        for call in range(len(d)):
            gap = _gap(d[call], alpha * d1[call] + beta * d2[call]) / scale
            require(
                gap <= tol,
                f"call {call}, α = {alpha:.3f}, β = {beta:.3f}: ‖d(αc₁+βc₂) − αd(c₁) − βd(c₂)‖ = {gap:.3g} S",
            )


def check_strongly_stationary(make: Make, sample: Sample) -> None:
    """On rows that are not strongly stationary, ``‖d‖ ≥ STATIONARITY_THRESHOLD · S``."""
    require(sample.ascent is not None, "the sample is not certified non-strongly-stationary")
    for call, d in enumerate(directions(make, sample)):
        size = float(d.norm()) / sample.scale
        require(size >= STATIONARITY_THRESHOLD, f"call {call}: ‖d‖ = {size:.3g} S on rows with no w > 0, Gᵀw = 0")


CHECKS: dict[str, Callable[[Make, Sample], None]] = {
    "well-formed": check_well_formed,
    "permutation-invariant": check_permutation_invariant,
    "homogeneous": check_homogeneous,
    "nonnegative-weights": check_nonnegative_weights,
    "non-conflicting": check_non_conflicting,
    "linear-under-scaling": check_linear_under_scaling,
    "strongly-stationary": check_strongly_stationary,
}
"""The check of every property in :data:`PROPERTIES`."""


def samples_for(prop: str) -> list[Sample]:
    """The matrices each property is checked on (the table in the module docstring)."""
    every = of()
    if prop in ("well-formed", "nonnegative-weights"):
        return at_scales(every) + edge_cases()
    if prop in ("permutation-invariant", "homogeneous"):
        return every
    if prop == "non-conflicting":
        return every + at_scales(of("normal", "pareto-stationary"), (1e-12, 1e12))
    if prop == "linear-under-scaling":
        return of("normal", "rank-deficient", "pareto-stationary", "non-strongly-stationary")
    if prop == "strongly-stationary":
        return at_scales(not_strongly_stationary())
    raise KeyError(prop)


def failures(prop: str, make: Make, samples: list[Sample] | None = None) -> list[str]:
    """One line per sample on which ``make()``'s rule does not have ``prop``."""
    lines = []
    for sample in samples_for(prop) if samples is None else samples:
        try:
            CHECKS[prop](make, sample)
        except AssertionError as exc:
            lines.append(f"{sample.id}: {exc}")
        except Exception as exc:  # a rule that raises fails the property on that sample
            lines.append(f"{sample.id}: raised {type(exc).__name__}: {exc}")
    return lines


VARIANTS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    # CAGrad is non-conflicting for c ≥ 1 (Liu et al. 2021; torchjd's tests check c = 1 and 2)
    ("cagrad", {"c": 1.0}, ("non-conflicting",)),
    ("cagrad", {"c": 2.0}, ("non-conflicting",)),
    # FairGrad's claims hold for every α > 0 (Ban & Ji 2024): minimum potential delay, max-min
    ("fairgrad", {"alpha": 2.0}, ()),
    ("fairgrad", {"alpha": math.inf}, ()),
]
"""Non-default parameters under which a paper states properties: ``(rule, params, extra)``; the
variant is checked for everything the rule guarantees plus ``extra``."""


def _cases() -> list[tuple[Fresh, str]]:
    cases = [(Fresh(name), prop) for name, cls in RULES.items() for prop in guaranteed(cls)]
    for name, params, extra in VARIANTS:
        if name in RULES:
            have = guaranteed(RULES.get(name))
            cases += [(Fresh(name, **params), prop) for prop in have + tuple(p for p in extra if p not in have)]
    return cases


CASES = _cases()


# -- the rule × property cases -------------------------------------------------------------
@pytest.mark.parametrize(("make", "prop"), CASES, ids=[f"{make!r}-{prop}" for make, prop in CASES])
def test_rule_has_property(make: Fresh, prop: str) -> None:
    lines = failures(prop, make)
    if lines:
        header = f"'{make!r}' is not {prop} on {len(lines)} of {len(samples_for(prop))} inputs:"
        pytest.fail("\n".join([header, *lines]))


# -- meta-tests -----------------------------------------------------------------------------
def test_every_property_has_a_check_and_inputs() -> None:
    assert set(CHECKS) == set(PROPERTIES)
    assert set(UNIVERSAL) <= set(PROPERTIES)
    for prop in PROPERTIES:
        assert samples_for(prop), prop


@pytest.mark.parametrize("name", RULES.names())
def test_claims_name_known_properties(name: str) -> None:
    assert unknown_claims(RULES.get(name)) == []


def test_opt_outs_name_registered_rules_and_universal_properties() -> None:
    for (name, prop), reason in OPT_OUTS.items():
        assert name in RULES, f"OPT_OUTS names unknown rule '{name}'"
        cls = RULES.get(name)
        assert prop in UNIVERSAL, f"OPT_OUTS ({name}, {prop}): only universal properties are opted out of"
        assert applies(cls, prop), f"OPT_OUTS ({name}, {prop}): the property does not apply to a {cls.kind}"
        assert prop not in cls.claims, f"'{name}' both claims and opts out of {prop}"
        assert reason.strip(), f"OPT_OUTS ({name}, {prop}) gives no reason"


@pytest.mark.parametrize(("name", "prop"), list(OPT_OUTS), ids=[f"{n}-{p}" for n, p in OPT_OUTS])
def test_every_opt_out_is_shown_by_the_suite(name: str, prop: str) -> None:
    """An opt-out the checks cannot confirm is either a property the rule has (drop the opt-out)
    or a violation the samplers miss (add an input that shows it)."""
    if name not in RULES:
        pytest.fail(f"OPT_OUTS names unknown rule '{name}'")
    assert failures(prop, Fresh(name)), f"'{name}' passes the {prop} check on every input: is the opt-out needed?"


def test_samplers_keep_their_promises() -> None:
    families = {s.family for s in SAMPLES}
    assert families == {"normal", "rank-deficient", "ill-conditioned", "pareto-stationary", "near-parallel",
                        "non-strongly-stationary"}
    for s in SAMPLES:
        assert s.rows.dtype == torch.float64
        assert (s.losses > 0).all() and (s.num_examples > 0).all()
        assert len(set(s.client_ids)) == len(set(s.task_ids)) == s.m
        assert len(set(Objectives(updates=s.rows, client_ids=list(s.client_ids),
                                  task_ids=list(s.task_ids)).keys())) == s.m
        if s.family == "ill-conditioned":
            sv = torch.linalg.svdvals(s.rows)
            assert float(sv[0] / sv[-1]) >= 1e12
        if s.family == "pareto-stationary":
            assert s.stationary is not None and (s.stationary > 0).all()
            assert float((s.stationary @ s.rows).norm()) <= 1e-12 * float(s.stationary.norm()) * s.scale * s.m
        if s.family == "near-parallel":
            unit = s.rows / s.rows.norm(dim=1, keepdim=True)
            assert float((unit @ unit.T).abs().min()) > 1 - 1e-6
        if s.ascent is not None:
            gx = s.rows @ s.ascent
            assert float(gx.min()) >= -1e-12 * s.scale * float(s.ascent.norm()) * math.sqrt(s.m)
            assert float(gx.max()) > 0
    assert any(s.stationary is not None and (s.stationary == 0).any() and s.ascent is not None for s in SAMPLES), (
        "a Pareto-stationary sample that is not strongly stationary"
    )
    assert any(float((s.rows @ s.rows.T).min()) < 0 for s in of("near-parallel")), "± near-parallel rows"


# -- the suite is not vacuous: deliberately broken rules fail -------------------------------
class FirstRow(Weighting):
    """Broken on purpose: all weight on the first row (conflicts; depends on the row order)."""

    name = "toy-first-row"

    def compute(self, objectives: Objectives) -> torch.Tensor:
        w = torch.zeros(len(objectives), dtype=torch.float64)
        w[0] = 1.0
        return w


class UnitRows(Weighting):
    """Broken on purpose: the mean of the unit rows (ignores the rows' scale)."""

    name = "toy-unit-rows"

    def compute(self, objectives: Objectives) -> torch.Tensor:
        norms = objectives.gramian.diagonal().sqrt()
        return torch.where(norms > 0, 1 / norms.clamp_min(1e-300), 0.0) / len(objectives)


class Signed(Weighting):
    """Broken on purpose: weights of alternating sign."""

    name = "toy-signed"

    def compute(self, objectives: Objectives) -> torch.Tensor:
        return torch.tensor([(-1.0) ** i for i in range(len(objectives))], dtype=torch.float64)


class Zero(Weighting):
    """Broken on purpose: no step at all (non-conflicting, but never strongly stationary)."""

    name = "toy-zero"

    def compute(self, objectives: Objectives) -> torch.Tensor:
        return torch.zeros(len(objectives), dtype=torch.float64)


class NaNOnZero(Weighting):
    """Broken on purpose: divides by the squared row norms (NaN on zero rows)."""

    name = "toy-nan"

    def compute(self, objectives: Objectives) -> torch.Tensor:
        return 1 / objectives.gramian.diagonal()


class MinNormLike(Weighting):
    """Broken for linearity: the weights of the smallest row only (MGDA-like, not linear)."""

    name = "toy-smallest-row"

    def compute(self, objectives: Objectives) -> torch.Tensor:
        w = torch.zeros(len(objectives), dtype=torch.float64)
        w[int(objectives.gramian.diagonal().argmin())] = 1.0
        return w


@pytest.mark.parametrize(
    ("toy", "prop"),
    [
        (FirstRow, "non-conflicting"),
        (FirstRow, "permutation-invariant"),
        (UnitRows, "homogeneous"),
        (Signed, "nonnegative-weights"),
        (Signed, "non-conflicting"),
        (Zero, "strongly-stationary"),
        (NaNOnZero, "well-formed"),
        (MinNormLike, "linear-under-scaling"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_broken_toy_rules_fail_the_checks(toy: type[Rule], prop: str) -> None:
    lines = failures(prop, lambda: toy(CONTEXT))
    assert lines, f"{toy.name} passes {prop}: the check is vacuous"


@pytest.mark.parametrize("prop", list(PROPERTIES))
def test_the_mean_has_every_property_but_non_conflicting(prop: str) -> None:
    """The plain mean is exact: every check passes it (the tolerances do not fail an exact
    rule), except non-conflicting, which it is not on Pareto-stationary rows."""
    lines = failures(prop, Fresh("mean"))
    if prop == "non-conflicting":
        assert any(line.startswith("pareto-stationary-2x2-issue:") for line in lines), lines
    else:
        assert lines == []
