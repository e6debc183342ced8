"""What a weighting returns is checked at every call (a plugin's rule above all): finite weights,
none negative unless the rule says ``nonnegative = False``; and a plugin's rule is credited
only with what is checked or claimed, never with the properties the property suite proves of
fedmtl's own rules."""

from __future__ import annotations

import re

import pytest
import torch

import fedmtl.aggregation  # noqa: F401  (registers every rule)
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.properties import UNIVERSAL, guaranteed
from fedmtl.aggregation.registry import RULES
from fedmtl.aggregation.rule import Weighting, Weights


def _objectives(m: int = 3) -> Objectives:
    return Objectives(updates=torch.randn(m, 5, generator=torch.Generator().manual_seed(0)), losses=torch.ones(m))


def _weighting(weights: list[float], nonnegative: bool = True, claims: tuple[str, ...] = ()) -> Weighting:
    class Fixed(Weighting):
        """Returns the same weights."""

        name = "fixed"

        def compute(self, objectives: Objectives) -> torch.Tensor:
            return torch.tensor(weights, dtype=torch.float64)

    Fixed.nonnegative, Fixed.claims, Fixed.__module__ = nonnegative, claims, "my_plugin"
    return Fixed()


@pytest.mark.parametrize(("weights", "said"), [
    ([0.5, float("nan"), 0.5], "weighting 'fixed' returned weights that are not finite: [0.5, nan, 0.5]"),
    ([1.0, float("inf"), 0.0], "weighting 'fixed' returned weights that are not finite"),
    ([2.0, -0.5, -0.5], "weighting 'fixed' returned the negative weight -0.5 but declares nonnegative weights (a "
                        "rule whose weights may be negative sets nonnegative = False)"),
])
def test_weights_that_are_not_finite_or_negative_against_the_rules_word_are_refused(weights, said):
    with pytest.raises(RuntimeError) as error:
        _weighting(weights).weigh(_objectives())
    assert str(error.value).startswith(said)


@pytest.mark.parametrize(("result", "said"), [
    (lambda: torch.tensor([0.5 + 1j, 0.5 - 1j, 0.0]), "weighting 'odd' returned complex weights (torch.complex64); "
                                                       "weights are real numbers"),
    (lambda: Weights(torch.ones(3) / 3, info="solved"),  # type: ignore[arg-type]
     "weighting 'odd' returned Weights whose info is a str, not a SolveInfo"),
])
def test_complex_weights_or_a_wrong_info_are_refused_naming_the_rule(result, said):
    """Casting complex weights to float64 dropped their imaginary parts with a warning only; an
    info of the wrong type failed later as "'str' object has no attribute 'fallback'"."""
    class Odd(Weighting):
        name = "odd"

        def compute(self, objectives: Objectives) -> torch.Tensor:
            return result()

    with pytest.raises(TypeError) as error:
        Odd().weigh(_objectives())
    assert str(error.value).startswith(said)


def test_signed_weights_pass_when_the_rule_says_so_and_rounding_of_zero_is_not_negative():
    assert _weighting([2.0, -0.5, -0.5], nonnegative=False).weigh(_objectives()).weights.tolist() == [2.0, -0.5, -0.5]
    assert _weighting([1.0, -1e-15, 0.0]).weigh(_objectives()).weights[1] == -1e-15


def test_a_plugin_rule_is_credited_with_what_is_checked_or_claimed_only():
    plain = type(_weighting([1.0]))
    assert guaranteed(plain) == ("well-formed", "nonnegative-weights")
    assert guaranteed(type(_weighting([1.0], nonnegative=False))) == ("well-formed",)
    claimed = type(_weighting([1.0], claims=("permutation-invariant",)))
    assert guaranteed(claimed) == ("well-formed", "nonnegative-weights", "permutation-invariant")
    # fedmtl's own rules keep the universal properties the property suite checks
    assert set(UNIVERSAL) <= set(guaranteed(RULES.get("mean")))


def test_an_aggregator_direction_of_another_width_is_refused_naming_the_rule():
    from fedmtl.aggregation.rule import Aggregate, Aggregator

    class Short(Aggregator):
        """One entry short."""

        name = "short"

        def compute(self, objectives: Objectives) -> Aggregate:
            return Aggregate(objectives.updates.mean(0)[:-1])

    with pytest.raises(RuntimeError, match=r"^aggregator 'short' returned a direction of shape \(4,\) for rows of "
                                           r"width 5$"):
        Short().aggregate(_objectives())
    Short.__module__ = "my_plugin"
    assert guaranteed(Short) == ()  # its values are not checked: no "well-formed" credited

    class Bare(Aggregator):
        """The direction alone, not in an Aggregate (said "a direction of shape NoneType")."""

        name = "bare"

        def compute(self, objectives: Objectives) -> torch.Tensor:
            return objectives.updates.mean(0)

    with pytest.raises(RuntimeError, match=r"^aggregator 'bare' returned a Tensor from compute\(\); an aggregator "
                                           r"returns fedmtl.aggregation.Aggregate\(direction, ...\)$"):
        Bare().aggregate(_objectives())


