"""What the in-process backend (``engine.backend = "inprocess"``) must not get wrong where Ray's
processes isolate the clients: a ClientApp that ends its thread, and torch's thread count that
clients set in the engine's worker threads."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from queue import Empty, Queue

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedmtl.launch.inprocess import InProcessBackend

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"


def _exiting_app() -> ClientApp:
    """A ClientApp whose call with ``x = 1`` calls ``sys.exit`` (client code, or a library it
    calls, ending "the program"); other calls reply."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if msg.content["config"]["x"] == 1:
            sys.exit(3)
        return Message(RecordDict({"config": ConfigRecord({"y": 1})}), reply_to=msg)

    return app


def _served(app: ClientApp, messages: list[Message]) -> tuple[list[Message], InProcessBackend]:
    """The replies Flower's own engine worker loop gets for ``messages`` (to node 7) from an
    :class:`InProcessBackend` running ``app``; fails the test when one gets no reply."""
    from flwr.compat.client.run_info_store import DeprecatedRunInfoStore
    from flwr.server.superlink.fleet.vce.metrics import VceMetrics
    from flwr.server.superlink.fleet.vce.vce_api import worker

    backend = InProcessBackend({})
    backend.build(lambda: app)
    store = DeprecatedRunInfoStore(node_id=7, node_config={"partition-id": 0})
    store.register_context(run_id=1)
    ins: Queue[Message] = Queue()
    outs: Queue[Message] = Queue()
    stop = threading.Event()
    for message in messages:
        ins.put(message)
    thread = threading.Thread(target=worker, args=(ins, outs, {7: store}, backend, stop, VceMetrics()), daemon=True)
    thread.start()
    try:
        return [outs.get(timeout=10) for _ in messages], backend
    except Empty:
        pytest.fail(f"a message got no reply; the engine's worker thread is alive: {thread.is_alive()}")
    finally:
        stop.set()
        thread.join(timeout=5)


def test_a_clientapp_that_calls_sys_exit_gets_an_error_reply_and_its_worker_serves_the_next(task_identity):
    """On Ray a ClientApp that exits kills its actor and the engine replies an error at once. In
    process, ``SystemExit`` passed through the backend and ended Flower's worker thread (it
    catches ``Exception``): the message got no reply (the server waited out ``server.timeout``,
    an hour by default, and reported no reply), and the run had one worker fewer from then on
    (with one worker, no client ever replied again). Here Flower's own worker loop serves two
    messages with the backend: the first exits, the second must still be answered."""
    from flwr.common.constant import ErrorCode

    replies, backend = _served(_exiting_app(), [
        Message(RecordDict({"config": ConfigRecord({"x": x})}), dst_node_id=7, message_type="train") for x in (1, 2)])
    failed, answered = replies
    assert failed.has_error() and failed.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "SystemExit(3)" in failed.error.reason
    assert not answered.has_error() and answered.content["config"]["y"] == 1
    assert backend.is_worker_idle()


def test_a_clientapp_changing_the_records_it_received_does_not_change_another_clients(task_identity):
    """The server sends every client the same ArrayRecord and ConfigRecord objects; on Ray each
    actor gets a copy (serialised), in process each call must get its own: here the first call
    replaces its arrays' entry and its config's value, and the second still sees the server's."""
    from flwr.app import Array, ArrayRecord

    seen: list[tuple[float, int]] = []
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        seen.append((float(msg.content["arrays"]["w"].numpy().sum()), int(msg.content["config"]["x"])))
        msg.content["arrays"]["w"] = Array(torch.full((3,), 99.0).numpy())
        msg.content["config"]["x"] = 99
        return Message(RecordDict({"config": ConfigRecord({"y": 1})}), reply_to=msg)

    backend = InProcessBackend({})
    backend.build(lambda: app)
    shared = RecordDict({"arrays": ArrayRecord({"w": Array(torch.ones(3).numpy())}), "config": ConfigRecord({"x": 1})})
    for node in (7, 8):
        message = Message(shared, dst_node_id=node, message_type="train")
        backend.process_message(message, Context(run_id=1, node_id=node, node_config={}, state=RecordDict(),
                                                 run_config={}))
    assert seen == [(3.0, 1), (3.0, 1)]
    assert float(shared["arrays"]["w"].numpy().sum()) == 3.0 and shared["config"]["x"] == 1


def _threads_a_new_thread_gets() -> int:
    found: list[int] = []
    thread = threading.Thread(target=lambda: found.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return found[0]


@pytest.fixture
def three_torch_threads():
    """Torch's intra-op threads at 3 (not ``engine.client-num-cpus``), put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def test_an_in_process_run_leaves_the_thread_count_new_threads_get_as_it_found_it(
        tmp_path, flwr_home, three_torch_threads):
    """In-process clients set torch's thread count (``engine.client-num-cpus``) in the engine's
    worker threads. With OpenMP each thread has its own count, but every thread started later
    takes the count last set in any thread: after a run, the caller's new threads (and the next
    run's ServerApp thread in a sweep, whose aggregation then used other threads than in a run
    alone) had 1 thread, while the caller's own thread still said 3, so the run's restore of the
    caller's count changed nothing."""
    import fedmtl

    assert _threads_a_new_thread_gets() == 3
    fedmtl.run(SMOKE, overrides=["run.rounds=1", "engine.backend=inprocess", "engine.max-concurrent-clients=2",
                                 "engine.client-num-cpus=1"], out=tmp_path / "run")
    assert torch.get_num_threads() == 3
    assert _threads_a_new_thread_gets() == 3


def _app_returning(result: str) -> ClientApp:
    """A ClientApp whose training returns ``None`` or a message that replies to nothing."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if result == "none":
            return None  # type: ignore[return-value]
        return Message(RecordDict({"config": ConfigRecord({"y": 1})}), dst_node_id=7, message_type="train")

    return app


@pytest.mark.parametrize(("result", "said"), [
    ("none", "the ClientApp returned NoneType, not a reply Message"),
    ("not-a-reply", "the ClientApp returned a Message that is not a reply to the message it was given"),
])
def test_a_clientapp_that_returns_no_reply_fails_its_call_at_once(task_identity, result, said):
    """Flower's engine dropped a ``None`` result without a word, and the SuperLink refused a
    message replying to nothing in a line naming no client: the server waited out
    ``server.timeout`` (an hour by default) and then said only that a client sent no reply. The
    call now fails at once with an error reply saying what the ClientApp returned."""
    from flwr.common.constant import ErrorCode

    message = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=7, message_type="train")
    message.metadata.__dict__["_message_id"] = "m-1"  # as the SuperLink's state gives every message
    (reply,), _ = _served(_app_returning(result), [message])
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert said in reply.error.reason
    assert reply.metadata.reply_to_message_id == "m-1"
