"""What a weighting returns is checked at every call (a plugin's rule above all): finite weights,
none negative unless the rule says ``nonnegative = False``; and a plugin's rule is credited
only with what is checked or claimed, never with the properties the property suite proves of
fedmtl's own rules."""

from __future__ import annotations

import pytest
import torch

import fedmtl.aggregation  # noqa: F401  (registers every rule)
from fedmtl.aggregation.objectives import Objectives
from fedmtl.aggregation.properties import UNIVERSAL, guaranteed
from fedmtl.aggregation.registry import RULES
from fedmtl.aggregation.rule import Weighting


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
