"""The environment the ``lucidic`` plug-ins give the SDK and the instrumentors.

Defaults are applied with ``setdefault`` (what the user set wins), with one deliberate
override: ``LUCIDIC_CAPTURE_CONTENT=false`` forces the GenAI content-capture variable to
``NO_CONTENT``, because a privacy switch that another variable could silently undo would not
be one. Shared by the distro, the pre-instrument hook (when another distro won the launcher's
race), the configurator and ``doctor``, which shows what they would do.
"""

from __future__ import annotations

import logging
import os
from typing import List

from opentelemetry.util._importlib_metadata import entry_points

from lucidic_otel.config import get_settings
from lucidic_otel.launcher.origin import CONFIGURATOR_VARIABLE, EXPORTER_VARIABLE, LUCIDIC

logger = logging.getLogger(__name__)

CONTENT_CAPTURE_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def apply_defaults(environ: os._Environ[str] | dict[str, str]) -> None:
    """The environment defaults of the ``lucidic`` distro, applied to ``environ``."""
    environ.setdefault(CONFIGURATOR_VARIABLE, LUCIDIC)
    environ.setdefault(EXPORTER_VARIABLE, LUCIDIC)
    # An otlp default aimed at a collector that is not there adds ~9 s to every exit.
    environ.setdefault("OTEL_METRICS_EXPORTER", "none")
    environ.setdefault("OTEL_LOGS_EXPORTER", "none")
    apply_instrumentation_defaults(environ)


def apply_instrumentation_defaults(environ: os._Environ[str] | dict[str, str]) -> None:
    """The defaults that instrumentors read (GenAI message content for LLM events)."""
    if get_settings().capture_content:
        environ.setdefault(CONTENT_CAPTURE_VARIABLE, "SPAN_ONLY")
        return
    if environ.get(CONTENT_CAPTURE_VARIABLE, "NO_CONTENT").upper() != "NO_CONTENT":
        logger.info(
            "lucidic-otel: LUCIDIC_CAPTURE_CONTENT=false overrides %s", CONTENT_CAPTURE_VARIABLE
        )
    environ[CONTENT_CAPTURE_VARIABLE] = "NO_CONTENT"


def drop_unknown_exporters(environ: os._Environ[str] | dict[str, str]) -> List[str]:
    """Remove unregistered names from ``OTEL_TRACES_EXPORTER``, with one clear error.

    The SDK raises on an unknown name and the launcher then skips *all* instrumentation; a
    typo in one exporter name should cost that exporter, not the whole program's telemetry.
    ``none`` is only meaningful as the whole value; inside a list the SDK treats it as a name.

    Returns:
        The names removed (empty when every name is registered).
    """
    value = environ.get(EXPORTER_VARIABLE)
    if not value or value.strip().lower() == "none":
        return []
    names = [n.strip() for n in value.split(",") if n.strip()]
    registered = {ep.name for ep in entry_points(group="opentelemetry_traces_exporter")}
    unknown = [n for n in names if n not in registered and n != "otlp"]
    if unknown:
        kept = [n for n in names if n not in unknown]
        logger.error(
            "lucidic-otel: OTEL_TRACES_EXPORTER=%r names no registered trace exporter: %s; "
            "allowed: a comma list of %s, or 'none' alone; %s",
            value,
            ", ".join(unknown),
            ", ".join(sorted(registered | {"otlp"})),
            f"exporting with {','.join(kept)} only"
            if kept
            else "no valid name is left, so spans go to lucidic (the local store) instead",
        )
        environ[EXPORTER_VARIABLE] = ",".join(kept) or LUCIDIC
    return unknown
