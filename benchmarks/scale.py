"""Scale: 1,000 and 10,000 registered clients, 100 sampled per round, heads on disk.

Synthetic(1, 1) with one device per client (``configs/synthetic.toml``'s data, which every
process builds lazily, client by client), an MLP backbone with two heads, 100 clients sampled
for training and 100 for evaluation per round, 3 rounds, heads in the on-disk store. For each
size it measures, in one real ``fedmtl run``:

- the start-up until the first round (Ray, the virtual SuperNodes and the discovery of every
  client's partition id),
- seconds per round (the mean of rounds 2 and 3),
- the peak resident memory of this process and all its descendants (the Ray processes),
- the size of the head store on disk.

Usage (from the repository root, inside the venv)::

    python benchmarks/scale.py                     # 1,000 and 10,000 clients
    python benchmarks/scale.py --sizes 1000        # one size

Writes ``benchmarks/results/scale.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.simulation import PeakRSS  # noqa: E402
from fedmtl.config import virtual_supernodes  # noqa: E402
from fedmtl.validation import load_config  # noqa: E402

SAMPLED = 100


def run_size(clients: int, supernodes: int, out: Path) -> dict:
    """One 3-round run with ``clients`` registered clients and ``engine.supernodes``; its figures."""
    import logging
    import warnings

    from fedmtl.launch.simulation import simulate
    from fedmtl.results import create_run_dir

    fraction = SAMPLED / clients
    cfg = load_config(ROOT / "configs/synthetic.toml", [
        "run.name=scale", "run.rounds=3", f"data.num-clients={clients}",
        f"server.fraction-train={fraction}", f"server.fraction-evaluate={fraction}",
        "client.head-store=disk", "server.connect-timeout=3600", f"engine.supernodes={supernodes}",
    ])
    run_dir = create_run_dir(cfg, out / f"clients-{clients}-{time.strftime('%Y%m%d-%H%M%S')}")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    print(f"{clients} clients, engine.supernodes = {supernodes} ...", flush=True)
    with warnings.catch_warnings(), PeakRSS() as rss:
        warnings.simplefilter("ignore")
        started = time.monotonic()
        simulate(cfg, run_dir, quiet=True)
        wall = time.monotonic() - started
    rounds = pd.read_csv(run_dir / "rounds.csv")
    elapsed = list(rounds["elapsed_s"])
    summary = json.loads((run_dir / "summary.json").read_text())
    heads = sum(f.stat().st_size for f in (run_dir / "heads").glob("*.pt"))
    result = {
        "clients": clients, "supernodes": virtual_supernodes(cfg), "sampled_per_round": int(rounds["sampled"].iloc[0]),
        "startup_s": wall - summary["duration_s"] + elapsed[0] - (elapsed[1] - elapsed[0]),
        "s_per_round": (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1),
        "wall_s": wall, "peak_rss_mb": rss.peak_mb, "head_files": len(list((run_dir / "heads").glob("*.pt"))),
        "heads_on_disk_mb": heads / 2**20,
    }
    print(f"  {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--one-node-per-client", type=int, nargs="*", default=[1000],
                        help="sizes also run with one SuperNode per client (for comparison)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-scale")
    args = parser.parse_args()
    runs = [(n, 0) for n in args.sizes] + [(n, n) for n in args.one_node_per_client]
    results = [run_size(n, nodes, args.out) for n, nodes in runs]
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU"
    (out / "scale.json").write_text(
        json.dumps({"runs": results, "machine": machine, "date": date.today().isoformat()}, indent=2)
    )
    lines = ["| registered clients | virtual SuperNodes | sampled / round | start-up (s) | s / round | peak RSS (MB) "
             "| head files | heads on disk (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['clients']:,} | {r['supernodes']:,} | {r['sampled_per_round']} | {r['startup_s']:.1f} "
                     f"| {r['s_per_round']:.2f} | {r['peak_rss_mb']:.0f} | {r['head_files']} "
                     f"| {r['heads_on_disk_mb']:.1f} |")
    page = [
        "# Scale: registered clients", "",
        f"Measured {date.today().isoformat()} on {machine}.", "",
        "Command: `python benchmarks/scale.py"
        f"{'' if runs == [(1000, 0), (10000, 0), (1000, 1000)] else ' (with options)'}` "
        "(from the repository root, in the venv).", "",
        "Synthetic(1, 1), one device per client, MLP backbone with two heads, 100 clients sampled for "
        "training and 100 for evaluation per round, 3 rounds, heads in the on-disk store. Start-up is "
        "everything before the first round (Ray, the virtual SuperNodes, the discovery of every client); "
        "seconds per round are the mean of rounds 2 and 3; peak RSS is the whole process tree's. "
        "The default (`engine.supernodes = 0`) gives 100 virtual SuperNodes that take turns playing "
        "the clients; the last row gives every client its own SuperNode, for comparison.", "",
        *lines, "",
    ]
    (out / "scale.md").write_text("\n".join(page))
    print("\n".join(page))


if __name__ == "__main__":
    main()
