"""``fedmtl.registry.option_errors``: the keys a rule's or method's ``Params`` takes are the ones
pydantic takes, and a key it would drop without a word (a model on pydantic's own ``BaseModel``,
``extra="ignore"``) is refused, with the other bad values in the same message."""

from __future__ import annotations

import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from fedmtl.aggregation.rule import NoParams
from fedmtl.registry import option_errors


class ValidationAlias(BaseModel):
    step_size: float = Field(1.0, validation_alias="step-size")


class Choices(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(1.0, validation_alias=AliasChoices("lr", "learning-rate"))


class Ours(NoParams):
    epsilon: float = Field(0.1, ge=0, le=1)


@pytest.mark.parametrize(("model", "values", "field", "value"), [
    (ValidationAlias, {"step-size": 0.5}, "step_size", 0.5),  # the spelling pydantic takes
    (Choices, {"learning-rate": 0.5}, "lr", 0.5),
    (Choices, {"lr": 0.25}, "lr", 0.25),
    (Ours, {"epsilon": 0.5}, "epsilon", 0.5),
])
def test_the_keys_pydantic_takes_are_taken(model, values, field, value):
    instance, lines = option_errors(model, values, "weighting 'x'")
    assert lines == [] and getattr(instance, field) == value


def test_a_key_pydantic_would_drop_is_refused_naming_the_spelling_it_takes():
    """The field's own name, which pydantic ignores when the field has a validation alias (found
    by a review: it passed the check and the run used the default)."""
    instance, lines = option_errors(ValidationAlias, {"step_size": 0.5}, "weighting 'x'")
    assert instance is None
    assert lines == ["weighting 'x' has no parameter 'step_size' (did you mean 'step-size'?); its parameters: "
                     "step-size"]


def test_a_misspelt_key_and_a_bad_value_are_both_reported():
    instance, lines = option_errors(Ours, {"epsilonn": 0.5}, "weighting 'x'")
    assert instance is None and len(lines) == 1
    _, lines = option_errors(Ours, {"epsilon": 5.0, "epsilonn": 0.5}, "weighting 'x'")
    assert len(lines) == 2 and lines[0].startswith("weighting 'x' has no parameter 'epsilonn'")
    assert lines[1].startswith("weighting 'x': epsilon = 5.0: Input should be less than or equal to 1"), lines
