"""Which session a span gets: the precedence rule, and the process default it falls back to.

A span started in some parent context belongs to the first of these that gives a session:

1. the active session bound in that context by this process's API (:mod:`.scope`);
2. the ``lucidic.session_id`` baggage entry, if the inbound trust policy accepts it
   (:mod:`.trust`);
3. the session stamped on the parent span, when the parent is a span of this process;
4. the process default session (:data:`PROCESS_SESSION`), set by ``init()``, by
   ``LUCIDIC_SESSION_NAME``/``LUCIDIC_SESSION_ID`` or by the context a parent process left.

The span processor applies the rule on every span start, reading the context through the SDK's
verified shortcuts; :func:`session_for` is the same rule through the public API only, for code
that has no processor at hand.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context

from lucidic_otel.config import Settings
from lucidic_otel.environment_variables import LUCIDIC_SESSION_ID, LUCIDIC_SESSION_NAME
from lucidic_otel.ids import new_session_id
from lucidic_otel.sessions.context import (
    BAGGAGE_KEY,
    SESSION_ATTRIBUTE,
    SESSION_KEY,
    context_with_session,
)
from lucidic_otel.sessions.lifecycle import REGISTRY
from lucidic_otel.sessions.trust import BaggageTrust

logger = logging.getLogger(__name__)


class ProcessSession:
    """The process-wide default session (rule 4), one attribute wide.

    A plain attribute read is all the span processor pays for it on every span; writes are
    rare (``init()``, the launcher's start-up, ``end_session`` of that session).
    """

    __slots__ = ("session_id",)

    def __init__(self) -> None:
        self.session_id: Optional[str] = None


#: The one process default session; the span processor and the exporter read it.
PROCESS_SESSION = ProcessSession()


def session_for(context: Optional[Context], trust: BaggageTrust) -> Optional[str]:
    """The session a span started in ``context`` (default: current) belongs to, or None.

    Args:
        context: the parent context of the span, or None for the current context.
        trust: the inbound baggage policy that judges rule 2.

    Returns:
        The session id by the precedence rule of this module, or None when no rule gives one.
    """
    ctx = otel_context.get_current() if context is None else context
    sid = ctx.get(SESSION_KEY)
    if sid is not None:
        return sid  # type: ignore[return-value]
    raw = baggage.get_baggage(BAGGAGE_KEY, ctx)
    if raw is not None:
        sid = trust.session_from_baggage(raw)
        if sid is not None:
            return sid
    attributes = getattr(trace.get_current_span(ctx), "attributes", None)
    stamped = attributes.get(SESSION_ATTRIBUTE) if attributes else None
    if isinstance(stamped, str):
        return stamped
    return PROCESS_SESSION.session_id


def start_process_session(settings: Settings) -> None:
    """Start the zero-code session of ``LUCIDIC_SESSION_NAME`` as this process's default.

    The id is ``LUCIDIC_SESSION_ID`` when given (a parent's session, joined by name), else a
    new one. It is bound in the current context and written to ``LUCIDIC_SESSION_ID`` with the
    name removed, so child processes join this session instead of starting their own.

    Args:
        settings: the settings of this process (``config.get_settings()``).
    """
    sid = settings.session_id or new_session_id()
    REGISTRY.open(sid, name=settings.session_name, auto_end=settings.auto_end)
    PROCESS_SESSION.session_id = sid
    otel_context.attach(context_with_session(sid))
    os.environ[LUCIDIC_SESSION_ID] = sid
    os.environ.pop(LUCIDIC_SESSION_NAME, None)
