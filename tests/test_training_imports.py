"""Local training in a fresh process imports neither ``torch._dynamo`` nor sympy (about 1.5 s
before a run's first round), and the ways it avoids them give the same numbers bit for bit."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fedmtl.training.local import _pairing, _per_task_backbone

HEAVY = ("torch._dynamo", "sympy")

CODE = """
import sys, torch
from fedmtl.validation import load_config
from fedmtl.data import load_federation
from fedmtl.models import build_model
from fedmtl.aggregation import make_rule
from fedmtl.training import train_local
cfg = load_config(None, ['data.num-clients=2', 'data.params.pairs-per-digit=1'])
fed = load_federation(cfg.data, 0)
tasks = fed.client_tasks(0)
model = build_model(cfg.model, fed.input_shape, tasks)
result = train_local(model, fed.client(0).train, tasks, make_rule({rule!r}), epochs=1, batch_size=16,
                     lr=0.05, momentum=0.5, device=torch.device('cpu'),
                     generator=torch.Generator().manual_seed(0), track_parts={parts})
assert result.steps > 0
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(("rule", "parts"), [("mean", False), ("fairgrad", True)])
def test_local_training_imports_neither_dynamo_nor_sympy(rule: str, parts: bool) -> None:
    code = CODE.format(rule=rule, parts=parts, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _backbone_and_z(seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 8))
    x = torch.randn(6, 1, 6, 6)
    upstream = torch.randn(6, 8)
    return net, x, upstream


def test_the_pairing_is_backward_with_an_upstream_gradient_bit_for_bit() -> None:
    ours, x, upstream = _backbone_and_z(1)
    theirs, _, _ = _backbone_and_z(1)
    _pairing(ours(x), upstream).backward()
    theirs(x).backward(upstream)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert a.grad is not None and torch.equal(a.grad, b.grad)


def test_per_task_rows_equal_autograd_with_grad_outputs_bit_for_bit() -> None:
    net, x, _ = _backbone_and_z(2)
    z = net(x)
    upstream = torch.randn(3, *z.shape)
    params = list(net.parameters())
    rows = _per_task_backbone(z, upstream, params)
    for t in range(3):
        grads = torch.autograd.grad(net(x), params, grad_outputs=upstream[t])
        assert torch.equal(rows[t], torch.cat([g.reshape(-1) for g in grads]))


def test_the_pairing_refuses_an_upstream_of_another_shape() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        _pairing(z, torch.randn(3))
