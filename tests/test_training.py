"""The local multi-task step: heads get ∇L_t, the backbone gets Σ_t w_t ∇L_t."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from fedmtl.aggregation import Objectives, Weighting, make_weighting
from fedmtl.config import ModelSection
from fedmtl.data import Split
from fedmtl.models import build_model
from fedmtl.tasks import TaskSpec
from fedmtl.training import evaluate, multitask_step, train_local

TASKS = [TaskSpec("a", "multiclass", 4), TaskSpec("b", "binary"), TaskSpec("c", "regression")]


class FixedWeights(Weighting):
    """Test weighting: fixed, non-uniform weights; optionally asks for update rows."""

    name = "fixed"
    needs_updates: ClassVar[bool] = False

    def __init__(self, weights, needs_updates=False):
        self.w = torch.tensor(weights, dtype=torch.float64)
        self.seen: list[Objectives] = []
        self.needs_updates = needs_updates

    def compute(self, objectives):
        self.seen.append(objectives)
        return self.w


def _batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, {
        "a": torch.randint(0, 4, (n,), generator=g),
        "b": torch.randint(0, 2, (n,), generator=g),
        "c": torch.randn(n, generator=g),
    }


@pytest.mark.parametrize("needs_updates", [False, True])
def test_step_gradients_equal_weighted_backprop(needs_updates):
    torch.manual_seed(0)
    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)
    x, y = _batch()
    weights = [0.2, 1.5, 0.7]
    weighting = FixedWeights(weights, needs_updates)

    model.zero_grad()
    step = multitask_step(model, x, y, TASKS, weighting)
    losses = step.losses
    ours = {k: p.grad.clone() for k, p in model.named_parameters()}

    # reference: backbone <- Σ w_t ∇L_t ; head t <- ∇L_t
    model.zero_grad()
    out = model(x)
    ref_losses = [t.task_kind.loss(out[t.name], y[t.name]) for t in TASKS]
    backbone = list(model.backbone.parameters())
    ref_backbone = torch.autograd.grad(sum(wt * loss_t for wt, loss_t in zip(weights, ref_losses, strict=True)),
                                       backbone, retain_graph=True)
    for p, g in zip(backbone, ref_backbone, strict=True):
        name = next(k for k, q in model.named_parameters() if q is p)
        torch.testing.assert_close(ours[name], g, rtol=1e-5, atol=1e-6)
    for t, loss in zip(TASKS, ref_losses, strict=True):
        params = list(model.heads[t.name].parameters())
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        for p, g in zip(params, grads, strict=True):
            name = next(k for k, q in model.named_parameters() if q is p)
            torch.testing.assert_close(ours[name], g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses, torch.stack(ref_losses).detach())
    objectives = weighting.seen[-1]
    assert (objectives.updates is not None) == needs_updates
    if needs_updates:
        assert objectives.updates.shape == (3, 16 * 8)


def test_train_local_learns_and_evaluate_reports_every_task():
    torch.manual_seed(0)
    model = build_model(ModelSection(backbone="mlp", width=16, head_hidden=0), (6,), TASKS)
    x, y = _batch(1, 256)
    y["a"] = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    y["b"] = (x[:, 2] > 0).long()
    y["c"] = x[:, 3] * 2
    data = Split(x, y)
    before = evaluate(model, data, TASKS)
    result = train_local(
        model, data, TASKS, make_weighting("mean"), epochs=30, batch_size=32, lr=0.1,
        momentum=0.5, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
    )
    after = evaluate(model, data, TASKS)
    assert result.steps == 30 * 8 and result.num_examples == 256
    assert result.task_weights == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert after["a"]["accuracy"] > max(0.8, before["a"]["accuracy"])
    assert after["b"]["accuracy"] > 0.9
    assert after["c"]["mse"] < 0.2 * before["c"]["mse"]


def test_evaluate_counts_by_hand():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Identity()
            self.heads = torch.nn.ModuleDict({"a": torch.nn.Identity()})

    data = Split(torch.tensor([[3.0, 1.0], [0.0, 2.0], [5.0, 4.0]]), {"a": torch.tensor([0, 0, 1])})
    result = evaluate(Fixed(), data, [TaskSpec("a", "multiclass", 2)], batch_size=2)
    assert result["a"]["accuracy"] == pytest.approx(1 / 3)


def test_device_choice_falls_back_to_cpu_without_a_gpu(monkeypatch, caplog):
    from fedmtl.training.setup import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("fedmtl.training.setup._warned", False)
    assert select_device("auto").type == "cpu"
    assert select_device("cpu").type == "cpu"
    with caplog.at_level("WARNING", logger="fedmtl"):
        assert select_device("cuda").type == "cpu"
        assert select_device("cuda").type == "cpu"  # every client of a round asks: said once
    assert caplog.text.count("no GPU is visible") == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto").type == "cuda" and select_device("cuda").type == "cuda"
    assert select_device("cpu").type == "cpu"


def test_engine_resources_reach_the_backend_config():
    from fedmtl.launch.simulation import backend_config
    from fedmtl.validation import load_config

    cfg = load_config(None, ["engine.client-num-cpus=2", "engine.client-num-gpus=0.25", "engine.num-cpus=4"])
    backend = backend_config(cfg)
    assert backend["client_resources"] == {"num_cpus": 2, "num_gpus": 0.25}
    assert backend["init_args"]["num_cpus"] == 4


def _learning_data(n=96):
    x, y = _batch(2, n)
    y["a"] = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return Split(x, y)


def _train(weighting, *, gradients="auto", track_parts=False, momentum=0.5, seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=4), (6,), TASKS)
    start = torch.nn.utils.parameters_to_vector(model.backbone.parameters()).detach().clone()
    result = train_local(
        model, _learning_data(), TASKS, weighting, epochs=2, batch_size=16, lr=0.05,
        momentum=momentum, device=torch.device("cpu"), generator=torch.Generator().manual_seed(1),
        gradients=gradients, track_parts=track_parts,
    )
    end = torch.nn.utils.parameters_to_vector(model.backbone.parameters()).detach()
    return model, result, start, end


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("gradients", ["representation", "backbone"])
@pytest.mark.parametrize("name", ["mean", "fairgrad", "db-mtl"])
def test_task_parts_sum_exactly_to_the_whole_update(name, gradients, momentum):
    """Per-task SGD accumulators: Σ_t Δ_t = θ_end − θ_start, the same θ_end as plain SGD."""
    if name == "db-mtl" and gradients == "representation":
        pytest.skip("db-mtl needs parameter rows")
    model, result, start, end = _train(make_weighting(name), gradients=gradients, track_parts=True, momentum=momentum)
    assert result.parts.shape == (3, start.numel())
    torch.testing.assert_close(result.parts.sum(dim=0), end - start, rtol=0, atol=1e-6)
    _, plain, _, plain_end = _train(make_weighting(name), gradients=gradients, track_parts=False, momentum=momentum)
    assert plain.parts is None
    torch.testing.assert_close(end, plain_end, rtol=1e-5, atol=1e-6)
    assert all((result.parts[t].abs() > 0).any() for t in range(3))


def test_backbone_rows_give_the_same_step_as_representation_rows_for_fixed_weights():
    torch.manual_seed(0)
    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)
    x, y = _batch()
    grads = {}
    for mode in ("representation", "backbone"):
        model.zero_grad()
        step = multitask_step(model, x, y, TASKS, FixedWeights([0.2, 1.5, 0.7], True), gradients=mode)
        grads[mode] = [p.grad.clone() for p in model.parameters()]
        if mode == "backbone":
            assert step.contributions.shape[0] == 3
    for a, b in zip(grads["representation"], grads["backbone"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_weightings_on_parameter_rows_refuse_representation_gradients():
    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)
    x, y = _batch()
    with pytest.raises(ValueError, match="needs backbone-parameter rows"):
        multitask_step(model, x, y, TASKS, make_weighting("db-mtl"), gradients="representation")


@pytest.mark.parametrize("gradients", ["representation", "backbone"])
def test_a_client_rule_that_raises_is_named_with_its_error_type(gradients):
    """A client's error reaches the server as its text alone: the text names the rule and the
    exception's type (it was only 'bug in my rule')."""
    from fedmtl.training.local import RuleRaised

    class Buggy(FixedWeights):
        name = "buggy"

        def compute(self, objectives):  # noqa: ANN001, ANN202
            raise ZeroDivisionError("bug in my rule")

    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)
    x, y = _batch()
    with pytest.raises(RuleRaised, match=r"^client.weighting 'buggy' failed: ZeroDivisionError: bug in my rule$"):
        multitask_step(model, x, y, TASKS, Buggy([1.0, 1.0, 1.0], True), gradients=gradients)


