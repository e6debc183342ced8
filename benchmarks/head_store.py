"""Head store at scale: a save, a load and a resume's check with 1,000 to 100,000 clients' files.

A long run of a large federation leaves a head file for every client that ever trained
(``benchmarks/scale.py``'s 3 rounds touch only the 300 sampled). This benchmark fills an
on-disk store (:class:`fedmtl.personalization.DiskHeadStore`) with one round-1 file for each of
N clients (the heads of ``benchmarks/scale.py``'s model: an MLP backbone with two heads over
Synthetic(1, 1)), then measures what a run does with it:

- a client's save of its round-2 heads (the write, and the listing that prunes its old
  versions), the mean over 300 clients;
- a client's load of its newest heads, the mean over 300 clients;
- the check a resume makes before round 3 (:func:`fedmtl.personalization.check_heads`: every
  client's newest file found and read, its run identity compared);
- the store's files and its size on disk (files and folders, in allocated blocks).

The files of the fill are written directly where the store puts them (the same bytes a save
writes), so that filling costs the same whatever the store does on a save.

Usage (from the repository root, inside the venv)::

    python benchmarks/head_store.py                      # 1,000, 10,000 and 100,000 clients
    python benchmarks/head_store.py --sizes 1000 --no-check

Writes ``benchmarks/results/head_store.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmtl.atomic import write_bytes  # noqa: E402
from fedmtl.personalization import DiskHeadStore, RunIdentity, check_heads, head_file  # noqa: E402

SAMPLED = 300
IDENTITY = RunIdentity("bench-run", "bench-config")


def scale_heads() -> dict[str, torch.Tensor]:
    """The heads of ``benchmarks/scale.py``'s model (``configs/synthetic.toml``'s data and model)."""
    from fedmtl.data import load_federation
    from fedmtl.models import build_model
    from fedmtl.validation import load_config

    cfg = load_config(ROOT / "configs/synthetic.toml", ["data.num-clients=100"])
    fed = load_federation(cfg.data, cfg.run.seed)
    model = build_model(cfg.model, fed.input_shape, fed.client_tasks(0))
    return {k: v.detach().clone() for k, v in model.heads_state().items()}


def disk_bytes(root: Path) -> tuple[int, int]:
    """(files, bytes allocated to the files and folders under ``root``)."""
    files, allocated = 0, os.stat(root).st_blocks * 512
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            allocated += os.stat(os.path.join(folder, name)).st_blocks * 512
        files += len(names)
    return files, allocated


def measure(clients: int, heads: dict[str, torch.Tensor], work: Path, check: bool) -> dict:
    """The figures of one store of ``clients`` clients' round-1 files."""
    root = Path(tempfile.mkdtemp(prefix=f"heads-{clients}-", dir=work))
    store = DiskHeadStore(root, IDENTITY)
    data = head_file.encode(heads, IDENTITY.run_id, IDENTITY.config)
    started = time.perf_counter()
    for client in range(clients):
        write_bytes(store.path(client, 1), data)
    fill = time.perf_counter() - started
    sampled = np.random.default_rng(0).choice(clients, size=min(SAMPLED, clients), replace=False).tolist()
    started = time.perf_counter()
    for client in sampled:
        store.save(client, heads, server_round=2)
    save = (time.perf_counter() - started) / len(sampled)
    started = time.perf_counter()
    for client in sampled:
        store.load(client)
    load = (time.perf_counter() - started) / len(sampled)
    check_s = None
    if check:
        trained = {c: 1 for c in range(clients)} | {c: 2 for c in sampled}
        started = time.perf_counter()
        problems = check_heads(store, trained, until_round=2)
        check_s = time.perf_counter() - started
        if problems:
            raise RuntimeError(f"the resume check found {len(problems)} problems, first: {problems[0].message}")
    files, allocated = disk_bytes(root)
    shutil.rmtree(root)
    result = {"clients": clients, "fill_s": fill, "save_ms": save * 1000, "load_ms": load * 1000,
              "check_s": check_s, "files": files, "disk_mb": allocated / 2**20}
    print(f"  {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--no-check", action="store_true", help="leave out the resume check")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-head-store",
                        help="where the stores are built (removed after each size)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    heads = scale_heads()
    results = [measure(n, heads, args.work, not args.no_check) for n in args.sizes]
    write_page(results, " ".join(["python benchmarks/head_store.py", *sys.argv[1:]]), heads)


def write_page(results: list[dict], command: str, heads: dict[str, torch.Tensor]) -> None:
    """``benchmarks/results/head_store.md`` and ``.json``."""
    load = os.getloadavg()
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    parameters = sum(v.numel() for v in heads.values())
    (out / "head_store.json").write_text(json.dumps(
        {"runs": results, "machine": machine, "date": date.today().isoformat(), "load_average_end": load,
         "command": command, "head_parameters": parameters}, indent=2))
    rows = ["| clients with files | a save (ms) | a load (ms) | resume check (s) | files | on disk (MB) |",
            "|---|---|---|---|---|---|"]
    for r in results:
        check = "not run" if r["check_s"] is None else f"{r['check_s']:.1f}"
        rows.append(f"| {r['clients']:,} | {r['save_ms']:.2f} | {r['load_ms']:.2f} | {check} | {r['files']:,} "
                    f"| {r['disk_mb']:.1f} |")
    page = [
        "# Head store at scale", "",
        f"Measured {date.today().isoformat()} on {machine}; load average at the end {load[0]:.1f}.", "",
        f"Command: `{command}` (from the repository root, in the venv).", "",
        f"An on-disk store (`client.head-store = \"disk\"`) holding one round-1 file for each client, the heads "
        f"of `benchmarks/scale.py`'s model ({parameters:,} parameters). A save is a client's round-2 save (the "
        f"write and the pruning of its old versions), a load its newest file's, each the mean over "
        f"{SAMPLED} clients; the resume check is `check_heads` before round 3 (every client's newest file "
        f"found, read and its run identity compared).", "",
        *rows, "",
    ]
    (out / "head_store.md").write_text("\n".join(page))
    print("\n".join(page))


if __name__ == "__main__":
    main()
