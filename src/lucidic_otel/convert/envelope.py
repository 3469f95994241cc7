"""The part of an event that is the same for every type: ids, timing and span metadata.

The event id is derived from the span's ids (:func:`lucidic_otel.ids.event_id`), so converting
the same span twice gives the same event and a retried delivery is deduplicated by the
backend.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Dict, Optional

from lucidic_otel.convert.spanlike import SpanLike
from lucidic_otel.ids import event_id

logger = logging.getLogger(__name__)


def envelope(
    span: SpanLike, event_type: str, session_id: str, parent_event_id: Optional[str]
) -> Dict[str, Any]:
    """Every field of ``POST events`` but the payload (left empty) and the send-time fields.

    ``span.context`` must not be None.
    """
    trace_id, span_id = span.context.trace_id, span.context.span_id  # type: ignore[union-attr]
    start, end = span.start_time, span.end_time
    duration = None
    if isinstance(start, int) and isinstance(end, int) and end >= start:
        duration = (end - start) / 1e9
    return {
        "client_event_id": event_id(trace_id, span_id),
        "client_parent_event_id": parent_event_id,
        "session_id": session_id,
        "type": event_type,
        "occurred_at": iso(start if isinstance(start, int) else end),
        "duration": duration,
        "tags": [],
        "metadata": _metadata(span, trace_id, span_id),
        "payload": {},
    }


def iso(ns: Optional[int]) -> str:
    """Nanoseconds since the epoch as ISO 8601 UTC; now when the time is missing or absurd."""
    moment = None
    if isinstance(ns, int):
        seconds, rest = divmod(ns, 1_000_000_000)
        try:
            moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            moment = None
        else:
            moment = moment.replace(microsecond=rest // 1000)
    if moment is None:
        moment = datetime.now(timezone.utc)
    return moment.isoformat(timespec="microseconds")


def _metadata(span: SpanLike, trace_id: int, span_id: int) -> Dict[str, Any]:
    meta: Dict[str, Any] = {
        "trace_id": f"{trace_id:032x}",
        "span_id": f"{span_id:016x}",
        "span_name": span.name,
    }
    parent = span.parent
    if parent is not None:
        meta["parent_span_id"] = f"{parent.span_id:016x}"
    resource = span.resource
    if resource is not None:
        service = resource.attributes.get("service.name")
        if service is not None:
            meta["service_name"] = str(service)
    scope = span.instrumentation_scope
    if scope is not None:
        meta["scope_name"] = scope.name
        if scope.version:
            meta["scope_version"] = scope.version
    return meta
