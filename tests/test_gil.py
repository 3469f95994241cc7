"""The GIL release during long background work: once per burst, never more often.

The clock is replaced, so the test counts releases against simulated work, not wall time (its
effect on latency is measured by bench/app_latency.py, never asserted here).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import List

import pytest

from lucidic_otel import gil


def _fake_time(monkeypatch: pytest.MonkeyPatch, now: List[float], sleeps: List[float]) -> None:
    """Only gil's view of the time module is replaced; other threads keep the real one."""
    clock = SimpleNamespace(perf_counter=lambda: now[0], sleep=sleeps.append)
    monkeypatch.setattr(gil, "time", clock)


def test_releases_once_per_burst_and_rest_starts_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    sleeps: List[float] = []
    _fake_time(monkeypatch, now, sleeps)
    step = gil.BURST_S / 10  # ten units of work per burst

    gil.rest()
    gil.tick()  # starts the burst
    for _ in range(100):
        now[0] += step
        gil.tick()
    assert sleeps == [0] * 10  # one release per burst of work, each a real sleep(0)

    gil.rest()
    sleeps.clear()
    gil.tick()
    now[0] += gil.BURST_S / 2
    gil.tick()
    assert sleeps == []  # after a rest the burst clock starts again


def test_each_thread_has_its_own_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    now = [5.0]
    sleeps: List[float] = []
    _fake_time(monkeypatch, now, sleeps)
    gil.rest()
    gil.tick()
    now[0] += 2 * gil.BURST_S
    other = threading.Thread(target=gil.tick)  # a fresh thread starts its own burst
    other.start()
    other.join()
    assert sleeps == []
    gil.tick()  # this thread's burst is over
    assert sleeps == [0]
