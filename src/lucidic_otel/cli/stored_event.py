"""The Lucidic event of a stored span, rebuilt when the outbox no longer holds it.

``show`` and the viewer both detail LLM and tool spans from the event the exporter derived
(the outbox body). Once that body is gone (delivered and pruned), the event is rebuilt from the
stored attributes by the exporter's own conversion, so every GenAI attribute shape is
understood the same way in both views. The conversion takes an SDK span, so one is rebuilt
here from the stored fields: the only place the CLI does so.
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
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.trace import SpanContext, Status, StatusCode

        from lucidic_otel.convert.events import span_to_event

        context = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False)
        readable = ReadableSpan(
            name=name,
            context=context,
            attributes=attributes if isinstance(attributes, dict) else {},
            events=[
                Event(e.get("name", ""), e.get("attributes") or {}, e.get("time_ns"))
                for e in (events if isinstance(events, list) else [])
                if isinstance(e, dict)
            ],
            status=Status(StatusCode[status_code or "UNSET"], status_message),
            start_time=start_ns,
            end_time=end_ns,
        )
        return span_to_event(readable, session_id, None)
    except Exception:  # noqa: BLE001 - a view of a malformed row is best-effort
        return None
