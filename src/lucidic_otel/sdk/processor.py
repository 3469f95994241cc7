"""The session processor: stamps every span with its session at start.

It runs synchronously on the application's thread for every span, so it does as little as
possible: a few dictionary lookups in the parent context and one locked attribute write. It
never raises. Stamping happens in ``on_start`` because exporters only see spans in ``on_end``,
when attributes are frozen; where the processor sits in the chain does not matter.

Its hot path reads the context, the parent span and the new span through the SDK shortcuts
of :mod:`~lucidic_otel.sdk._fastpath` (verified at import, public API otherwise; measured by
``bench/span_overhead.py``, see docs/performance.md). The constants below are this module's
copies of them, read at call time, so a test can switch a shortcut off here.

Every check that is usually false is made without a Python-level call (a dict's truthiness, a
C-level getter, a set test): at some 14 µs per span for the SDK itself, each call avoided here
is about half a percent of the span's cost.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from opentelemetry import baggage
from opentelemetry.context import Context, get_current
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind, get_current_span

from lucidic_otel.config import Settings, get_settings
from lucidic_otel.sdk import _fastpath
from lucidic_otel.sdk.egress import GENAI_CALL_KEYS, LLM_CALLS
from lucidic_otel.sdk.handoff import PROMPT_FLUSH
from lucidic_otel.sessions import idle
from lucidic_otel.sessions.context import (
    BAGGAGE_KEY,
    SEMCONV_SESSION_ATTRIBUTE,
    SESSION_ATTRIBUTE,
    SESSION_KEY,
)
from lucidic_otel.sessions.resolve import PROCESS_SESSION, ProcessSession
from lucidic_otel.sessions.trust import BaggageTrust

logger = logging.getLogger(__name__)

__all__ = ["PROCESS_SESSION", "ProcessSession", "LucidicSpanProcessor", "adopt", "stamp"]

#: The verified shortcuts (None selects the public API); see :mod:`._fastpath`.
BAGGAGE_CONTEXT_KEY: Optional[str] = _fastpath.BAGGAGE_CONTEXT_KEY
SPAN_CONTEXT_KEY: Optional[str] = _fastpath.SPAN_CONTEXT_KEY
SDK_SPAN_TYPE: Optional[type] = _fastpath.SDK_SPAN_TYPE

#: Idle end (``sessions.idle``): session id -> monotonic time of its last span; only written for
#: sessions already in it, so it is an empty-dict miss unless ``LUCIDIC_SESSION_IDLE_END`` is set.
_IDLE_SEEN = idle.SEEN
_monotonic = time.monotonic
#: The open LLM calls (egress), emptied in place: a reference stays valid.
_LLM_OPEN = LLM_CALLS.open
_GENAI_KEYS_DISJOINT = GENAI_CALL_KEYS.isdisjoint
_stamp_in_place = _fastpath.stamp_in_place
_attributes_of = _fastpath.attributes_of
_kind_of = _fastpath.kind_of
_SERVER = SpanKind.SERVER


def stamp(span: Span, sid: str) -> None:
    """Set both session attributes on ``span``, exactly as ``set_attributes`` would."""
    if type(span) is SDK_SPAN_TYPE and type(sid) is str and _stamp_in_place(span, sid):
        return
    span.set_attributes({SESSION_ATTRIBUTE: sid, SEMCONV_SESSION_ATTRIBUTE: sid})


def adopt(span: object, sid: str) -> bool:
    """Stamp ``span`` with ``sid`` if it is open, recording and has no session yet.

    For the span a scope opens inside: a framework's server span starts before the handler
    opens the request's session, and without this the root of the request's trace would sit
    outside its session. A span that already has a session keeps it. Only this one span is
    reached; its ancestors are not (they may belong to other work, or be remote).
    """
    if not isinstance(span, ReadableSpan) or not span.is_recording():  # type: ignore[attr-defined]
        return False
    attributes = span.attributes
    if attributes and attributes.get(SESSION_ATTRIBUTE) is not None:
        return False
    stamp(span, sid)  # type: ignore[arg-type]
    return True


def _after_request(span: ReadableSpan) -> None:
    """A request that came with a session from another service has ended: its events should
    reach the backend before that service ends the session (:mod:`~lucidic_otel.sdk.handoff`)."""
    try:
        parent = span.parent
        if parent is None or not parent.is_remote or not get_settings().delivery_enabled:
            return
        if (span.attributes or {}).get(SESSION_ATTRIBUTE) is not None:
            PROMPT_FLUSH.request()
    except Exception:  # noqa: BLE001 - telemetry must never break the application
        logger.debug("lucidic-otel: could not ask for a prompt flush", exc_info=True)


class LucidicSpanProcessor(SpanProcessor):
    """Sets ``lucidic.session_id`` and ``session.id`` on every span that has a session.

    Precedence (:mod:`lucidic_otel.sessions.resolve`): the active session in the parent
    context, then the trusted baggage entry, then the parent span's stamp when the parent is a
    local span, then the process default. The first that gives a value wins.
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
        if BAGGAGE_CONTEXT_KEY is not None:
            entries = ctx.get(BAGGAGE_CONTEXT_KEY)
            raw = entries.get(BAGGAGE_KEY) if isinstance(entries, dict) else None
        else:
            raw = baggage.get_baggage(BAGGAGE_KEY, ctx)
        if raw is not None:
            sid = self._trust.session_from_baggage(raw)
            if sid is not None:
                return sid
        if SPAN_CONTEXT_KEY is not None:
            parent = ctx.get(SPAN_CONTEXT_KEY)
        else:
            parent = get_current_span(ctx)
        if type(parent) is SDK_SPAN_TYPE:
            stamped = _attributes_of(parent).get(SESSION_ATTRIBUTE)
            if stamped is not None:
                return stamped
        elif isinstance(parent, ReadableSpan):
            attributes = parent.attributes
            if attributes:
                stamped = attributes.get(SESSION_ATTRIBUTE)
                if stamped is not None:
                    return stamped  # type: ignore[return-value]
        return self._default.session_id

    def on_start(self, span: Span, parent_context: Optional[Context] = None) -> None:
        try:
            sid = self.session_for(parent_context)
            fast = type(span) is SDK_SPAN_TYPE
            if sid is not None:
                # stamp(), inlined: this is the one call every span makes.
                if not (fast and type(sid) is str and _stamp_in_place(span, sid)):
                    span.set_attributes({SESSION_ATTRIBUTE: sid, SEMCONV_SESSION_ATTRIBUTE: sid})
                if sid in _IDLE_SEEN:
                    _IDLE_SEEN[sid] = _monotonic()
            # Which open spans are LLM calls, for the outbound baggage policy (egress): only a
            # span with a GenAI key, or one started while a call is open, can be one.
            attributes = _attributes_of(span) if fast else span.attributes
            if _LLM_OPEN or (attributes and not _GENAI_KEYS_DISJOINT(attributes)):
                LLM_CALLS.on_start(span, attributes)
        except Exception:  # noqa: BLE001 - telemetry must never break the application
            self.failures += 1  # counted per processor (read by tests and doctor): logged once
            if self.failures == 1:
                logger.exception("lucidic-otel: could not stamp a span with its session")

    def on_end(self, span: ReadableSpan) -> None:
        # A try block costs nothing in CPython 3.11 until something raises; the SDK does not
        # catch what a processor raises here, so it would reach the application's span.end().
        try:
            if _IDLE_SEEN:
                idle.touch_end(span)
            if _kind_of(span) is _SERVER:
                _after_request(span)
            if _LLM_OPEN:
                LLM_CALLS.on_end(span)
        except Exception:  # noqa: BLE001 - telemetry must never break the application
            self.failures += 1  # shared with on_start: logged once per processor
            if self.failures == 1:
                logger.exception("lucidic-otel: could not account for an ended span")

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
