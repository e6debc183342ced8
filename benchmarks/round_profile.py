"""Where a simulated round's time goes: a timeline of fedmtl's round on Flower's engine.

The workload of ``benchmarks/simulation.py`` (c), with timestamps taken at each hand-over:

- the server pushes the round's messages (``push``);
- the engine's dispatcher queues them, an engine worker starts the call (``call start``; on Ray
  each actor takes two calls at once, ``fedmtl.launch.ray_pipeline``);
- inside the actor (or worker thread), the ClientApp starts and ends (``client start`` /
  ``client end``), and says which worker ran it;
- the call returns to the engine (``call end``);
- the server's ``configure_train`` and ``aggregate_train`` (``server``).

From these it reports, per round after the first (medians): the wait from the push to the
first client call, the ClientApp's time per message, a worker's wait between two clients
(from one ClientApp's end to the next one's start on the same actor or thread), the wait from
the round's last reply to the start of its aggregation, the server's time, and the share of a
core this process (server and engine threads) uses. The timestamps come from wrappers around
Flower's classes, installed only by this script.

With ``--variants fedmtl fair`` it also profiles workload (d), the fair variant (local FairGrad,
flat server FairGrad: each client returns per-task parts of its update), beside (c).

Usage (from the repository root, inside the venv)::

    python benchmarks/round_profile.py               # 12 rounds, (c) on both backends
    python benchmarks/round_profile.py --rounds 30 --variants fedmtl fair

Writes ``benchmarks/results/round_profile.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
from collections.abc import Hashable
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.app import MetricRecord  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

import fedmtl.clients.app as fedmtl_client  # noqa: E402

# -- a ClientApp that reports when it ran (imported by the Ray actors) ---------------------
timed_app = ClientApp()


@timed_app.query()
def _query(msg, context):  # noqa: ANN001, ANN202 - Flower's signature
    return fedmtl_client.query(msg, context)


@timed_app.train()
def _train(msg, context):  # noqa: ANN001, ANN202
    start = time.time()
    reply = fedmtl_client.train(msg, context)
    reply.content["timing"] = MetricRecord({"start": start, "end": time.time(), "pid": os.getpid(),
                                            "thread": threading.get_ident()})
    return reply


@timed_app.evaluate()
def _evaluate(msg, context):  # noqa: ANN001, ANN202
    return fedmtl_client.evaluate_personalized(msg, context)


# -- wrappers in this process -------------------------------------------------------------
class Timeline:
    """Timestamps (``time.time()``) of the events of each round."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pushes: list[float] = []
        # call start, client start, client end, call end, worker (the ClientApp's process and thread:
        # a Ray actor, or an in-process worker thread)
        self.calls: list[tuple[float, float, float, float, Hashable]] = []
        self.server: list[tuple[str, float, float]] = []
        self.cpu: list[tuple[float, float]] = []  # (wall, this process's CPU seconds) after each aggregation


def install(timeline: Timeline) -> None:
    """Wrap the engine's backend call (Ray's and the in-process one), the grid's push and the
    strategy's two steps."""
    import flwr.server.superlink.fleet.vce.backend.raybackend as raybackend
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    import fedmtl.server.strategy as strategy
    from fedmtl.launch.inprocess import InProcessBackend

    for backend in (raybackend.RayBackend, InProcessBackend):
        _time_calls(backend, timeline)
    _time_rest(timeline, InMemoryGrid, strategy)


def _time_calls(backend: type, timeline: Timeline) -> None:
    process_message = backend.process_message

    def timed_process_message(self, message, context):  # noqa: ANN001, ANN202
        start = time.time()
        out, ctx = process_message(self, message, context)
        end = time.time()
        if out.has_content() and "timing" in out.content.metric_records:
            t = out.content["timing"]
            worker = (int(t["pid"]), int(t["thread"]))
            with timeline.lock:
                timeline.calls.append((start, float(t["start"]), float(t["end"]), end, worker))
        return out, ctx

    backend.process_message = timed_process_message