def test_a_client_rule_that_reads_updates_it_did_not_declare_is_told_how_to_declare_them():
    """On a client it failed with a bare "'NoneType' object has no attribute 'norm'" (found by a
    newcomer pass); the server's plan already said the same of undeclared losses."""
    from fedmtl.training.local import RuleRaised

    class Reading(FixedWeights):
        name = "reading"

        def compute(self, objectives):  # noqa: ANN001, ANN202
            return objectives.updates.norm(dim=1)

    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)
    x, y = _batch()
    with pytest.raises(RuleRaised) as info:
        multitask_step(model, x, y, TASKS, Reading([1.0, 1.0, 1.0], False), gradients="representation")
    assert str(info.value) == ("client.weighting 'reading' failed: AttributeError: 'NoneType' object has no attribute "
                               "'norm' (rule 'reading' got no update rows: objectives.updates is None; a rule that "
                               "reads them declares needs_updates = True)"), str(info.value)


def test_a_client_rule_with_negative_weights_is_told_in_full_how_to_declare_them():
    """The check of a rule's result says what to change; the client's line keeps all of it (it was
    cut at 160 characters, before 'nonnegative = False)')."""
    from fedmtl.training.local import RuleRaised

    class Negative(FixedWeights):
        name = "a-rule-with-a-long-name-that-returns-negative-weights"

    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)
    x, y = _batch()
    with pytest.raises(RuleRaised) as info:
        multitask_step(model, x, y, TASKS, Negative([2.0, -0.5, -0.5], True), gradients="representation")
    assert str(info.value).endswith("(a rule whose weights may be negative sets nonnegative = False)"), str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_a_diverged_training_is_not_blamed_on_the_client_rule():
    from fedmtl.aggregation.rule import NonFiniteObjectives

    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)
    x, y = _batch()
    with pytest.raises(NonFiniteObjectives, match="the training diverged"):
        multitask_step(model, torch.full_like(x, float("nan")), y, TASKS, make_weighting("mgda"))


