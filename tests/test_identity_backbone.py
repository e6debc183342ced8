"""``model.backbone = "identity"``: no hidden layer, so with ``model.head-hidden = 0`` every task
is multinomial logistic regression (one linear layer, softmax in the loss), q-FFL's model."""

from __future__ import annotations

import pytest
import torch

from fedmtl.aggregation.registry import make_weighting
from fedmtl.config import ConfigError
from fedmtl.data.federation import Split
from fedmtl.models import BACKBONES, IdentityBackbone, build_model
from fedmtl.tasks import TaskSpec
from fedmtl.training.local import train_local
from fedmtl.validation import load_config

TASKS = [TaskSpec("a", "multiclass", 10), TaskSpec("b", "multiclass", 3)]


def _model(input_shape=(60,), head_hidden: int = 0):
    cfg = load_config(None, ["model.backbone=identity", f"model.head-hidden={head_hidden}", "model.width=7",
                             "model.heads=global"])
    return build_model(cfg.model, input_shape, TASKS)


def test_identity_is_registered_and_has_no_parameters():
    assert BACKBONES.get("identity") is IdentityBackbone
    backbone = IdentityBackbone((2, 3, 5), out_dim=99)  # model.width is ignored
    assert backbone.out_dim == 30 and not list(backbone.parameters())


def test_each_task_has_d_plus_one_times_classes_parameters():
    for shape, d in (((60,), 60), ((2, 3, 4), 24)):
        model = _model(shape)
        assert sum(p.numel() for p in model.parameters()) == sum((d + 1) * t.output_dim for t in TASKS)
        assert sum(p.numel() for p in model.heads["a"].parameters()) == (d + 1) * 10
        assert model.backbone_state() == {}


def test_the_outputs_are_a_linear_map_of_the_flattened_input_and_the_loss_its_softmax_cross_entropy():
    torch.manual_seed(0)
    model = _model((3, 4))
    x = torch.randn(5, 3, 4)
    out = model(x)
    flat = x.reshape(5, 12)
    for task in TASKS:
        weight, bias = model.heads[task.name].weight.detach(), model.heads[task.name].bias.detach()
        expected = torch.stack([
            torch.tensor([sum(float(flat[i, j]) * float(weight[c, j]) for j in range(12)) + float(bias[c])
                          for c in range(task.output_dim)])
            for i in range(5)])
        torch.testing.assert_close(out[task.name], expected, rtol=1e-5, atol=1e-5)
    y = torch.tensor([0, 3, 9, 1, 2])
    logits = out["a"].detach().double()
    by_hand = -(logits.gather(1, y[:, None]).squeeze(1) - logits.exp().sum(1).log()).mean()
    torch.testing.assert_close(TASKS[0].task_kind.loss(out["a"], y).double(), by_hand, rtol=1e-5, atol=1e-6)


def test_a_model_without_backbone_parameters_trains_its_heads():
    torch.manual_seed(1)
    model = _model((6,))
    x = torch.randn(40, 6)
    data = Split(x, {"a": torch.randint(0, 10, (40,)), "b": torch.randint(0, 3, (40,))})
    before = {k: v.clone() for k, v in model.heads_state().items()}
    for track_parts in (False, True):
        result = train_local(model, data, TASKS, make_weighting("mean"), epochs=1, batch_size=10, lr=0.1,
                             momentum=0.0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                             track_parts=track_parts)
        assert result.steps == 4
        assert (result.parts is None) == (not track_parts)
        if track_parts:
            assert tuple(result.parts.shape) == (2, 0)  # the task parts of an empty backbone
    assert all(not torch.equal(before[k], v) for k, v in model.heads_state().items())
    assert set(model.federated_state(global_heads=True)) == {f"heads.{k}" for k in before}


def test_personal_heads_on_a_backbone_without_parameters_are_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["model.backbone=identity"])
    assert str(error.value) == ("model.backbone = 'identity' has no parameters: with model.heads = 'personal' "
                                "nothing would be federated; use model.heads = 'global'")
    assert load_config(None, ["model.backbone=identity", "model.heads=personal", "run.mode=centralized"])
