"""The Lucidic event of a stored span, rebuilt when the outbox no longer holds it.

``show`` and the viewer both detail LLM and tool spans from the event the exporter derived
(the outbox body). Once that body is gone (delivered and pruned), the event is rebuilt from the
stored attributes by the exporter's own conversion, so every GenAI attribute shape is
understood the same way in both views. The conversion reads a small span-like protocol, so the
stored fields are handed to it as a :class:`~lucidic_otel.convert.spanlike.PlainSpan` (no fake
SDK span, whose constructor would also detect a default resource).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)


def event_from_stored(
    *,
    name: str,
    trace_id: str,
    span_id: str,
    attributes: Any,
    events: Any,
    status_code: Optional[str],
    status_message: Optional[str],
    start_ns: Optional[int],
    end_ns: Optional[int],
    session_id: str = "-",
) -> Optional[Dict[str, Any]]:
    """The event body for the stored span with these fields, or None for a row too damaged
    to convert (a view of a malformed row is best-effort, never an error)."""
    try:
        from opentelemetry.trace import Status, StatusCode

        from lucidic_otel.convert.events import span_to_event
        from lucidic_otel.convert.spanlike import PlainEvent, PlainSpan, SpanIds

        span = PlainSpan(
            name=name,
            context=SpanIds(int(trace_id, 16), int(span_id, 16)),
            attributes=attributes if isinstance(attributes, dict) else {},
            events=[
                PlainEvent(e.get("name", ""), e.get("attributes") or {})
                for e in (events if isinstance(events, list) else [])
                if isinstance(e, dict)
            ],
            # The SDK's Status, as the exporter's spans carry: it keeps a description only
            # with an ERROR code.
            status=Status(StatusCode[status_code or "UNSET"], status_message),
            start_time=start_ns,
            end_time=end_ns,
        )
        return span_to_event(span, session_id, None)
    except Exception:  # noqa: BLE001 - a view of a malformed row is best-effort
        return None
