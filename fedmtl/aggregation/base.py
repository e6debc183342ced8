"""The ``Weighting`` base class and registry: objectives in, weights out."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from fedmtl.aggregation.objectives import Objectives
from fedmtl.registry import Registry

Scope = Literal["client", "server", "both"]


class Weighting:
    """Map a batch of :class:`Objectives` to a weight vector ``w`` of shape ``(m,)``.

    The combined update is ``Σ_i w_i u_i``. Subclasses set the class attributes and
    implement :meth:`weights`.

    Attributes
    ----------
    name : str
        Registry name used in configs.
    scope : {"client", "server", "both"}
        Where the weighting may run: across tasks on a client, across objectives on the
        server, or both.
    needs_updates : bool
        ``True`` when the update rows (or their Gramian) are needed; ``False`` when losses
        and counts suffice (then a client can skip per-task backbone gradients).
    """

    name: ClassVar[str] = ""
    scope: ClassVar[Scope] = "both"
    needs_updates: ClassVar[bool] = False

    def __call__(self, objectives: Objectives) -> torch.Tensor:
        weights = self.weights(objectives)
        if weights.shape != (len(objectives),):
            raise RuntimeError(
                f"weighting '{self.name}' returned shape {tuple(weights.shape)} "
                f"for {len(objectives)} objectives"
            )
        return weights

    def weights(self, objectives: Objectives) -> torch.Tensor:
        """Return the weights (float64, shape ``(m,)``)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (empty for stateless weightings)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""


WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting")


def make_weighting(name: str, **params: Any) -> Weighting:
    """Instantiate the weighting registered as ``name``."""
    return WEIGHTINGS.get(name)(**params)
