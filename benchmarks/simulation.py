"""Simulation speed: fedmtl against the pure-PyTorch floor and a vanilla Flower app.

One fixed workload, measured four ways in one run (MultiMNIST, LeNet-style backbone with two
heads, 100 clients, 20 sampled per round, 1 local epoch of SGD, 10 rounds):

(a) ``floor``: the same local steps and the example-weighted average in one process, no Flower;
(b) ``flower``: a minimal vanilla Flower app (``flwr.serverapp.strategy.FedAvg`` over the whole
    model, a ClientApp that trains it) on the Ray Simulation Engine;
(c) ``fedmtl``: ``fedmtl`` with FedAvg across clients and the mean across tasks;
(d) ``fedmtl-fair``: ``fedmtl`` with FairGrad across tasks locally and flat FairGrad across
    (client, task) rows on the server;
(e) ``flower-inprocess``, ``fedmtl-inprocess``, ``fedmtl-fair-inprocess``: (b), (c) and (d) on the
    Simulation Engine's in-process backend (``engine.backend = "inprocess"``: the ClientApps run
    in this process's threads, as many at once as Ray runs actors (one per core), each with one
    intra-op thread (``engine.client-num-cpus = 1``, the default); no Ray).

The configurations run in turn, ``--repeat`` times (floor, flower, fedmtl, fedmtl-fair, floor,
...), and each reports its median. Seconds per round are the mean over the rounds after the
first (``(t_R - t_1) / (R - 1)``, where ``t_r`` is when round r's aggregation finished), so
Ray's start-up and the first visit's imports and data building are left out, as are evaluations
(fedmtl evaluates after the last round only, which is not timed: R is one round fewer there).
Ten rounds give 8 or 9 timed rounds per run: a shared machine's slow spells average out better
than over the 3 or 4 of the 5 rounds measured before 2026-12-01's evening. Each measurement
runs in a fresh interpreter (``--child``), as a user's command does; its peak RSS is the
largest sum of the resident memory of that process and all its descendants (the Ray
processes), sampled every 50 ms from the parent process (a sampler inside the measured process
would take the interpreter's lock from its in-process clients), so every configuration's figure
includes the interpreter, torch and the data.

Usage (from the repository root, inside the venv)::

    python benchmarks/simulation.py            # the full workload
    python benchmarks/simulation.py --quick    # 3 rounds, fewer canvases: a few minutes

Writes ``benchmarks/results/simulation.md`` and ``benchmarks/results/simulation.json``
(``--quick`` writes ``simulation-quick.*``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedmtl.config import ExperimentConfig  # noqa: E402
from fedmtl.validation import load_config  # noqa: E402

BASE = [
    "run.name=bench", "data.dataset=multimnist", "data.num-clients=100", "data.partitioner=iid",
    "model.backbone=lenet", "client.epochs=1", "client.batch-size=32", "client.lr=0.05",
    "client.momentum=0.5", "server.fraction-train=0.2", "server.fraction-evaluate=0.2",
    "engine.client-num-cpus=1",
]
FAIR = ["client.weighting=fairgrad", "server.plan=flat", "server.weighting=fairgrad"]
CONFIGURATIONS = ("floor", "flower", "fedmtl", "fedmtl-fair", "flower-inprocess", "fedmtl-inprocess",
                  "fedmtl-fair-inprocess")
"""The measured configurations (the module's docstring), in the order they run."""


# -- memory ------------------------------------------------------------------------------
def _pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` (``Pss:`` of /proc/<pid>/smaps_rollup): its resident
    pages, each shared page counted as 1/n in each of the n processes that map it."""
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_processes(root: int) -> dict[int, int]:
    """Resident memory (RSS, bytes) of ``root`` and each of its descendants, by process id
    (from /proc; empty when ``root`` does not exist)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            with open(f"/proc/{entry}/statm") as handle:
                rss[int(entry)] = int(handle.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in rss:
            found[pid] = rss[pid]
        stack.extend(children.get(pid, []))
    return found


def tree_memory_bytes(root: int) -> tuple[int, int]:
    """Resident memory (RSS) and proportional set size (PSS) of ``root`` and all its
    descendants, summed (from /proc).

    Summed RSS counts a page that n processes share (a library such as libtorch, mapped by
    every Ray worker) n times; summed PSS counts it once, split among them, so it is what the
    tree adds to the machine's memory."""
    return _summed(tree_processes(root))


def _summed(processes: dict[int, int]) -> tuple[int, int]:
    """Summed RSS (given) and PSS (read now) of ``processes``."""
    total_pss = 0
    for pid in processes:
        try:
            total_pss += _pss_bytes(pid)
        except OSError:  # it ended between the two reads
            pass
    return sum(processes.values()), total_pss


MEASURED = "measured process"
"""The kind of the tree's root (:func:`process_kind`)."""
ACTOR = "ray::ClientAppActor"
"""The kind of the processes of Flower's ClientApp actors (the name Ray gives them)."""


def process_kind(pid: int, root: int) -> str:
    """What process ``pid`` of the tree under ``root`` is, for the memory breakdown: ``"measured
    process"`` for ``root``, a Ray worker by the name Ray gives it (``ray::ClientAppActor``), else
    its program and script (``gcs_server``, ``python log_monitor.py``)."""
    if pid == root:
        return MEASURED
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return "ended"
    if not argv:
        return "unnamed"
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    script = next((Path(a).name for a in argv[1:] if a.endswith(".py")), "")
    return " ".join(filter(None, [Path(argv[0]).name, script]))


def by_kind(processes: dict[int, int], root: int) -> list[dict]:
    """``processes`` (pid → RSS bytes) grouped by :func:`process_kind`, largest first: each kind,
    its number of processes and their summed RSS in MiB."""
    groups: dict[str, list[int]] = {}
    for pid, rss in processes.items():
        groups.setdefault(process_kind(pid, root), []).append(rss)
    return sorted(({"kind": kind, "processes": len(sizes), "rss_mb": sum(sizes) / 2**20}
                   for kind, sizes in groups.items()), key=lambda g: -g["rss_mb"])


class PeakRSS:
    """Samples the resident memory of the process tree under ``root`` (this process when not
    given) in a thread; ``peak_mb`` (summed RSS) and ``peak_pss_mb`` (summed PSS, see
    :func:`tree_memory_bytes`) after the block.

    The sampler reads /proc for every process, which is Python work under the interpreter's
    lock: measuring another process (``root``) keeps that work out of the measured one, whose
    in-process clients would otherwise wait for the lock while it samples."""

    def __init__(self, interval: float = 0.05, root: int | None = None) -> None:
        self.interval, self.peak, self.peak_pss = interval, 0, 0
        self.peak_parts: list[dict] = []
        """The tree at its RSS peak, by kind of process (:func:`by_kind`)."""
        self.root = os.getpid() if root is None else root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            processes = tree_processes(self.root)
            rss, pss = _summed(processes)
            if rss > self.peak:
                self.peak, self.peak_parts = rss, by_kind(processes, self.root)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        """The largest summed RSS sampled, in MiB."""
        return self.peak / 2**20

    @property
    def peak_pss_mb(self) -> float:
        """The largest summed PSS sampled, in MiB."""
        return self.peak_pss / 2**20


def per_round(ends: list[float]) -> float:
    """Mean seconds per round after the first, from the rounds' end times."""
    return (ends[-1] - ends[0]) / (len(ends) - 1)


# -- (a) the floor ---------------------------------------------------------------------------
def floor(cfg: ExperimentConfig, device: str = "cpu") -> list[float]:
    """The same local SGD steps and example-weighted averaging in one process; round end times.

    ``device`` holds the model and each mini-batch (``benchmarks/gpu.py`` runs it on CUDA)."""
    from fedmtl.data import load_federation
    from fedmtl.models import build_model

    torch.set_num_threads(os.cpu_count() or 1)
    fed = load_federation(cfg.data, cfg.run.seed)
    tasks = fed.client_tasks(0)
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model, fed.input_shape, tasks).to(device)
    global_backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    heads = {c: {k: v.clone() for k, v in model.heads.state_dict().items()} for c in range(cfg.data.num_clients)}
    rng = np.random.default_rng(cfg.run.seed)
    sampled_per_round = math.ceil(cfg.server.fraction_train * cfg.data.num_clients)
    data = {c: fed.client(c).train for c in range(cfg.data.num_clients)}
    ends = []
    for server_round in range(1, cfg.run.rounds + 1):
        clients = sorted(rng.choice(cfg.data.num_clients, size=sampled_per_round, replace=False))
        total = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_backbone.items()}
        examples = 0
        for client in clients:
            model.backbone.load_state_dict(global_backbone)
            model.heads.load_state_dict(heads[client])
            optimizer = torch.optim.SGD(model.parameters(), lr=cfg.client.lr, momentum=cfg.client.momentum)
            generator = torch.Generator().manual_seed(int(client) * 1000 + server_round)
            for x, targets in data[client].batches(cfg.client.batch_size, generator):
                x, targets = x.to(device), {k: v.to(device) for k, v in targets.items()}
                optimizer.zero_grad(set_to_none=True)
                outputs = model(x)
                loss = sum(t.task_kind.loss(outputs[t.name], targets[t.name]) for t in tasks) / len(tasks)
                loss.backward()
                optimizer.step()
            n = len(data[client])
            for k, v in model.backbone.state_dict().items():
                total[k] += n * (v - global_backbone[k]).float()
            heads[client] = {k: v.clone() for k, v in model.heads.state_dict().items()}
            examples += n
        global_backbone = {k: global_backbone[k] + (total[k] / examples).to(global_backbone[k].dtype)
                           for k in global_backbone}
        if device != "cpu":
            torch.cuda.synchronize()
        ends.append(time.monotonic())
    return ends


# -- (b) vanilla Flower --------------------------------------------------------------------
def vanilla_apps(cfg: ExperimentConfig, round_done: Callable[[], None],
                 started: Callable[[], None] | None = None, threads: int = 1) -> tuple[Any, Any]:
    """A minimal Flower FedAvg app with the same model, data and steps: ``(server_app,
    client_app)``; ``round_done()`` is called after each round's aggregation, ``started()`` when
    the ServerApp starts; each ClientApp call gives torch ``threads`` intra-op threads.

    The apps are closures: Ray ships the ClientApp to its workers by value.
    """
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    client_app = ClientApp()
    data_cfg, seed, model_cfg = cfg.data, cfg.run.seed, cfg.model
    lr, momentum, batch_size = cfg.client.lr, cfg.client.momentum, cfg.client.batch_size

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        from fedmtl.data import load_federation
        from fedmtl.models import build_model

        torch.set_num_threads(threads)
        client = int(context.node_config["partition-id"])
        fed = load_federation(data_cfg, seed)
        tasks = fed.client_tasks(client)
        model = build_model(model_cfg, fed.input_shape, tasks)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        generator = torch.Generator().manual_seed(client * 1000 + int(msg.content["config"]["server-round"]))
        split = fed.client(client).train
        for x, targets in split.batches(batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            outputs = model(x)
            loss = sum(t.task_kind.loss(outputs[t.name], targets[t.name]) for t in tasks) / len(tasks)
            loss.backward()
            optimizer.step()
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(split)})})
        return Message(content=content, reply_to=msg)

    class TimedFedAvg(FedAvg):
        def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201 - Flower's signature
            result = super().aggregate_train(server_round, replies)
            round_done()
            return result

        def configure_train(self, server_round, arrays, config, grid):  # noqa: ANN001, ANN201
            config["server-round"] = server_round
            return super().configure_train(server_round, arrays, config, grid)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedmtl.data import load_federation
        from fedmtl.models import build_model

        if started is not None:
            started()
        fed = load_federation(data_cfg, seed)
        torch.manual_seed(seed)
        model = build_model(model_cfg, fed.input_shape, fed.client_tasks(0))
        strategy = TimedFedAvg(fraction_train=cfg.server.fraction_train, fraction_evaluate=0.0,
                               min_available_nodes=cfg.data.num_clients)
        strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=cfg.run.rounds,
                       train_config=ConfigRecord())

    return server_app, client_app


def vanilla_flower(cfg: ExperimentConfig, in_process: bool = False) -> list[float]:
    """(b): the vanilla Flower app (:func:`vanilla_apps`) on the Ray Simulation Engine (``in_process``:
    on its in-process backend); round end times."""
    import contextlib

    from flwr.simulation import run_simulation

    from fedmtl.launch.inprocess import use_in_process_backend
    from fedmtl.launch.simulation import backend_config

    ends: list[float] = []
    server_app, client_app = vanilla_apps(cfg, lambda: ends.append(time.monotonic()), threads=1)
    if in_process:  # one client per core at once, one thread each, as fedmtl's in-process runs
        cfg = cfg.with_values(engine={"backend": "inprocess"})
    with use_in_process_backend() if in_process else contextlib.nullcontext():
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=cfg.data.num_clients,
                       backend_config=backend_config(cfg))
    return ends


# -- (c), (d) fedmtl -------------------------------------------------------------------------
def fedmtl_run(cfg: ExperimentConfig, out: Path) -> list[float]:
    """A real ``fedmtl run``; round end times from its ``rounds.csv``."""
    import pandas as pd

    from fedmtl.launch.simulation import simulate
    from fedmtl.results import create_run_dir

    run_dir = create_run_dir(cfg, out)
    start = time.monotonic()
    simulate(cfg, run_dir, quiet=True)
    rounds = pd.read_csv(run_dir / "rounds.csv")
    # elapsed_s counts from the recorder's start; only differences are used
    return [start + float(e) for e in rounds["elapsed_s"]][: cfg.run.rounds - 1]


def measure_once(name: str, work) -> tuple[float, float, int]:  # noqa: ANN001 - returns round end times
    """One run of ``work`` in this process: (seconds per round, wall seconds, rounds timed).
    Its peak RSS is sampled from the parent process (:func:`in_fresh_process`)."""
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.monotonic()
        ends = work()
        wall = time.monotonic() - t0
    return per_round(ends), wall, len(ends) - 1


def measure(work: dict, repeat: int) -> dict:
    """Run every configuration ``repeat`` times, interleaved (floor, flower, fedmtl, fair,
    floor, ...), so that a slow spell of a shared machine hits all of them alike; the median
    seconds per round and the largest peak RSS and PSS of each, with the breakdown of the largest
    RSS peak by kind of process. ``work`` maps each name to a job that returns (seconds per round,
    peak RSS in MB, wall seconds, rounds timed, peak PSS in MB, the peak's breakdown: :func:`by_kind`)."""
    runs: dict[str, list[tuple[float, float, float, int, float, list]]] = {name: [] for name in work}
    for attempt in range(repeat):
        print(f"repeat {attempt + 1} of {repeat}", flush=True)
        for name, job in work.items():
            runs[name].append(job())
    return {
        name: {"s_per_round": float(np.median([r[0] for r in rs])), "repeats_s_per_round": [r[0] for r in rs],
               "rounds_timed": rs[0][3], "wall_s": [r[2] for r in rs], "peak_rss_mb": max(r[1] for r in rs),
               "peak_pss_mb": max(r[4] for r in rs), "peak_rss_parts": max(rs, key=lambda r: r[1])[5]}
        for name, rs in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds and fewer canvases per digit")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-simulation")
    parser.add_argument("--only", nargs="*", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--repeat", type=int, default=3, help="measurements per configuration (median)")
    parser.add_argument("--child", choices=list(CONFIGURATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = ["run.rounds=3", "data.params.pairs-per-digit=2"] if args.quick else ["run.rounds=10"]
    # evaluate only after the last round (which is not timed)
    cfg = load_config(None, [*BASE, *size, "run.evaluate-every=1000"])
    fair = load_config(None, [*BASE, *size, "run.evaluate-every=1000", *FAIR])
    # in-process: one client per core at once, one thread each (the defaults), as on Ray
    here, fair_here = (c.with_values(engine={"backend": "inprocess"}) for c in (cfg, fair))

    def folder(name: str) -> Path:
        return args.out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"

    work = {
        "floor": lambda: floor(cfg),
        "flower": lambda: vanilla_flower(cfg),
        "fedmtl": lambda: fedmtl_run(cfg, folder("fedmtl")),
        "fedmtl-fair": lambda: fedmtl_run(fair, folder("fedmtl-fair")),
        "flower-inprocess": lambda: vanilla_flower(cfg, in_process=True),
        "fedmtl-inprocess": lambda: fedmtl_run(here, folder("fedmtl-inprocess")),
        "fedmtl-fair-inprocess": lambda: fedmtl_run(fair_here, folder("fedmtl-fair-inprocess")),
    }
    if args.child:
        args.child_result.write_text(json.dumps(measure_once(args.child, work[args.child])))
        return
    results = measure({name: in_fresh_process(name, args) for name in args.only}, args.repeat)
    write(results, args.quick, cfg, args.repeat)


def in_fresh_process(name: str, args: argparse.Namespace) -> Callable[[], tuple[float, float, float, int, float, list]]:
    """A job that measures configuration ``name`` in a fresh interpreter (this script with
    ``--child``): what :func:`measure_once` measured there, with the peak RSS of its process
    tree sampled from this process, and that tree at its peak by kind of process."""
    import subprocess
    import tempfile

    def job() -> tuple[float, float, float, int, float, list]:
        with tempfile.TemporaryDirectory(prefix="bench-simulation-") as tmp:
            result = Path(tmp) / "result.json"
            command = [sys.executable, __file__, "--child", name, "--child-result", str(result), "--out", str(args.out)]
            child = subprocess.Popen(command + (["--quick"] if args.quick else []), cwd=ROOT)
            with PeakRSS(root=child.pid) as rss:  # sampled from here: no sampler in the measured process
                code = child.wait()
            if code != 0:
                raise subprocess.CalledProcessError(code, command)
            seconds, wall, rounds = json.loads(result.read_text())
            print(f"  {name}: {seconds:.3f} s/round, peak RSS {rss.peak_mb:.0f} MB, peak PSS {rss.peak_pss_mb:.0f} MB, "
                  f"wall {wall:.1f} s", flush=True)
            return seconds, rss.peak_mb, wall, rounds, rss.peak_pss_mb, rss.peak_parts

    return job


def spread_warning(results: dict) -> list[str]:
    """A warning when a configuration's repeats differ by more than 2× (a busy machine): its
    seconds per round, and the ratios, then say more about the load than about the code."""
    spread = {name: max(r["repeats_s_per_round"]) / min(r["repeats_s_per_round"]) for name, r in results.items()}
    if max(spread.values()) <= 2:
        return []
    worst = max(spread, key=spread.get)
    return [f"**The seconds per round above are not comparable**: the repeats of `{worst}` differ by "
            f"{spread[worst]:.1f}× (the machine's load changed under them); only the peak RSS is.", ""]


def memory_lines(results: dict) -> list[str]:
    """Issue #22 item 3: fedmtl's peak RSS against the floor's, on each backend."""
    floor_mb = results.get("floor", {}).get("peak_rss_mb")
    if not floor_mb:
        return []
    lines = []
    for name in ("fedmtl", "fedmtl-inprocess"):
        if name in results:
            ratio = results[name]["peak_rss_mb"] / floor_mb
            lines.append(f"- `{name}`: peak RSS {results[name]['peak_rss_mb']:.0f} MB = {ratio:.2f}× the floor's "
                         f"({floor_mb:.0f} MB): target ≤ 1.5× **{'met' if ratio <= 1.5 else 'not met'}**.")
            floor_pss, pss = results["floor"].get("peak_pss_mb"), results[name].get("peak_pss_mb")
            if floor_pss and pss:
                lines.append(f"  Its peak PSS (shared pages counted once): {pss:.0f} MB = {pss / floor_pss:.2f}× the "
                             f"floor's ({floor_pss:.0f} MB); for information, the target is on RSS.")
            parts = results[name].get("peak_rss_parts")
            if parts:
                lines.append(f"  At its RSS peak: {parts_text(parts)}.")
                own = sum(p["rss_mb"] for p in parts if p["kind"] in (MEASURED, ACTOR))
                if any(p["kind"] == ACTOR for p in parts):
                    lines.append(f"  The measured process and its ClientApp actors alone: {own:.0f} MB = "
                                 f"{own / floor_mb:.2f}× the floor's (Ray's other processes left out).")
    return ["Memory (each configuration in a fresh process; the largest peak over the repeats; RSS and PSS "
            "summed over the process tree):", "", *lines, ""]


def parts_text(parts: list[dict]) -> str:
    """A peak's breakdown (:func:`by_kind`) in words: ``measured process 573 MB, 2 ×
    ray::ClientAppActor 1074 MB, …``."""
    return ", ".join(f"{'' if p['processes'] == 1 else str(p['processes']) + ' × '}{p['kind']} {p['rss_mb']:.0f} MB"
                     for p in parts)


def speed_lines(results: dict) -> list[str]:
    """Issue #22 item 4 on each backend: fedmtl ≤ 1.2× the floor, the fair variant ≤ 1.3× fedmtl,
    with the range of the repeats behind each median."""
    lines = []
    for suffix, backend in (("", "Ray"), ("-inprocess", "in-process")):
        pairs = ((f"fedmtl{suffix}", "floor", 1.2), (f"fedmtl-fair{suffix}", f"fedmtl{suffix}", 1.3))
        for name, against, target in pairs:
            if name in results and against in results:
                a, b = results[name]["s_per_round"], results[against]["s_per_round"]
                shown = "floor" if against == "floor" else f"`{against}`"
                verdict = "met" if a / b <= target else "not met"
                lines.append(f"- {backend}: `{name}` / {shown} = {a:.3f} / {b:.3f} = {a / b:.2f}: "
                             f"target ≤ {target} **{verdict}**.")
    if not lines:
        return []
    ranges = ", ".join(f"`{name}` {min(r['repeats_s_per_round']):.3f}–{max(r['repeats_s_per_round']):.3f}"
                       for name, r in results.items())
    return ["Seconds per round (medians):", "", *lines, "", f"Range of the repeats (s per round): {ranges}.", ""]


def write(results: dict, quick: bool, cfg: ExperimentConfig, repeat: int) -> None:
    suffix = "-quick" if quick else ""
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    floor_s = results.get("floor", {}).get("s_per_round")
    summary = {
        "floor_s_per_round": floor_s,
        "flower_s_per_round": results.get("flower", {}).get("s_per_round"),
        "fedmtl_s_per_round": results.get("fedmtl", {}).get("s_per_round"),
        "fedmtl_fair_s_per_round": results.get("fedmtl-fair", {}).get("s_per_round"),
        "peak_rss_mb": results.get("fedmtl", {}).get("peak_rss_mb"),
        "runs": results,
        "workload": {"clients": cfg.data.num_clients,
                     "sampled_per_round": math.ceil(cfg.server.fraction_train * cfg.data.num_clients),
                     "rounds": cfg.run.rounds, "repeats": repeat,
                     "pairs_per_digit": cfg.data.params["pairs-per-digit"], "epochs": cfg.client.epochs,
                     "batch_size": cfg.client.batch_size},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "date": date.today().isoformat(),
        "load_average": os.getloadavg()[0],
    }
    (out / f"simulation{suffix}.json").write_text(json.dumps(summary, indent=2))
    rows = ["| configuration | s / round | × floor | × vanilla Flower | peak RSS (MB) | peak PSS (MB) |",
            "|---|---|---|---|---|---|"]
    flower_s = results.get("flower", {}).get("s_per_round")
    for name, r in results.items():
        ratio_floor = f"{r['s_per_round'] / floor_s:.2f}" if floor_s else "–"
        ratio_flower = f"{r['s_per_round'] / flower_s:.2f}" if flower_s else "–"
        rows.append(f"| {name} | {r['s_per_round']:.3f} | {ratio_floor} | {ratio_flower} | {r['peak_rss_mb']:.0f} "
                    f"| {r['peak_pss_mb']:.0f} |")
    page = [
        f"# Simulation speed{' (quick)' if quick else ''}", "",
        f"Measured {summary['date']} on {summary['machine']}, no GPU; load average {summary['load_average']:.1f} "
        "at the end (the machine is shared: seconds per round stretch with its load, peak RSS does not).", "",
        f"Command: `python benchmarks/simulation.py{' --quick' if quick else ''}"
        f"{f' --repeat {repeat}' if repeat != 3 else ''}` (from the repository root, in the venv).", "",
        f"Workload: MultiMNIST ({cfg.data.params['pairs-per-digit']} canvases per digit), "
        "LeNet backbone with two heads, "
        f"{cfg.data.num_clients} clients, {summary['workload']['sampled_per_round']} sampled per round, "
        f"{cfg.client.epochs} local epoch (batch {cfg.client.batch_size}), {cfg.run.rounds} rounds; seconds per round "
        f"after the first, median of {repeat} runs, the configurations in turn (see the script's docstring).", "",
        *rows, "",
        *spread_warning(results),
        *speed_lines(results),
        *memory_lines(results),
    ]
    (out / f"simulation{suffix}.md").write_text("\n".join(page))
    print(f"wrote {out / f'simulation{suffix}.md'}")


if __name__ == "__main__":
    main()
