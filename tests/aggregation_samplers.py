"""Seeded float64 test matrices for the aggregation property suite.

Every :class:`Sample` is a small matrix of update rows ``G`` (m × p) with what the loss- and
count-based rules read: positive losses, example counts, client ids and task ids (the rows are
(client, task) pairs, so stateful rules key their state by ``"client/task"``). Each family
verifies what it promises when it is built (an ``AssertionError`` otherwise):

- ``normal``: i.i.d. Gaussian rows, several shapes (m < p, m = p, m > p);
- ``rank-deficient``: rank r < m (``U_r diag(s) V_rᵀ``, random orthonormal ``U``, ``V``);
- ``ill-conditioned``: full row rank with singular values from 1 to 1e-13, checked:
  cond(G) = σ_max / σ_min ≥ 1e12;
- ``pareto-stationary``: a planted ``w > 0`` with ``Σ w_i g_i = 0`` (torchjd's
  ``StrongSampler`` construction: rows orthogonal to a positive vector), and the 2-row example of
  issue #18 (``[[1, 0], [-2, 0]]``, on which CAGrad with c ≥ 1 must return 0); checked:
  ``‖Gᵀw‖ ≤ 1e-12 ‖w‖ ‖G‖``;
- ``near-parallel``: rows ``s_i (u + δ ξ_i)``, all in one direction (``s_i > 0``) or in both
  (mixed signs), and issue #18's ``[[1, 0], [-0.999, 0]]``; checked: ``|cos(g_i, g_j)| > 1 − 1e-6``;
- ``non-strongly-stationary``: no ``w > 0`` has ``Gᵀw = 0``. By Stiemke's alternative this holds
  exactly when some ``x`` has ``G x ≥ 0`` and ``G x ≠ 0``; each sample carries such an ``x``
  (``ascent``), checked numerically. Samples: torchjd's ``NonWeakSampler`` construction (a positive
  left singular vector), its ``StrictlyWeakSampler`` construction (Pareto-stationary through a
  ``w ≥ 0`` with zeros, but not strongly), and the full-row-rank ``normal`` and ``near-parallel``
  samples whose certificate is computed (``x = G⁺ 1`` or the common direction ``u``).

Scales (:data:`SCALES`, 1e-12 to 1e12) multiply the rows of any sample (:meth:`Sample.scaled`);
losses, counts and ids do not change with the scale. Constructions follow the descriptions in
torchjd's ``tests/unit/aggregation/_matrix_samplers.py`` (Quinton & Rey); the code is ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from fedmtl.aggregation.objectives import Objectives

F64 = torch.float64

SCALES: tuple[float, ...] = (1e-12, 1e-6, 1.0, 1e6, 1e12)
"""Factors applied to the rows (the losses stay)."""

ILL_CONDITIONED = 1e12
"""Least condition number of an ``ill-conditioned`` sample."""

NEAR_PARALLEL = 1e-6
"""``near-parallel`` rows have ``|cos| > 1 − NEAR_PARALLEL``."""


@dataclass(frozen=True)
class Sample:
    """A test matrix with its per-row statistics.

    Attributes
    ----------
    id : str
        Readable identifier (``family-shape[-variant][@scale]``), shown in failures.
    family : str
        One of :data:`FAMILIES`.
    rows : torch.Tensor
        ``(m, p)`` float64 update rows.
    losses, num_examples : torch.Tensor
        ``(m,)`` positive losses and example counts.
    client_ids, task_ids : tuple
        Distinct ids per row.
    stationary : torch.Tensor or None
        A planted ``w ≥ 0, w ≠ 0`` with ``Gᵀw = 0`` (Pareto-stationary samples).
    ascent : torch.Tensor or None
        A certificate ``x`` with ``G x ≥ 0, G x ≠ 0`` (the sample is not strongly stationary).
    """

    id: str
    family: str
    rows: torch.Tensor
    losses: torch.Tensor
    num_examples: torch.Tensor
    client_ids: tuple[int, ...]
    task_ids: tuple[str, ...]
    stationary: torch.Tensor | None = None
    ascent: torch.Tensor | None = None

    @property
    def m(self) -> int:
        return self.rows.shape[0]

    @property
    def scale(self) -> float:
        """The rows' scale: their root-mean-square norm ``sqrt(tr(G Gᵀ) / m)``."""
        return float(self.rows.pow(2).sum().div(self.m).sqrt())

    def objectives(self, losses: torch.Tensor | None = None) -> Objectives:
        """A fresh batch (no cached Gramian) of these rows and statistics."""
        return Objectives(
            updates=self.rows.clone(),
            losses=(self.losses if losses is None else losses).clone(),
            num_examples=self.num_examples.clone(),
            client_ids=list(self.client_ids),
            task_ids=list(self.task_ids),
        )

    def scaled(self, s: float) -> Sample:
        """Every row multiplied by ``s`` (statistics unchanged)."""
        if s == 1.0:
            return self
        return replace(self, id=f"{self.id}@{s:g}", rows=self.rows * s)

    def row_scaled(self, c: torch.Tensor, label: str) -> Sample:
        """``diag(c) G`` (statistics unchanged); ``label`` names ``c`` in the id."""
        return replace(self, id=f"{self.id}*{label}", rows=c[:, None] * self.rows, stationary=None, ascent=None)

    def permuted(self, order: list[int]) -> Sample:
        """Rows, losses, counts and ids in ``order``."""
        idx = torch.tensor(order)
        return replace(
            self,
            id=f"{self.id}[{','.join(map(str, order))}]",
            rows=self.rows[idx],
            losses=self.losses[idx],
            num_examples=self.num_examples[idx],
            client_ids=tuple(self.client_ids[i] for i in order),
            task_ids=tuple(self.task_ids[i] for i in order),
            stationary=None if self.stationary is None else self.stationary[idx],
        )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal(n: int, gen: torch.Generator, against: torch.Tensor | None = None) -> torch.Tensor:
    """A random ``n × (n − k)`` matrix with orthonormal columns, orthogonal to the ``k``
    orthonormal columns of ``against`` (Gaussian, projected, then QR)."""
    k = 0 if against is None else against.shape[1]
    a = torch.randn(n, n - k, generator=gen, dtype=F64)
    if against is not None:
        a = a - against @ (against.T @ a)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r))[None, :]  # uniform (Haar) when k = 0


