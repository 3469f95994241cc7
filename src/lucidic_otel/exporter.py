"""The ``lucidic`` trace exporter: finished spans into the local store and outbox.

It runs on the BatchSpanProcessor's worker thread, never the application's. Every span of a
session is kept locally (so ``lucidic-otel show`` can draw the whole cross-service tree); the
spans that map to Lucidic event types also become outbox events for the backend. Session
lifecycle records waiting in the journal are written before the batch, so a session's start
precedes its events in the outbox and an end recorded after a flush follows them.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from lucidic_otel.config import Settings, get_settings
from lucidic_otel.context import SESSION_ATTRIBUTE
from lucidic_otel.events import llm_summary, span_to_event
from lucidic_otel.ids import event_id
from lucidic_otel.processor import PROCESS_SESSION
from lucidic_otel.sessions import END, INIT, JOURNAL, LifecycleJournal
from lucidic_otel.store import SpanRecord, Store, default_store_path

logger = logging.getLogger("lucidic_otel")

# Span attributes that carry prompt, completion or tool text: removed when content is off.
CONTENT_ATTRIBUTE_PREFIXES = (
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.prompt",
    "gen_ai.completion",
    "gen_ai.tool.call.arguments",
    "gen_ai.tool.call.result",
    "gen_ai.tool.definitions",
    "input.value",
    "output.value",
    "llm.input_messages",
    "llm.output_messages",
    "llm.prompts",
)


def strip_content(attributes: Mapping[str, Any]) -> Dict[str, Any]:
    """``attributes`` without any prompt/completion/tool text."""
    return {k: v for k, v in attributes.items() if not k.startswith(CONTENT_ATTRIBUTE_PREFIXES)}


_SPAN_KINDS = ("INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")


class LucidicSpanExporter(SpanExporter):
    """Entry point ``opentelemetry_traces_exporter`` = ``lucidic``.

    Constructed by the SDK with no arguments, so it reads its settings itself. The store is
    opened lazily on the export thread.
    """

    def __init__(
        self,
        settings: Optional[Settings] = None,
        store: Optional[Store] = None,
        journal: LifecycleJournal = JOURNAL,
    ) -> None:
        self._settings = settings or get_settings()
        self._store = store
        self._journal = journal
        self._lock = threading.Lock()
        self._shutdown = False
        self.failures = 0

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    path = self._settings.store_path or default_store_path(os.environ)
                    self._store = Store(path, max_bytes=self._settings.store_max_bytes)
        return self._store

    def _write_lifecycle(self) -> None:
        for kind, session_id, body in self._journal.drain():
            if kind == INIT:
                self.store.record_session_init(session_id, body)
            elif kind == END:
                self.store.record_session_end(session_id, body)

    def _record(self, span: ReadableSpan, pid: int) -> tuple[SpanRecord, Optional[dict]]:
        ctx = span.context
        attributes: Mapping[str, Any] = span.attributes or {}
        session_id = attributes.get(SESSION_ATTRIBUTE) or PROCESS_SESSION.session_id
        capture = self._settings.capture_content
        event = None
        if session_id is not None:
            event = span_to_event(span, str(session_id), None, capture_content=capture)
        stored_attributes = dict(attributes) if capture else strip_content(attributes)
        summary = (
            llm_summary(span)
            if event is not None and event.get("type") == "llm_generation"
            else None
        )
        parent = span.parent
        resource = span.resource.attributes if span.resource is not None else {}
        status = span.status
        record = SpanRecord(
            trace_id=f"{ctx.trace_id:032x}",
            span_id=f"{ctx.span_id:016x}",
            parent_span_id=f"{parent.span_id:016x}" if parent is not None else None,
            session_id=None if session_id is None else str(session_id),
            name=span.name,
            kind=_SPAN_KINDS[span.kind.value] if span.kind is not None else "INTERNAL",
            service=str(resource.get("service.name", "unknown_service")),
            pid=pid,
            start_ns=span.start_time or 0,
            end_ns=span.end_time or 0,
            status_code=status.status_code.name,
            status_message=status.description,
            attributes=stored_attributes,
            events=[
                {
                    "name": e.name,
                    "time_ns": e.timestamp,
                    "attributes": dict(e.attributes or {})
                    if capture
                    else strip_content(e.attributes or {}),
                }
                for e in span.events
            ],
            resource=dict(resource),
            event_id=event_id(ctx.trace_id, ctx.span_id),
            event_type=event.get("type") if event is not None else None,
            model=summary.get("model") if summary else None,
            input_tokens=summary.get("input_tokens") if summary else None,
            output_tokens=summary.get("output_tokens") if summary else None,
            cost=summary.get("cost") if summary else None,
        )
        return record, event

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            self._write_lifecycle()
            pid = os.getpid()
            records: List[SpanRecord] = []
            events: List[dict] = []
            for span in spans:
                record, event = self._record(span, pid)
                records.append(record)
                if event is not None:
                    events.append(event)
            self.store.write_batch(records, events)
            return SpanExportResult.SUCCESS
        except Exception:
            self.failures += 1
            logger.exception("lucidic-otel: could not store %d spans", len(spans))
            return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            self._write_lifecycle()
            return True
        except Exception:
            logger.exception("lucidic-otel: could not store session lifecycle records")
            return False

    def shutdown(self, timeout_millis: int = 30000, **kwargs: Any) -> None:
        if self._shutdown:
            return
        self.force_flush(timeout_millis)
        self._shutdown = True
