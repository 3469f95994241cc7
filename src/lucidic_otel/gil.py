"""Give the GIL back now and then during long background work on an application thread.

Why: the exporter runs on the BatchSpanProcessor's thread, and converting, encoding and storing
a batch (up to 512 spans) is some 20 ms of Python. CPython hands the GIL to a waiting thread only
every switch interval (5 ms) unless the holder blocks, so an application thread that wants the
GIL during such a burst waits up to 5 ms. That was the largest part of the p99 an instrumented
call sees (``bench/app_latency.py``).

A release must last long enough for the waiting thread to wake and take the GIL, or the holder
just takes it back: ``time.sleep(0)`` does (it sleeps for the timer slack, about 50-80 µs); a
zero-timeout ``select`` (under a microsecond) is too short for it to wake. That costs wall
time, so it is done only once the work has held the GIL for :data:`BURST_S` (0.5 ms), which
bounds the wait of an application thread to about that. A saturated exporter pays about 15% of
its wall time and 4% of its CPU for it (``bench/export_throughput.py``: 1.19x -> 1.03x of stock
OTLP, wall clock; 1.15x per CPU second).
"""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)

BURST_S = 0.0005


_local = threading.local()


def tick() -> None:
    """Call between units of long work; sleeps briefly once the thread's burst reaches
    :data:`BURST_S`. The clock is per thread, so the exporter and the store it calls share one
    burst."""
    now = time.perf_counter()
    since = getattr(_local, "since", None)
    if since is None:
        _local.since = now
    elif now - since >= BURST_S:
        time.sleep(0)
        _local.since = time.perf_counter()


def rest() -> None:
    """The thread is about to block anyway (its work is done): the next burst starts later."""
    _local.since = None
