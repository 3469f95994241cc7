"""The launcher plug-ins: the ``lucidic`` distro, the ``lucidic`` configurator, and two hooks.

The distro fills in defaults with ``setdefault`` (what the user set wins), with one deliberate
override: ``LUCIDIC_CAPTURE_CONTENT=false`` forces the GenAI content-capture variable to
``NO_CONTENT``, because a privacy switch that another variable could silently undo would not be
one. The configurator is the stock SDK configurator plus our session processor, passed through
the supported ``span_processors=`` argument. When another distro or configurator won the
launcher's first-found race, the pre-instrument hook applies the defaults instrumentors read
(content capture) and the post-instrument hook adds the session processor and the lucidic
export pipeline to the provider the winner built (:mod:`~lucidic_otel.launcher.bootstrap`).
None of them
raises except in strict mode: an exception here makes the launcher skip all instrumentation.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, List, NoReturn

from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.util._importlib_metadata import entry_points

from lucidic_otel.config import ConfigError, get_settings
from lucidic_otel.launcher import origin as launch
from lucidic_otel.launcher.bootstrap import after_sdk_ready, session_processor
from lucidic_otel.launcher.exit import take_sigterm_in_worker

logger = logging.getLogger("lucidic_otel")

CONTENT_CAPTURE_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def apply_defaults(environ: os._Environ[str] | dict[str, str]) -> None:
    """The environment defaults of the ``lucidic`` distro, applied to ``environ``."""
    environ.setdefault("OTEL_PYTHON_CONFIGURATOR", "lucidic")
    environ.setdefault("OTEL_TRACES_EXPORTER", "lucidic")
    # An otlp default aimed at a collector that is not there adds ~9 s to every exit.
    environ.setdefault("OTEL_METRICS_EXPORTER", "none")
    environ.setdefault("OTEL_LOGS_EXPORTER", "none")
    apply_instrumentation_defaults(environ)


def apply_instrumentation_defaults(environ: os._Environ[str] | dict[str, str]) -> None:
    """The defaults that instrumentors read (GenAI message content for LLM events)."""
    if get_settings().capture_content:
        environ.setdefault(CONTENT_CAPTURE_VARIABLE, "SPAN_ONLY")
    else:
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
    """
    value = environ.get("OTEL_TRACES_EXPORTER")
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
        environ["OTEL_TRACES_EXPORTER"] = ",".join(kept) or "lucidic"
    return unknown


STRICT_EXIT_STATUS = 2
_LAUNCHER_LOGGER = "opentelemetry.instrumentation.auto_instrumentation._load"
_SKIPPED_CONFIGURATOR = (
    "Configuration of %s not loaded because %s is set by %s",
    "Configuration of %s not loaded, %s already loaded",
)


class _OurChoiceIsNotNews(logging.Filter):
    """Drops the launcher's warning that it skipped another configurator because our distro
    chose ``lucidic``: with ``opentelemetry-distro`` installed it printed a line at every
    start of every program, about a default the user never set and cannot act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.msg in _SKIPPED_CONFIGURATOR and len(args) > 1 and args[1] == "lucidic")


def _quiet_our_configurator_choice() -> None:
    launcher_logger = logging.getLogger(_LAUNCHER_LOGGER)
    if not any(isinstance(f, _OurChoiceIsNotNews) for f in launcher_logger.filters):
        launcher_logger.addFilter(_OurChoiceIsNotNews())


def stop_for_strict_mode(error: ConfigError) -> NoReturn:
    """``LUCIDIC_STRICT=true`` under the launcher: the program does not run.

    The launcher catches every exception from a distro, prints it and runs the program
    uninstrumented with status 0, which is the opposite of strict. This runs in the launched
    interpreter's start-up (``sitecustomize``), before any of the program's code, where
    ``SystemExit`` would only give "Fatal Python error": say it in one line and exit now.
    """
    try:
        sys.stderr.write(
            f"lucidic-otel: {error}; the program was not started (exit status "
            f"{STRICT_EXIT_STATUS}). Fix the variable or unset LUCIDIC_STRICT.\n"
        )
        sys.stderr.flush()
    finally:
        os._exit(STRICT_EXIT_STATUS)


class LucidicDistro(BaseDistro):
    """Entry point ``opentelemetry_distro`` = ``lucidic``."""

    def _configure(self, **kwargs: Any) -> None:
        launch.RAN.distro = True
        launch.RAN.exporters_before_distro = os.environ.get(launch.EXPORTER_VARIABLE)
        try:
            take_sigterm_in_worker()  # a spawn worker: before the SDK starts any thread
            if "OTEL_PYTHON_CONFIGURATOR" not in os.environ:
                _quiet_our_configurator_choice()
            apply_defaults(os.environ)
        except ConfigError as exc:
            stop_for_strict_mode(exc)
        except Exception:
            logger.exception("lucidic-otel: the distro could not apply its defaults")


class LucidicConfigurator(_OTelSDKConfigurator):
    """Entry point ``opentelemetry_configurator`` = ``lucidic``: the SDK plus sessions."""

    def _configure(self, **kwargs: Any) -> None:
        launch.RAN.configurator = True
        processors = list(kwargs.pop("span_processors", None) or ())
        try:
            drop_unknown_exporters(os.environ)
            processors.insert(0, session_processor())
        except ConfigError as exc:
            stop_for_strict_mode(exc)
        except Exception:
            logger.exception("lucidic-otel: could not prepare the session processor")
        super()._configure(span_processors=processors, **kwargs)
        # With OTEL_CONFIG_FILE the SDK ignores span_processors; this adds it in that case.
        after_sdk_ready()


def pre_instrument(**kwargs: Any) -> None:
    """Entry point ``opentelemetry_pre_instrument`` = ``lucidic``: another distro won the race.

    Instrumentors read the content-capture variable when they are applied, which is after this
    hook; a distro the user chose keeps its own defaults.
    """
    try:
        # Another distro's configurator already started the SDK's threads: in a spawn worker
        # a SIGTERM may then end it without a flush, but never leaves it hanging.
        take_sigterm_in_worker()
        if not launch.RAN.distro and launch.distro().how != "chosen":
            apply_instrumentation_defaults(os.environ)
    except ConfigError as exc:
        stop_for_strict_mode(exc)
    except Exception:
        logger.exception("lucidic-otel: the pre-instrument hook failed")


def post_instrument(**kwargs: Any) -> None:
    """Entry point ``opentelemetry_post_instrument`` = ``lucidic``: sessions whoever won."""
    try:
        get_settings()  # strict mode stops here, whoever won the race
        after_sdk_ready()
    except ConfigError as exc:
        stop_for_strict_mode(exc)
    except Exception:
        logger.exception("lucidic-otel: the post-instrument hook failed")
