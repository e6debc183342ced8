"""Work a run hands to a thread so that it overlaps what follows it, joined before the run returns.

When a simulated run's ServerApp returns, Flower's Simulation Engine stops its worker threads,
which notice the stop only when their one-second wait for a message ends (Flower 1.41,
``vce_api.worker``): a run's last second is mostly idle. :func:`fedmtl.launch.simulation.simulate`
therefore has the run's figures drawn in a :class:`BackgroundWork` thread that starts as the
ServerApp writes ``summary.json``, and joins it after the engine has stopped: the figures and
the engine's shutdown take the longer of the two instead of their sum
(``benchmarks/results/sweep_engine.md``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class BackgroundWork:
    """Threads started by :meth:`start`; :meth:`join` waits for them all and raises the first
    error one of them raised (each call of ``work`` runs to its end or its error)."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

    def start(self, name: str, work: Callable[[], object]) -> None:
        """Run ``work()`` in a new daemon thread called ``name``."""
        thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _run(self, work: Callable[[], object]) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to join()'s caller
            with self._lock:
                self._errors.append(exc)

    def wait(self) -> None:
        """Wait for every thread started so far (raises nothing)."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()

    def take_errors(self) -> list[BaseException]:
        """The errors the threads raised so far; they are then forgotten."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def join(self) -> None:
        """:meth:`wait`, then raise the first error a thread raised."""
        self.wait()
        errors = self.take_errors()
        if errors:
            raise errors[0]
