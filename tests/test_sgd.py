"""fedmtl's SGD equals torch.optim.SGD bit for bit (``tests/test_training_imports.py``
checks why it exists: training never imports torch._dynamo)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fedmtl.training.sgd import SGD


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 6 * 6, 4))


def _batches(steps: int, seed: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 1, 8, 8, generator=generator, dtype=dtype) for _ in range(steps)]


def _train(model: torch.nn.Module, optimizer, batches: list[torch.Tensor],  # noqa: ANN001 - either optimizer
           drop: torch.Tensor | None = None, dropped: Callable[[int], bool] = lambda step: False) -> None:
    """One optimizer step per batch; at the steps ``dropped`` names, ``drop`` has no gradient."""
    for step, x in enumerate(batches):
        model.zero_grad(set_to_none=True)
        model(x.to(next(model.parameters()).device)).square().mean().backward()
        if drop is not None and dropped(step):
            drop.grad = None  # a parameter without a gradient this step takes no step
        optimizer.step()


def _assert_same(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("lr", [0.05, 1e-3])
def test_sgd_equals_torch_sgd_bit_for_bit(lr: float, momentum: float) -> None:
    ours, theirs, batches = _model(0), _model(0), _batches(12, 7)
    every_other = lambda step: step % 2 == 1  # noqa: E731
    _train(ours, SGD(ours.parameters(), lr=lr, momentum=momentum), batches, ours[0].bias, every_other)
    _train(theirs, torch.optim.SGD(theirs.parameters(), lr=lr, momentum=momentum), batches, theirs[0].bias,
           every_other)
    _assert_same(ours, theirs)
    start = _model(0)
    assert not torch.equal(ours[3].weight, start[3].weight)  # it did move


def test_sgd_refuses_a_negative_setting() -> None:
    with pytest.raises(ValueError, match="lr=-0.1"):
        SGD([torch.zeros(2, requires_grad=True)], lr=-0.1)
    with pytest.raises(ValueError, match="momentum=-1"):
        SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=-1)


def test_sgd_equals_torchs_foreach_path_in_float32_and_float64() -> None:
    """On CUDA torch takes its ``foreach`` path; on the CPU it gives the same numbers as ours."""
    for dtype in (torch.float32, torch.float64):
        ours, theirs, batches = _model(3).to(dtype), _model(3).to(dtype), _batches(6, 1, dtype)
        _train(ours, SGD(ours.parameters(), lr=0.05, momentum=0.9), batches)
        _train(theirs, torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, foreach=True), batches)
        _assert_same(ours, theirs)


def test_a_parameter_whose_first_gradient_comes_late_starts_its_buffer_then() -> None:
    ours, theirs, batches = _model(4), _model(4), _batches(5, 2)
    first_three = lambda step: step < 3  # noqa: E731
    _train(ours, SGD(ours.parameters(), lr=0.1, momentum=0.5), batches, ours[3].bias, first_three)
    _train(theirs, torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.5), batches, theirs[3].bias, first_three)
    _assert_same(ours, theirs)


def test_sgd_refuses_a_computed_tensor_or_a_parameter_twice() -> None:
    leaf = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="leaf"):
        SGD([leaf * 2], lr=0.1)
    with pytest.raises(ValueError, match="twice"):
        SGD([leaf, leaf], lr=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sgd_equals_torch_sgd_on_cuda() -> None:
    ours, theirs, batches = _model(5).cuda(), _model(5).cuda(), _batches(6, 3)
    _train(ours, SGD(ours.parameters(), lr=0.05, momentum=0.5), batches)
    _train(theirs, torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.5), batches)
    _assert_same(ours, theirs)