def test_every_client_weighting_trains(tmp_path):
    from fedmtl.aggregation import WEIGHTINGS

    for name, cls in WEIGHTINGS.items():
        if cls.scope == "server":
            continue
        _, result, start, end = _train(make_weighting(name))
        assert torch.isfinite(end).all() and not torch.equal(start, end), name
        assert all(torch.isfinite(torch.tensor(v)) for v in result.task_weights.values()), name


def test_measure_losses_is_the_mean_loss_over_the_split():
    from fedmtl.training import measure_losses

    torch.manual_seed(0)
    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)
    data = _learning_data(50)
    losses = measure_losses(model, data, TASKS, batch_size=16, device=torch.device("cpu"))
    with torch.no_grad():
        out = model(data.x)
    for t in TASKS:
        assert losses[t.name] == pytest.approx(float(t.task_kind.loss(out[t.name], data.targets[t.name])), rel=1e-5)


def test_backbone_rows_have_the_gramian_torchjd_autogram_computes():
    """Our batched per-task backbone gradients vs torchjd's autogram engine (Gramian only)."""
    from torchjd.autogram import Engine

    from fedmtl.training.local import _per_task_backbone

    torch.manual_seed(0)
    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)
    x, y = _batch()
    engine = Engine(model.backbone, batch_dim=None)
    z = model.backbone(x)
    losses = torch.stack([t.task_kind.loss(model.heads[t.name](z), y[t.name]) for t in TASKS])
    theirs = engine.compute_gramian(losses)

    z = model.backbone(x)
    z_grads = []
    for t in TASKS:
        zd = z.detach().requires_grad_(True)
        z_grads.append(torch.autograd.grad(t.task_kind.loss(model.heads[t.name](zd), y[t.name]), zd)[0])
    rows = _per_task_backbone(z, torch.stack(z_grads), list(model.backbone.parameters()))
    torch.testing.assert_close(rows @ rows.T, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gradients", ["representation", "backbone"])
def test_client_weights_too_large_for_the_gradients_are_blamed_on_the_rule(gradients):
    """Weights of 1e300 (finite in float64) made the float32 gradient infinite; the next step's
    losses then blamed the training: 'the training diverged (lower the learning rate)' (found
    by a newcomer pass)."""
    from fedmtl.training.local import RuleRaised

    class Huge(FixedWeights):
        name = "huge"

    model = build_model(ModelSection(backbone="mlp", width=8, head_hidden=5), (6,), TASKS)
    x, y = _batch()
    with pytest.raises(RuleRaised) as info:
        multitask_step(model, x, y, TASKS, Huge([1e300, 1.0, 1.0], False), gradients=gradients)
    assert str(info.value) == ("client.weighting 'huge' gave weights [1e+300, 1.0, 1.0] whose weighted task gradients "
                               "are not finite in torch.float32 (weights too large for the gradients)"), str(info.value)
