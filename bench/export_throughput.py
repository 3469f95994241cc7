"""Export throughput: the ``lucidic`` exporter into SQLite against stock OTLP/HTTP on loopback.

The same finished spans go through both exporters in one run, interleaved (the order
alternates every repetition), by calling ``exporter.export(batch)`` directly with batches of
512 pre-built spans, so only the exporters are measured:

  lucidic: LucidicSpanExporter with LUCIDIC_STORE_PATH in a temporary directory (conversion to
           records and events, then one SQLite transaction per batch);
  otlp:    the stock OTLPSpanExporter (opentelemetry.exporter.otlp.proto.http) posting
           protobuf to a minimal receiver on 127.0.0.1 that reads the body and answers 200
           with an empty ExportTraceServiceResponse. The receiver is a separate process (as
           a collector would be), so it does not compete with the exporter for the GIL.

The span mix is realistic: 45% HTTP server spans and 45% database client spans with about
10 attributes each, and 10% GenAI chat spans with input/output messages and usage. Every
repetition uses fresh spans (new ids), as the store keys rows by span.

    python bench/export_throughput.py            # 15 repetitions x 4 batches x 512 spans
    python bench/export_throughput.py --quick    # 2 repetitions x 2 batches, for CI
    python bench/export_throughput.py --breakdown  # also: where the lucidic exporter's time goes

Target: lucidic/otlp spans/s ratio >= 1.0. Exit status is non-zero only when an export fails.
"""

from __future__ import annotations

import argparse
import gc
import http.server
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from _machine import machine_lines as _machine_lines  # noqa: E402

BATCH = 512
TARGET_RATIO = 1.0


def machine_lines() -> List[str]:
    """The machine and the versions, for the header of this bench."""
    return _machine_lines(
        "opentelemetry-exporter-otlp-proto-http",
        "protobuf",
        extras=[f"SQLite {sqlite3.sqlite_version}"],
    )


# --- the receiver (runs in a child process: python export_throughput.py --serve) ------------


def serve() -> int:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    reply = ExportTraceServiceResponse().SerializeToString()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a collector offers

        def log_message(self, *args: Any) -> None:
            return None

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


# --- spans -------------------------------------------------------------------------------


def _messages(rng: random.Random) -> tuple:
    question = " ".join(
        rng.choice(("order", "refund", "status", "late", "parcel", "why", "my")) for _ in range(40)
    )
    inputs = [
        {"role": "system", "parts": [{"type": "text", "content": "You are a support agent. " * 8}]},
        {"role": "user", "parts": [{"type": "text", "content": question}]},
    ]
    outputs = [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "I checked the order and " + question}],
            "finish_reason": "stop",
        }
    ]
    return json.dumps(inputs), json.dumps(outputs)