def _time_rest(timeline: Timeline, InMemoryGrid: type, strategy) -> None:  # noqa: ANN001, N803
    push = InMemoryGrid.push_messages

    def timed_push(self, messages):  # noqa: ANN001, ANN202
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            timeline.pushes.append(time.time())
        return push(self, messages)

    InMemoryGrid.push_messages = timed_push
    for name in ("configure_train", "aggregate_train"):
        original = getattr(strategy.FedMTLStrategy, name)

        def timed(self, *args, _original=original, _name=name, **kwargs):  # noqa: ANN001, ANN202
            start = time.time()
            result = _original(self, *args, **kwargs)
            timeline.server.append((_name, start, time.time()))
            if _name == "aggregate_train":
                timeline.cpu.append((time.time(), sum(os.times()[:2])))
            return result

        setattr(strategy.FedMTLStrategy, name, timed)


def summarise(timeline: Timeline) -> dict[str, float]:
    """Medians over the rounds after the first (milliseconds), and the CPU share."""
    pushes = timeline.pushes[1:]
    first = timeline.pushes[1] if len(timeline.pushes) > 1 else 0.0
    calls = [c for c in timeline.calls if c[0] >= first]
    waits = []
    for i, push in enumerate(pushes):
        end = pushes[i + 1] if i + 1 < len(pushes) else float("inf")
        starts = [c[0] for c in calls if push <= c[0] < end]
        if starts:
            waits.append(min(starts) - push)
    server = [e - s for _, s, e in timeline.server if s >= first]
    rounds = len(pushes)
    aggregations = [s for name, s, _ in timeline.server if name == "aggregate_train" and s >= first]
    tails = []
    for i, push in enumerate(pushes):
        end = pushes[i + 1] if i + 1 < len(pushes) else float("inf")
        ends = [c[3] for c in calls if push <= c[0] < end]
        starts = [s for s in aggregations if push <= s < end]
        if ends and starts:
            tails.append(starts[0] - max(ends))
    (w0, c0), (w1, c1) = timeline.cpu[1], timeline.cpu[-1]
    return {
        "idle_between_clients_ms": 1000 * _idle_between_clients(pushes, calls),
        "rounds": rounds,
        "push_to_first_call_ms": 1000 * float(np.median(waits)),
        "client_ms_per_message": 1000 * float(np.median([c[2] - c[1] for c in calls])),
        "server_ms_per_round": 1000 * float(np.sum(server)) / max(rounds, 1),
        "last_reply_to_aggregation_ms": 1000 * float(np.median(tails)),
        "main_process_cores": (c1 - c0) / (w1 - w0),
        "s_per_round": (timeline.cpu[-1][0] - timeline.cpu[0][0]) / (len(timeline.cpu) - 1),
    }


def _idle_between_clients(pushes: list[float], calls: list[tuple]) -> float:
    """Median over rounds and workers of a worker's mean wait from one ClientApp's end to its
    next ClientApp's start within a round (seconds; NaN when no worker ran two clients)."""
    idle = []
    for i, push in enumerate(pushes):
        end = pushes[i + 1] if i + 1 < len(pushes) else float("inf")
        runs: dict[Hashable, list[tuple[float, float]]] = {}
        for c in calls:
            if push <= c[0] < end:
                runs.setdefault(c[4], []).append((c[1], c[2]))
        for spans in runs.values():
            spans.sort()
            if len(spans) > 1:
                idle.append(float(np.mean([b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)])))
    return float(np.median(idle)) if idle else float("nan")


