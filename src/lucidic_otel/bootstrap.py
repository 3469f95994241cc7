"""What happens once the SDK exists: the processor on the provider, the process session, exit.

It is reached from three places (our configurator, the post-instrument hook when another
distro won the launcher's race, and ``init()`` in a plain ``python app.py``) and runs once.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.trace import TracerProvider

from lucidic_otel.config import get_settings
from lucidic_otel.processor import PROCESS_SESSION, LucidicSpanProcessor
from lucidic_otel.propagation import env_has_carrier, extract_env, withhold_session_baggage
from lucidic_otel.shutdown import install_exit_handlers

logger = logging.getLogger("lucidic_otel")

_lock = threading.RLock()
_processor: Optional[LucidicSpanProcessor] = None
_ready = False


def session_processor() -> LucidicSpanProcessor:
    """The one session processor of this process."""
    global _processor
    if _processor is None:
        with _lock:
            if _processor is None:
                _processor = LucidicSpanProcessor(get_settings())
    return _processor


def sdk_provider() -> Optional[TracerProvider]:
    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, TracerProvider) else None


def has_session_processor(provider: TracerProvider) -> bool:
    active = getattr(provider, "_active_span_processor", None)
    processors = getattr(active, "_span_processors", ())
    return any(getattr(p, "lucidic_session_processor", False) for p in processors)


def install_processor(provider: Optional[TracerProvider] = None) -> bool:
    """Add the session processor to ``provider`` (default: global) unless it has one already."""
    provider = provider or sdk_provider()
    if provider is None:
        return False
    with _lock:
        if not has_session_processor(provider):
            provider.add_span_processor(session_processor())
    return True


def _warn_if_baggage_off() -> None:
    fields = propagate.get_global_textmap().fields
    if "baggage" not in fields:
        logger.warning(
            "lucidic-otel: the 'baggage' propagator is not enabled (OTEL_PROPAGATORS), so "
            "sessions will not follow requests into other services; use "
            "OTEL_PROPAGATORS=tracecontext,baggage"
        )


def _join_environment() -> None:
    """Join the context a parent process left in BAGGAGE/TRACEPARENT, then the env session."""
    from lucidic_otel.api import _start_process_session  # the API depends on this module

    settings = get_settings()
    if env_has_carrier():
        ctx = extract_env()
        context.attach(ctx)
        if PROCESS_SESSION.session_id is None:
            PROCESS_SESSION.session_id = session_processor().session_for(ctx)
    if settings.session_name:
        _start_process_session(settings)
    elif settings.session_id and PROCESS_SESSION.session_id is None:
        PROCESS_SESSION.session_id = settings.session_id


def after_sdk_ready() -> bool:
    """Install everything that needs the SDK provider, once. Never raises."""
    global _ready
    with _lock:
        if _ready:
            return True
        try:
            if not install_processor():
                logger.debug("lucidic-otel: no SDK tracer provider is set; sessions are inactive")
                return False
            _ready = True
            _warn_if_baggage_off()
            if not get_settings().propagate:
                withhold_session_baggage()
            install_exit_handlers()
            _join_environment()
        except Exception:
            logger.exception("lucidic-otel: set-up after SDK initialisation failed")
        return _ready


def is_ready() -> bool:
    return _ready


def launched_by_instrument() -> bool:
    """True under ``opentelemetry-instrument`` (its sitecustomize directory is on the path)."""
    return "auto_instrumentation" in os.environ.get("PYTHONPATH", "")
