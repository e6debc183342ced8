"""The two-objective toy of Liu et al. (CAGrad, NeurIPS 2021), run through fedmtl's own rules.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021, Fig. 1 (the authors' ``toy.py`` in Cranial-XIX/CAGrad); the same losses are
reused by Nash-MTL (Navon et al., ICML 2022, Fig. 1) and FairGrad (Ban & Ji, ICML 2024).
Two losses of ``x = (x1, x2)``, with ``L = 5e-6``::

    f1a = log(max(|0.5(-x1 - 7) - tanh(-x2)|, L)) + 6
    f2a = log(max(|0.5(-x1 + 3) + tanh(-x2) + 2|, L)) + 6
    f1b = ((-x1 + 7)² + 0.1(-x2 - 8)²) / 10 - 20
    f2b = ((-x1 - 7)² + 0.1(-x2 - 8)²) / 10 - 20
    c1 = max(tanh(x2 / 2), 0),  c2 = max(tanh(-x2 / 2), 0)
    f1 = c1 f1a + c2 f1b,       f2 = c1 f2a + c2 f2b

At every step the 2 × 2 Jacobian (one row per loss) is taken with autograd, handed to a fedmtl
rule (:func:`~fedmtl.aggregation.make_rule`) as the update rows of an
:class:`~fedmtl.aggregation.Objectives` batch (with the two losses), and the rule's direction is
set as the gradient of x for an Adam step, as in the authors' code. Pareto set and the test of
"reached the front": :func:`pareto_set`, :func:`front_distance`.

Run from the repository root::

    # all rules, lr 1e-2 and 10,000 steps (the papers' horizon steps x lr; about 13 CPU minutes)
    .venv/bin/python benchmarks/toy.py --lr 1e-2 --steps 10000 --jobs 2
    # the papers' setting, lr 1e-3 and 100,000 steps (CAGrad's cvxpy solve alone: about 50 CPU minutes)
    .venv/bin/python benchmarks/toy.py --rules mean mgda pcgrad cagrad --record-every 100 --name toy-paper-lr

Each writes ``benchmarks/results/<name>.png`` (``--name``, default ``toy``) and its table into
``benchmarks/results/toy.md``, between markers that name it (the rest of the file is kept).
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import shlex
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmtl.aggregation import Objectives, make_rule

RESULTS = Path(__file__).resolve().parent / "results"
LOWER = 5e-6
"""The floor of the log losses' argument (the authors' ``LOWER``)."""

STARTS: tuple[tuple[float, float], ...] = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
"""The three starting points of CAGrad's Fig. 1."""

PAPER_LR = 1e-3
PAPER_STEPS = 100_000
FRONT_TOL = 0.05
"""A final point within this (Euclidean, in x) of the Pareto set has reached the front."""

CONFLICT_TOL = 1e-3
"""A step conflicts with loss i when ``g_i·d < -CONFLICT_TOL ‖g_i‖ max_j ‖g_j‖`` (:func:`step_rate`):
loss i rises to first order along d, by more than rounding and solver ridges (UPGrad's
``reg-eps = 1e-4``) account for."""


@dataclass(frozen=True)
class ToyRule:
    """One panel: a label, the registry name and the rule's parameters."""

    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)


RULES: tuple[ToyRule, ...] = (
    ToyRule("LS (mean)", "mean"),
    ToyRule("MGDA", "mgda"),
    ToyRule("PCGrad", "pcgrad"),
    # the toy's CAGrad: c = 0.5, direction divided by 1 + c (fedmtl's rescale = 2)
    ToyRule("CAGrad (c = 0.5)", "cagrad", {"c": 0.5, "rescale": 2}),
    ToyRule("IMTL-G", "imtl-g"),
    ToyRule("Aligned-MTL", "aligned-mtl"),
    ToyRule("UPGrad", "upgrad"),
    ToyRule("Nash-MTL", "nash-mtl"),
    ToyRule("FairGrad α = 1", "fairgrad", {"alpha": 1.0}),
    ToyRule("FairGrad α = 2", "fairgrad", {"alpha": 2.0}),
    ToyRule("FairGrad α = 5", "fairgrad", {"alpha": 5.0}),
)