def test_a_name_registered_twice_says_whose_the_first_is():
    from fedmtl.registry import Registry

    registry: Registry[object] = Registry("dataset")
    registry.register("mine")(object())  # an instance (a DatasetEntry) has fedmtl's class, not its registrar
    with pytest.raises(ValueError, match=rf"^dataset 'mine' is registered twice \(the first is registered by "
                                         rf"{__name__}\); give yours another name$"):
        registry.register("mine")(object())
    with pytest.raises(ValueError, match=r"weighting 'mean' is registered twice \(the first is fedmtl's own\)"):
        RULES.register("mean")(object())


@pytest.mark.parametrize("name", ["My Blobs, v2", "a=b", "", " blobs", 'say"this"', 7])
def test_a_name_that_a_config_or_grid_list_cannot_give_is_refused(name):
    """Names with spaces, commas, '=' or quotes were accepted for datasets, methods, ... (rules
    only were checked), though `--grid data.dataset=a,b` cannot give them."""
    from fedmtl.data import DATASETS

    with pytest.raises(ValueError, match=r"^dataset name .*: a name is letters, digits, '\+', '\.', '_' or '-'"):
        DATASETS.register(name)(object())  # type: ignore[arg-type]
    assert name not in DATASETS


def _zero_updates(objectives: Objectives) -> None:
    objectives.updates.zero_()


def _zero_a_view(objectives: Objectives) -> None:
    objectives.updates[0] *= 0


def _scale_losses(objectives: Objectives) -> None:
    objectives.losses.mul_(2)


def _replace_updates(objectives: Objectives) -> None:
    objectives.updates = torch.zeros_like(objectives.updates)


def _reorder_ids(objectives: Objectives) -> None:
    objectives.client_ids.reverse()


def _edit_gramian(objectives: Objectives) -> None:
    objectives.gramian.zero_()


@pytest.mark.parametrize(("edit", "said"), [
    (_zero_updates, "changed the objectives' updates in place"),
    (_zero_a_view, "changed the objectives' updates in place"),
    (_scale_losses, "changed the objectives' losses in place"),
    (_replace_updates, "replaced the objectives' updates"),
    (_reorder_ids, "changed the objectives' client_ids in place"),
    (_edit_gramian, "changed the objectives' gramian in place"),
])
@pytest.mark.parametrize("kind", ["weighting", "aggregator"])
def test_a_rule_that_changes_its_objectives_is_refused_naming_it(edit, said, kind):
    """A plugin rule that zeroed ``objectives.updates`` in place and returned equal weights left
    the model unmoved while metrics.csv recorded weights of 0.25 (found by a newcomer pass)."""
    from fedmtl.aggregation.rule import Aggregate, Aggregator

    class Editing(Weighting):
        """Edits its inputs, then weighs equally."""

        name = "editing"

        def compute(self, objectives):
            edit(objectives)
            return torch.full((len(objectives),), 1.0 / len(objectives), dtype=torch.float64)

    class EditingAggregator(Aggregator):
        """Edits its inputs, then averages."""

        name = "editing"

        def compute(self, objectives):
            edit(objectives)
            return Aggregate(objectives.updates.mean(0))

    objectives = _objectives()
    objectives.client_ids = [4, 5, 6]
    if edit is _edit_gramian:
        assert objectives.gramian is not None  # computed before the rule: the rows' own Gramian
    rule = Editing() if kind == "weighting" else EditingAggregator()
    with pytest.raises(RuntimeError, match=rf"^{kind} 'editing' {said}; a rule must leave its objectives as they "
                                           r"are \(clone a tensor before changing it\)$"):
        rule.combine(objectives)


def test_a_rule_that_only_reads_its_objectives_and_computes_the_gramian_passes():
    objectives = _objectives()
    before = objectives.updates.clone()
    for name in ("mean", "mgda", "fairgrad", "pcgrad", "median", "krum"):
        RULES.get(name)().combine(objectives)
    assert torch.equal(objectives.updates, before)


@pytest.mark.parametrize(("result", "said"), [
    (lambda rows: (torch.full((rows.shape[1],), float("nan")), None),
     "returned a direction that is not finite (NaN or Inf) for finite rows"),
    (lambda rows: (torch.full((rows.shape[1],), float("inf")), None),
     "returned a direction that is not finite (NaN or Inf) for finite rows"),
    (lambda rows: (rows.mean(0), rows[:2]),
     "returned parts of shape (2, 5) for rows of shape (3, 5) (one part per row)"),
])
def test_an_aggregator_with_an_impossible_result_is_refused_naming_it(result, said):
    """A NaN direction skipped every round on the server (and on a client was blamed on the
    training: 'the objectives' losses are not finite'); parts of the wrong shape failed in
    torch, naming no rule (found by a newcomer pass)."""
    from fedmtl.aggregation.rule import Aggregate, Aggregator

    class Impossible(Aggregator):
        """Returns what the test gives."""

        name = "impossible"

        def compute(self, objectives):
            direction, parts = result(objectives.updates)
            return Aggregate(direction, parts=parts)

    with pytest.raises(RuntimeError, match=rf"^aggregator 'impossible' {re.escape(said)}$"):
        Impossible().combine(_objectives())
