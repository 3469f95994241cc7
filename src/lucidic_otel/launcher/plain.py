"""Setting OpenTelemetry up from ``init()`` in a plain ``python app.py``, and in its workers.

Why here and not in the API: this is the launcher's job done from code (the same distro and
configurator with the same variables), and a spawn or forkserver worker that receives a
carried call sets itself up the same way; the API only decides when.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from opentelemetry import trace

from lucidic_otel.config import ConfigError
from lucidic_otel.launcher import bootstrap
from lucidic_otel.launcher import origin as launch
from lucidic_otel.launcher.exit import take_sigterm_in_worker
from lucidic_otel.sessions.arguments import report_invalid

logger = logging.getLogger(__name__)


def _configure_sdk(instrument: Optional[Iterable[str]]) -> None:
    """Make a plain ``python app.py`` look as if it ran under ``opentelemetry-instrument``.

    Uses the same distro and configurator with the same variables, and only where no provider
    is set yet: a provider the application built (SDK or not) is never replaced; an SDK one
    gets the session processor and the lucidic pipeline added, each once (``bootstrap``).
    """
    from lucidic_otel.launcher.distro import LucidicConfigurator, LucidicDistro

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        launch.RAN.by_init = True
        take_sigterm_in_worker()  # before the SDK starts its threads
        LucidicDistro().configure()
        LucidicConfigurator().configure()
    bootstrap.after_sdk_ready()
    if instrument:
        _instrument(instrument)


def configure_sdk_or_log(instrument: Optional[Iterable[str]], where: str) -> None:
    """:func:`_configure_sdk`, where a failure costs the spans but never the caller's work
    (a :class:`ConfigError`, raised only in strict mode, goes through)."""
    try:
        _configure_sdk(instrument)
    except ConfigError:
        raise
    except Exception:
        logger.exception("lucidic-otel: %s could not configure OpenTelemetry", where)


# Names users know, mapped to instrumentor entry points: a library name can stand for a
# family (openai 3.x talks HTTP through ``httpx2``, openai 2.x and most others through
# ``httpx``), and a distribution name for the instrumentation it ships.
_INSTRUMENT_ALIASES: Dict[str, Tuple[str, ...]] = {
    "httpx": ("httpx", "httpx2"),
    "genai-openai": ("openai",),
    "openai-v2": ("openai",),
}
_DIST_PREFIX = "opentelemetry-instrumentation-"
# Entry-point names init() instrumented, so a carried worker can apply the same set.
_instrumented: list = []


def _entry_names(name: str) -> Tuple[str, ...]:
    key = name.strip().lower().replace("_", "-")
    key = key[len(_DIST_PREFIX) :] if key.startswith(_DIST_PREFIX) else key
    return _INSTRUMENT_ALIASES.get(key, (key,))


def _apply_instrumentor(ep: Any) -> Optional[str]:
    """Instrument with ``ep``; the reason it could not, or None when it is applied."""
    try:
        from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

        instrumentor = ep.load()()
        conflict = get_dependency_conflicts(instrumentor.instrumentation_dependencies())
        if conflict is not None:
            return str(conflict)
        if not getattr(instrumentor, "is_instrumented_by_opentelemetry", False):
            instrumentor.instrument()
    except Exception as exc:  # noqa: BLE001 - one instrumentation must not stop the others
        return f"{type(exc).__name__}: {exc}"
    if ep.name not in _instrumented:
        _instrumented.append(ep.name)
    return None


def _instrument(names: Iterable[str]) -> None:
    """Apply the instrumentations ``names`` asks for, by library or entry-point name."""
    from opentelemetry.util._importlib_metadata import entry_points

    wanted = [names] if isinstance(names, str) else list(names)
    installed = {ep.name: ep for ep in entry_points(group="opentelemetry_instrumentor")}
    for name in wanted:
        if not isinstance(name, str):
            report_invalid(f"init: instrument entry {name!r} is not a str; ignored")
            continue
        candidates = [c for c in _entry_names(name) if c in installed]
        if not candidates:
            report_invalid(
                f"init: instrument={name!r} names no installed instrumentation; installed: "
                f"{sorted(installed)}; install the matching opentelemetry-instrumentation-* "
                "package"
            )
            continue
        reasons = {c: _apply_instrumentor(installed[c]) for c in candidates}
        if all(reasons.values()):
            report_invalid(
                f"init: instrument={name!r} could not be applied ("
                + "; ".join(f"{c}: {r}" for c, r in reasons.items())
                + "); its spans will not be recorded"
            )


def recording_setup() -> Optional[Callable[[], None]]:
    """How a worker sets up recording like this process (a picklable call of
    :func:`_record_here`), or None when this process does not record through lucidic (no SDK
    provider with the session processor)."""
    provider = bootstrap.sdk_provider()
    if provider is None or not bootstrap.has_session_processor(provider):
        return None
    return functools.partial(_record_here, {"instrument": list(_instrumented)})


def _record_here(setup: Dict[str, Any]) -> None:
    """In a worker nobody set OpenTelemetry up in (spawn and forkserver children of a plain
    ``python`` program that called ``init()``): set it up as ``init`` would, without a session
    of its own, so the carried spans are recorded into the same store. Under the launcher, or
    where the application built a provider, there is nothing to do."""
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return
    instrument = setup.get("instrument") if isinstance(setup, dict) else None
    _configure_sdk([n for n in instrument or () if isinstance(n, str)] or None)
