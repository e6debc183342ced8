"""Two ClientApp calls in flight per Ray actor (``fedmtl.launch.ray_pipeline``), on real Ray.

One actor and the engine's two worker threads: both calls reach the actor before the first
one ends, the actor runs them one after the other (never two clients at once), and each
reply answers its own message. Ray runs bit for bit as in-process ones do (with the pipeline)
in tests/test_simulation.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException

from fedmtl.launch.ray_pipeline import CALLS_PER_ACTOR, pipelined_ray_backend
from fedmtl.launch.simulation import backend_config, connect
from fedmtl.validation import load_config

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _slow_app() -> ClientApp:
    """A ClientApp that holds its actor for half a second and says when and where it ran."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        import os

        start = time.time()
        time.sleep(0.5)
        record = ConfigRecord({"x": msg.content["config"]["x"], "start": start, "end": time.time(),
                               "pid": os.getpid()})
        return Message(RecordDict({"ran": record}), reply_to=msg)

    return app


def test_an_actor_holds_the_next_call_and_runs_its_calls_one_at_a_time(task_identity):
    import ray

    cfg = load_config(ROOT / "configs/smoke.toml", ["engine.max-concurrent-clients=1"])
    connect(cfg)
    backend = pipelined_ray_backend()(backend_config(cfg))
    try:
        app = _slow_app()
        backend.build(lambda: app)
        assert backend.pool.num_actors == 1
        assert backend.num_workers == CALLS_PER_ACTOR == 2
        assert len(backend.pool.pool) == 2 and len(set(backend.pool.pool)) == 1

        submitted: list[float] = []
        submit = backend.pool.submit

        def timed_submit(*args):  # noqa: ANN002, ANN202
            submitted.append(time.time())
            return submit(*args)

        backend.pool.submit = timed_submit
        replies: dict[int, Message] = {}

        def call(x: int) -> None:
            msg = Message(RecordDict({"config": ConfigRecord({"x": x})}), dst_node_id=x, message_type="train")
            context = Context(run_id=1, node_id=x, node_config={"partition-id": x}, state=RecordDict(), run_config={})
            replies[x], _ = backend.process_message(msg, context)

        threads = [threading.Thread(target=call, args=(x,)) for x in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert sorted(replies) == [1, 2]
        ran = sorted((r.content["ran"] for r in replies.values()), key=lambda c: c["start"])
        assert [int(replies[x].content["ran"]["x"]) for x in (1, 2)] == [1, 2]  # each reply answers its message
        assert ran[0]["pid"] == ran[1]["pid"]  # the one actor ran both
        assert ran[1]["start"] >= ran[0]["end"]  # one at a time
        assert max(submitted) < ran[0]["end"]  # the second call was in the actor before the first ended
        assert backend.is_worker_idle() and len(backend.pool.pool) == 2  # both slots back
    finally:
        backend.terminate()
        ray.shutdown()
    assert len(backend.pool.pool) == 1  # terminate asked the one actor to exit, once


@pytest.mark.parametrize(("overrides", "calls"), [
    ([], CALLS_PER_ACTOR),
    (["server.timeout=3600"], CALLS_PER_ACTOR),  # the default, set explicitly
    (["faults.straggler=0.4", "faults.straggler-delay=75"], 1),
    (["server.timeout=45"], 1),
])
def test_runs_where_a_reply_could_miss_its_deadline_keep_one_call_per_actor(overrides, calls):
    """A call waiting in an actor behind a straggler would wait out the straggler's delay while
    another actor may sit idle; where that can make it miss the round's deadline, each message
    goes to the first actor free, as with Flower's own backend."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    from fedmtl.launch.ray_pipeline import calls_per_actor
    from fedmtl.launch.simulation import _ray_backend

    cfg = load_config(ROOT / "configs" / "smoke.toml", overrides)
    assert calls_per_actor(cfg) == calls
    backend = _ray_backend(cfg)
    assert issubclass(backend, RayBackend)
    names = [c.__name__ for c in backend.__mro__]
    assert ("PipelinedRayBackend" in names) == (calls > 1)
    assert "ReplacingRayBackend" in names  # a dead actor is replaced either way


def _dying_app() -> ClientApp:
    """A ClientApp whose call for x = 1 kills its actor's process; other calls answer."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        import os

        if int(msg.content["config"]["x"]) == 1:
            os._exit(1)
        if int(msg.content["config"]["x"]) == 5:
            return None  # no reply: Flower's engine would drop it without a word
        return Message(RecordDict({"ran": ConfigRecord({"pid": os.getpid()})}), reply_to=msg)

    return app


def _replacing_backend(app: ClientApp):  # noqa: ANN202 - a Ray backend class built at run time
    """A built replacing, pipelined Ray backend of one actor running ``app`` (Ray started)."""
    from fedmtl.launch.ray_pipeline import replacing_dead_actors

    cfg = load_config(ROOT / "configs/smoke.toml", ["engine.max-concurrent-clients=1"])
    connect(cfg)
    backend = replacing_dead_actors(pipelined_ray_backend())(backend_config(cfg))
    backend.build(lambda: app)
    return backend


def _process(backend, x: int) -> Message:  # noqa: ANN001
    """The reply of ``backend`` to a training message with config ``x`` for node and partition ``x``."""
    msg = Message(RecordDict({"config": ConfigRecord({"x": x})}), dst_node_id=x, message_type="train")
    context = Context(run_id=1, node_id=x, node_config={"partition-id": x}, state=RecordDict(), run_config={})
    return backend.process_message(msg, context)[0]


def test_a_dead_actor_is_replaced_and_only_its_own_call_fails(task_identity):
    """Flower's backend put a dead actor back into its pool: every later call on it failed, so
    its clients failed every round. Here the call it was running fails, and the next one runs
    on a new actor (listed as many times as the dead one was). A call whose ClientApp returns no
    reply fails at once (Flower's engine dropped it: the server waited out server.timeout)."""
    import ray

    backend = _replacing_backend(_dying_app())
    try:
        dead = backend.pool.pool[0]

        def call(x: int) -> Message:
            return _process(backend, x)

        with pytest.raises(ray.exceptions.ActorDiedError):
            call(1)
        assert len(backend.pool.pool) == 2 and dead in backend.pool.pool  # its other slot, still listed
        pids = {call(x).content["ran"]["pid"] for x in (2, 3, 4)}  # all on the new actor
        assert len(pids) == 1 and backend.pool._future_to_actor == {}
        assert len({backend._alive(a) for a in backend.pool.pool}) == 1  # every slot leads to the new actor
        with pytest.raises(ClientAppException, match="the ClientApp returned NoneType, not a reply Message"):
            call(5)  # at once, not after server.timeout
        assert call(6).content["ran"]["pid"] in pids and len(backend.pool.pool) == 2
    finally:
        backend.terminate()
        ray.shutdown()


def test_once_ray_is_shut_down_the_engine_threads_reach_it_no_more(task_identity):
    """On Ctrl-C or SIGTERM, Flower's way out terminates the backend (its terminate shuts Ray
    down) while the engine's worker threads still run; fedmtl then shuts Ray down for good. A
    thread that submitted a call after that started a new local Ray instance (``.remote``
    calls ``ray.init``), left running after the process exited, and one that submitted during
    the shutdown ended the process with exit code 1 ("The core worker has already been
    shutdown", seen once in CI in tests/test_interrupt.py) instead of 143. After the backend's
    terminate, and after :func:`shut_down_ray`, a call fails at once without touching Ray."""
    import ray

    from fedmtl.launch import ray_pipeline
    from fedmtl.launch.ray_pipeline import EngineClosed, shut_down_ray

    backend = _replacing_backend(_slow_app())
    try:
        def call(x: int) -> Message:
            return _process(backend, x)

        assert call(1).content["ran"]["x"] == 1
        backend.terminate()  # Flower's way out: its actors killed, Ray shut down
        assert not ray.is_initialized()
        with pytest.raises(EngineClosed, match="the simulation engine was shut down"):
            call(3)  # before: a new local Ray instance, started by .remote
        assert not ray.is_initialized()
        shut_down_ray()  # fedmtl's own way out after it: nothing left to do, nothing started
        backend.terminate()
        assert not ray.is_initialized()
    finally:
        ray_pipeline._CLOSED.clear()  # this test's process goes on (an interrupted run's exits)
        if ray.is_initialized():
            ray.shutdown()


def test_a_call_ended_by_the_engine_s_shutdown_ends_flower_s_worker_thread_without_a_traceback(caplog, task_identity):
    """After an interrupt, a call in flight whose ``ray.get`` raised (its actor died with the
    driver) reached Flower's engine worker, which logged it with its traceback on stderr: the
    interrupted sweep's message began with one (seen in CI, tests/test_interrupt.py). The
    backend ends such a call with :class:`EngineClosed`, which Flower's worker (it catches
    ``Exception``) does not log: its thread just ends."""
    import logging
    import queue

    from flwr.server.superlink.fleet.vce import vce_api

    from fedmtl.launch.ray_pipeline import EngineClosed

    class Store:
        def retrieve_context(self, run_id):  # noqa: ANN001, ANN202
            return Context(run_id=run_id, node_id=1, node_config={}, state=RecordDict(), run_config={})

    class Closed:
        def process_message(self, message, context):  # noqa: ANN001, ANN202
            raise EngineClosed("the call ended with the engine: ActorDiedError")

    class Metrics:
        def add_clientapp_runtime(self, seconds):  # noqa: ANN001, ANN202
            pass

    inbox, outbox = queue.Queue(), queue.Queue()
    inbox.put(Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=1, message_type="train"))
    stop = threading.Event()
    threading.Timer(3.0, stop.set).start()  # an Exception would be logged and the worker go on: stop it then
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EngineClosed):
        vce_api.worker(inbox, outbox, {1: Store()}, Closed(), stop, Metrics())
    assert outbox.empty()  # no error reply
    assert "Traceback" not in caplog.text and "EngineClosed" not in caplog.text, caplog.text
    assert not issubclass(EngineClosed, Exception)
