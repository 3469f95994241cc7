"""A loopback OTLP/HTTP trace receiver that decodes spans into plain dicts.

Tests assert on what an exporter actually put on the wire, so spans are decoded from the real
``ExportTraceServiceRequest`` protobuf instead of being captured in-process. A local receiver is
used instead of ``opentelemetry-test-utils`` because that package pins an older SDK, and instead
of ``oteltest`` because that binds every interface.

Each received span becomes one flat dict::

    name, trace_id (32 hex), span_id (16 hex), parent_span_id (16 hex or None), trace_state,
    kind ("INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER" or "UNSPECIFIED"),
    status_code ("UNSET", "OK" or "ERROR"), status_message, attributes (dict), resource (dict),
    scope (name), scope_version, events (list of {name, attributes, time_unix_nano}),
    links (list of {trace_id, span_id, attributes}), start_time_unix_nano, end_time_unix_nano

Attribute values become Python values: str, bool, int, float, bytes, lists and dicts.
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from types import TracebackType
from typing import Any, Callable, Iterable, Union

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

ReceivedSpan = dict[str, Any]
SpanPredicate = Union[str, Callable[[ReceivedSpan], bool]]

TRACES_PATH = "/v1/traces"
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_RECORDED_HEADERS = 1000


def decode_value(value: AnyValue) -> Any:
    """The Python value held by an OTLP ``AnyValue`` (None when it holds nothing)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [decode_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    return getattr(value, kind)


def decode_attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """OTLP ``KeyValue`` pairs as a dict; a repeated key keeps its last value, as the SDK does."""
    return {pair.key: decode_value(pair.value) for pair in pairs}


def _hex_or_none(raw: bytes) -> str | None:
    return raw.hex() if raw else None


def _enum_suffix(name: str, prefix: str) -> str:
    return name[len(prefix) :] if name.startswith(prefix) else name


def decode_request(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Flatten one export request into span dicts, each carrying its resource and scope."""
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = decode_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            for span in scope_spans.spans:
                spans.append(
                    {
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": _hex_or_none(span.parent_span_id),
                        "trace_state": span.trace_state,
                        "kind": _enum_suffix(Span.SpanKind.Name(span.kind), "SPAN_KIND_"),
                        "status_code": _enum_suffix(
                            Status.StatusCode.Name(span.status.code), "STATUS_CODE_"
                        ),
                        "status_message": span.status.message,
                        "attributes": decode_attributes(span.attributes),
                        "resource": resource,
                        "scope": scope.name,
                        "scope_version": scope.version,
                        "events": [
                            {
                                "name": event.name,
                                "attributes": decode_attributes(event.attributes),
                                "time_unix_nano": event.time_unix_nano,
                            }
                            for event in span.events
                        ],
                        "links": [
                            {
                                "trace_id": link.trace_id.hex(),
                                "span_id": link.span_id.hex(),
                                "attributes": decode_attributes(link.attributes),
                            }
                            for link in span.links
                        ],
                        "start_time_unix_nano": span.start_time_unix_nano,
                        "end_time_unix_nano": span.end_time_unix_nano,
                    }
                )
    return spans


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _ReceiverHTTPServer
    disable_nagle_algorithm = True  # split header/body writes would otherwise stall ~40 ms

    def log_message(self, *args: Any) -> None:
        """Silent: pytest output should show test failures, not an access log."""

    def handle(self) -> None:
        """An exporter that gives up mid-request (shutdown, timeout) is not a receiver error."""
        try:
            super().handle()
        except OSError:  # reset, broken pipe or timeout (not TimeoutError on Python 3.9)
            self.close_connection = True

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != TRACES_PATH:
            self._reply(404, b"not found", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._reply(413, b"bad length", "text/plain")
            return
        body = self.rfile.read(length)
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
        except Exception as error:  # any undecodable payload is the sender's bug: report it
            self._reply(400, f"cannot decode: {error}".encode(), "text/plain")
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.owner._receive(decode_request(request), headers)
        self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _ReceiverHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: OTLPTraceReceiver) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)


class OTLPTraceReceiver:
    """Collects spans sent by any OTLP/HTTP protobuf exporter; use as a context manager.

    The handler speaks HTTP/1.0, so every export is its own connection and ``stop()`` never
    waits on an idle keep-alive socket.
    """

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._headers: list[dict[str, str]] = []
        self._changed = threading.Condition()
        self._server: _ReceiverHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """The full traces URL, for ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``."""
        if self._server is None:
            raise RuntimeError("OTLPTraceReceiver is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}{TRACES_PATH}"

    @property
    def spans(self) -> list[ReceivedSpan]:
        """A snapshot of every span received so far, in arrival order."""
        with self._changed:
            return list(self._spans)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """Lower-cased headers of the newest 1000 export requests, to check exporter config."""
        with self._changed:
            return list(self._headers)

    def clear(self) -> None:
        """Forget everything received, so a test can wait for spans it caused itself."""
        with self._changed:
            self._spans.clear()
            self._headers.clear()

    def wait_for(
        self, predicate: SpanPredicate = lambda span: True, timeout: float = 10.0, count: int = 1
    ) -> list[ReceivedSpan]:
        """Return the matching spans once at least ``count`` have arrived.

        ``predicate`` is a span name or a function of a span. Spans arrive asynchronously from
        the exporter's thread or process, hence the wait; on timeout this raises
        ``AssertionError`` listing what did arrive, which is what a failing test needs to show.
        """
        matches = (
            (lambda span: span["name"] == predicate) if isinstance(predicate, str) else predicate
        )
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:  # bounded: every pass either returns or waits out part of the deadline
                found = [span for span in self._spans if matches(span)]
                remaining = deadline - time.monotonic()
                if len(found) >= count or remaining <= 0:
                    break
                self._changed.wait(remaining)
            names = sorted({span["name"] for span in self._spans})
        if len(found) >= count:
            return found
        raise AssertionError(
            f"expected {count} matching span(s) within {timeout}s, got {len(found)}; "
            f"received names: {names}"
        )

    def start(self) -> OTLPTraceReceiver:
        """Bind 127.0.0.1 on a free port and serve on a daemon thread."""
        if self._server is not None:
            raise RuntimeError("OTLPTraceReceiver is already running")
        self._server = _ReceiverHTTPServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; safe to call twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)
        self._server = None
        self._thread = None

    def __enter__(self) -> OTLPTraceReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _receive(self, spans: list[ReceivedSpan], headers: dict[str, str]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self._headers.append(headers)
            del self._headers[:-MAX_RECORDED_HEADERS]
            self._changed.notify_all()