def _with_statistics(sample_id: str, family: str, rows: torch.Tensor, seed: int, **extra) -> Sample:
    """Attach seeded positive losses, counts and distinct ids to ``rows``."""
    gen = _generator(10_000 + seed)
    m = rows.shape[0]
    losses = 0.5 + 2.0 * torch.rand(m, generator=gen, dtype=F64)
    counts = torch.randint(5, 200, (m,), generator=gen).to(F64)
    clients = torch.randperm(100, generator=gen)[:m].tolist()
    tasks = tuple(f"task{j}" for j in torch.randperm(m, generator=gen).tolist())
    return Sample(sample_id, family, rows, losses, counts, tuple(clients), tasks, **extra)


def _check_ascent(rows: torch.Tensor, x: torch.Tensor) -> None:
    """``G x ≥ 0`` (to rounding) and ``G x`` clearly nonzero: G is not strongly stationary."""
    gx = rows @ x
    size = float(torch.linalg.matrix_norm(rows, ord=2)) * float(x.norm())
    assert float(gx.min()) >= -1e-12 * size, f"ascent certificate fails: min(Gx) = {float(gx.min()):.3g}"
    assert float(gx.max()) >= 1e-3 * size, f"ascent certificate is ~0: max(Gx) = {float(gx.max()):.3g}"


def normal(m: int, p: int, seed: int) -> Sample:
    """Gaussian rows; with ``m ≤ p`` (full row rank) a certificate ``x = G⁺ 1``."""
    rows = torch.randn(m, p, generator=_generator(seed), dtype=F64)
    ascent = None
    if m <= p:
        ascent = torch.linalg.lstsq(rows, torch.ones(m, 1, dtype=F64)).solution[:, 0]
        _check_ascent(rows, ascent)
    return _with_statistics(f"normal-{m}x{p}", "normal", rows, seed, ascent=ascent)


def rank_deficient(m: int, p: int, rank: int, seed: int) -> Sample:
    """Rank ``rank < m``: ``U_r diag(s) V_rᵀ`` with singular values in [0.5, 2]."""
    assert 0 < rank < m and rank <= p
    gen = _generator(seed)
    u, v = _orthonormal(m, gen), _orthonormal(p, gen)
    s = 0.5 + 1.5 * torch.rand(rank, generator=gen, dtype=F64)
    rows = u[:, :rank] @ torch.diag(s) @ v[:, :rank].T
    assert int(torch.linalg.matrix_rank(rows)) == rank
    return _with_statistics(f"rank-deficient-{m}x{p}r{rank}", "rank-deficient", rows, seed)


