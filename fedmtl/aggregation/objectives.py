"""The ``Objectives`` batch: the input every weighting sees.

An *objective* is one update direction with its statistics: a (client, task) pair, a client,
or a task. A batch of ``m`` objectives carries

- ``updates``: an ``(m, p)`` matrix whose rows are the update directions (or ``None`` when a
  weighting only needs losses, as on a client with ``mean``);
- ``losses``: each objective's loss *before* local training, shape ``(m,)``, float64 on the CPU;
- ``num_examples``: example counts, shape ``(m,)``, float64 on the CPU;
- ``client_ids`` / ``task_ids``: who each row belongs to.

The Gramian ``G Gᵀ`` is computed lazily, once, in float64, on the rows' device (a GPU when
the server aggregates there), and kept on the CPU: it is ``m × m``, and the solvers that read it
run on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

NORMAL_SCALE_MIN = 1e-250
"""Below this mean squared row norm ``tr(A) / m`` the Gramian's smaller entries lose digits to
float64's underflow (:meth:`Objectives.normalised_gramian` rescales the rows first)."""
NORMAL_SCALE_MAX = 1e250
"""Above this ``tr(A) / m`` the Gramian is close to float64's overflow (rows rescaled first)."""


@dataclass
class Objectives:
    """A batch of ``m`` objectives (see the module docstring).

    Parameters
    ----------
    updates : torch.Tensor or None
        ``(m, p)`` update rows.
    losses : torch.Tensor or None
        ``(m,)`` losses before local training.
    num_examples : torch.Tensor or None
        ``(m,)`` example counts.
    client_ids : list[int]
        Client (partition) id of each row; empty when not meaningful.
    task_ids : list[str]
        Task name of each row; empty when rows are whole clients.
    """

    updates: torch.Tensor | None = None
    losses: torch.Tensor | None = None
    num_examples: torch.Tensor | None = None
    client_ids: list[int] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)
    _gramian: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # statistics live on the CPU in float64 whatever the rows' device: the weightings
        # combine them with their own (CPU) state
        if self.losses is not None:
            self.losses = self.losses.detach().to("cpu", torch.float64)
        if self.num_examples is not None:
            self.num_examples = self.num_examples.detach().to("cpu", torch.float64)
        sizes = {
            name: len(value)
            for name, value in (
                ("updates", self.updates),
                ("losses", self.losses),
                ("num_examples", self.num_examples),
                ("client_ids", self.client_ids or None),
                ("task_ids", self.task_ids or None),
            )
            if value is not None
        }
        if not sizes:
            raise ValueError("Objectives needs at least one of updates, losses, num_examples")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Objectives fields disagree on the number of rows: {sizes}")

    def nonfinite(self) -> str:
        """Which of the losses, example counts and update rows hold a NaN or an infinity
        (``""``: none). Rules refuse such objectives: a NaN would otherwise turn into NaN
        weights, or be dropped by a robust rule, without a word."""
        for name, value in (("losses", self.losses), ("num_examples", self.num_examples),
                            ("updates", self.updates)):
            # max |x| is NaN or inf exactly when an entry is: one reduction, 10× faster than isfinite().all()
            if value is not None and value.numel() and not math.isfinite(float(value.abs().amax())):
                rows = sorted({int(i) for i in torch.nonzero(~torch.isfinite(value.reshape(len(value), -1)))[:, 0]})
                return f"the objectives' {name} are not finite (NaN or Inf) in row(s) {rows[:8]}"
        return ""

    def snapshot(self) -> tuple[tuple[str, object, object], ...]:
        """What :meth:`edit_since` compares: each field, and each tensor's version counter
        (which every in-place operation on it, or on a view of it, increments)."""
        fields = [(name, getattr(self, name)) for name in ("updates", "losses", "num_examples", "_gramian")]
        lists = [("client_ids", self.client_ids, tuple(self.client_ids)),
                 ("task_ids", self.task_ids, tuple(self.task_ids))]
        return (*((name, value, getattr(value, "_version", None)) for name, value in fields), *lists)

    def edit_since(self, snapshot: tuple[tuple[str, object, object], ...]) -> str:
        """How the objectives changed since :meth:`snapshot` (``""``: they did not): a field
        replaced, or a tensor or list changed in place. The Gramian computed since (it was
        ``None``) is not a change."""
        for name, value, state in snapshot:
            now = getattr(self, name)
            if name == "_gramian" and value is None:
                continue
            if now is not value:
                return f"replaced the objectives' {name.lstrip('_')}"
            if isinstance(value, torch.Tensor) and value._version != state or isinstance(value, list) and (
                    tuple(value) != state):
                return f"changed the objectives' {name.lstrip('_')} in place"
        return ""

    def __len__(self) -> int:
        for value in (self.updates, self.losses, self.num_examples):
            if value is not None:
                return len(value)
        return len(self.client_ids)

    @property
    def gramian(self) -> torch.Tensor:
        """``G Gᵀ`` in float64 on the CPU, computed on first use (on the rows' device)."""
        if self._gramian is None:
            if self.updates is None:
                raise ValueError("this weighting needs update rows, but none were given")
            g = self.updates.to(torch.float64)
            self._gramian = (g @ g.T).cpu()
        return self._gramian

    def keys(self) -> list[str]:
        """A stable key per row for stateful weightings: ``"client/task"``, task or client."""
        m = len(self)
        if self.client_ids and self.task_ids:
            return [f"{c}/{t}" for c, t in zip(self.client_ids, self.task_ids, strict=True)]
        if self.task_ids:
            return list(self.task_ids)
        if self.client_ids:
            return [str(c) for c in self.client_ids]
        return [str(i) for i in range(m)]

    def normalised_gramian(self) -> tuple[torch.Tensor, float]:
        """``(A / s, s)`` with ``s = tr(A) / m``; ``(A, 0.0)`` when every row is zero.

        Rows so large or so small that ``A`` overflows float64 or loses its digits to underflow
        (``s`` beyond [:data:`NORMAL_SCALE_MIN`, :data:`NORMAL_SCALE_MAX`]) get the same
        normalised Gramian from the rows divided by their largest entry first: a rule built on it
        gives the same weights at every finite scale. ``s`` itself may then round to ``inf``, or
        to the smallest positive float (never to 0, which means zero rows).
        """
        a = self.gramian
        scale = float(torch.trace(a)) / len(a)
        if NORMAL_SCALE_MIN <= scale <= NORMAL_SCALE_MAX and bool(torch.isfinite(a).all()):
            return a / scale, scale
        if self.updates is None:  # a Gramian without its rows: nothing to rescale
            return (a / scale, scale) if 0 < scale < math.inf else (a, 0.0)
        g = self.updates.to(torch.float64).cpu()
        largest = float(g.abs().max()) if g.numel() else 0.0
        if not largest > 0 or not math.isfinite(largest):
            return a, 0.0
        g = g / largest
        b = g @ g.T
        unit = float(torch.trace(b)) / len(b)  # ≥ 1/m: an entry of the rows is ±1
        return b / unit, unit * largest * largest or math.ulp(0.0)
