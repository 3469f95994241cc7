"""Per-span cost of the session processor, against the bare SDK, in one interleaved run.

Pipelines (each its own local ``TracerProvider``; the global provider is never set):

  (a) BatchSpanProcessor + a null exporter: the baseline;
  (b) (a) + LucidicSpanProcessor, the session from the active scope (``context_with_session``
      attached, spans started with no explicit context);
  (c) (a) + LucidicSpanProcessor, the session from inbound baggage only (a context holding
      nothing but the baggage entry, as an HTTP server has after ``extract``);
  (d) (a) + LucidicSpanProcessor, the session from a stamped local parent span only;
  (e) (a) + contrib's BaggageSpanProcessor copying the same baggage key;
  (f) (a) + a processor whose methods do nothing: the floor any processor costs (the SDK
      calls on_start, _on_ending and on_end of every processor for every span).

The baseline is measured on each of the three inputs (scope, baggage, parent), because the
SDK's own cost differs slightly between them (a new trace id or an inherited one), and every
ratio is taken against the baseline block measured on the same input in the same repetition.
Blocks run in a rotating order so that drift on a noisy machine spreads over all pipelines.
Costs are CPU time of the application thread (``time.thread_time_ns``), which other processes
on a shared machine do not inflate; wall-clock ratios are printed next to them.

    python bench/span_overhead.py            # 30 repetitions x 5,000 spans per block
    python bench/span_overhead.py --quick    # a few seconds, for CI
    python bench/span_overhead.py --bare     # start_span()+end() instead of start_as_current_span

Targets: (b), (c), (d) each <= 1.10x the baseline, and each cheaper than (e).
Exit status is non-zero only when a span was lost or stamped wrongly, never for a timing.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from _machine import machine_lines as _machine_lines  # noqa: E402
from opentelemetry import baggage, trace
from opentelemetry.context import Context, attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from lucidic_otel.config import load_settings
from lucidic_otel.sdk.processor import LucidicSpanProcessor
from lucidic_otel.sessions.context import (
    BAGGAGE_KEY,
    SESSION_ATTRIBUTE,
    SESSION_KEY,
    context_with_session,
)

SID = "bench-session-0001"
TARGET_RATIO = 1.10
STRETCH_RATIO = 1.05


def machine_lines() -> List[str]:
    """The machine and the versions, for the header of this bench."""
    return _machine_lines("opentelemetry-processor-baggage")


class NullExporter(SpanExporter):
    """Accepts every batch and does nothing but count it."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


