"""The session processor: stamps every span with its session at start.

It runs synchronously on the application's thread for every span, so it does as little as
possible: a few dictionary lookups in the parent context and one locked attribute write. It
never raises. Stamping happens in ``on_start`` because exporters only see spans in ``on_end``,
when attributes are frozen; where the processor sits in the chain does not matter.

Hot-path shortcuts (measured by ``bench/span_overhead.py``; see docs/performance.md). Each reads
an SDK private name, is verified once at import against the public API, and falls back to the
public API when the SDK no longer looks the way it was verified:

- the baggage and current-span entries are read from the context with one lookup each, with
  the SDK's own context keys, instead of through ``baggage.get_baggage``/``get_current_span``;
- a local parent's stamp is read from its attribute dict, without a mapping-proxy wrapper;
- the two session attributes are written straight into the new span's attribute dict under
  the span's lock (the lock ``set_attribute`` takes), but only when that is exactly what
  ``set_attributes`` would do: the span is an SDK span, still open, the value is a ``str`` no
  longer than the length limit, neither key is set yet, and there is room for both under the
  count limit. Anything else (ended span, limits that would truncate or evict, a key to
  re-set) goes through the public ``set_attributes``, warnings and accounting included.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from opentelemetry import baggage, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context, get_current
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import get_current_span

from lucidic_otel.config import Settings, get_settings
from lucidic_otel.sdk.egress import LLM_CALLS
from lucidic_otel.sessions.context import (
    BAGGAGE_KEY,
    SEMCONV_SESSION_ATTRIBUTE,
    SESSION_ATTRIBUTE,
    SESSION_KEY,
)
from lucidic_otel.sessions.trust import BaggageTrust

logger = logging.getLogger("lucidic_otel")


def _verified_baggage_key() -> Optional[str]:
    """The SDK's private context key for baggage, if it holds baggage as a dict; else None."""
    try:
        from opentelemetry.baggage import _BAGGAGE_KEY

        probe = baggage.set_baggage("lucidic.probe", "v", Context())
        entries = probe.get(_BAGGAGE_KEY)
        if isinstance(entries, dict) and entries.get("lucidic.probe") == "v":
            return _BAGGAGE_KEY
    except Exception:
        pass
    return None


def _verified_span_key() -> Optional[str]:
    """The SDK's private context key for the current span, if it holds the span; else None."""
    try:
        from opentelemetry.trace.propagation import _SPAN_KEY

        span = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
        if trace.set_span_in_context(span, Context()).get(_SPAN_KEY) is span:
            return _SPAN_KEY
    except Exception:
        pass
    return None


def _verified_span_type() -> Optional[type]:
    """The SDK's span class, if its attributes and lock look as the fast paths expect."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import _Span

        span: Any = _Span("probe", trace.INVALID_SPAN_CONTEXT, resource=Resource({}))
        span.start()
        attributes = span._attributes
        with span._lock:
            ok = (
                type(attributes) is BoundedAttributes
                and type(attributes._dict) is dict
                and span._end_time is None
                and attributes._immutable is False
                and "maxlen" in vars(attributes)
                and "max_value_len" in vars(attributes)
            )
        span.set_attribute(SESSION_ATTRIBUTE, "v")
        ok = ok and attributes._dict.get(SESSION_ATTRIBUTE) == "v"
        span.end()
        return _Span if ok and attributes._immutable is True else None
    except Exception:
        return None


#: Verified once at import; None selects the public API.
BAGGAGE_CONTEXT_KEY: Optional[str] = _verified_baggage_key()
SPAN_CONTEXT_KEY: Optional[str] = _verified_span_key()
SDK_SPAN_TYPE: Optional[type] = _verified_span_type()


class ProcessSession:
    """The process-wide default session (from ``init()`` or the environment).

    A plain attribute read is all the processor pays for it; writes are rare.
    """

    __slots__ = ("session_id",)

    def __init__(self) -> None:
        self.session_id: Optional[str] = None


PROCESS_SESSION = ProcessSession()


def stamp(span: Span, sid: str) -> None:
    """Set both session attributes on ``span``, exactly as ``set_attributes`` would."""
    if type(span) is SDK_SPAN_TYPE and type(sid) is str:
        attributes: Any = span._attributes  # type: ignore[attr-defined]
        lock = span._lock  # type: ignore[attr-defined]
        lock.acquire()  # measured cheaper than ``with`` here; released on every path
        try:
            maxlen = attributes.maxlen
            max_value_len = attributes.max_value_len
            values = attributes._dict
            if (
                span._end_time is None  # type: ignore[attr-defined]
                and not attributes._immutable
                and (maxlen is None or len(values) + 2 <= maxlen)
                and (max_value_len is None or len(sid) <= max_value_len)
                and SESSION_ATTRIBUTE not in values  # a re-set key moves to the end
                and SEMCONV_SESSION_ATTRIBUTE not in values
            ):
                values[SESSION_ATTRIBUTE] = sid
                values[SEMCONV_SESSION_ATTRIBUTE] = sid
                return
        finally:
            lock.release()
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
            stamped = parent._attributes._dict.get(SESSION_ATTRIBUTE)  # type: ignore[union-attr]
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
            if sid is not None:
                stamp(span, sid)
            # Which open spans are LLM calls, for the outbound baggage policy (egress).
            attributes = (
                span._attributes._dict  # type: ignore[attr-defined]
                if type(span) is SDK_SPAN_TYPE
                else span.attributes
            )
            LLM_CALLS.on_start(span, attributes)
        except Exception:  # telemetry must never break the application
            self.failures += 1
            if self.failures == 1:
                logger.exception("lucidic-otel: could not stamp a span with its session")

    def on_end(self, span: ReadableSpan) -> None:
        if len(LLM_CALLS):
            LLM_CALLS.on_end(span)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
