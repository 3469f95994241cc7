"""The ``lucidic`` distro: the launcher's first plug-in, which sets the environment defaults.

The entry points ``lucidic_otel.launcher.distro:LucidicConfigurator``, ``:pre_instrument`` and
``:post_instrument`` name this module; they live in :mod:`.configurator` and are re-exported
here, as are the defaults (:mod:`.defaults`) and strict mode (:mod:`.strict`), which ``doctor``
and ``init()`` import from here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro

from lucidic_otel.launcher import origin
from lucidic_otel.launcher.configurator import (
    LucidicConfigurator,
    post_instrument,
    pre_instrument,
)
from lucidic_otel.launcher.defaults import (
    CONTENT_CAPTURE_VARIABLE,
    apply_defaults,
    apply_instrumentation_defaults,
    drop_unknown_exporters,
)
from lucidic_otel.launcher.exit import take_sigterm_in_worker
from lucidic_otel.launcher.strict import STRICT_EXIT_STATUS, plugin_boundary, stop_for_strict_mode

logger = logging.getLogger(__name__)

__all__ = [
    "CONTENT_CAPTURE_VARIABLE",
    "STRICT_EXIT_STATUS",
    "LucidicConfigurator",
    "LucidicDistro",
    "apply_defaults",
    "apply_instrumentation_defaults",
    "drop_unknown_exporters",
    "post_instrument",
    "pre_instrument",
    "stop_for_strict_mode",
]

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
        return not (
            record.msg in _SKIPPED_CONFIGURATOR and len(args) > 1 and args[1] == origin.LUCIDIC
        )


def _quiet_our_configurator_choice() -> None:
    launcher_logger = logging.getLogger(_LAUNCHER_LOGGER)
    if not any(isinstance(f, _OurChoiceIsNotNews) for f in launcher_logger.filters):
        launcher_logger.addFilter(_OurChoiceIsNotNews())


class LucidicDistro(BaseDistro):
    """Entry point ``opentelemetry_distro`` = ``lucidic``."""

    def _configure(self, **kwargs: Any) -> None:
        origin.RAN.distro = True
        origin.RAN.exporters_before_distro = os.environ.get(origin.EXPORTER_VARIABLE)
        with plugin_boundary("the distro could not apply its defaults"):
            take_sigterm_in_worker()  # a spawn worker: before the SDK starts any thread
            if origin.CONFIGURATOR_VARIABLE not in os.environ:
                _quiet_our_configurator_choice()
            apply_defaults(os.environ)
