"""``benchmarks/round_profile.py``'s arithmetic on a hand-made timeline (no engine, no timing)."""

from __future__ import annotations

import pytest

from benchmarks.round_profile import Timeline, summarise


def test_summarise_reads_each_rounds_waits_from_the_timeline():
    timeline = Timeline()
    timeline.pushes = [0.0, 10.0, 20.0, 30.0]  # round 1 (pushed at 0) is left out
    last_reply = {0.0: 0.5, 10.0: 0.5, 20.0: 0.7, 30.0: 0.9}  # after the push
    tail = {0.0: 0.0, 10.0: 0.02, 20.0: 0.04, 30.0: 0.06}  # last reply -> aggregation
    for push in timeline.pushes:
        end = push + last_reply[push]
        # (call start, client start, client end, call end, worker): three calls a round, the first
        # 0.1 s after the push; worker 1 runs two clients, 0.05 s apart
        timeline.calls += [(push + 0.1, push + 0.12, push + 0.3, push + 0.32, 1),
                           (push + 0.2, push + 0.21, end - 0.01, end, 2),
                           (push + 0.25, push + 0.35, push + 0.4, push + 0.41, 1)]
        timeline.server += [("configure_train", push - 0.001, push),
                            ("aggregate_train", end + tail[push], end + tail[push] + 0.003)]
    timeline.cpu = [(p + 1.0, p / 10) for p in timeline.pushes]
    got = summarise(timeline)
    assert got["rounds"] == 3
    assert got["push_to_first_call_ms"] == pytest.approx(100.0)
    assert got["client_ms_per_message"] == pytest.approx(180.0)  # median of 50 (× 3), 180 (× 3), 280, 480, 680 ms
    assert got["idle_between_clients_ms"] == pytest.approx(50.0)  # worker 1: 0.30 -> 0.35; worker 2 ran one client
    assert got["last_reply_to_aggregation_ms"] == pytest.approx(40.0)  # the median of 20, 40 and 60 ms
    assert got["s_per_round"] == pytest.approx(10.0)
