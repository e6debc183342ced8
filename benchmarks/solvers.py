"""α-fair solver benchmark: our Newton solver vs torchjd's FairGradWeighting and NashMTL.

For m in {2, 10, 40, 100, 400} objectives and three Gramian families it times one solve
(median over repeats) and measures how well the returned weights satisfy the α-fair
condition ``(A w)_i = w_i^(-1/α)``, with a *scale-free* residual so that methods that
normalise or clip (Nash-MTL) compare fairly:

    v_i = (A w)_i · w_i^(1/α),    residual = ‖v − mean(v)‖ / (√m · mean(v))

(0 iff the condition holds up to a common scale of w). Families, with G of shape (m, 2m):

- ``random``: i.i.d. Gaussian rows;
- ``correlated``: a shared Gaussian row plus 0.1 x independent noise (cosines near 0.99);
- ``rank-deficient``: rank 2 (positive combinations of two directions plus a common part,
  solvable), so torchjd's least squares sees a singular Gramian;
- ``pareto-stationary``: two opposite rows plus random ones: no positive solution exists; we
  report our fallback.

Run from the repository root::

    .venv/bin/pip install -e ".[bench]"      # torchjd's NashMTL needs cvxpy and ecos
    .venv/bin/python benchmarks/solvers.py [--quick]

It writes ``benchmarks/results/solvers.md`` and ``benchmarks/results/solvers.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fedmtl.aggregation import solve_alpha_fair

RESULTS = Path(__file__).resolve().parent / "results"
SLOW_S = 5.0  # a torchjd solve slower than this is not repeated at larger m (same family, α)


def gramian_rows(m: int, family: str, seed: int = 0) -> np.ndarray:
    """The rows G (m x 2m) of one benchmark family."""
    rng = np.random.default_rng(seed)
    p = 2 * m
    if family == "random":
        return rng.normal(size=(m, p))
    if family == "correlated":
        return rng.normal(size=(1, p)) + 0.1 * rng.normal(size=(m, p))
    if family == "rank-deficient":
        base = rng.normal(size=(2, p))
        return rng.uniform(0.1, 1.0, size=(m, 2)) @ base + 2.0 * base.sum(0)
    if family == "pareto-stationary":
        g = rng.normal(size=(m, p))
        g[1] = -0.5 * g[0]
        return g
    raise ValueError(family)


def scale_free_residual(a: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """‖v − mean v‖ / (√m mean v) with v_i = (A w)_i w_i^(1/α); inf if w is not positive."""
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        return float("inf")
    v = (a @ w) * w ** (1.0 / alpha)
    mean = float(v.mean())
    if mean <= 0:
        return float("inf")
    return float(np.linalg.norm(v - mean) / (np.sqrt(len(v)) * mean))


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    """Median seconds of ``fn()`` over ``repeats`` calls, and its last result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run(sizes: list[int], alphas: list[float], families: list[str]) -> list[dict]:
    from torchjd.aggregation import FairGradWeighting

    try:
        from torchjd.aggregation import NashMTL

        NashMTL(n_tasks=2)
        have_nash = True
    except ImportError:
        have_nash = False
    rows = []
    slow: set[tuple[str, float, str]] = set()  # (family, alpha, method) already over SLOW_S
    for family in families:
        for m in sizes:
            g = gramian_rows(m, family)
            a = g @ g.T
            a_t, g_t = torch.from_numpy(a), torch.from_numpy(g)
            for alpha in alphas:
                repeats = 20 if m <= 40 else (5 if m <= 100 else 2)
                t_ours, (w_ours, info) = timed(lambda a=a, alpha=alpha: solve_alpha_fair(a, alpha), repeats)
                row = {
                    "family": family, "m": m, "alpha": alpha,
                    "ours_ms": 1e3 * t_ours, "ours_residual": scale_free_residual(a, w_ours, alpha),
                    "ours_iterations": info.iterations, "ours_fallback": info.fallback or "-",
                }
                if (family, alpha, "fairgrad") not in slow:
                    t_tjd, w_tjd = timed(lambda alpha=alpha, a_t=a_t: FairGradWeighting(alpha)(a_t).numpy(),
                                         max(1, repeats // 5))
                    row["torchjd_fairgrad_ms"] = 1e3 * t_tjd
                    row["torchjd_fairgrad_residual"] = scale_free_residual(a, w_tjd, alpha)
                    row["speedup_vs_fairgrad"] = row["torchjd_fairgrad_ms"] / row["ours_ms"]
                    if t_tjd > SLOW_S:
                        slow.add((family, alpha, "fairgrad"))
                if alpha == 1.0 and have_nash and m <= 100 and (family, alpha, "nash") not in slow:
                    weighting = NashMTL(n_tasks=m).weighting
                    t_nash, w_nash = timed(lambda weighting=weighting, g_t=g_t: weighting(g_t).double().numpy(), 1)
                    row["torchjd_nashmtl_ms"] = 1e3 * t_nash
                    row["torchjd_nashmtl_residual"] = scale_free_residual(a, w_nash, 1.0)
                    if t_nash > SLOW_S:
                        slow.add((family, alpha, "nash"))
                rows.append(row)
                print(markdown_row(row), flush=True)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    """The results table."""
    lines = [
        "# α-fair solver benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}.  ",
        "Times: median wall-clock milliseconds per solve. Residual: scale-free "
        "‖v − v̄‖/(√m v̄), v_i = (Aw)_i w_i^(1/α) (0 = condition exact up to scale). "
        "NashMTL: torchjd's NashMTL weighting (cvxpy/ECOS, ≤20 iterations), α = 1, m ≤ 100.",
        "",
        "| family | m | α | ours ms | ours residual | ours it. | fallback | torchjd FairGrad ms "
        "| torchjd FairGrad residual | speed-up | NashMTL ms | NashMTL residual |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    lines += [markdown_row(r) for r in rows]
    lines += [
        "",
        f"– : not run (NashMTL only at α = 1 and m ≤ 100; a torchjd method whose solve took over "
        f"{SLOW_S:g} s is not run again at larger m for the same family and α). inf: the scale-free "
        "residual is undefined because some (Aw)_i ≤ 0, as happens when no positive solution exists "
        "(pareto-stationary; the weights themselves are finite and positive).",
    ]
    return "\n".join(lines) + "\n"


def markdown_row(r: dict) -> str:
    """One table row; missing measurements are shown as –."""
    fairgrad = (f"{r['torchjd_fairgrad_ms']:.2f} | {r['torchjd_fairgrad_residual']:.1e} "
                f"| {r['speedup_vs_fairgrad']:.0f}x" if "torchjd_fairgrad_ms" in r else "– | – | –")
    nash = (f"{r['torchjd_nashmtl_ms']:.1f} | {r['torchjd_nashmtl_residual']:.1e}"
            if "torchjd_nashmtl_ms" in r else "– | –")
    return (
        f"| {r['family']} | {r['m']} | {r['alpha']:g} | {r['ours_ms']:.2f} | {r['ours_residual']:.1e} "
        f"| {r['ours_iterations']} | {r['ours_fallback']} | {fairgrad} | {nash} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="m <= 40, α in {1, 2}")
    args = parser.parse_args()
    sizes = [2, 10, 40] if args.quick else [2, 10, 40, 100, 400]
    alphas = [1.0, 2.0] if args.quick else [0.5, 1.0, 2.0, 5.0]
    families = ["random", "correlated", "rank-deficient", "pareto-stationary"]
    rows = run(sizes, alphas, families)
    command = "python benchmarks/solvers.py" + (" --quick" if args.quick else "")
    RESULTS.mkdir(exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"solvers{suffix}.md").write_text(markdown(rows, command))
    (RESULTS / f"solvers{suffix}.json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {RESULTS / f'solvers{suffix}.md'}")


if __name__ == "__main__":
    main()
