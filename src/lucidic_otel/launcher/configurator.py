"""The ``lucidic`` configurator and the two instrumentation hooks.

The configurator is the stock SDK configurator plus our session processor, passed through the
supported ``span_processors=`` argument. When another distro or configurator won the
launcher's first-found race, the pre-instrument hook applies the defaults instrumentors read
(content capture) and the post-instrument hook adds the session processor and the lucidic
export pipeline to the provider the winner built (:mod:`~lucidic_otel.launcher.bootstrap`).
None of them raises except in strict mode (:mod:`~lucidic_otel.launcher.strict`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk._configuration import _OTelSDKConfigurator

from lucidic_otel.config import get_settings
from lucidic_otel.launcher import origin
from lucidic_otel.launcher.bootstrap import after_sdk_ready, sdk_provider, session_processor
from lucidic_otel.launcher.defaults import apply_instrumentation_defaults, drop_unknown_exporters
from lucidic_otel.launcher.exit import take_sigterm_in_worker
from lucidic_otel.launcher.strict import plugin_boundary
from lucidic_otel.sdk import registry

logger = logging.getLogger(__name__)

#: With it set the SDK configures itself from that file and ignores ``span_processors=``.
CONFIG_FILE_VARIABLE = "OTEL_CONFIG_FILE"


class LucidicConfigurator(_OTelSDKConfigurator):
    """Entry point ``opentelemetry_configurator`` = ``lucidic``: the SDK plus sessions."""

    def _configure(self, **kwargs: Any) -> None:
        origin.RAN.configurator = True
        processors = list(kwargs.pop("span_processors", None) or ())
        ours = None
        with plugin_boundary("could not prepare the session processor"):
            drop_unknown_exporters(os.environ)
            ours = session_processor()
            processors.insert(0, ours)
        before = trace.get_tracer_provider()
        super()._configure(span_processors=processors, **kwargs)
        provider = sdk_provider()
        if (
            provider is not None
            and provider is not before
            and not os.environ.get(CONFIG_FILE_VARIABLE)
            and ours is not None
        ):
            registry.ATTACHED.add(provider, registry.SESSION_PROCESSOR)  # the SDK added it
        # With OTEL_CONFIG_FILE the SDK ignores span_processors; this adds it in that case.
        after_sdk_ready()


def pre_instrument(**kwargs: Any) -> None:
    """Entry point ``opentelemetry_pre_instrument`` = ``lucidic``: another distro won the race.

    Instrumentors read the content-capture variable when they are applied, which is after this
    hook; a distro the user chose keeps its own defaults.
    """
    with plugin_boundary("the pre-instrument hook failed"):
        # Another distro's configurator already started the SDK's threads: in a spawn worker
        # a SIGTERM may then end it without a flush, but never leaves it hanging.
        take_sigterm_in_worker()
        if not origin.RAN.distro and origin.distro().how != "chosen":
            apply_instrumentation_defaults(os.environ)


def post_instrument(**kwargs: Any) -> None:
    """Entry point ``opentelemetry_post_instrument`` = ``lucidic``: sessions whoever won."""
    with plugin_boundary("the post-instrument hook failed"):
        get_settings()  # strict mode stops here, whoever won the race
        after_sdk_ready()
