"""lucidic-otel: Lucidic sessions for any OpenTelemetry Python program.

Run a program unchanged under ``opentelemetry-instrument`` and every span is stamped with its
session; use this API to scope work into sessions. See README.md.

The names below are imported on first use (PEP 562): ``import lucidic_otel`` itself costs
nothing, which matters for the delivery helper process (``lucidic_otel.delivery.helper``), a
package module that needs none of the API or the SDK behind it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

from lucidic_otel.version import __version__

_EXPORTS = {
    "BAGGAGE_KEY": "lucidic_otel.sessions.context",
    "SEMCONV_SESSION_ATTRIBUTE": "lucidic_otel.sessions.context",
    "SESSION_ATTRIBUTE": "lucidic_otel.sessions.context",
    "LucidicSpanProcessor": "lucidic_otel.sdk.processor",
    "carry_context": "lucidic_otel.api",
    "clear_active_session": "lucidic_otel.api",
    "current_session_id": "lucidic_otel.api",
    "end_session": "lucidic_otel.api",
    "extract_env": "lucidic_otel.api",
    "flush": "lucidic_otel.api",
    "init": "lucidic_otel.api",
    "inject_env": "lucidic_otel.api",
    "session": "lucidic_otel.api",
    "set_active_session": "lucidic_otel.api",
    "with_lucidic": "lucidic_otel.api",
    "with_session": "lucidic_otel.api",
    "Step": "lucidic_otel.steps",
    "step": "lucidic_otel.steps",
    "tool": "lucidic_otel.steps",
}

__all__ = [
    "BAGGAGE_KEY",
    "SEMCONV_SESSION_ATTRIBUTE",
    "SESSION_ATTRIBUTE",
    "LucidicSpanProcessor",
    "Step",
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
    "step",
    "tool",
    "with_lucidic",
    "with_session",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
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
    from lucidic_otel.sdk.processor import LucidicSpanProcessor
    from lucidic_otel.sessions.context import (
        BAGGAGE_KEY,
        SEMCONV_SESSION_ATTRIBUTE,
        SESSION_ATTRIBUTE,
    )
    from lucidic_otel.steps import Step, step, tool


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lucidic_otel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
