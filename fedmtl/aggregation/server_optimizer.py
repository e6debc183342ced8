"""The server optimizer: how the combined update moves the global backbone.

The combined update ``d`` (a pseudo-gradient pointing downhill) is applied as

``sgd``
    ``θ ← θ + η d`` (η = ``server.lr``; η = 1 with FedAvg is McMahan et al.'s FedAvg);
``momentum``
    ``v ← μ v + d``, ``θ ← θ + η v`` (FedAvgM: Hsu, Qi & Brown, arXiv 1909.06335, 2019);
``adam``
    ``m ← β₁ m + (1−β₁) d``, ``v ← β₂ v + (1−β₂) d²``, ``θ ← θ + η m / (√v + τ)``
    (FedAdam: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, without bias
    correction, as in the paper).
"""

from __future__ import annotations

from typing import Any

import torch

SERVER_OPTIMIZERS = ("sgd", "momentum", "adam")


class ServerOptimizer:
    """Turn combined updates into steps of the global backbone (see the module docstring).

    Parameters
    ----------
    kind : {"sgd", "momentum", "adam"}
        The rule.
    lr : float
        Server learning rate η.
    momentum : float
        μ of ``momentum``.
    beta1, beta2, adaptivity : float
        β₁, β₂ and τ of ``adam``.
    """

    def __init__(
        self,
        kind: str = "sgd",
        lr: float = 1.0,
        momentum: float = 0.9,
        beta1: float = 0.9,
        beta2: float = 0.99,
        adaptivity: float = 1e-3,
    ) -> None:
        if kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server optimizer '{kind}'; choose one of {SERVER_OPTIMIZERS}")
        self.kind, self.lr, self.momentum = kind, lr, momentum
        self.beta1, self.beta2, self.adaptivity = beta1, beta2, adaptivity
        self.first: torch.Tensor | None = None
        self.second: torch.Tensor | None = None

    def step(self, direction: torch.Tensor) -> torch.Tensor:
        """The change to apply to the global backbone for combined update ``direction``."""
        if self.kind == "sgd":
            return self.lr * direction
        if self.first is None or self.first.shape != direction.shape:
            self.first = torch.zeros_like(direction)
            self.second = torch.zeros_like(direction)
        if self.kind == "momentum":
            self.first = self.momentum * self.first + direction
            return self.lr * self.first
        self.first = self.beta1 * self.first + (1 - self.beta1) * direction
        self.second = self.beta2 * self.second + (1 - self.beta2) * direction.square()
        return self.lr * self.first / (self.second.sqrt() + self.adaptivity)

    def finite(self) -> bool:
        """Whether the moment buffers are finite (a finite update too large for float32 can make
        Adam's second moment infinite, and it would stay so)."""
        return all(bool(torch.isfinite(b).all()) for b in (self.first, self.second) if b is not None)

    def state_dict(self) -> dict[str, Any]:
        """Moment buffers (for checkpoints)."""
        return {"first": self.first, "second": self.second}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.first, self.second = state["first"], state["second"]
