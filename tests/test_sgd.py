"""fedmtl's SGD equals torch.optim.SGD bit for bit (``tests/test_training_imports.py``
checks why it exists: training never imports torch._dynamo)."""

from __future__ import annotations

import pytest
import torch

from fedmtl.training.sgd import SGD


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 6 * 6, 4))


def _train(model: torch.nn.Module, optimizer, steps: int, skip: torch.Tensor | None = None) -> None:  # noqa: ANN001
    generator = torch.Generator().manual_seed(7)
    for step in range(steps):
        x = torch.randn(5, 1, 8, 8, generator=generator)
        y = torch.randint(0, 4, (5,), generator=generator)
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if skip is not None and step % 2 == 1:
            skip.grad = None  # a parameter without a gradient this step takes no step
        optimizer.step()


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("lr", [0.05, 1e-3])
def test_sgd_equals_torch_sgd_bit_for_bit(lr: float, momentum: float) -> None:
    ours, theirs = _model(0), _model(0)
    _train(ours, SGD(ours.parameters(), lr=lr, momentum=momentum), 12, skip=ours[0].bias)
    _train(theirs, torch.optim.SGD(theirs.parameters(), lr=lr, momentum=momentum), 12, skip=theirs[0].bias)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
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
        ours, theirs = _model(3).to(dtype), _model(3).to(dtype)
        generator = torch.Generator().manual_seed(1)
        optimizers = (SGD(ours.parameters(), lr=0.05, momentum=0.9),
                      torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, foreach=True))
        for _ in range(6):
            x = torch.randn(4, 1, 8, 8, generator=generator, dtype=dtype)
            for model, optimizer in zip((ours, theirs), optimizers, strict=True):
                model.zero_grad(set_to_none=True)
                model(x).square().mean().backward()
                optimizer.step()
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b), dtype


def test_a_parameter_whose_first_gradient_comes_late_starts_its_buffer_then() -> None:
    ours, theirs = _model(4), _model(4)
    late_ours, late_theirs = ours[3].bias, theirs[3].bias
    steps = []
    for model, optimizer, late in ((ours, SGD(ours.parameters(), lr=0.1, momentum=0.5), late_ours),
                                   (theirs, torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.5), late_theirs)):
        generator = torch.Generator().manual_seed(2)
        for step in range(5):
            x = torch.randn(3, 1, 8, 8, generator=generator)
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            if step < 3:
                late.grad = None
            optimizer.step()
        steps.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*steps, strict=True):
        assert torch.equal(a, b)


def test_sgd_refuses_a_computed_tensor_or_a_parameter_twice() -> None:
    leaf = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="leaf"):
        SGD([leaf * 2], lr=0.1)
    with pytest.raises(ValueError, match="twice"):
        SGD([leaf, leaf], lr=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sgd_equals_torch_sgd_on_cuda() -> None:
    ours, theirs = _model(5).cuda(), _model(5).cuda()
    generator = torch.Generator().manual_seed(3)
    optimizers = (SGD(ours.parameters(), lr=0.05, momentum=0.5), torch.optim.SGD(theirs.parameters(), lr=0.05,
                                                                                 momentum=0.5))
    for _ in range(6):
        x = torch.randn(4, 1, 8, 8, generator=generator).cuda()
        for model, optimizer in zip((ours, theirs), optimizers, strict=True):
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
