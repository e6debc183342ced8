"""Two ClientApp calls in flight per Ray actor, so that an actor never waits for the engine.

Flower's Ray backend (1.41) starts one engine worker thread per actor, and a thread hands its
actor the next message only once the previous call's reply is back in this process. Each
call then leaves its actor idle while this process submits it (about 2 ms on a loaded 2-core
machine), while the actor receives it (about 1 ms) and while the reply travels back (about
1.5 ms): about 50 ms a round for an actor that runs 10 clients, out of about 450 ms.

:func:`pipelined_ray_backend` gives each actor :data:`CALLS_PER_ACTOR` engine worker threads
(the backend's pool holds each actor that many times). A Ray actor runs its calls one at a
time, in the order they were submitted, so the next call waits inside the actor and starts as
soon as the current one ends; no more clients run at once than before, on the same actors
with the same resources. Which actor runs which message does not change what a ClientApp
computes (``tests/test_simulation.py`` compares a Ray run with an in-process one bit for
bit). Flower runs its worker threads in a thread pool of at most min(32, CPUs + 4) threads, so
with more actors than that (a cluster) the engine keeps as many calls in flight as before, one
per actor.

What it gives up: a message waiting in an actor is bound to it. Behind a slow call (a
straggler) it waits for that call to end, while another actor may sit idle; Flower's own
backend would have handed it to the first actor free. Replies are ordered by client before
the server aggregates, so this changes only when a reply arrives, never what the run
computes, unless a reply can miss the round's deadline. :func:`calls_per_actor` therefore
keeps Flower's one call per actor for runs that inject stragglers (``faults.straggler``) or
set ``server.timeout`` below its default (an hour): there a client must miss a round only for
its own delay (``tests/test_faults.py``: exactly the drawn straggler misses its round).

Measured side by side (``benchmarks/round_profile.py``, simulation.py's workload (c), 30
rounds, 4 runs each way): 0.466 s a round with one call per actor against 0.440 s with two.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

from fedmtl.config import ROUND_TIMEOUT_S, ExperimentConfig

_GATE = threading.RLock()
"""Held while an engine worker thread submits a call to Ray or starts an actor, while a backend
terminates (Flower's terminate shuts Ray down), and while :func:`shut_down_ray` shuts it down:
no call is submitted while Ray shuts down."""
_CLOSED = threading.Event()
"""Set by :func:`shut_down_ray`: Ray is down for good in this process (an interrupted run)."""
SHUTDOWN_WAIT_S = 5.0
"""How long :func:`shut_down_ray` waits for a thread that holds the gate (a submission)."""


class EngineClosed(BaseException):  # noqa: N818 - named for what happened, as KeyboardInterrupt
    """The engine's backend terminated, or Ray was shut down for good in this process (an
    interrupt): no call reaches Ray any more, and a call in flight ends with this.

    A ``BaseException``, not an ``Exception``: Flower's engine worker logs every ``Exception``
    a call raises, with its traceback, and replies with an error; this one ends the worker's
    thread without a word (after an interrupt nothing waits for its reply any more).
    """


def closed(backend: Any) -> bool:
    """Whether ``backend`` terminated or Ray was shut down for good (:func:`ray_open` refuses)."""
    return _CLOSED.is_set() or getattr(backend, "_engine_closed", False)


@contextlib.contextmanager
def ray_open(backend: Any = None) -> Iterator[None]:
    """Within the block this thread may use Ray (submit a call, start an actor): Ray is not
    shut down meanwhile.

    Raises
    ------
    EngineClosed
        ``backend`` terminated (:func:`close_backend`) or Ray was shut down by
        :func:`shut_down_ray`: a submission now would start a new local Ray instance
        (``.remote`` calls ``ray.init``), or, while Ray shuts down, end the whole process
        with exit code 1 ("The core worker has already been shutdown").
    """
    with _GATE:
        if closed(backend):
            raise EngineClosed("the simulation engine was shut down (the run ended or was interrupted)")
        yield


@contextlib.contextmanager
def engine_gate() -> Iterator[None]:
    """Hold the gate for the block: no engine thread submits a call to Ray or starts an actor
    meanwhile (a backend's terminate, Ray's shutdown); unlike :func:`ray_open`, also after the
    engine was closed."""
    with _GATE:
        yield


def close_backend(backend: Any) -> bool:
    """Mark ``backend`` terminated: its threads submit nothing from now on (:func:`ray_open`).
    Call with the gate held (within :func:`ray_open` or :func:`engine_gate`). Returns whether Ray
    is still up for its terminate to use (not shut down for good)."""
    backend._engine_closed = True
    return not _CLOSED.is_set()


def gated_shutdown(ray: Any) -> None:
    """``ray.shutdown()`` with the gate held: no engine thread submits a call meanwhile."""
    with engine_gate():
        ray.shutdown()


def shut_down_ray() -> None:
    """Shut Ray down for good in this process (the way out of an interrupted run): the engine's
    worker threads, which may still be running, submit nothing to Ray from now on. Waits at most
    :data:`SHUTDOWN_WAIT_S` for a thread in the middle of a submission."""
    held = _GATE.acquire(timeout=SHUTDOWN_WAIT_S)
    try:
        _CLOSED.set()
        ray = sys.modules.get("ray")
        if ray is not None:
            with contextlib.suppress(Exception):
                if ray.is_initialized():
                    ray.shutdown()
    finally:
        if held:
            _GATE.release()


CALLS_PER_ACTOR = 2
"""ClientApp calls in flight per Ray actor (Flower's backend: 1)."""


def calls_per_actor(cfg: ExperimentConfig) -> int:
    """ClientApp calls in flight per Ray actor for ``cfg``: :data:`CALLS_PER_ACTOR`, or 1 (Flower's
    own scheduling, every message to the first actor free) when a reply can miss the round's
    deadline by waiting behind another client's call: the run injects stragglers
    (``faults.straggler > 0``) or sets ``server.timeout`` below its default."""
    if cfg.faults.straggler > 0 or cfg.server.timeout < ROUND_TIMEOUT_S:
        return 1
    return CALLS_PER_ACTOR


def pipelined_ray_backend(base: type | None = None) -> type:
    """A subclass of ``base`` (default: Flower's ``RayBackend``) whose actors each take
    :data:`CALLS_PER_ACTOR` calls at once: its pool lists every actor that many times,
    interleaved, and the engine starts that many worker threads per actor."""
    if base is None:
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend as base

    class PipelinedRayBackend(base):  # type: ignore[misc, valid-type]
        def build(self, app_fn: Any) -> None:
            """Build Flower's actor pool, then list each actor :data:`CALLS_PER_ACTOR` times."""
            super().build(app_fn)
            actors = list(self.pool.pool)
            self.pool.pool = [actor for _ in range(CALLS_PER_ACTOR) for actor in actors]

        @property
        def num_workers(self) -> int:
            """Engine worker threads: :data:`CALLS_PER_ACTOR` per actor."""
            return self.pool.num_actors * CALLS_PER_ACTOR if self.pool else 0

        def terminate(self) -> None:
            """Flower's, with each actor listed once (it asks each listed actor to exit)."""
            if self.pool is not None:
                self.pool.pool = list(dict.fromkeys(self.pool.pool))
            super().terminate()

    return PipelinedRayBackend


def replacing_dead_actors(base: type) -> type:
    """A subclass of the Ray backend ``base`` that replaces a client actor that died.

    Flower's backend (1.41) puts the actor of a call that failed back into its pool whatever
    the failure, a dead actor too (its process killed, out of memory): every later call handed
    to it fails at once, so the clients it draws fail every round for the rest of the run.
    Here a call whose actor died (``ray.exceptions.ActorDiedError``) fails as before, and its
    actor goes back into the pool as one new actor with the same resources (started once per
    dead actor, :meth:`_replacement`); a call that takes a dead actor's other entry from the
    pool (it lists each actor once per call slot) runs on the replacement instead. The pool is
    changed only by single pops and appends, as Flower's own code changes it from the engine's
    worker threads. A replacement that does not start within :data:`REPLACEMENT_START_S` (no
    node has the resources: a cluster that lost the node) is given up, and the dead actor goes
    back as before: its calls fail at once rather than wait for a round's timeout.
    """
    import logging
    import threading

    import ray
    from flwr.common.constant import PARTITION_ID_KEY

    from fedmtl.launch.client_reply import checked_reply

    log = logging.getLogger("fedmtl")

    class ReplacingRayBackend(base):  # type: ignore[misc, valid-type]
        _lock = threading.Lock()

        def process_message(self, message: Any, context: Any) -> Any:
            """Run the ClientApp on an actor of the pool (Flower's steps), replacing a dead one."""
            if self.pool is None or self.app_fn is None:
                return super().process_message(message, context)  # Flower's errors for an unbuilt backend
            pool = self.pool
            with ray_open(self):  # not while Ray shuts down, nor once this backend terminated
                actor = self._alive(pool.pool.pop())
                future = actor.run.remote(self.app_fn, message, str(context.node_config[PARTITION_ID_KEY]),
                                          context)
                pool._future_to_actor[future] = actor  # a call in flight (what a shared engine's end checks)
            try:
                _, reply, updated = ray.get(future)
            except ray.exceptions.ActorDiedError as error:
                if closed(self):  # Ray went down under the call (an interrupt): end quietly
                    raise EngineClosed(f"the call ended with the engine: {error}") from None
                try:
                    replacement = self._replacement(actor)
                except EngineClosed:  # the run is ending: no new actor
                    replacement = actor
                pool.pool.append(replacement)
                raise
            except BaseException as error:
                pool.pool.append(actor)
                if closed(self) and not isinstance(error, EngineClosed | KeyboardInterrupt):
                    raise EngineClosed(f"the call ended with the engine: {type(error).__name__}") from None
                raise
            finally:
                pool._future_to_actor.pop(future, None)
            pool.pool.append(actor)
            return checked_reply(message, reply), updated

        def terminate(self) -> None:
            """Flower's (kill the actors, shut Ray down) with the gate held, after which this
            backend's threads submit nothing; nothing when Ray was shut down for good."""
            with engine_gate():
                if close_backend(self):
                    super().terminate()

        def _alive(self, actor: Any) -> Any:
            """``actor``, or its newest replacement when it died (a replacement may die too)."""
            replacements = self.__dict__.get("_replacements", {})
            seen = set()
            while (key := _actor_hex(actor)) in replacements and key not in seen:
                seen.add(key)
                actor = replacements[key]
            return actor

        def _replacement(self, dead: Any) -> Any:
            """The new actor standing for ``dead`` (started on its first failure), or ``dead``
            itself when no new actor starts in time."""
            key = _actor_hex(dead)
            with self._lock:
                replacements = self.__dict__.setdefault("_replacements", {})
                if key in replacements:
                    return replacements[key]
                with ray_open(self):  # the gate only while it is started: its wait holds nothing
                    new = self.pool.create_actor_fn()
                    started = new.__ray_ready__.remote()
                ready, _ = ray.wait([started], timeout=REPLACEMENT_START_S)
                if not ready:
                    with contextlib.suppress(EngineClosed), ray_open(self):
                        ray.kill(new, no_restart=True)
                    log.warning("a client actor died (Ray actor %s) and no new one started within %g s; "
                                "its calls fail from now on", key[:12], REPLACEMENT_START_S)
                    replacements[key] = dead
                    return dead
                replacements[key] = new
                log.warning("a client actor died (Ray actor %s); its calls go to a new actor from now on", key[:12])
                return new

    return ReplacingRayBackend


REPLACEMENT_START_S = 60.0
"""How long a new actor replacing a dead one may take to start (a local one: a few seconds)."""


def _actor_hex(actor: Any) -> str:
    """A Ray actor handle's id in hex."""
    return actor._ray_actor_id.hex()
