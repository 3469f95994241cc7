"""The verified shortcuts into the OpenTelemetry SDK's private names: the only module that
touches SDK internals.

Why they exist: the session processor runs on the application's thread for every span, and
the public API costs several wrapper objects per span (a mapping proxy per attribute read, a
copy per baggage read). Measured by ``bench/span_overhead.py`` (see docs/performance.md).

Why they are safe: each private name is verified once, at import, against the public API;
when the SDK no longer looks the way it was verified, the constant is None and every caller
takes the public path instead. The shortcuts are:

- the SDK's context keys for baggage and for the current span (one dictionary lookup each,
  instead of ``baggage.get_baggage``/``get_current_span``);
- the attribute dict of an SDK span (no read-only proxy), and its kind (no property call),
  both read by C-level getters, because a Python function call here costs more than the read;
- the write of the two session attributes straight into a new span's attribute dict, under
  the span's lock (the lock ``set_attribute`` takes), only when that is exactly what
  ``set_attributes`` would do (see :func:`stamp_in_place`);
- whether an exporter is being built by the SDK's own configuration code (the exporter list
  of ``OTEL_TRACES_EXPORTER``), which adds it to the provider it has just made global.
"""

from __future__ import annotations

import logging
import operator
import sys
from typing import Any, Callable, Dict, Optional, Tuple

from opentelemetry import baggage, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context

from lucidic_otel.sessions.context import SEMCONV_SESSION_ATTRIBUTE, SESSION_ATTRIBUTE

logger = logging.getLogger(__name__)

#: The SDK module whose ``_init_tracing`` builds the exporters named by OTEL_TRACES_EXPORTER.
_SDK_CONFIGURATION = "opentelemetry.sdk._configuration"
_MAX_FRAMES = 8


def _verified_baggage_key() -> Optional[str]:
    """The SDK's private context key for baggage, if it holds baggage as a dict; else None."""
    try:
        from opentelemetry.baggage import _BAGGAGE_KEY

        probe = baggage.set_baggage("lucidic.probe", "v", Context())
        entries = probe.get(_BAGGAGE_KEY)
        if isinstance(entries, dict) and entries.get("lucidic.probe") == "v":
            return _BAGGAGE_KEY
    except Exception:  # noqa: BLE001 - an SDK that changed: the public API then
        logger.debug("lucidic-otel: the baggage shortcut is off", exc_info=True)
    return None


def _verified_span_key() -> Optional[str]:
    """The SDK's private context key for the current span, if it holds the span; else None."""
    try:
        from opentelemetry.trace.propagation import _SPAN_KEY

        span = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
        if trace.set_span_in_context(span, Context()).get(_SPAN_KEY) is span:
            return _SPAN_KEY
    except Exception:  # noqa: BLE001 - an SDK that changed: the public API then
        logger.debug("lucidic-otel: the current-span shortcut is off", exc_info=True)
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
                and span._kind is span.kind
            )
        span.set_attribute(SESSION_ATTRIBUTE, "v")
        ok = ok and attributes._dict.get(SESSION_ATTRIBUTE) == "v"
        span.end()
        return _Span if ok and attributes._immutable is True else None
    except Exception:  # noqa: BLE001 - an SDK that changed: the public API then
        return None


#: Verified once at import; None selects the public API.
BAGGAGE_CONTEXT_KEY: Optional[str] = _verified_baggage_key()
SPAN_CONTEXT_KEY: Optional[str] = _verified_span_key()
SDK_SPAN_TYPE: Optional[type] = _verified_span_type()


#: The attribute dict of a span of type :data:`SDK_SPAN_TYPE` (the caller checks the type).
attributes_of: Callable[[Any], Dict[str, Any]] = operator.attrgetter("_attributes._dict")

#: The kind of any SDK span: the private slot where verified, the public property otherwise.
kind_of: Callable[[Any], Any] = operator.attrgetter("_kind" if SDK_SPAN_TYPE else "kind")


def stamp_in_place(span: Any, sid: str) -> bool:
    """Write both session attributes into ``span`` (of type :data:`SDK_SPAN_TYPE`, the caller
    checks) exactly as ``set_attributes`` would; False where that is not certain.

    Certain means: the span is still open, ``sid`` fits the value-length limit, neither key is
    set yet (a re-set key moves to the end) and there is room for both under the count limit.
    Anything else (ended span, limits that would truncate or evict) is left to the public
    ``set_attributes``, warnings and accounting included.
    """
    attributes = span._attributes
    lock = span._lock
    lock.acquire()  # measured cheaper than ``with`` here; released on every path
    try:
        maxlen = attributes.maxlen
        max_value_len = attributes.max_value_len
        values = attributes._dict
        if (
            span._end_time is None
            and not attributes._immutable
            and (maxlen is None or len(values) + 2 <= maxlen)
            and (max_value_len is None or len(sid) <= max_value_len)
            and SESSION_ATTRIBUTE not in values
            and SEMCONV_SESSION_ATTRIBUTE not in values
        ):
            values[SESSION_ATTRIBUTE] = sid
            values[SEMCONV_SESSION_ATTRIBUTE] = sid
            return True
    finally:
        lock.release()
    return False


def built_by_sdk_configuration() -> bool:
    """True when the caller's caller runs inside the SDK's configuration code.

    The SDK's ``_init_tracing`` sets the provider it makes as the global one, then builds each
    exporter of ``OTEL_TRACES_EXPORTER`` and adds it to that provider in one expression, so an
    exporter built there is on the global provider. False where the frames do not say so.
    """
    frame: Any = sys._getframe(2)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return False
        if frame.f_globals.get("__name__") == _SDK_CONFIGURATION:
            return True
        frame = frame.f_back
    return False


def span_processors_of(provider: Any) -> Tuple[Any, ...]:
    """The processors on an SDK ``provider``, read from its private list; () where the SDK's
    layout is not the one this was written for.

    Only a fallback: :mod:`~lucidic_otel.sdk.registry` knows what we added ourselves, but not a
    processor or exporter of ours that the application added to its own provider by hand
    (the README shows how), and adding ours next to it would record every span twice.
    """
    active = getattr(provider, "_active_span_processor", None)
    processors = getattr(active, "_span_processors", ())
    return processors if isinstance(processors, tuple) else ()
