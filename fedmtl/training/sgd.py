"""Plain SGD with heavy-ball momentum: the local optimizer of every client.

The step is ``torch.optim.SGD``'s (PyTorch's ``_single_tensor_sgd`` with no weight decay, no
dampening, no Nesterov) written out, with the same tensor operations in the same order, so on
the CPU (where PyTorch takes that path) the parameters it produces are equal bit for bit
(``tests/test_sgd.py`` compares them, also with the ``foreach`` path PyTorch takes on CUDA, which
gives the same float32 and float64 numbers on the CPU):

- ``b ← g`` at a parameter's first step, ``b ← μ b + g`` after it (``μ > 0``);
- ``θ ← θ − η b`` (``θ ← θ − η g`` when ``μ = 0``);
- a parameter whose ``.grad`` is ``None`` takes no step.

Why not ``torch.optim.SGD`` itself: its constructor and its ``step`` import ``torch._dynamo``
(through ``torch._disable_dynamo`` and ``torch._dynamo.graph_break``), which costs about one
second in every fresh process, the largest single part of a run's time to its first round
(``benchmarks/results/startup.md``). This class imports nothing beyond torch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class SGD:
    """SGD with momentum over a fixed list of parameters.

    Parameters
    ----------
    params : iterable of torch.Tensor
        The parameters it updates in place (from their ``.grad``).
    lr : float
        η, the step size.
    momentum : float
        μ, the momentum factor (0: plain SGD).
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0) -> None:
        self.params = list(params)
        if any(not param.is_leaf for param in self.params):
            raise ValueError("SGD can only update leaf tensors (parameters), not a computed tensor")
        if len({id(param) for param in self.params}) != len(self.params):
            raise ValueError("SGD was given a parameter twice (torch.optim.SGD warns that this will be an error)")
        if lr < 0 or momentum < 0:
            raise ValueError(f"SGD needs lr >= 0 and momentum >= 0, got lr={lr}, momentum={momentum}")
        self.lr, self.momentum = float(lr), float(momentum)
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        """Move every parameter that has a gradient by one step."""
        for i, param in enumerate(self.params):
            grad = param.grad
            if grad is None:
                continue
            if self.momentum != 0:
                buffer = self.buffers[i]
                if buffer is None:
                    buffer = grad.detach().clone()
                    self.buffers[i] = buffer
                else:
                    buffer.mul_(self.momentum).add_(grad, alpha=1.0)
                grad = buffer
            param.add_(grad, alpha=-self.lr)
