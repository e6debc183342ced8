"""The in-process backend of Flower's Simulation Engine (``engine.backend = "inprocess"``).

Flower's Simulation Engine (``flwr.simulation.run_simulation``) is a SuperLink's state, a
ServerApp thread and a pool of workers that take each message from the state, hand it with
its node's Context to a *backend* and store the reply. Flower ships one backend, Ray's: each
message travels (serialised) to a Ray actor process, which runs the ClientApp. This module's
:class:`InProcessBackend` runs the same ClientApp on the same message and Context in this
process instead, in the engine's worker threads: as many messages at once as Ray would run
actors (:meth:`fedmtl.config.EngineSection.clients_at_once`: ``engine.num-cpus``, or
``engine.max-concurrent-clients`` × ``engine.client-num-cpus``, else the CPUs this process may
use, divided by ``engine.client-num-cpus``; with ``engine.client-num-gpus`` no more than one GPU
fits, as every client here uses the current CUDA device; and no more than the engine's thread
pool hands out). Everything else is Flower's own: the ServerApp, the Grid, the
LinkState, the engine's queues and workers, the Message API and the error replies.

Clients running side by side give the numbers they give alone, bit for bit: each call works on
its own copy of its message (the server sends every client the same records; one ClientApp
changing them must not change another's), its own model, data, heads and generators;
torch's global CPU generator, which building a model and a few rules draw from, is held by
one thread at a time
(:data:`fedmtl.seeds.TORCH_RNG_LOCK`); and the server orders replies by client before it
aggregates. Torch's intra-op threads are a process-wide setting, ``engine.client-num-cpus``
for every call, so ⌊CPUs / client-num-cpus⌋ calls fill the machine as Ray's actors do.

What it saves is Ray's start-up (a raylet, a GCS and one worker process per client actor,
seconds to tens of seconds and most of the memory on a small machine) and the serialisation
of each message and Context to and from the actors. What it gives up is processes: the
ClientApps share this interpreter (and its lock on Python code; torch's work runs outside it)
and nothing isolates one from another's crash. It suits small and medium runs, sweeps of them
and debugging (a breakpoint in a ClientApp stops in this process; set
``engine.max-concurrent-clients = 1`` to have one call at a time); Ray suits clusters and
clients that must not share a process.

Flower 1.41's engine constructs its backend by name from
``flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend`` whatever backend name it is
given; :func:`use_in_process_backend` puts this backend there for the duration of a run.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import threading
from collections.abc import Callable, Iterator

from flwr.app.message import Context, Message
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig

from fedmtl.launch.client_reply import checked_reply

WORKERS = "inprocess_workers"
"""The backend config's key for the number of ClientApp calls run at once (with ``_``: Flower
turns a backend config key's ``-`` into ``_``)
(:meth:`fedmtl.config.EngineSection.clients_at_once`, set by
:func:`fedmtl.launch.simulation.backend_config`; 1 when absent)."""


class InProcessBackend(Backend):
    """A Simulation Engine backend that runs ClientApp calls in this process, in the engine's
    worker threads, up to :data:`WORKERS` of the backend config at once.

    Parameters
    ----------
    backend_config : BackendConfig
        The engine's backend config: :data:`WORKERS` (1 when absent) is how many calls run at once.
    """

    def __init__(self, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        self.app_fn: Callable[[], ClientApp] | None = None
        self.workers = max(1, int(backend_config.get(WORKERS, 1)))
        self.slots = threading.BoundedSemaphore(self.workers)
        self.busy = 0
        self.count_lock = threading.Lock()

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        """Keep the function that loads the ClientApp."""
        self.app_fn = app_fn

    @property
    def num_workers(self) -> int:
        """The engine starts this many worker threads (:data:`WORKERS`)."""
        return self.workers

    def is_worker_idle(self) -> bool:
        """Whether fewer than :attr:`num_workers` ClientApp calls are running (Flower 1.41's engine
        starts exactly :attr:`num_workers` threads and does not ask; the slots are a safeguard
        for a caller that calls from more threads)."""
        with self.count_lock:
            return self.busy < self.workers

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        """Run the ClientApp on ``message`` with its node's ``context``; return the reply and the
        context. A ClientApp that raises is reported as Flower's Ray backend reports it: a
        :class:`~flwr.clientapp.client_app.ClientAppException` with the error's text, which the
        engine turns into an error reply; so is one that raises ``SystemExit`` or
        ``KeyboardInterrupt`` (on Ray its actor dies and the engine replies an error), and one
        that returns no reply to ``message`` (:func:`~fedmtl.launch.client_reply.checked_reply`)."""
        if self.app_fn is None:
            raise ValueError("InProcessBackend.build() was not called: no ClientApp to run")
        with self.slots:
            with self.count_lock:
                self.busy += 1
            try:  # its own copy of the message: the server sends every client the same records
                # (one ArrayRecord, one ConfigRecord); Ray's actors each get a copy through
                # serialisation, and a ClientApp changing what it received must not change the
                # others' (the arrays' bytes are immutable and shared: the copy costs ~0.2 ms)
                reply = checked_reply(message, self.app_fn()(message=copy.deepcopy(message), context=context))
            except (LoadClientAppError, ClientAppException):
                raise
            except Exception as exc:  # noqa: BLE001 - every ClientApp failure becomes an error reply
                raise ClientAppException(str(exc)) from exc
            except BaseException as exc:  # SystemExit, KeyboardInterrupt from client code: let through, it
                # would end the engine's worker thread (Flower's worker catches Exception only), its
                # message never answered and one worker fewer for the rest of the run
                raise ClientAppException(f"the ClientApp raised {exc!r}") from exc
            finally:
                with self.count_lock:
                    self.busy -= 1
        return reply, context

    def terminate(self) -> None:
        """Nothing to stop."""


@contextlib.contextmanager
def engine_backend(backend: type[Backend]) -> Iterator[None]:
    """Within the block, Flower's Simulation Engine constructs ``backend`` where it constructs
    Ray's (the name ``raybackend.RayBackend``, which Flower 1.41 reads at each run's start)."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    flower_backend = raybackend.RayBackend
    raybackend.RayBackend = backend  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        raybackend.RayBackend = flower_backend  # type: ignore[misc]


def use_in_process_backend() -> contextlib.AbstractContextManager[None]:
    """Within the block, Flower's Simulation Engine runs ClientApps with
    :class:`InProcessBackend` instead of Ray's backend."""
    return engine_backend(InProcessBackend)


SWITCH_INTERVAL_S = 0.001
"""Python's thread switch interval during an in-process run, in seconds (Python's default: 0.005).

The clients, the ServerApp and the engine's threads share one interpreter lock. A thread that
hands the lock over for a short torch operation often finds another thread running Python
code when it wants the lock back, and waits until that thread next lets go: at the latest
after the switch interval. With 1 ms, the waits that interleave every client's Python work
(setting up the model, reading and writing head files, the step's bookkeeping) shrink;
measured on 2 cores, ``benchmarks/simulation.py``'s workload in-process: rounds about 4%
shorter, a gain as large as that hour's noise (``benchmarks/README.md``)."""


@contextlib.contextmanager
def switch_interval(seconds: float = SWITCH_INTERVAL_S) -> Iterator[None]:
    """Within the block, Python switches threads after ``seconds`` (``sys.setswitchinterval``);
    the interval before is put back on exit."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