VARIANTS = {"fedmtl": "(c) fedmtl", "fair": "(d) fair"}
"""The workloads of ``benchmarks/simulation.py`` this script can profile, and their column labels."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--backends", nargs="+", default=["ray", "inprocess"], choices=["ray", "inprocess"])
    parser.add_argument("--variants", nargs="+", default=["fedmtl"], choices=list(VARIANTS),
                        help="workloads of benchmarks/simulation.py: fedmtl (c), fair (d)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-round-profile")
    args = parser.parse_args()
    import benchmarks.simulation as bench
    from fedmtl.launch.simulation import simulate
    from fedmtl.results import create_run_dir
    from fedmtl.validation import load_config

    timeline = Timeline()
    install(timeline)
    fedmtl_client.app = timed_app  # what fedmtl.launch.simulation.simulate hands to the engine
    figures = {}
    for variant in args.variants:
        extra = bench.FAIR if variant == "fair" else []
        for backend in args.backends:
            cfg = load_config(None, [*bench.BASE, *extra, f"run.rounds={args.rounds}",
                                     f"run.evaluate-every={args.rounds}", f"engine.backend={backend}"])
            timeline.__init__()  # a fresh timeline for this run (the wrappers keep the object)
            folder = args.out / f"{variant}-{backend}-{time.strftime('%Y%m%d-%H%M%S')}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                simulate(cfg, create_run_dir(cfg, folder), quiet=True)
            figures[(variant, backend)] = summarise(timeline)
    write(figures, cfg, args.variants)


def write(figures: dict[tuple[str, str], dict[str, float]], cfg, variants: list[str]) -> None:  # noqa: ANN001
    sampled = int(np.ceil(cfg.server.fraction_train * cfg.data.num_clients))
    from fedmtl.config import available_cpus

    actors = available_cpus()
    per_actor = sampled / actors
    names = {"ray": f"Ray ({actors} actors, one CPU each)",
             "inprocess": f"in-process ({actors} worker threads, one client and one torch thread each)"}
    label = (lambda v, b: names[b]) if len(variants) == 1 else (lambda v, b: f"{VARIANTS[v]}, {names[b]}")
    flags = "" if variants == ["fedmtl"] else " --variants " + " ".join(variants)
    backends = list(dict.fromkeys(b for _, b in figures))
    if backends != ["ray", "inprocess"]:  # not the default: the command names them
        flags = " --backends " + " ".join(backends) + flags
    f = next(iter(figures.values()))

    def row(label: str, key: str, unit: str, digits: int) -> str:
        return f"| {label} | " + " | ".join(f"{v[key]:.{digits}f} {unit}" for v in figures.values()) + " |"

    page = [
        "# Where a simulated round's time goes", "",
        f"Measured {date.today().isoformat()} on {os.cpu_count()} CPU cores, no GPU (load average "
        f"{os.getloadavg()[0]:.1f} at the end). Command: "
        f"`python benchmarks/round_profile.py --rounds {cfg.run.rounds}{flags}`.", "",
        f"Workload{'s' if len(variants) > 1 else ''} {' and '.join(VARIANTS[v].split()[0] for v in variants)} of "
        f"`benchmarks/simulation.py`: {sampled} training messages per round, on each backend "
        f"of the Simulation Engine in turn. Medians over rounds 2–{f['rounds'] + 1}.", "",
        "| step | " + " | ".join(label(v, b) for v, b in figures) + " |", "|---|" + "---|" * len(figures),
        row("seconds per round", "s_per_round", "s", 3),
        row("push → first client call (the engine's dispatcher)", "push_to_first_call_ms", "ms", 1),
        row("ClientApp, per training message", "client_ms_per_message", "ms", 1),
        row("a worker's wait between two clients (one ClientApp's end → its next one's start)",
            "idle_between_clients_ms", "ms", 1),
        row("last reply → aggregation start (the grid's poll, reading the replies not yet read)",
            "last_reply_to_aggregation_ms", "ms", 1),
        row("server (configure + aggregate), per round", "server_ms_per_round", "ms", 1),
        row("share of a core used by the server process", "main_process_cores", "", 2), "",
        f"On Ray a round is about {per_actor:.0f} messages per actor × (ClientApp + the wait between two "
        "clients: the next call already waits in the actor, which takes two at once) + the "
        "dispatcher's wait + the wait from the last reply to the aggregation (the grid checks every 10 ms; "
        "the server reads each reply as it is pulled, while other clients still train) + the server's time; "
        "the rest is the uneven end of the two actors' queues and the time between rounds (results, checkpoint). "
        "In-process the same holds "
        f"with {actors} worker threads in place of the actors and no serialisation (the server process's share "
        "of a core then includes the clients, and the clients' Python code shares one interpreter lock).", "",
    ]
    if "fair" in variants:
        page += [
            "(d)'s clients make one more backbone backward pass per local step for the exact per-task parts of "
            "their updates (`benchmarks/task_parts.py`), their replies carry one part per task (twice the "
            "floats of (c)'s), and its server solves FairGrad over "
            f"{sampled} × T (client, task) rows.", "",
        ]
    out = ROOT / "benchmarks" / "results" / "round_profile.md"
    out.write_text("\n".join(page))
    print("\n".join(page))


if __name__ == "__main__":
    main()
