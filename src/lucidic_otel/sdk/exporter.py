"""The ``lucidic`` trace exporter: finished spans into the local store and outbox.

It runs on the BatchSpanProcessor's worker thread, never the application's. Every span of a
session is kept locally (so ``lucidic-otel show`` can draw the whole cross-service tree); the
spans that map to Lucidic event types also become outbox events for the backend. Session
lifecycle records waiting in the journal are written before the batch, so a session's start
precedes its events in the outbox and an end recorded after a flush follows them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from lucidic_otel import _diagnostics, gil
from lucidic_otel.config import Settings, get_settings
from lucidic_otel.convert.events import span_to_event
from lucidic_otel.convert.layers import LateMerge, LayerSpan, LayerTracker
from lucidic_otel.convert.pricing import BUILTIN, RATE_FIELDS, PriceTable, table_from_json
from lucidic_otel.convert.values import plain
from lucidic_otel.delivery import sender
from lucidic_otel.ids import event_id
from lucidic_otel.outbox.store import SpanRecord, Store, default_store_path
from lucidic_otel.sdk import _fastpath, registry
from lucidic_otel.sdk.content import CONTENT_ATTRIBUTE_PREFIXES, strip_content
from lucidic_otel.sdk.handoff import HeldEnds
from lucidic_otel.sessions.context import SESSION_ATTRIBUTE
from lucidic_otel.sessions.lifecycle import END, INIT, JOURNAL, LifecycleJournal
from lucidic_otel.sessions.resolve import PROCESS_SESSION

logger = logging.getLogger(__name__)

__all__ = ["CONTENT_ATTRIBUTE_PREFIXES", "LucidicSpanExporter", "strip_content"]

# Enum members to their names by dict lookup: ``.name``/``.value`` of an Enum member is a
# descriptor call, and this runs for every exported span.
_KIND_NAMES: Dict[Any, str] = {kind: kind.name for kind in trace.SpanKind}
_STATUS_NAMES: Dict[Any, str] = {code: code.name for code in trace.StatusCode}


def _span_events(span: ReadableSpan, capture: bool) -> List[Dict[str, Any]]:
    """The span's events as stored: without content attributes unless content is captured."""
    events = span.events  # the SDK builds a new tuple on every read
    if not events:  # most spans: no list to build
        return []
    return [
        {
            "name": e.name,
            "time_ns": e.timestamp,
            "attributes": (dict if capture else strip_content)(e.attributes or {}),
        }
        for e in events
    ]


def _drop_llm_claim(record: SpanRecord) -> None:
    """A layer over a call that another span's event stands for: a plain span in the tree."""
    record.event_type = None
    record.model = None
    record.input_tokens = record.output_tokens = None
    record.cost = None


def _set_llm_summary(record: SpanRecord, event: Mapping[str, Any]) -> None:
    """The row's model, tokens and cost: those of its ``llm_generation`` event, so the local
    totals are what the backend is sent (a failed call's 0 tokens included)."""
    payload = event.get("payload") or {}
    usage = payload.get("usage") or {}
    record.model = (payload.get("request") or {}).get("model")
    record.input_tokens = usage.get("input_tokens")
    record.output_tokens = usage.get("output_tokens")
    record.cost = usage.get("cost")


def load_prices(path: Optional[Path]) -> PriceTable:
    """The built-in price table, with the ``LUCIDIC_PRICES`` file at ``path`` laid over it.

    Read once, when the exporter is made. A file that cannot be read or holds anything but
    valid entries gets one warning naming it and what is allowed; its valid entries are still
    used, and the built-in table always is.
    """
    if path is None:
        return BUILTIN
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        entries, problems = {}, [f"it could not be read as JSON ({type(exc).__name__}: {exc})"]
    else:
        entries, problems = table_from_json(data)
    if problems:
        logger.warning(
            "LUCIDIC_PRICES=%s: %s. Allowed: one JSON object {\"model-prefix\": {\"input\": "
            "usd_per_1M, \"output\": usd_per_1M, \"cached_input\": ..., \"cache_write\": ...}} "
            "(keys %s, numbers >= 0; input and output required). Using the built-in price "
            "table%s.",
            path, "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""),
            ", ".join(RATE_FIELDS), " with the file's valid entries" if entries else "",
        )
    return BUILTIN.merged(entries) if entries else BUILTIN


