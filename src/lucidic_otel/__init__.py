"""lucidic-otel: Lucidic sessions for any OpenTelemetry Python program.

Run a program unchanged under ``opentelemetry-instrument`` and every span is stamped with its
session; use this API to scope work into sessions. See README.md.
"""

from lucidic_otel.api import (
    carry_context,
    clear_active_session,
    current_session_id,
    end_session,
    extract_env,
    flush,
    init,
    inject_env,
    session,
    set_active_session,
    with_lucidic,
    with_session,
)
from lucidic_otel.context import BAGGAGE_KEY, SEMCONV_SESSION_ATTRIBUTE, SESSION_ATTRIBUTE
from lucidic_otel.processor import LucidicSpanProcessor
from lucidic_otel.version import __version__

__all__ = [
    "BAGGAGE_KEY",
    "SEMCONV_SESSION_ATTRIBUTE",
    "SESSION_ATTRIBUTE",
    "LucidicSpanProcessor",
    "__version__",
    "carry_context",
    "clear_active_session",
    "current_session_id",
    "end_session",
    "extract_env",
    "flush",
    "init",
    "inject_env",
    "session",
    "set_active_session",
    "with_lucidic",
    "with_session",
]