def ill_conditioned(m: int, p: int, seed: int, smallest: float = 1e-13) -> Sample:
    """Full row rank, singular values geometric from 1 to ``smallest``; cond ≥ 1e12 checked."""
    assert m <= p
    gen = _generator(seed)
    u, v = _orthonormal(m, gen), _orthonormal(p, gen)
    s = torch.logspace(0, math.log10(smallest), m, dtype=F64)
    rows = u @ torch.diag(s) @ v[:, :m].T
    sv = torch.linalg.svdvals(rows)
    cond = float(sv[0] / sv[-1])
    assert cond >= ILL_CONDITIONED, f"condition number {cond:.3g} < {ILL_CONDITIONED:g}"
    return _with_statistics(f"ill-conditioned-{m}x{p}", "ill-conditioned", rows, seed)


def pareto_stationary(m: int, p: int, rank: int, seed: int) -> Sample:
    """Rows orthogonal to a planted positive ``w`` (so ``Σ w_i g_i = 0``), rank ``rank < m``."""
    assert 0 < rank < m and rank <= p
    gen = _generator(seed)
    w = torch.rand(m, generator=gen, dtype=F64) + 0.1
    basis = _orthonormal(m, gen, against=(w / w.norm())[:, None])
    v = _orthonormal(p, gen)
    s = 0.5 + 1.5 * torch.rand(rank, generator=gen, dtype=F64)
    rows = basis[:, :rank] @ torch.diag(s) @ v[:, :rank].T
    return _stationary_sample(f"pareto-stationary-{m}x{p}r{rank}", rows, w, seed)


def _stationary_sample(sample_id: str, rows: torch.Tensor, w: torch.Tensor, seed: int) -> Sample:
    residual = float((w @ rows).norm())
    assert residual <= 1e-12 * float(w.norm()) * float(torch.linalg.matrix_norm(rows, ord=2))
    return _with_statistics(sample_id, "pareto-stationary", rows, seed, stationary=w)


def near_parallel(m: int, p: int, seed: int, opposite: bool, spread: float = 1e-4) -> Sample:
    """Rows ``s_i (u + spread ξ_i)``: one direction (``s_i > 0``) or both (mixed signs)."""
    gen = _generator(seed)
    u = torch.randn(p, generator=gen, dtype=F64)
    u = u / u.norm()
    lengths = 0.5 + 1.5 * torch.rand(m, generator=gen, dtype=F64)
    if opposite:
        lengths[1::2] *= -1
    rows = lengths[:, None] * (u[None, :] + spread * torch.randn(m, p, generator=gen, dtype=F64))
    _check_near_parallel(rows)
    variant = "opposite" if opposite else "same"
    ascent = None
    if not opposite:
        ascent = u
        _check_ascent(rows, ascent)
    return _with_statistics(f"near-parallel-{variant}-{m}x{p}", "near-parallel", rows, seed, ascent=ascent)


def _check_near_parallel(rows: torch.Tensor) -> None:
    unit = rows / rows.norm(dim=1, keepdim=True)
    cos = (unit @ unit.T).abs()
    assert float(cos.min()) > 1 - NEAR_PARALLEL, f"rows are not near-parallel: min |cos| = {float(cos.min())}"


def non_strong_positive_singular(m: int, p: int, rank: int, seed: int) -> Sample:
    """A positive left singular vector ``u`` (nonzero σ): no ``w ≥ 0, w ≠ 0`` has ``Gᵀw = 0``;
    certificate ``x = Gᵀu`` (``G x = σ² u > 0``)."""
    gen = _generator(seed)
    pos = torch.rand(m, generator=gen, dtype=F64) + 0.1
    pos = pos / pos.norm()
    u = torch.cat([pos[:, None], _orthonormal(m, gen, against=pos[:, None])], dim=1)
    v = _orthonormal(p, gen)
    s = 0.5 + 1.5 * torch.rand(rank, generator=gen, dtype=F64)
    rows = u[:, :rank] @ torch.diag(s) @ v[:, :rank].T
    ascent = rows.T @ pos
    _check_ascent(rows, ascent)
    return _with_statistics(f"non-strong-positive-{m}x{p}r{rank}", "non-strongly-stationary", rows, seed, ascent=ascent)