def toy_losses(x: torch.Tensor) -> torch.Tensor:
    """The two losses at ``x`` (shape ``(..., 2)``), stacked on the last axis."""
    x1, x2 = x[..., 0], x[..., 1]
    f1a = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER).log() + 6
    f2a = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER).log() + 6
    f1b = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2b = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = torch.clamp(torch.tanh(x2 / 2), min=0)
    c2 = torch.clamp(torch.tanh(-x2 / 2), min=0)
    return torch.stack([c1 * f1a + c2 * f1b, c1 * f2a + c2 * f2b], dim=-1)


def jacobian(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(losses, J)`` at each of the ``n`` points ``x`` (shape ``(n, 2)``): ``losses`` ``(n, 2)`` and
    ``J`` ``(n, 2, 2)`` with ``J[k, i] = ∇f_i(x_k)``, by autograd (one backward pass for all points:
    each point is copied once per loss, and loss i is taken at copy i)."""
    copies = x.detach().repeat_interleave(2, dim=0).requires_grad_(True)
    values = toy_losses(copies).view(-1, 2, 2).diagonal(dim1=1, dim2=2)  # [k, i]: loss i at copy i of x_k
    (rows,) = torch.autograd.grad(values.sum(), copies)
    return values.detach().clone(), rows.view(-1, 2, 2)


# ----------------------------------------------------------------------------------------
# The Pareto set
# ----------------------------------------------------------------------------------------


def _front_x2(lam: np.ndarray) -> np.ndarray:
    """x2 of the Pareto-optimal point of weight ``λ`` on f1 (bisection on ∂/∂x2 of the sum).

    Below x2 = 0 only the quadratic parts count (c1 = 0): ``λ f1 + (1-λ) f2 = c2(x2) (Q - 20)``
    with ``x1 = 14λ - 7`` and ``Q = 19.6 λ(1-λ) + 0.01 (x2 + 8)²``.
    """
    q0 = 19.6 * lam * (1 - lam)

    def slope(x2: np.ndarray) -> np.ndarray:
        c2 = np.tanh(-x2 / 2)
        dc2 = -0.5 * (1 - c2**2)
        return dc2 * (q0 + 0.01 * (x2 + 8) ** 2 - 20) + c2 * 0.02 * (x2 + 8)

    lo, hi = np.full_like(lam, -12.0), np.full_like(lam, -6.0)  # slope(lo) < 0 < slope(hi)
    for _ in range(80):
        mid = (lo + hi) / 2
        negative = slope(mid) < 0
        lo, hi = np.where(negative, mid, lo), np.where(negative, hi, mid)
    return (lo + hi) / 2


def pareto_set(n: int = 1401) -> np.ndarray:
    """``(n, 2)`` points of the Pareto set, from f2's minimiser (λ = 0, x1 = -7) to f1's (x1 = 7).

    A point of the set minimises ``λ f1 + (1-λ) f2`` for some λ ∈ [0, 1]: ``x1 = 14λ - 7`` and
    x2 from :func:`_front_x2`. There the weighted sum is at most -15.1, below anything the upper
    half-plane reaches (≥ log L + 6 ≈ -6.2), so these stationary points are global minimisers.
    """
    lam = np.linspace(0.0, 1.0, n)
    return np.stack([14 * lam - 7, _front_x2(lam)], axis=1)


def mean_minimiser() -> np.ndarray:
    """The minimiser of the mean loss (λ = 1/2): ``(0, x2*)``."""
    return np.array([0.0, float(_front_x2(np.array([0.5]))[0])])


def front_distance(points: np.ndarray, front: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance (in x) from each of ``points`` ``(k, 2)`` to the Pareto set (the
    polyline through ``front``, :func:`pareto_set` by default)."""
    front = pareto_set() if front is None else front
    a, ab = front[:-1], np.diff(front, axis=0)
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    out = np.empty(len(points))
    for lo in range(0, len(points), 256):
        p = points[lo : lo + 256, None, :]
        t = np.clip(((p - a) * ab).sum(-1) / (ab * ab).sum(-1), 0.0, 1.0)
        out[lo : lo + 256] = np.hypot(*np.moveaxis(p - a - t[..., None] * ab, -1, 0)).min(axis=1)
    return out


# ----------------------------------------------------------------------------------------
# One trajectory
# ----------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """One rule from one start.

    Attributes
    ----------
    rule, start, steps, lr, record_every
        What ran: Adam with learning rate ``lr`` for ``steps`` steps, a point kept every
        ``record_every`` steps.
    path : numpy.ndarray
        ``(k, 2)`` kept points: the start, then after every ``record_every`` steps, and the final point.
    final : numpy.ndarray
        The final point.
    losses : numpy.ndarray
        The two losses at the final point.
    conflicts : int
        Steps whose direction d conflicts with a loss (:data:`CONFLICT_TOL`).
    worst_rate : float
        The least :func:`step_rate` over the steps: negative when d raised a loss to first order.
    fallbacks : dict[str, int]
        The rule's ``SolveInfo.fallback`` values and how many steps reported each.
    rule_ms : float
        CPU milliseconds per step spent in the rule (``combine``).
    """

    rule: ToyRule
    start: tuple[float, float]
    steps: int
    lr: float
    record_every: int
    path: np.ndarray
    final: np.ndarray
    losses: np.ndarray
    conflicts: int
    worst_rate: float
    fallbacks: dict[str, int]
    rule_ms: float

    def key(self) -> tuple:
        """What identifies the run (the cache's key)."""
        return run_key(self.rule, self.start, self.steps, self.lr, self.record_every)


def run_key(rule: ToyRule, start: tuple[float, float], steps: int, lr: float, record_every: int) -> tuple:
    """The key of one run: the rule with its parameters, the start and the optimiser's setting."""
    return (rule.label, rule.name, tuple(sorted(rule.params.items())), start, steps, lr, record_every)


def run_batch(
    runs: list[tuple[ToyRule, tuple[float, float]]], steps: int, lr: float, record_every: int = 10
) -> list[Trajectory]:
    """Adam (``lr``) for ``steps`` steps, for each ``(rule, start)``, with the rule's direction as the gradient.

    At each step each rule combines its point's Jacobian rows (``Objectives(updates=J, losses=f)``,
    a fresh rule per run); the direction is set as the gradient and Adam steps, as in the authors'
    code. The runs advance together: one Adam over an ``(n, 2)`` tensor is n independent Adams
    (its update is elementwise), and one backward pass gives every Jacobian.
    """
    combiners = [make_rule(rule.name, **rule.params) for rule, _ in runs]
    x = torch.tensor([start for _, start in runs], dtype=torch.float32, requires_grad=True)  # float32, as theirs
    optimiser = torch.optim.Adam([x], lr=lr)
    n = len(runs)
    paths = [[point] for point in x.detach().numpy().copy()]
    conflicts, worst, busy = [0] * n, [np.inf] * n, [0.0] * n
    fallbacks: list[Counter] = [Counter() for _ in runs]
    for step in range(steps):
        losses, rows = jacobian(x)
        directions = torch.empty_like(x)
        for k, combiner in enumerate(combiners):
            began = time.process_time()
            combined = combiner.combine(Objectives(updates=rows[k], losses=losses[k]))
            busy[k] += time.process_time() - began
            directions[k] = combined.direction.detach()
            if combined.info.fallback:
                fallbacks[k][combined.info.fallback] += 1
            rate = step_rate(rows[k], directions[k])
            worst[k] = min(worst[k], rate)
            conflicts[k] += rate < -CONFLICT_TOL
        optimiser.zero_grad()
        x.grad = directions
        optimiser.step()
        if (step + 1) % record_every == 0 or step + 1 == steps:
            for path, point in zip(paths, x.detach().numpy().copy(), strict=True):
                path.append(point)
    with torch.no_grad():
        final_losses = toy_losses(x).numpy().astype(np.float64)
    finals = x.detach().numpy().copy()
    return [
        Trajectory(
            rule=rule, start=start, steps=steps, lr=lr, record_every=record_every, path=np.array(paths[k]),
            final=finals[k], losses=final_losses[k], conflicts=conflicts[k], worst_rate=worst[k],
            fallbacks=dict(fallbacks[k]), rule_ms=1e3 * busy[k] / max(steps, 1),
        )
        for k, (rule, start) in enumerate(runs)
    ]


def run_one(rule: ToyRule, start: tuple[float, float], steps: int, lr: float, record_every: int = 10) -> Trajectory:
    """One rule from one start (:func:`run_batch` of one run)."""
    return run_batch([(rule, start)], steps, lr, record_every)[0]


def step_rate(rows: torch.Tensor, direction: torch.Tensor) -> float:
    """``min_i g_i·d / (‖g_i‖ max_j ‖g_j‖)`` over the nonzero rows: how fast the loss that gains
    least changes along ``d``, in units of the gradients' scale (negative: it rises)."""
    rows, d = rows.double(), direction.double()
    norms = rows.norm(dim=1)
    live = norms > 0
    if not bool(live.any()):
        return 0.0
    return float(((rows[live] @ d) / (norms[live] * norms.max())).min())


def first_on_front(trajectory: Trajectory, front: np.ndarray) -> int | None:
    """The first kept step within :data:`FRONT_TOL` of the Pareto set (``None``: never)."""
    hits = np.flatnonzero(front_distance(trajectory.path, front) < FRONT_TOL)
    if not len(hits):
        return None
    return min(int(hits[0]) * trajectory.record_every, trajectory.steps)


RULE_COST = {"cagrad": 30.0}
"""Relative cost of a rule's call (CAGrad's cvxpy solve); others count 1. Used to share the runs
between processes."""


def _run_batch(job: tuple[list[tuple[ToyRule, tuple[float, float]]], int, float, int]) -> list[Trajectory]:
    torch.set_num_threads(1)
    return run_batch(*job)


def share(runs: list[tuple[ToyRule, tuple[float, float]]], parts: int) -> list[list[tuple[ToyRule, tuple]]]:
    """``runs`` in at most ``parts`` groups of about equal cost (largest first, to the cheapest group)."""
    groups: list[list] = [[] for _ in range(max(1, parts))]
    costs = [0.0] * len(groups)
    for run in sorted(runs, key=lambda r: -RULE_COST.get(r[0].name, 1.0)):
        k = costs.index(min(costs))
        groups[k].append(run)
        costs[k] += RULE_COST.get(run[0].name, 1.0)
    return [g for g in groups if g]


def run_all(
    rules: tuple[ToyRule, ...], steps: int, lr: float, record_every: int, jobs: int, cache: Path | None = None
) -> dict[tuple[str, int], Trajectory]:
    """Every rule from every start, keyed by ``(label, start index)``, in ``jobs`` processes.

    With ``cache`` (a pickle file), runs found there with the same key are reused and new
    ones are added to it.
    """
    stored: dict[tuple, Trajectory] = {}
    if cache is not None and cache.exists():
        with cache.open("rb") as fh:
            stored = pickle.load(fh)
    runs = [(rule, start) for rule in rules for start in STARTS]
    todo = [run for run in runs if run_key(*run, steps, lr, record_every) not in stored]
    batches = [(group, steps, lr, record_every) for group in share(todo, jobs)]
    if len(batches) > 1:
        with ProcessPoolExecutor(max_workers=len(batches)) as pool:
            for done in pool.map(_run_batch, batches):
                stored.update((t.key(), t) for t in done)
                _save(cache, stored)
    elif batches:
        stored.update((t.key(), t) for t in _run_batch(batches[0]))
        _save(cache, stored)
    return {(rule.label, STARTS.index(s)): stored[run_key(rule, s, steps, lr, record_every)] for rule, s in runs}


def _save(cache: Path | None, stored: dict[tuple, Trajectory]) -> None:
    if cache is not None:
        with cache.open("wb") as fh:
            pickle.dump(stored, fh)


# ----------------------------------------------------------------------------------------
# Figure and table
# ----------------------------------------------------------------------------------------

START_COLOURS = ("tab:red", "tab:orange", "tab:purple")


def plot(results: dict[tuple[str, int], Trajectory], rules: tuple[ToyRule, ...], path: Path, title: str) -> None:
    """One panel per rule: contours of the mean loss, the Pareto set, the three trajectories."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    grid = np.linspace(-11, 11, 301)
    xx, yy = np.meshgrid(grid, grid)
    with torch.no_grad():
        mean = toy_losses(torch.from_numpy(np.stack([xx, yy], axis=-1))).mean(-1).numpy()
    front, star = pareto_set(701), mean_minimiser()
    panels = len(rules) + 1  # one spare panel for the legend
    ncols = panels if panels <= 5 else 4
    nrows = -(-panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.3 * nrows), sharex=True, sharey=True)
    axes = np.atleast_1d(axes).ravel()
    levels = np.arange(-20, 8.1, 2)
    for ax, rule in zip(axes, rules, strict=False):
        contours = ax.contour(xx, yy, mean, levels=levels, cmap="viridis", linewidths=0.8)
        ax.plot(front[:, 0], front[:, 1], color="0.55", linewidth=5, solid_capstyle="butt", zorder=1)
        ax.plot(*star, marker="*", color="k", markersize=11, zorder=6)
        for i, start in enumerate(STARTS):
            t = results[(rule.label, i)]
            ax.plot(t.path[:, 0], t.path[:, 1], color=START_COLOURS[i], linewidth=1.6, zorder=4)
            ax.plot(*start, marker="o", color="k", markersize=6, zorder=5)
            ax.plot(*t.final, marker="X", color=START_COLOURS[i], markeredgecolor="k", markersize=9, zorder=7)
        ax.set_title(rule.label, fontsize=13)
        ax.set_xlim(-11, 11)
        ax.set_ylim(-11, 11)
        ax.set_aspect("equal")
        ax.set_xticks([-10, -5, 0, 5, 10])
        ax.set_yticks([-10, -5, 0, 5, 10])
        ax.tick_params(labelbottom=True, labelleft=True)
    for ax in axes[len(rules) :]:
        ax.axis("off")
    handles = [Line2D([], [], color="0.55", linewidth=5, label="Pareto set")]
    handles += [Line2D([], [], marker="*", color="k", linestyle="", markersize=11, label="minimiser of (f1 + f2) / 2")]
    handles += [Line2D([], [], marker="o", color="k", linestyle="", label="start")]
    handles += [
        Line2D([], [], color=c, marker="X", markeredgecolor="k", label=f"from ({s[0]:g}, {s[1]:g}); X: end")
        for c, s in zip(START_COLOURS, STARTS, strict=True)
    ]
    spare = axes[len(rules)]
    spare.legend(handles=handles, loc="upper center", fontsize=12, frameon=False)
    bar = fig.colorbar(contours, ax=spare, orientation="horizontal", fraction=0.12, pad=0.0, anchor=(0.5, 0.3))
    bar.set_label("(f1 + f2) / 2", fontsize=11)
    fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    _save_png(fig, path, dpi=110)
    plt.close(fig)


def _save_png(fig: Any, path: Path, dpi: int) -> None:
    """Save ``fig`` as a 256-colour PNG (a quarter of the full-colour file; the figure has few colours)."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)


def table(results: dict[tuple[str, int], Trajectory], rules: tuple[ToyRule, ...], front: np.ndarray) -> list[str]:
    """The markdown table: one row per rule and start."""
    lines = [
        "| rule | start | final (x1, x2) | f1 | f2 | distance to Pareto set | on the front | first on it (step) "
        "| conflicting steps | worst rate | fallbacks | rule ms/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rule in rules:
        for i, start in enumerate(STARTS):
            t = results[(rule.label, i)]
            dist = float(front_distance(t.final, front)[0])
            first = first_on_front(t, front)
            fallbacks = ", ".join(f"{k} ×{v}" for k, v in sorted(t.fallbacks.items())) or "-"
            lines.append(
                f"| {rule.label} | ({start[0]:g}, {start[1]:g}) | ({t.final[0]:.3f}, {t.final[1]:.3f}) "
                f"| {t.losses[0]:.3f} | {t.losses[1]:.3f} | {dist:.3g} | {'yes' if dist < FRONT_TOL else '**no**'} "
                f"| {'-' if first is None else f'{first:,}'} | {t.conflicts:,} | {t.worst_rate:.2g} | {fallbacks} "
                f"| {t.rule_ms:.2f} |"
            )
    return lines


def write_markdown(path: Path, name: str, generated: list[str]) -> None:
    """Replace the part of ``path`` generated for ``name`` (between its markers), keeping the
    rest; append it when the file has no such part."""
    begin, end = f"<!-- BEGIN GENERATED: benchmarks/toy.py --name {name} -->", f"<!-- END GENERATED: {name} -->"
    block = "\n".join([begin, *generated, end])
    text = path.read_text() if path.exists() else "# The two-objective toy (CAGrad, NeurIPS 2021)\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        path.write_text(head + block + tail)
    else:
        path.write_text(text.rstrip("\n") + "\n\n" + block + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=PAPER_STEPS, help="Adam steps (the papers: 100,000)")
    parser.add_argument("--lr", type=float, default=PAPER_LR, help="Adam's learning rate (the papers: 1e-3)")
    parser.add_argument("--rules", nargs="*", help="labels or registry names to run (default: all)")
    parser.add_argument("--record-every", type=int, default=10, help="keep every k-th point of a trajectory")
    parser.add_argument("--jobs", type=int, default=1, help="processes (the runs shared by cost)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the figure and toy.md")
    parser.add_argument("--name", default="toy", help="the figure's file stem and the name of the table in toy.md")
    parser.add_argument("--cache", type=Path, help="pickle of finished runs to reuse and extend")
    args = parser.parse_args(argv)
    rules = tuple(r for r in RULES if not args.rules or r.label in args.rules or r.name in args.rules)
    if not rules:
        parser.error(f"--rules: none of {args.rules} is a toy rule ({', '.join(r.name for r in RULES)})")
    began = time.perf_counter()
    results = run_all(rules, args.steps, args.lr, args.record_every, args.jobs, args.cache)
    wall = time.perf_counter() - began
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"Adam, lr {args.lr:g}, {args.steps:,} steps; contours of (f1 + f2) / 2"
    plot(results, rules, args.out / f"{args.name}.png", title)
    front, star = pareto_set(), mean_minimiser()
    shown = list(sys.argv[1:] if argv is None else argv)
    if "--cache" in shown:  # the cache only saves time: the command without it gives the same table
        del shown[shown.index("--cache") : shown.index("--cache") + 2]
    command = shlex.join([".venv/bin/python", "benchmarks/toy.py", *shown])
    generated = [
        "```bash",
        command,
        "```",
        "",
        f"Adam, lr {args.lr:g}, {args.steps:,} steps, float32 x; torch {torch.__version__}, {os.cpu_count()} shared "
        f"CPUs{'' if args.cache else f', {wall:.0f} s wall with {args.jobs} process(es)'}; the last column is the CPU "
        "time of the rule's call. "
        f"Pareto set: x1 ∈ [-7, 7], x2 from {front[:, 1].min():.4f} (ends) to {front[:, 1].max():.4f} (middle); "
        f"minimiser of the mean loss ({star[0]:g}, {star[1]:.4f}). *On the front*: the final point lies within "
        f"{FRONT_TOL} of the Pareto set. *Conflicting step*: the rule's direction d has "
        f"g_i·d < -{CONFLICT_TOL:g} ‖g_i‖ max_j‖g_j‖ for a loss i; *worst rate*: the least g_i·d / (‖g_i‖ max_j‖g_j‖) "
        f"over all steps (negative: d raised a loss to first order).",
        "",
        *table(results, rules, front),
    ]
    write_markdown(args.out / "toy.md", args.name, generated)
    print("\n".join(generated))


if __name__ == "__main__":
    main()