class NoopProcessor(SpanProcessor):
    def on_start(self, span: object, parent_context: Optional[Context] = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        return None


class Pipeline:
    def __init__(self, label: str, extra: Optional[SpanProcessor], queue: int) -> None:
        self.label = label
        self.exporter = NullExporter()
        self.provider = TracerProvider()
        if extra is not None:
            self.provider.add_span_processor(extra)  # first, as the lucidic configurator does
        self.provider.add_span_processor(
            BatchSpanProcessor(self.exporter, max_queue_size=queue, schedule_delay_millis=200)
        )
        self.tracer = self.provider.get_tracer("bench.span_overhead")
        self.created = 0
        self.open_spans: List[trace.Span] = []


# An input: (context passed to start_span, context attached around the block).
Input = Tuple[Optional[Context], Optional[Context]]


def inputs_for(pipeline: Pipeline) -> Dict[str, Input]:
    scope = context_with_session(SID, Context())
    inbound = baggage.set_baggage(BAGGAGE_KEY, SID, Context())
    # The parent is stamped through the context key; children see only the parent span.
    parent = pipeline.tracer.start_span("parent", context=set_value(SESSION_KEY, SID, Context()))
    pipeline.created += 1
    pipeline.open_spans.append(parent)
    return {
        "active scope": (None, scope),
        "baggage only": (inbound, None),
        "parent span": (trace.set_span_in_context(parent, Context()), None),
    }


def run_block(pipeline: Pipeline, inp: Input, n: int, bare: bool) -> Tuple[float, float]:
    """(CPU µs of this thread, wall µs) per span for ``n`` spans created and ended on ``inp``."""
    ctx, attached = inp
    tracer = pipeline.tracer
    token = attach(attached) if attached is not None else None
    try:
        gc.collect()
        if bare:
            cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
            for _ in range(n):
                tracer.start_span("child", context=ctx).end()
            cpu, wall = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
        else:
            cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
            for _ in range(n):
                with tracer.start_as_current_span("child", context=ctx):
                    pass
            cpu, wall = time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
    finally:
        if token is not None:
            detach(token)
    pipeline.created += n
    return cpu / n / 1000.0, wall / n / 1000.0


def check_stamp(pipeline: Pipeline, inp: Input, expected: Optional[str]) -> Optional[str]:
    """A problem description if a span started on ``inp`` is not stamped ``expected``."""
    ctx, attached = inp
    token = attach(attached) if attached is not None else None
    try:
        span = pipeline.tracer.start_span("check", context=ctx)
    finally:
        if token is not None:
            detach(token)
    got = (span.attributes or {}).get(SESSION_ATTRIBUTE)
    span.end()
    pipeline.created += 1
    if got != expected:
        return f"{pipeline.label}: expected {SESSION_ATTRIBUTE}={expected!r}, got {got!r}"
    return None


def spread(values: Sequence[float], fmt: str) -> str:
    return " ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--reps", type=int, help="repetitions (default 30, quick 5)")
    parser.add_argument("--spans", type=int, help="spans per block (default 5000, quick 1000)")
    parser.add_argument(
        "--bare", action="store_true", help="start_span().end() instead of start_as_current_span"
    )
    args = parser.parse_args(argv)
    reps = args.reps or (5 if args.quick else 30)
    n = args.spans or (1000 if args.quick else 5000)

    try:
        from opentelemetry.processor.baggage import BaggageSpanProcessor
    except ImportError:
        print(
            "opentelemetry-processor-baggage is not installed: pip install "
            "opentelemetry-processor-baggage==0.66b1",
            file=sys.stderr,
        )
        return 2

    queue = n * 4  # never full: a dropped span would make a pipeline look cheaper
    settings = load_settings({})  # accept mode, as a default install
    base = Pipeline("(a) BSP + null exporter", None, queue)
    ours = {
        key: Pipeline(label, LucidicSpanProcessor(settings), queue)
        for key, label in (
            ("b", "(b) + lucidic, active scope"),
            ("c", "(c) + lucidic, baggage only"),
            ("d", "(d) + lucidic, parent span"),
        )
    }
    contrib = Pipeline(
        "(e) + contrib BaggageSpanProcessor",
        BaggageSpanProcessor(lambda key: key == BAGGAGE_KEY),
        queue,
    )

    floor = Pipeline("(f) + no-op processor (floor)", NoopProcessor(), queue)

    base_inputs = inputs_for(base)
    blocks: List[Tuple[str, Pipeline, str, Input]] = [
        ("a:" + name, base, name, inp) for name, inp in base_inputs.items()
    ]
    blocks += [
        ("b", ours["b"], "active scope", inputs_for(ours["b"])["active scope"]),
        ("c", ours["c"], "baggage only", inputs_for(ours["c"])["baggage only"]),
        ("d", ours["d"], "parent span", inputs_for(ours["d"])["parent span"]),
        ("e", contrib, "baggage only", inputs_for(contrib)["baggage only"]),
        ("f", floor, "active scope", inputs_for(floor)["active scope"]),
    ]

    problems = [
        p
        for p in (
            check_stamp(ours["b"], blocks[3][3], SID),
            check_stamp(ours["c"], blocks[4][3], SID),
            check_stamp(ours["d"], blocks[5][3], SID),
            check_stamp(contrib, blocks[6][3], SID),
            check_stamp(base, base_inputs["active scope"], None),
        )
        if p
    ]

    mode = "start_span().end()" if args.bare else "start_as_current_span"
    print("== span overhead ==")
    for line in machine_lines():
        print(line)
    print(
        f"workload: {mode}, no attributes; {reps} repetitions x {n} spans per block, "
        f"{len(blocks)} blocks interleaved in rotating order; 1 warm-up repetition dropped"
    )

    cpu: Dict[str, List[float]] = {key: [] for key, *_ in blocks}
    wall: Dict[str, List[float]] = {key: [] for key, *_ in blocks}
    for rep in range(reps + 1):
        shift = rep % len(blocks)
        for key, pipeline, _name, inp in blocks[shift:] + blocks[:shift]:
            cpu_us, wall_us = run_block(pipeline, inp, n, args.bare)
            if rep:
                cpu[key].append(cpu_us)
                wall[key].append(wall_us)

    def ratios(times: Dict[str, List[float]], key: str, input_name: str) -> List[float]:
        return [x / a for x, a in zip(times[key], times["a:" + input_name], strict=True)]

    print()
    print(
        "CPU µs per span on the application thread, and ratio to (a) on the same input in the "
        "same repetition (min / median / max); wall-clock ratio median for comparison"
    )
    header = (
        f"{'pipeline':<36} {'input':<13} {'CPU µs/span min med max':>23}  "
        f"{'ratio min med max':>19}  {'wall ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    results: Dict[str, float] = {}
    for key, pipeline, name, _inp in blocks:
        if key.startswith("a:"):
            ratio_text = f"{'1 (baseline)':>19}  {'':>10}"
        else:
            r = ratios(cpu, key, name)
            results[key] = statistics.median(r)
            w = statistics.median(ratios(wall, key, name))
            ratio_text = f"{spread(r, '.3f'):>19}  {w:>10.3f}"
        print(f"{pipeline.label:<36} {name:<13} {spread(cpu[key], '6.2f'):>23}  {ratio_text}")

    print()
    print("targets (median CPU ratios)")
    for key in ("b", "c", "d"):
        r = results[key]
        verdict = "met" if r <= TARGET_RATIO else "MISSED"
        stretch = "met" if r <= STRETCH_RATIO else "not met"
        cheaper = "yes" if r < results["e"] else "NO"
        print(
            f"  ({key}) {r:.3f}x  <= {TARGET_RATIO:.2f}x: {verdict:<6}  "
            f"<= {STRETCH_RATIO:.2f}x: {stretch:<7}  "
            f"cheaper than (e) {results['e']:.3f}x: {cheaper}"
        )
    print(f"  floor: a processor that does nothing costs {results['f']:.3f}x")

    all_pipelines = [base, *ours.values(), contrib, floor]
    for pipeline in all_pipelines:
        for span in pipeline.open_spans:
            span.end()
        pipeline.provider.force_flush()
        pipeline.provider.shutdown()
    lost = {p.label: p.created - p.exporter.count for p in all_pipelines}
    problems += [f"{label}: {k} spans not exported" for label, k in lost.items() if k]
    print()
    print(
        "checks: "
        + (
            "ok (every span stamped as expected and exported)"
            if not problems
            else "; ".join(problems)
        )
    )
    alive = [t.name for t in threading.enumerate() if t.name.startswith("OtelBatch")]
    if alive:
        print(f"note: {len(alive)} batch worker threads still alive after shutdown")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