def non_strong_weakly_stationary(m: int, p: int, rank: int, seed: int) -> Sample:
    """Orthogonal to ``v ≥ 0`` (Pareto-stationary, with zeros in ``v``) and with a left singular
    vector ``v' ≥ 0`` of disjoint support (nonzero σ): no ``w > 0`` has ``Gᵀw = 0``;
    certificate ``x = Gᵀv'`` (``G x = σ² v' ≥ 0``)."""
    assert m >= 3 and 0 < rank <= min(m - 2, p)
    gen = _generator(seed)
    split = m // 2
    order = torch.randperm(m, generator=gen)
    pos = torch.rand(m, generator=gen, dtype=F64) + 0.1
    v, v_prime = torch.zeros(m, dtype=F64), torch.zeros(m, dtype=F64)
    v[order[:split]] = pos[order[:split]] / pos[order[:split]].norm()
    v_prime[order[split:]] = pos[order[split:]] / pos[order[split:]].norm()
    pair = torch.stack([v, v_prime], dim=1)
    u = torch.cat([v_prime[:, None], _orthonormal(m, gen, against=pair)], dim=1)  # orthogonal to v
    right = _orthonormal(p, gen)
    s = 0.5 + 1.5 * torch.rand(rank, generator=gen, dtype=F64)
    rows = u[:, :rank] @ torch.diag(s) @ right[:, :rank].T
    assert float((v @ rows).norm()) <= 1e-12 * float(torch.linalg.matrix_norm(rows, ord=2))
    ascent = rows.T @ v_prime
    _check_ascent(rows, ascent)
    return _with_statistics(
        f"non-strong-weak-{m}x{p}r{rank}", "non-strongly-stationary", rows, seed, stationary=v, ascent=ascent
    )


def _issue_samples() -> list[Sample]:
    """The two 2-row examples of issue #18 (CAGrad c ≥ 1; Aligned-MTL on nearly opposite rows)."""
    pareto = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=F64)
    opposite = torch.tensor([[1.0, 0.0], [-0.999, 0.0]], dtype=F64)
    _check_near_parallel(opposite)
    return [
        _stationary_sample("pareto-stationary-2x2-issue", pareto, torch.tensor([2.0, 1.0], dtype=F64), 901),
        _with_statistics("near-parallel-opposite-2x2-issue", "near-parallel", opposite, 902),
    ]


def _build() -> list[Sample]:
    return [
        normal(2, 6, seed=1),
        normal(4, 7, seed=2),
        normal(7, 4, seed=3),
        rank_deficient(5, 8, 2, seed=4),
        rank_deficient(4, 6, 1, seed=5),
        ill_conditioned(3, 5, seed=6),
        ill_conditioned(5, 8, seed=7),
        pareto_stationary(5, 4, 3, seed=8),
        pareto_stationary(4, 9, 2, seed=9),
        near_parallel(4, 6, seed=10, opposite=False),
        near_parallel(5, 6, seed=11, opposite=True),
        non_strong_positive_singular(5, 3, 3, seed=12),
        non_strong_positive_singular(4, 6, 2, seed=13),
        non_strong_weakly_stationary(5, 4, 2, seed=14),
        *_issue_samples(),
    ]


SAMPLES: tuple[Sample, ...] = tuple(_build())
"""Every base sample (scale 1), built and verified once at import."""

FAMILIES: tuple[str, ...] = (
    "normal",
    "rank-deficient",
    "ill-conditioned",
    "pareto-stationary",
    "near-parallel",
    "non-strongly-stationary",
)
"""The matrix families, in the order above."""


def of(*families: str) -> list[Sample]:
    """The base samples of ``families`` (all of them when none is named)."""
    unknown = set(families) - set(FAMILIES)
    assert not unknown, f"unknown families {unknown}"
    return [s for s in SAMPLES if not families or s.family in families]


def at_scales(samples: list[Sample], scales: tuple[float, ...] = SCALES) -> list[Sample]:
    """Each sample at each scale."""
    return [s.scaled(c) for s in samples for c in scales]


def not_strongly_stationary() -> list[Sample]:
    """Samples with a checked certificate that no ``w > 0`` has ``Gᵀw = 0``."""
    return [s for s in SAMPLES if s.ascent is not None]


def edge_cases() -> list[Sample]:
    """A single row and all-zero rows (well-formedness only)."""
    single = _with_statistics("single-row-1x5", "edge", torch.randn(1, 5, generator=_generator(20), dtype=F64), 20)
    zero = _with_statistics("zero-3x4", "edge", torch.zeros(3, 4, dtype=F64), 21)
    return [single, zero]
