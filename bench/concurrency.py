"""Sessions under concurrency: throughput with and without the processor, and attribution.

Two workloads, each run alternately on two local providers (the global provider is never
set): one with LucidicSpanProcessor before a BatchSpanProcessor, one with the
BatchSpanProcessor only. Both run the same session API calls; only the processor differs.

  asyncio: 1,000 concurrent tasks, each ``async with lucidic_otel.session(sid)`` around an
           agent span with 3 steps; each step awaits and then runs two tool calls in parallel
           (``asyncio.gather``: child tasks inherit the context), each with its own awaits.
           10 spans per session.
  threads: 32 threads started together, each ``set_active_session(sid)`` and a loop of
           root spans with two nested children.

Every span records the session it must belong to in ``bench.expected_session``; the exporter
compares that with ``lucidic.session_id`` and ``session.id`` on every finished span. A
misattributed, unstamped or lost span makes the exit status 1. Timings never do.

    python bench/concurrency.py            # 5 rounds of each workload on each pipeline
    python bench/concurrency.py --quick    # 1 round, fewer spans per thread, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from _machine import machine_lines as _machine_lines  # noqa: E402

# The bench's own settings, before lucidic_otel reads any: no developer shell config leaks in.
for _name in [n for n in os.environ if n.startswith("LUCIDIC_")]:
    del os.environ[_name]
_TMP = tempfile.TemporaryDirectory(prefix="lucidic-bench-concurrency-")
os.environ["LUCIDIC_STORE_PATH"] = os.path.join(_TMP.name, "store.db")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Tracer  # noqa: E402

import lucidic_otel  # noqa: E402
from lucidic_otel.config import load_settings  # noqa: E402
from lucidic_otel.sdk.processor import LucidicSpanProcessor  # noqa: E402
from lucidic_otel.sessions.context import SEMCONV_SESSION_ATTRIBUTE, SESSION_ATTRIBUTE  # noqa: E402
from lucidic_otel.sessions.lifecycle import JOURNAL  # noqa: E402

EXPECTED = "bench.expected_session"
ASYNC_SESSIONS = 1000
STEPS = 3
THREADS = 32


def machine_lines() -> List[str]:
    """The machine and the versions, for the header of this bench."""
    return _machine_lines()


class CheckingExporter(SpanExporter):
    """Compares every span's session attributes with the session it was started for."""

    def __init__(self) -> None:
        self.count = 0
        self.misattributed = 0
        self.unstamped = 0
        self.examples: List[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            attributes = span.attributes or {}
            expected = attributes.get(EXPECTED)
            got = attributes.get(SESSION_ATTRIBUTE)
            if got is None:
                self.unstamped += 1
            elif got != expected or attributes.get(SEMCONV_SESSION_ATTRIBUTE) != expected:
                self.misattributed += 1
                if len(self.examples) < 5:
                    self.examples.append(f"{span.name}: expected {expected!r}, got {got!r}")
        self.count += len(spans)
        return SpanExportResult.SUCCESS


class Pipeline:
    def __init__(self, label: str, with_processor: bool) -> None:
        self.label = label
        self.with_processor = with_processor
        self.exporter = CheckingExporter()
        self.provider = TracerProvider()
        if with_processor:
            self.provider.add_span_processor(LucidicSpanProcessor(load_settings({})))
        self.provider.add_span_processor(
            BatchSpanProcessor(self.exporter, max_queue_size=200_000, schedule_delay_millis=100)
        )
        self.tracer = self.provider.get_tracer("bench.concurrency")
        self.created = 0


# --- workloads: each returns the number of spans it created -------------------------------


async def _tool(tracer: Tracer, sid: str, name: str) -> None:
    with tracer.start_as_current_span(name, attributes={EXPECTED: sid}):
        await asyncio.sleep(0)
        await asyncio.sleep(0)


async def _agent(tracer: Tracer, sid: str) -> None:
    async with lucidic_otel.session(sid):
        with tracer.start_as_current_span("agent", attributes={EXPECTED: sid}):
            for step in range(STEPS):
                with tracer.start_as_current_span(f"step-{step}", attributes={EXPECTED: sid}):
                    await asyncio.sleep(0)
                    await asyncio.gather(_tool(tracer, sid, "tool-a"), _tool(tracer, sid, "tool-b"))


def run_async(tracer: Tracer, tag: str, n_sessions: int) -> int:
    async def main() -> None:
        await asyncio.gather(*(_agent(tracer, f"async-{tag}-{i}") for i in range(n_sessions)))

    asyncio.run(main())
    return n_sessions * (1 + STEPS * 3)


def run_threads(tracer: Tracer, tag: str, per_thread: int) -> int:
    barrier = threading.Barrier(THREADS)
    errors: List[BaseException] = []

    def work(i: int) -> None:
        sid = f"thread-{tag}-{i}"
        try:
            barrier.wait(timeout=30)
            token = lucidic_otel.set_active_session(sid)
            try:
                for _ in range(per_thread // 3):
                    with tracer.start_as_current_span("request", attributes={EXPECTED: sid}):
                        with tracer.start_as_current_span("db", attributes={EXPECTED: sid}):
                            pass
                        with tracer.start_as_current_span("llm", attributes={EXPECTED: sid}):
                            pass
            finally:
                lucidic_otel.clear_active_session(token)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), name=f"bench-{i}") for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"thread workload failed: {errors[:3]!r}")
    return THREADS * (per_thread // 3) * 3


def timed(pipeline: Pipeline, fn: Callable[[], int]) -> Tuple[float, float]:
    """(spans per wall second, spans per process CPU second) of one round.

    Session API calls are included. The process CPU time counts every thread (the workers and
    the batch processor's); other processes on a shared machine do not inflate it.
    """
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    n = fn()
    pipeline.provider.force_flush()  # the export work of this round belongs to this round
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pipeline.created += n
    JOURNAL.drain()  # session-init records: nothing stores them here
    return n / wall, n / cpu


def spread(values: Sequence[float], fmt: str) -> str:
    return " ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--rounds", type=int, help="rounds per workload and pipeline (default 5)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    per_thread = 150 if args.quick else 600

    with_p = Pipeline("with processor", True)
    without = Pipeline("without processor", False)
    workloads: Dict[str, Callable[[Pipeline, str], int]] = {
        "asyncio": lambda p, tag: run_async(p.tracer, tag, ASYNC_SESSIONS),
        "threads": lambda p, tag: run_threads(p.tracer, tag, per_thread),
    }

    print("== concurrency ==")
    for line in machine_lines():
        print(line)
    print(
        f"asyncio: {ASYNC_SESSIONS} concurrent sessions x {1 + STEPS * 3} spans; "
        f"threads: {THREADS} threads x {per_thread // 3 * 3} spans, one session each; "
        f"{rounds} rounds of each on each pipeline, alternating, after 1 warm-up round"
    )

    rates: Dict[str, Dict[str, List[float]]] = {
        w: {with_p.label: [], without.label: []} for w in workloads
    }
    ratios: Dict[str, List[float]] = {w: [] for w in workloads}
    cpu_ratios: Dict[str, List[float]] = {w: [] for w in workloads}
    for rnd in range(rounds + 1):
        for name, work in workloads.items():
            order = [with_p, without] if rnd % 2 else [without, with_p]
            got: Dict[str, Tuple[float, float]] = {}
            for pipeline in order:
                tag = f"{rnd}-{'w' if pipeline.with_processor else 'o'}"
                got[pipeline.label] = timed(pipeline, functools.partial(work, pipeline, tag))
            if rnd:
                for label, (rate, _) in got.items():
                    rates[name][label].append(rate)
                ratios[name].append(got[with_p.label][0] / got[without.label][0])
                cpu_ratios[name].append(got[with_p.label][1] / got[without.label][1])

    for pipeline in (with_p, without):
        pipeline.provider.force_flush()
        pipeline.provider.shutdown()

    print()
    print(
        "spans/s (min / median / max over rounds, wall clock) and ratio with/without processor "
        "(wall clock, and per process CPU second)"
    )
    header = (
        f"{'workload':<9} {'without processor':>26} {'with processor':>26} "
        f"{'ratio min med max':>20} {'CPU ratio med':>14}"
    )
    print(header)
    print("-" * len(header))
    for name in workloads:
        print(
            f"{name:<9} {spread(rates[name][without.label], '8.0f'):>26} "
            f"{spread(rates[name][with_p.label], '8.0f'):>26} {spread(ratios[name], '.3f'):>20} "
            f"{statistics.median(cpu_ratios[name]):>14.3f}"
        )

    ex = with_p.exporter
    lost = {p.label: p.created - p.exporter.count for p in (with_p, without)}
    print()
    print("attribution (pipeline with processor, every finished span checked)")
    print(
        f"  spans checked: {ex.count}   misattributed: {ex.misattributed}   "
        f"unstamped: {ex.unstamped}   lost: {lost[with_p.label]}"
    )
    for example in ex.examples:
        print(f"  e.g. {example}")
    problems = ex.misattributed + ex.unstamped + sum(abs(v) for v in lost.values())
    print("checks: " + ("ok" if problems == 0 else "FAILED"))
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        _TMP.cleanup()
