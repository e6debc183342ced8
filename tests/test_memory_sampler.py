"""``benchmarks/simulation.py``'s memory measure (issue #22's memory target): the summed RSS and
PSS of a process tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from benchmarks.simulation import PeakRSS, tree_memory_bytes

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
    finally:
        child.kill()
        child.wait()