class LucidicSpanExporter(SpanExporter):
    """Entry point ``opentelemetry_traces_exporter`` = ``lucidic``.

    Constructed by the SDK with no arguments, so it reads its settings itself. The store is
    opened lazily on the export thread.

    What it owns: the store it opened itself (not one it was given), closed by
    :meth:`shutdown` unless delivery shares it. Its exit flush (registered with delivery) and
    the lifecycle journal's flusher stay after shutdown on purpose: a program that shuts its
    provider down before its sessions end at exit would otherwise lose their end records.
    """

    def __init__(
        self,
        settings: Optional[Settings] = None,
        store: Optional[Store] = None,
        journal: LifecycleJournal = JOURNAL,
    ) -> None:
        if _fastpath.built_by_sdk_configuration():
            # The SDK's exporter list: it adds this exporter to the provider it made global.
            registry.ATTACHED.add(trace.get_tracer_provider(), registry.PIPELINE)
        self._settings = settings or get_settings()
        self._store = store
        self._owns_store = store is None
        self._journal = journal
        self._lock = threading.Lock()
        self._shutdown = False
        self._last_resource: object = None
        self._last_resource_attributes: Dict[str, Any] = {}
        self.failures = 0
        self._setup_recorded = False
        self._prices = load_prices(getattr(self._settings, "prices_path", None))
        self._layers = LayerTracker(prices=self._prices)
        grace = self._settings.end_grace_s if self._settings.delivery_enabled else 0.0
        self._held = HeldEnds(grace, self._release_held)
        self._lifecycle_lock = threading.RLock()
        # Constructing the store opens nothing; a path that can never hold it is reported now,
        # before the program's own output, not at the first export (often at exit).
        self.store.check_path()
        if self._settings.delivery_enabled:
            # Lifecycle records still in memory at exit are written before the last delivery.
            sender.register_flush(self._flush_at_exit)
            sender.prestart(self.store, self._settings)
        journal.flusher = self.force_flush

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    path = self._settings.store_path or default_store_path(os.environ)
                    self._store = Store(
                        path,
                        max_bytes=self._settings.store_max_bytes,
                        delivery_enabled=self._settings.delivery_enabled,
                    )
        return self._store

    def _write_lifecycle(self, *, release_all: bool = False) -> int:
        """Write the journal's records; the end of a session whose baggage went to another
        service is held for the grace first (:mod:`~lucidic_otel.sdk.handoff`)."""
        # One writer at a time: drained records must reach the store in journal order, or an
        # end drained by one thread can be written before its start drained by another (the
        # store then ignores the end and the session stays open).
        with self._lifecycle_lock:
            return self._write_lifecycle_locked(release_all)

    def _write_lifecycle_locked(self, release_all: bool) -> int:
        released = self._held.due(release_all)
        for _, session_id, body in released:
            self.store.record_session_end(session_id, body)
        records = self._journal.drain()
        for kind, session_id, body in records:
            if kind == INIT:
                self.store.record_session_init(session_id, body)
            elif kind == END:
                if not release_all and self._held.hold(session_id, body):
                    continue
                self.store.record_session_end(session_id, body)
        return len(released) + len(records)

    def _release_held(self) -> None:
        """A held end came due: write it and wake the sender (on the grace timer's thread)."""
        if self._shutdown and not self._held:
            return
        with _diagnostics.guarded(logger, "writing a session end after its grace"):
            if self._write_lifecycle():
                self._wake_sender()

    def _flush_at_exit(self) -> None:
        """Delivery's last flush at exit: wait for held ends to come due (within the exit
        deadline's half, so the delivery keeps the rest), then write everything."""
        self._held.wait(self._settings.exit_deadline_s / 2)
        with _diagnostics.guarded(logger, "writing session records at exit"):
            if self._write_lifecycle(release_all=True):
                self._wake_sender()

    def _wake_sender(self) -> None:
        """Delivery runs on the sender's threads; this only wakes it (cheap)."""
        if self._settings.delivery_enabled:
            sender.notify(self.store, self._settings)

    def _resource_attributes(self, span: ReadableSpan) -> Dict[str, Any]:
        """One dict per Resource object: every span of a process shares it, and the store
        encodes a resource once per batch only when it sees the same dict again."""
        resource = span.resource
        if resource is not self._last_resource:
            self._last_resource = resource
            self._last_resource_attributes = dict(resource.attributes) if resource else {}
        return self._last_resource_attributes

    def _record(self, span: ReadableSpan, pid: int) -> tuple[SpanRecord, Optional[dict]]:
        """The stored row of ``span`` and, when it maps to a Lucidic event, that event."""
        ctx = span.context
        attributes: Mapping[str, Any] = span.attributes or {}
        session_id = attributes.get(SESSION_ATTRIBUTE) or PROCESS_SESSION.session_id
        capture = self._settings.capture_content
        event = None
        if session_id is not None:
            event = span_to_event(span, str(session_id), None, capture_content=capture,
                                  prices=self._prices)
        parent = span.parent
        resource = self._resource_attributes(span)
        status = span.status
        record = SpanRecord(
            trace_id=f"{ctx.trace_id:032x}",
            span_id=f"{ctx.span_id:016x}",
            parent_span_id=f"{parent.span_id:016x}" if parent is not None else None,
            session_id=None if session_id is None else str(session_id),
            name=span.name,
            kind=_KIND_NAMES.get(span.kind, "INTERNAL"),
            service=str(resource.get("service.name", "unknown_service")),
            pid=pid,
            start_ns=span.start_time or 0,
            end_ns=span.end_time or 0,
            status_code=_STATUS_NAMES.get(status.status_code, "UNSET"),
            status_message=status.description,
            attributes=plain(attributes) if capture else strip_content(attributes),
            events=_span_events(span, capture),
            resource=resource,
            event_id=event["client_event_id"]
            if event is not None
            else event_id(ctx.trace_id, ctx.span_id),
            event_type=event.get("type") if event is not None else None,
        )
        if record.event_type == "llm_generation":  # the row counts what the event says
            _set_llm_summary(record, event)  # type: ignore[arg-type]
        return record, event

    def _one_event_per_call(
        self,
        spans: Sequence[ReadableSpan],
        records: List[SpanRecord],
        events: List[Optional[dict]],
    ) -> List[LateMerge]:
        """Layers of one API call (see :mod:`lucidic_otel.convert.layers`) become one event.

        Edits ``records`` and ``events`` in place: the call's event (the union of its layers)
        stays at its innermost layer's place; the other layers' records lose their LLM claim
        (no event, model or tokens), so totals count the call once. Returns the updates for
        events written by an earlier batch.
        """
        placed: Dict[int, Any] = {}
        fresh: Dict[int, Any] = {}
        late: Dict[int, Any] = {}
        for index, event in enumerate(events):
            if event is None or event.get("type") != "llm_generation":
                continue
            record = records[index]
            scope = spans[index].instrumentation_scope
            verdict, call = self._layers.add(
                LayerSpan(
                    trace_id=record.trace_id,
                    span_id=record.span_id,
                    parent_span_id=record.parent_span_id,
                    session_id=event["session_id"],
                    scope=scope.name if scope is not None else None,
                    name=record.name,
                    event=event,
                )
            )
            events[index] = None
            if call is None:
                _drop_llm_claim(record)
                continue
            placed[index] = call
            if call.written:
                late[id(call)] = call
            else:
                fresh[id(call)] = call
        if not placed:
            return []
        for index, call in placed.items():
            record = records[index]
            if call.written or (record.trace_id, record.span_id) != call.primary:
                _drop_llm_claim(record)
                continue
            events[index] = call.event
            _set_llm_summary(record, call.event)
        self._layers.mark_written(list(fresh.values()))
        merges = []
        for call in late.values():
            usage = call.event["payload"].get("usage") or {}
            merges.append(
                LateMerge(
                    session_id=call.session_id,
                    event_key=call.event["client_event_id"],
                    trace_id=call.primary[0],
                    span_id=call.primary[1],
                    body=call.event,
                    model=call.event["payload"].get("request", {}).get("model"),
                    input_tokens=usage.get("input_tokens"),
                    output_tokens=usage.get("output_tokens"),
                    cost=usage.get("cost"),
                )
            )
        return merges

    def _record_setup(self, spans: Sequence[ReadableSpan]) -> None:
        """Once per process: how OpenTelemetry was set up here, for ``doctor`` to show."""
        report = registry.setup_report()
        if not report or not spans:
            return
        self._setup_recorded = True
        report["service"] = self._resource_attributes(spans[0]).get("service.name")
        self.store.record_setup(report)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            if not self._setup_recorded:
                self._record_setup(spans)
            self._write_lifecycle()
            pid = os.getpid()
            records: List[SpanRecord] = []
            events: List[Optional[dict]] = []
            for span in spans:
                gil.tick()  # long work on the application's GIL
                record, event = self._record(span, pid)
                records.append(record)
                events.append(event)
            original = list(events)
            try:
                late = self._one_event_per_call(spans, records, events)
            except Exception:  # never lose a batch to the merge: store the layers unmerged
                logger.debug("lucidic-otel: could not merge LLM layers", exc_info=True)
                events, late = original, []
            self.store.write_batch(records, [e for e in events if e is not None])
            for merge in late:
                self.store.merge_llm_layer(merge)
            gil.rest()  # the export thread goes back to waiting for spans
            self._wake_sender()
            return SpanExportResult.SUCCESS
        except Exception:
            self.failures += 1
            logger.exception("lucidic-otel: could not store %d spans", len(spans))
            return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            if self._write_lifecycle():
                self._wake_sender()
            return True
        except Exception:
            logger.exception("lucidic-otel: could not store session lifecycle records")
            return False

    def shutdown(self, timeout_millis: int = 30000, **kwargs: Any) -> None:
        """Write the waiting lifecycle records, refuse further exports and close the store's
        connections if this exporter opened the store and delivery does not share it.

        With delivery on, the sender holds the same store (its threads may still deliver from
        it at exit, and closing a memory fallback would lose what it holds): delivery's exit
        sequence owns it then. A closed file store reopens lazily if a lifecycle record is
        written after shutdown.
        """
        if self._shutdown:
            return
        with _diagnostics.guarded(logger, "writing session records at shutdown"):
            self._write_lifecycle(release_all=True)  # a held end is not kept past shutdown
        self.force_flush(timeout_millis)
        self._shutdown = True
        store = self._store
        if store is not None and self._owns_store and not self._settings.delivery_enabled:
            try:
                store.close()
            except Exception:  # noqa: BLE001 - shutdown runs at exit: never raise there
                logger.debug("lucidic-otel: could not close the store", exc_info=True)
