"""Scale: 1,000 to 100,000 registered clients, 100 sampled per round, heads on disk.

Synthetic(1, 1) with one device per client (``configs/synthetic.toml``'s data, which every
process builds lazily, client by client), an MLP backbone with two heads, 100 clients sampled
for training and 100 for evaluation per round, 3 rounds, heads in the on-disk store, for each
personalization method asked (default FedPer, whose personal state is the heads, and Ditto,
whose personal state is a whole model per client, kept in the same store). For each size and
method it measures, in one real ``fedmtl run``:

- the time to the end of round 1 (Ray, the virtual SuperNodes, the discovery of every client's
  partition id, and round 1 itself),
- seconds per round (the mean of rounds 2 and 3),
- the peak resident memory of this process and all its descendants (the Ray processes),
- the size of the head store on disk.

Usage (from the repository root, inside the venv)::

    python benchmarks/scale.py                     # 1,000, 10,000 and 100,000 clients, fedper and ditto
    python benchmarks/scale.py --sizes 1000 --methods fedper   # one size, one method

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


def run_size(clients: int, supernodes: int, out: Path, method: str = "fedper") -> dict:
    """One 3-round run with ``clients`` registered clients, ``engine.supernodes`` and a
    personalization ``method``; its figures."""
    import logging
    import warnings

    from fedmtl.launch.simulation import simulate
    from fedmtl.results import create_run_dir

    fraction = SAMPLED / clients
    cfg = load_config(ROOT / "configs/synthetic.toml", [
        "run.name=scale", "run.rounds=3", f"data.num-clients={clients}",
        f"server.fraction-train={fraction}", f"server.fraction-evaluate={fraction}",
        "client.head-store=disk", "server.connect-timeout=3600", f"engine.supernodes={supernodes}",
        f"personalization.method={method}",
    ])
    run_dir = create_run_dir(cfg, out / f"{method}-clients-{clients}-{time.strftime('%Y%m%d-%H%M%S')}")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    print(f"{clients} clients, engine.supernodes = {supernodes}, {method} ...", flush=True)
    with warnings.catch_warnings(), PeakRSS() as rss:
        warnings.simplefilter("ignore")
        started = time.monotonic()
        simulate(cfg, run_dir, quiet=True)
        wall = time.monotonic() - started
    rounds = pd.read_csv(run_dir / "rounds.csv")
    elapsed = list(rounds["elapsed_s"])
    summary = json.loads((run_dir / "summary.json").read_text())
    files = [f for f in (run_dir / "heads").rglob("*") if f.is_file()]
    heads = sum(f.stat().st_size for f in files)
    result = {
        "method": method, "clients": clients, "supernodes": virtual_supernodes(cfg),
        "sampled_per_round": int(rounds["sampled"].iloc[0]),
        "first_round_s": wall - summary["duration_s"] + elapsed[0],
        "s_per_round": (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1),
        "wall_s": wall, "peak_rss_mb": rss.peak_mb, "head_files": len(files),
        "heads_on_disk_mb": heads / 2**20,
    }
    print(f"  {result}", flush=True)
    return result


def _flatness(results: list[dict], small: int, large: int) -> list[str]:
    """Per method, the change of peak RSS and seconds per round from ``small`` to ``large``
    registered clients (default virtual SuperNodes), against the 20% target."""
    lines = []
    for method in dict.fromkeys(r["method"] for r in results):
        pick = {r["clients"]: r for r in results if r["method"] == method and r["supernodes"] < r["clients"]}
        if small not in pick or large not in pick:
            continue
        a, b = pick[small], pick[large]
        rss, rate = b["peak_rss_mb"] / a["peak_rss_mb"] - 1, b["s_per_round"] / a["s_per_round"] - 1
        flat = abs(rss) <= 0.2 and abs(rate) <= 0.2
        lines.append(f"- `{method}`, {small:,} → {large:,} clients: peak RSS {rss:+.0%}, seconds per round "
                     f"{rate:+.0%}: **{'flat' if flat else 'not flat'}** within 20%.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--methods", nargs="*", default=["fedper", "ditto"],
                        help="personalization methods (personalization.method)")
    parser.add_argument("--one-node-per-client", type=int, nargs="*", default=[],
                        help="sizes also run with one SuperNode per client (for comparison)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-scale")
    args = parser.parse_args()
    runs = [(n, 0, m) for m in args.methods for n in args.sizes]
    runs += [(n, n, args.methods[0]) for n in args.one_node_per_client]
    started = time.time()
    results = [run_size(n, nodes, args.out, method) for n, nodes, method in runs]
    command = " ".join(["python benchmarks/scale.py", *sys.argv[1:]])
    write_page(results, command, (time.time() - started) / 60)


def write_page(results: list[dict], command: str, minutes: float) -> None:
    """``benchmarks/results/scale.md`` and ``.json`` from the runs' figures."""
    load = os.getloadavg()
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU"
    (out / "scale.json").write_text(json.dumps(
        {"runs": results, "machine": machine, "date": date.today().isoformat(), "load_average_end": load,
         "minutes": minutes, "command": command}, indent=2))
    lines = ["| method | registered clients | virtual SuperNodes | sampled / round | to round 1's end (s) | s / round "
             "| peak RSS (MB) | store files | store on disk (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['clients']:,} | {r['supernodes']:,} | {r['sampled_per_round']} "
                     f"| {r['first_round_s']:.1f} | {r['s_per_round']:.2f} | {r['peak_rss_mb']:.0f} "
                     f"| {r['head_files']} | {r['heads_on_disk_mb']:.1f} |")
    sizes = sorted({r["clients"] for r in results if r["supernodes"] < r["clients"]})
    verdicts = _flatness(results, sizes[-2], sizes[-1]) if len(sizes) > 1 else []
    page = [
        "# Scale: registered clients", "",
        f"Measured {date.today().isoformat()} on {machine}; load average at the end "
        f"{load[0]:.1f} (the machine was shared with other work).", "",
        f"Command: `{command}` (from the repository root, in the venv).", "",
        "Synthetic(1, 1), one device per client, MLP backbone with two heads, 100 clients sampled for "
        "training and 100 for evaluation per round, 3 rounds, the on-disk store (`client.head-store = "
        "\"disk\"`). `fedper` keeps each client's heads there; `ditto` also keeps each client's personal "
        "copy of the whole model there. The time to round 1's end counts from the call (Ray, the virtual "
        "SuperNodes, the discovery of every client, round 1); seconds per round are the mean of rounds 2 and 3; "
        "peak RSS is the whole process tree's. The default (`engine.supernodes = 0`) gives 100 virtual "
        "SuperNodes that take turns playing the clients; a row with as many SuperNodes as clients gives "
        "every client its own, for comparison. Store files and size count what the sampled clients wrote "
        "in 3 rounds (a client's state is written when it first trains).", "",
        *lines, "",
        *(["Flatness (issue target: memory and seconds per round within 20%):", "", *verdicts, ""] if verdicts else []),
    ]
    (out / "scale.md").write_text("\n".join(page))
    print("\n".join(page))


if __name__ == "__main__":
    main()
