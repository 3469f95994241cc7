"""What happens once the SDK exists: sessions and the lucidic pipeline on the live provider.

It is reached from three places (our configurator, the post-instrument hook when another
distro or configurator won the launcher's race, and ``init()`` in a plain ``python app.py``
or on a provider the application built) and runs once. Whoever set OpenTelemetry up, the live
SDK provider ends with exactly one session processor and, unless the user's exporter choice
leaves it out, exactly one lucidic export pipeline, next to whatever else it had.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, Dict, Optional, Tuple

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from lucidic_otel._diagnostics import log_once
from lucidic_otel.config import get_settings
from lucidic_otel.launcher import origin as launch
from lucidic_otel.launcher.exit import install_exit_handlers
from lucidic_otel.sdk import _fastpath, registry
from lucidic_otel.sdk.egress import install_outbound_policy
from lucidic_otel.sdk.exporter import LucidicSpanExporter
from lucidic_otel.sdk.processor import LucidicSpanProcessor
from lucidic_otel.sessions.propagation import env_has_carrier, extract_env
from lucidic_otel.sessions.resolve import PROCESS_SESSION, start_process_session

logger = logging.getLogger(__name__)

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
    """True when the session processor is on ``provider`` (see :mod:`lucidic_otel.sdk.registry`)."""
    if registry.ATTACHED.has(provider, registry.SESSION_PROCESSOR):
        return True
    return any(  # added by the application itself
        getattr(p, "lucidic_session_processor", False)
        for p in _fastpath.span_processors_of(provider)
    )


def has_lucidic_pipeline(provider: TracerProvider) -> bool:
    """True when a lucidic exporter is on ``provider``, ours or from the exporter list."""
    if registry.ATTACHED.has(provider, registry.PIPELINE):
        return True
    return any(  # added by the application itself
        isinstance(getattr(p, "span_exporter", None), LucidicSpanExporter)
        for p in _fastpath.span_processors_of(provider)
    )


def install_processor(provider: Optional[TracerProvider] = None) -> bool:
    """Add the session processor to ``provider`` (default: global) unless it has one already."""
    provider = provider or sdk_provider()
    if provider is None:
        return False
    with _lock:
        if not has_session_processor(provider):
            provider.add_span_processor(session_processor())
            registry.ATTACHED.add(provider, registry.SESSION_PROCESSOR)
    return True


def exporter_rule(value: Optional[str], source: str = "the environment") -> Tuple[bool, str]:
    """Whether the user's ``OTEL_TRACES_EXPORTER`` wants the lucidic pipeline, and why.

    Unset means our default (lucidic). An explicit list is respected as written: ``none``
    turns export off and a list without ``lucidic`` (say ``otlp`` to a collector) leaves it out
    on purpose, even when Lucidic credentials are set; the spans still carry session ids.
    """
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    if not names:
        return True, "OTEL_TRACES_EXPORTER is unset, and lucidic is the default exporter"
    if launch.LUCIDIC in names:
        return True, f"OTEL_TRACES_EXPORTER={value!r} (from {source}) names lucidic"
    if [n.lower() for n in names] == ["none"]:
        return False, f"OTEL_TRACES_EXPORTER=none (from {source}) turns trace export off; respected"
    return False, (
        f"OTEL_TRACES_EXPORTER={value!r} (from {source}) leaves lucidic out; respected as an "
        "explicit choice (spans still carry session ids for those exporters)"
    )


def _attach_pipeline(provider: TracerProvider, wanted: bool) -> Optional[str]:
    """Add the lucidic export pipeline to ``provider`` when wanted and missing.

    Returns who put the pipeline there: ``"exporter list"`` (a configurator made it from
    ``OTEL_TRACES_EXPORTER``), ``"lucidic-otel"`` (added here), or None (not attached).
    """
    if has_lucidic_pipeline(provider):
        return "exporter list"
    if not wanted:
        return None
    provider.add_span_processor(BatchSpanProcessor(LucidicSpanExporter()))
    registry.ATTACHED.add(provider, registry.PIPELINE)
    return "lucidic-otel"


def _class_path(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _launched() -> bool:
    """True under ``opentelemetry-instrument`` (its sitecustomize imported the launcher)."""
    return "opentelemetry.instrumentation.auto_instrumentation" in sys.modules


def _warn_not_sdk(provider: object) -> None:
    """Say once per process why sessions are not stamped: there is no SDK provider."""
    name = _class_path(provider)
    if _launched() and type(provider).__name__ == "ProxyTracerProvider":
        configurator = launch.configurator()
        log_once(
            logger,
            "not-sdk",
            "lucidic-otel: no OpenTelemetry SDK tracer provider was set up (configurator: %s), "
            "so sessions are neither stamped nor recorded; set OTEL_PYTHON_CONFIGURATOR=lucidic "
            "or install a configurator",
            configurator.name or "none ran",
        )
        return
    log_once(
        logger,
        "not-sdk",
        "lucidic-otel: the global tracer provider is %s, not an OpenTelemetry SDK "
        "TracerProvider, so sessions are neither stamped nor recorded; set an "
        "opentelemetry.sdk.trace.TracerProvider before calling lucidic_otel.init(), or add "
        "lucidic_otel's processor and exporter to that vendor's SDK provider",
        name,
    )


def _selection(sel: launch.Selection) -> Dict[str, Any]:
    return {"name": sel.name, "how": sel.how}


def _attach(provider: TracerProvider) -> Dict[str, Any]:
    """Processor and pipeline onto ``provider``; the facts, for the report and the warning."""
    launched = _launched()
    distro = launch.distro() if launched else launch.Selection(None, "none")
    configurator = launch.configurator() if launched else launch.Selection(None, "none")
    if launch.RAN.by_init:
        distro = configurator = launch.Selection(launch.LUCIDIC, "init")
    install_processor(provider)
    if launched:
        value, source = launch.user_exporters(distro)
    else:
        value, source = os.environ.get(launch.EXPORTER_VARIABLE), "the environment"
    wanted, rule = exporter_rule(value, source)
    pipeline_by = _attach_pipeline(provider, wanted)
    settings = get_settings()
    if pipeline_by is None and settings.delivery_enabled:
        logger.warning(
            "lucidic-otel: LUCIDIC_API_KEY and LUCIDIC_AGENT_ID are set, but %s: nothing is "
            "recorded or delivered to Lucidic; add lucidic to OTEL_TRACES_EXPORTER "
            "(e.g. OTEL_TRACES_EXPORTER=otlp,lucidic)",
            rule,
        )
    elif pipeline_by == "lucidic-otel" and launched and not configurator.ours:
        logger.warning(
            "lucidic-otel: the launcher ran distro %r and configurator %r (%s, not lucidic), so "
            "the lucidic pipeline was added to their provider next to their exporters; set "
            "OTEL_PYTHON_DISTRO=lucidic to use lucidic's defaults instead",
            distro.name,
            configurator.name,
            "first found" if "raced" in (distro.how, configurator.how) else "as configured",
        )
    return {
        "launcher": launched,
        "distro": _selection(distro),
        "configurator": _selection(configurator),
        "provider": _class_path(provider),
        "session_processor": True,
        "pipeline_attached": pipeline_by is not None,
        "pipeline_by": pipeline_by,
        "exporter_value": value,
        "exporter_value_source": source,
        "pipeline_rule": rule,
        "pid": os.getpid(),
    }


def setup_report() -> Dict[str, Any]:
    """What the set-up of this process found and did (empty before it ran)."""
    return registry.setup_report()


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
    settings = get_settings()
    if env_has_carrier():
        ctx = extract_env()
        context.attach(ctx)
        if PROCESS_SESSION.session_id is None:
            PROCESS_SESSION.session_id = session_processor().session_for(ctx)
    if settings.session_name:
        start_process_session(settings)
    elif settings.session_id and PROCESS_SESSION.session_id is None:
        PROCESS_SESSION.session_id = settings.session_id


def after_sdk_ready() -> bool:
    """Install everything that needs the SDK provider, once. Never raises.

    Returns:
        True once the set-up is done; False while there is no SDK provider (said once).
    """
    global _ready
    with _lock:
        if _ready:
            return True
        try:
            provider = sdk_provider()
            if provider is None:
                _warn_not_sdk(trace.get_tracer_provider())
                return False
            registry.record_setup(_attach(provider))
            _ready = True
            _warn_if_baggage_off()
            install_outbound_policy()  # session baggage to own services only
            install_exit_handlers()
            _join_environment()
        except Exception:
            logger.exception("lucidic-otel: set-up after SDK initialisation failed")
        return _ready
