"""What the outbound session-baggage policy costs per outgoing request, against the stock
propagators, in one interleaved run.

One "request" is what an HTTP client instrumentation does: start a CLIENT span with its URL
attributes (the session processor stamps it), inject the global propagator into a header dict,
end the span. Pipelines share one SDK provider (a BatchSpanProcessor with a null exporter and
the session processor); only the propagator differs:

  (a) stock ``tracecontext,baggage``: the baseline;
  (b) the same, wrapped by the policy (:class:`lucidic_otel.sdk.egress.SessionBaggagePolicy`).

Inputs: no session in the context (the policy must cost nothing measurable); a session, to an
own host (sent); a session inside an LLM client call (withheld); a session with an allow-list
that does not match (withheld). Each ratio is (b) / (a) on the same input in the same repetition;
blocks rotate so drift spreads over both. Costs are CPU time of the application thread.

    python bench/egress.py            # 30 repetitions x 3,000 requests per block
    python bench/egress.py --quick    # a few seconds, for CI

Targets (median CPU ratio): no session <= 1.02; with a session <= 1.10 (the stamping budget).
Exit status is non-zero only when a carrier got the wrong headers, never for a timing.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from _machine import machine_lines
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from lucidic_otel.config import load_settings
from lucidic_otel.sdk.egress import OutboundPolicy, SessionBaggagePolicy
from lucidic_otel.sdk.processor import LucidicSpanProcessor
from lucidic_otel.sessions.context import BAGGAGE_KEY, context_with_session

SID = "bench-session-0001"
OWN = {"url.full": "http://orders.internal:8080/v1/orders", "server.address": "orders.internal"}
LLM = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}
TARGETS = {"no session": 1.02, "session, own host": 1.10, "session, in LLM call": 1.10,
           "session, allow-list miss": 1.10}


class NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


Request = Callable[[object], Dict[str, str]]


def _requests(tracer: trace.Tracer) -> Dict[str, Tuple[Context, bool, Request]]:
    """input name -> (context to run in, whether the session must go out, one request)."""

    def plain(propagator: object) -> Dict[str, str]:
        headers: Dict[str, str] = {}
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes=OWN):
            propagator.inject(headers)  # type: ignore[attr-defined]
        return headers

    def inside_llm(propagator: object) -> Dict[str, str]:
        with tracer.start_as_current_span("chat", kind=SpanKind.CLIENT, attributes=LLM):
            return plain(propagator)

    session = context_with_session(SID, Context())
    return {
        "no session": (Context(), False, plain),
        "session, own host": (session, True, plain),
        "session, in LLM call": (session, False, inside_llm),
        "session, allow-list miss": (session, False, plain),
    }


def run_block(ctx: Context, request: Request, propagator: object, n: int) -> float:
    token = attach(ctx)
    try:
        gc.disable()
        start = time.thread_time_ns()
        for _ in range(n):
            request(propagator)
        return (time.thread_time_ns() - start) / n / 1000.0
    finally:
        gc.enable()
        detach(token)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    reps, n = (5, 500) if args.quick else (args.reps, args.n)

    provider = TracerProvider()
    provider.add_span_processor(LucidicSpanProcessor(load_settings({})))
    provider.add_span_processor(BatchSpanProcessor(NullExporter(), max_queue_size=1 << 16))
    tracer = provider.get_tracer("bench")
    stock = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    default_policy = SessionBaggagePolicy(stock, OutboundPolicy(load_settings({})))
    allow_list = SessionBaggagePolicy(
        stock, OutboundPolicy(load_settings({"LUCIDIC_PROPAGATE_TO": "*.cluster.local"})))
    cases = _requests(tracer)

    print("== egress ==")
    for line in machine_lines("opentelemetry-api"):
        print(line)
    bad = 0
    for name, (ctx, sent, request) in cases.items():  # correctness first
        wrapped = allow_list if name == "session, allow-list miss" else default_policy
        token = attach(ctx)
        try:
            headers = request(wrapped)
        finally:
            detach(token)
        got = BAGGAGE_KEY in headers.get("baggage", "")
        if got != sent or "traceparent" not in headers:
            bad += 1
            print(f"WRONG: {name}: headers {headers}")
    costs: Dict[Tuple[str, str], List[float]] = {}
    order = [(name, which) for name in cases for which in ("stock", "policy")]
    for rep in range(reps):
        rotated = order[rep % len(order):] + order[: rep % len(order)]
        for name, which in rotated:
            ctx, _, request = cases[name]
            wrapped = allow_list if name == "session, allow-list miss" else default_policy
            propagator = stock if which == "stock" else wrapped
            costs.setdefault((name, which), []).append(run_block(ctx, request, propagator, n))
    provider.shutdown()
    print(f"{reps} repetitions x {n} requests per block; CPU µs per request (span + inject)")
    print(f"{'input':<26} {'stock µs':>9} {'policy µs':>10} {'ratio min med max':>20} "
          f"{'target':>7}")
    for name in cases:
        pairs = zip(costs[(name, "policy")], costs[(name, "stock")], strict=True)
        ratios = sorted(policy / stock for policy, stock in pairs)
        med = statistics.median(ratios)
        print(f"{name:<26} {statistics.median(costs[(name, 'stock')]):>9.2f} "
              f"{statistics.median(costs[(name, 'policy')]):>10.2f} "
              f"{ratios[0]:>6.3f} {med:>6.3f} {ratios[-1]:>6.3f} {TARGETS[name]:>7.2f}"
              + ("" if med <= TARGETS[name] else "  over target"))
    print("targets (median CPU ratio): no session <= 1.02; with a session <= 1.10")
    print("checks: " + ("ok" if not bad else f"{bad} wrong carriers"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
