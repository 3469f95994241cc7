"""The session processor: stamps every span with its session at start.

It runs synchronously on the application's thread for every span, so it does as little as
possible: a few dictionary lookups in the parent context and at most one locked attribute
write. It never raises. Stamping happens in ``on_start`` because exporters only see spans in
``on_end``, when attributes are frozen; where the processor sits in the chain does not matter.
"""

from __future__ import annotations

import logging
from typing import Optional

from opentelemetry import baggage
from opentelemetry.context import Context, get_current
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import get_current_span

from lucidic_otel.config import Settings, get_settings
from lucidic_otel.context import (
    BAGGAGE_KEY,
    SEMCONV_SESSION_ATTRIBUTE,
    SESSION_ATTRIBUTE,
    SESSION_KEY,
)
from lucidic_otel.trust import BaggageTrust

logger = logging.getLogger("lucidic_otel")


class ProcessSession:
    """The process-wide default session (from ``init()`` or the environment).

    A plain attribute read is all the processor pays for it; writes are rare.
    """

    __slots__ = ("session_id",)

    def __init__(self) -> None:
        self.session_id: Optional[str] = None


PROCESS_SESSION = ProcessSession()


class LucidicSpanProcessor(SpanProcessor):
    """Sets ``lucidic.session_id`` and ``session.id`` on every span that has a session.

    Precedence (DESIGN.md 2.2): the active session in the parent context, then the trusted
    baggage entry, then the parent span's stamp when the parent is a local span, then the
    process default. The first that gives a value wins.
    """

    #: Marks instances so that installers can recognise one without importing this class.
    lucidic_session_processor = True

    def __init__(self, settings: Optional[Settings] = None) -> None:
        self._trust = BaggageTrust(settings or get_settings())
        self._default = PROCESS_SESSION
        self.failures = 0

    @property
    def rejected_baggage(self) -> int:
        """How many spans saw an inbound session id that the trust policy refused."""
        return self._trust.rejected_count

    def session_for(self, parent_context: Optional[Context]) -> Optional[str]:
        """The session a span started in ``parent_context`` belongs to, or None."""
        ctx = get_current() if parent_context is None else parent_context
        sid = ctx.get(SESSION_KEY)
        if sid is not None:
            return sid
        raw = baggage.get_baggage(BAGGAGE_KEY, ctx)
        if raw is not None:
            sid = self._trust.session_from_baggage(raw)
            if sid is not None:
                return sid
        parent = get_current_span(ctx)
        if isinstance(parent, ReadableSpan):
            attributes = parent.attributes
            if attributes:
                stamped = attributes.get(SESSION_ATTRIBUTE)
                if stamped is not None:
                    return stamped  # type: ignore[return-value]
        return self._default.session_id

    def on_start(self, span: Span, parent_context: Optional[Context] = None) -> None:
        try:
            sid = self.session_for(parent_context)
            if sid is not None:
                span.set_attributes({SESSION_ATTRIBUTE: sid, SEMCONV_SESSION_ATTRIBUTE: sid})
        except Exception:  # telemetry must never break the application
            self.failures += 1
            if self.failures == 1:
                logger.exception("lucidic-otel: could not stamp a span with its session")

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