def build_batches(n_batches: int, rep: int) -> List[List[Any]]:
    """``n_batches`` batches of finished SDK spans, made by a real tracer (fresh ids)."""
    from opentelemetry.context import Context, set_value
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from lucidic_otel.config import load_settings
    from lucidic_otel.sdk.processor import LucidicSpanProcessor
    from lucidic_otel.sessions.context import SESSION_KEY

    rng = random.Random(rep)
    memory = InMemorySpanExporter()
    resource = Resource.create(
        {"service.name": "checkout", "service.version": "1.4.2", "deployment.environment": "prod"}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(LucidicSpanProcessor(load_settings({})))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench.export_throughput", "1.0")

    def http(kind: SpanKind) -> Dict[str, Any]:
        return {
            "http.request.method": "GET",
            "http.route": "/orders/{id}",
            "url.path": f"/orders/{rng.randrange(10**6)}",
            "url.scheme": "https",
            "http.response.status_code": 200,
            "server.address": "api.example.com" if kind is SpanKind.SERVER else "stock.internal",
            "server.port": 443,
            "network.protocol.version": "1.1",
            "client.address": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
            "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) bench/1.0",
        }

    def db() -> Dict[str, Any]:
        return {
            "db.system.name": "postgresql",
            "db.namespace": "shop",
            "db.collection.name": "orders",
            "db.operation.name": "SELECT",
            "db.query.text": "SELECT id, status, total FROM orders WHERE id = $1",
            "db.response.returned_rows": rng.randrange(5),
            "server.address": "db.internal",
            "server.port": 5432,
            "network.peer.address": "10.1.2.3",
            "network.peer.port": 5432,
        }

    def chat() -> Dict[str, Any]:
        inputs, outputs = _messages(rng)
        return {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "gen_ai.response.id": f"chatcmpl-{rng.getrandbits(64):x}",
            "gen_ai.request.temperature": 0.2,
            "gen_ai.request.max_tokens": 512,
            "gen_ai.response.finish_reasons": ("stop",),
            "gen_ai.usage.input_tokens": rng.randrange(200, 2000),
            "gen_ai.usage.output_tokens": rng.randrange(20, 400),
            "gen_ai.input.messages": inputs,
            "gen_ai.output.messages": outputs,
            "server.address": "api.openai.com",
            "server.port": 443,
        }

    # Requests of 10 spans: an HTTP server root, then children in the order below, so that
    # HTTP and database spans are 45% each and GenAI chat spans 10%.
    children = ("db", "http", "db", "http", "chat", "db", "http", "db", "http")
    total = n_batches * BATCH
    created = 0
    request = 0
    while created < total:
        ctx = set_value(SESSION_KEY, f"export-{rep}-{request // 8}", Context())
        request += 1
        with tracer.start_as_current_span(
            "GET /orders/{id}", context=ctx, kind=SpanKind.SERVER, attributes=http(SpanKind.SERVER)
        ):
            created += 1
            for child in children[: total - created]:
                if child == "chat":
                    name, kind, attributes = "chat gpt-4o-mini", SpanKind.CLIENT, chat()
                elif child == "db":
                    name, kind, attributes = "SELECT orders", SpanKind.CLIENT, db()
                else:
                    name, kind, attributes = "GET", SpanKind.CLIENT, http(SpanKind.CLIENT)
                with tracer.start_as_current_span(name, kind=kind, attributes=attributes):
                    created += 1
    provider.shutdown()
    spans = list(memory.get_finished_spans())[:total]
    return [spans[k : k + BATCH] for k in range(0, total, BATCH)]


def mix(batches: List[List[Any]]) -> str:
    spans = [s for b in batches for s in b]
    genai = sum(1 for s in spans if (s.attributes or {}).get("gen_ai.operation.name"))
    attrs = statistics.mean(len(s.attributes or {}) for s in spans)
    return (
        f"{len(spans)} spans per repetition, {100 * genai / len(spans):.0f}% GenAI chat, "
        f"{attrs:.1f} attributes per span on average (session stamps included)"
    )


# --- run ---------------------------------------------------------------------------------


def spread(values: Sequence[float], fmt: str) -> str:
    return " ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def export_all(exporter: Any, batches: List[List[Any]]) -> Tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) to export ``batches`` one by one."""
    from opentelemetry.sdk.trace.export import SpanExportResult

    gc.collect()
    cpu, wall = time.thread_time(), time.perf_counter()
    for batch in batches:
        result = exporter.export(batch)
        if result is not SpanExportResult.SUCCESS:
            raise RuntimeError(f"{type(exporter).__name__}.export returned {result}")
    return time.perf_counter() - wall, time.thread_time() - cpu


def breakdown(exporter: Any, batches: List[List[Any]]) -> Dict[str, float]:
    """Seconds the lucidic exporter spends converting spans versus writing them."""
    pid = os.getpid()
    convert = write = 0.0
    for batch in batches:
        t0 = time.perf_counter()
        records, events = [], []
        for span in batch:
            record, event = exporter._record(span, pid)
            records.append(record)
            if event is not None:
                events.append(event)
        t1 = time.perf_counter()
        exporter.store.write_batch(records, events)
        t2 = time.perf_counter()
        convert += t1 - t0
        write += t2 - t1
    return {"convert": convert, "write": write}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--reps", type=int, help="repetitions (default 15, quick 2)")
    parser.add_argument("--batches", type=int, help="batches of 512 per repetition (default 4)")
    parser.add_argument("--breakdown", action="store_true", help="split lucidic's time")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve()
    reps = args.reps or (2 if args.quick else 15)
    n_batches = args.batches or (2 if args.quick else 4)

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from lucidic_otel.config import load_settings
    from lucidic_otel.sdk.exporter import LucidicSpanExporter
    from lucidic_otel.sessions.lifecycle import LifecycleJournal

    receiver = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"],
        stdout=subprocess.PIPE,
        text=True,
    )
    tmp = tempfile.TemporaryDirectory(prefix="lucidic-bench-export-")
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        settings = load_settings({"LUCIDIC_STORE_PATH": str(Path(tmp.name) / "store.db")})
        exporters = {
            "lucidic": LucidicSpanExporter(settings=settings, journal=LifecycleJournal()),
            "otlp": OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=30),
        }

        print("== export throughput ==")
        for line in machine_lines():
            print(line)
        print(
            f"{reps} repetitions x {n_batches} batches x {BATCH} spans, exporters interleaved "
            "(order alternating), after 1 warm-up repetition"
        )

        rates: Dict[str, List[float]] = {k: [] for k in exporters}
        cpu_rates: Dict[str, List[float]] = {k: [] for k in exporters}
        ratios: List[float] = []
        cpu_ratios: List[float] = []
        split: Dict[str, float] = {"convert": 0.0, "write": 0.0}
        for rep in range(reps + 1):
            batches = build_batches(n_batches, rep)
            if rep == 0:
                print(mix(batches))
            order = list(exporters) if rep % 2 else list(exporters)[::-1]
            got: Dict[str, float] = {}
            got_cpu: Dict[str, float] = {}
            for name in order:
                wall_s, cpu_s = export_all(exporters[name], batches)
                got[name] = n_batches * BATCH / wall_s
                got_cpu[name] = n_batches * BATCH / cpu_s
            if rep:
                for name in exporters:
                    rates[name].append(got[name])
                    cpu_rates[name].append(got_cpu[name])
                ratios.append(got["lucidic"] / got["otlp"])
                cpu_ratios.append(got_cpu["lucidic"] / got_cpu["otlp"])
            if args.breakdown and rep:
                fresh = build_batches(n_batches, 10_000 + rep)
                for key, seconds in breakdown(exporters["lucidic"], fresh).items():
                    split[key] += seconds
        for exporter in exporters.values():
            exporter.shutdown()
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
        tmp.cleanup()

    print()
    print(
        "spans/s (min / median / max over repetitions): wall clock, and per CPU second of the "
        "exporting thread"
    )
    header = f"{'exporter':<42} {'spans/s min med max':>26}  {'per CPU s min med max':>26}"
    print(header)
    print("-" * len(header))
    labels = {
        "lucidic": "lucidic (SQLite store + outbox)",
        "otlp": "otlp (proto over HTTP, loopback receiver)",
    }
    for name in exporters:
        print(
            f"{labels[name]:<42} {spread(rates[name], '8.0f'):>26}  "
            f"{spread(cpu_rates[name], '8.0f'):>26}"
        )
    print(
        f"{'ratio lucidic/otlp':<42} {spread(ratios, '8.3f'):>26}  {spread(cpu_ratios, '8.3f'):>26}"
    )
    if args.breakdown:
        total = split["convert"] + split["write"]
        n = reps * n_batches * BATCH
        print()
        print("lucidic exporter breakdown (µs per span)")
        print(
            f"  convert (_record: records + events): {split['convert'] / n * 1e6:7.1f} "
            f"({100 * split['convert'] / total:.0f}%)"
        )
        print(
            f"  store.write_batch (SQLite):          {split['write'] / n * 1e6:7.1f} "
            f"({100 * split['write'] / total:.0f}%)"
        )
    r = statistics.median(ratios)
    rc = statistics.median(cpu_ratios)
    print()
    print("targets (median ratio)")
    print(
        f"  lucidic/otlp {r:.3f}x >= {TARGET_RATIO:.2f}x: "
        f"{'met' if r >= TARGET_RATIO else 'MISSED'} (wall clock)"
    )
    print(
        f"  lucidic/otlp {rc:.3f}x >= {TARGET_RATIO:.2f}x: "
        f"{'met' if rc >= TARGET_RATIO else 'MISSED'} (CPU of the exporting thread; the "
        "receiver's work is not in it, SQLite's is)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
