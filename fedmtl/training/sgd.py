"""Plain SGD with heavy-ball momentum: the local optimizer of every client.

The step is ``torch.optim.SGD``'s with no weight decay, no dampening and no Nesterov, written out
with the same tensor operations, batched over the parameters as PyTorch's ``foreach`` path
(``_multi_tensor_sgd``, the one it takes on CUDA) batches them. On the CPU its numbers equal
those of ``torch.optim.SGD``'s default (single-tensor) path and of its ``foreach`` path bit for
bit (``tests/test_sgd.py`` compares them in float32 and float64). Batched, a step makes 3 calls
into torch instead of 3 per parameter: less Python, which in-process clients in threads of one
process take turns on.

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
        stepping = [i for i, param in enumerate(self.params) if param.grad is not None]
        if not stepping:
            return
        params = [self.params[i] for i in stepping]
        directions = [param.grad for param in params]
        if self.momentum != 0:
            kept = [i for i in stepping if self.buffers[i] is not None]
            if kept:  # b ← μ b + g
                buffers = [self.buffers[i] for i in kept]
                torch._foreach_mul_(buffers, self.momentum)
                torch._foreach_add_(buffers, [self.params[i].grad for i in kept], alpha=1.0)
            for i in stepping:
                if self.buffers[i] is None:  # b ← g at a parameter's first step
                    self.buffers[i] = self.params[i].grad.detach().clone()
            directions = [self.buffers[i] for i in stepping]
        torch._foreach_add_(params, directions, alpha=-self.lr)
