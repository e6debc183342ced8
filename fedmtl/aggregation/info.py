"""How one call of a rule went: :class:`SolveInfo`, returned with every result."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SolveInfo:
    """How a rule's call (or a solver's solve) went.

    Attributes
    ----------
    iterations : int
        Iterations of an iterative solver (0 for closed forms).
    residual : float
        The solver's optimality residual on the caller's input (0 for closed forms); its
        meaning is the solver's (e.g. the α-fair condition's relative residual).
    fallback : str
        ``""`` when the rule computed what its paper defines; otherwise why not (e.g.
        ``"zero-gramian"``, ``"regularised"``, ``"too-few-rows"``, ``"not-converged"``).
        Callers log and count it.
    """

    iterations: int = 0
    residual: float = 0.0
    fallback: str = ""
