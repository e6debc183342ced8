"""``benchmarks/simulation.py``'s memory measure (issue #22's memory target): the summed RSS and
PSS of a process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from benchmarks.simulation import PeakRSS, by_kind, measure, memory_lines, tree_memory_bytes, tree_processes

HOLD = """
import os, sys, time
block = bytearray(os.urandom(1 << 20)) * {mb}  # {mb} MiB of private, touched pages
print("ready", flush=True)
time.sleep(30)
"""


def _start(mb: int) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLD.format(mb=mb)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def test_the_tree_s_memory_counts_a_child_s_private_pages_in_rss_and_pss():
    child = _start(200)
    try:
        rss_with, pss_with = tree_memory_bytes(child.pid)
        assert rss_with >= pss_with > 190 * 2**20  # its 200 MiB are private: in both
        assert tree_memory_bytes(0xFFFFFFF) == (0, 0)  # no such process: nothing
    finally:
        child.kill()
        child.wait()


def test_pss_counts_pages_shared_by_a_tree_once_where_rss_counts_them_per_process():
    """Two interpreters share the interpreter's and libraries' pages: summed RSS counts them
    twice, summed PSS once."""
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
                               "print('ready', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        rss, pss = tree_memory_bytes(parent.pid)
        assert rss > pss > 0
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the child too, not only its parent
        parent.wait()


def test_the_sampler_keeps_the_peaks_of_a_process_it_watches():
    child = _start(100)
    try:
        with PeakRSS(root=child.pid, interval=0.01) as peak:
            time.sleep(0.2)
        assert peak.peak_mb >= peak.peak_pss_mb > 95
        assert [part["kind"] for part in peak.peak_parts] == ["measured process"]
        assert abs(peak.peak_parts[0]["rss_mb"] - peak.peak_mb) < 1e-9
    finally:
        child.kill()
        child.wait()


def test_a_tree_s_memory_is_broken_down_by_kind_of_process():
    """The peak's breakdown (which Ray processes hold the memory): the measured process, then its
    descendants grouped by program and script, largest first, their RSS summed."""
    hold = "b = bytearray(1 << 20) * 60; import time; time.sleep(30)"
    script = ("import subprocess, sys, time\n"
              f"cs = [subprocess.Popen([sys.executable, '-c', {hold!r}, 'worker.py']) for _ in range(2)]\n"
              "time.sleep(1.0); print('ready', flush=True); time.sleep(30)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        processes = tree_processes(parent.pid)
        assert len(processes) == 3 and parent.pid in processes
        parts = by_kind(processes, parent.pid)
        assert [(p["kind"], p["processes"]) for p in parts] == [(f"{os.path.basename(sys.executable)} worker.py", 2),
                                                                ("measured process", 1)]
        assert parts[0]["rss_mb"] > 2 * 55  # each child's 60 MiB, touched
        assert abs(sum(p["rss_mb"] for p in parts) * 2**20 - sum(processes.values())) < 1
        assert tree_processes(0xFFFFFFF) == {}
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_the_page_gives_the_breakdown_of_the_largest_peak_over_the_repeats():
    jobs = iter([(1.0, 900.0, 5.0, 2, 700.0, [{"kind": "measured process", "processes": 1, "rss_mb": 900.0}]),
                 (1.0, 1200.0, 5.0, 2, 800.0, [{"kind": "measured process", "processes": 1, "rss_mb": 500.0},
                                               {"kind": "ray::ClientAppActor", "processes": 2, "rss_mb": 700.0}]),
                 (1.0, 400.0, 5.0, 2, 300.0, [{"kind": "measured process", "processes": 1, "rss_mb": 400.0}])])
    results = measure({"fedmtl": lambda: next(jobs)}, repeat=2)
    results |= measure({"floor": lambda: next(jobs)}, repeat=1)
    assert results["fedmtl"]["peak_rss_mb"] == 1200.0
    assert results["fedmtl"]["peak_rss_parts"][1]["kind"] == "ray::ClientAppActor"
    text = "\n".join(memory_lines(results))
    assert "peak RSS 1200 MB = 3.00× the floor's (400 MB)" in text
    assert "At its RSS peak: measured process 500 MB, 2 × ray::ClientAppActor 700 MB." in text
    assert "The measured process and its ClientApp actors alone: 1200 MB = 3.00× the floor's" in text
