"""Where a session lives: the OpenTelemetry ``Context``, and nowhere else.

A session scope is one OTel context holding a private key (the in-process active session, which
cannot be forged from outside) and the baggage entry ``lucidic.session_id`` (which the global
propagators carry to other processes). Keeping both in the OTel context means every piece of
OTel machinery that moves context around (asyncio, the threading instrumentation, explicit
``context=`` arguments) moves the session with it.
"""

from __future__ import annotations

from typing import Optional

from opentelemetry import baggage
from opentelemetry.context import Context, create_key, get_current, set_value

from lucidic_otel.config import get_settings
from lucidic_otel.ids import sign_session_id

SESSION_ATTRIBUTE = "lucidic.session_id"
SEMCONV_SESSION_ATTRIBUTE = "session.id"
BAGGAGE_KEY = "lucidic.session_id"

SESSION_KEY = create_key("lucidic.session_id")


def context_with_session(session_id: str, context: Optional[Context] = None) -> Context:
    """A copy of ``context`` (default: current) in which ``session_id`` is the active session.

    The baggage entry is added only when propagation is on; in signed mode it carries an HMAC
    so that downstream services sharing the secret can tell it was not forged.
    """
    ctx = set_value(SESSION_KEY, session_id, context)
    settings = get_settings()
    if not settings.propagate:
        return baggage.remove_baggage(BAGGAGE_KEY, ctx)
    value = session_id
    if settings.baggage_trust == "signed" and settings.baggage_secret:
        value = sign_session_id(session_id, settings.baggage_secret)
    return baggage.set_baggage(BAGGAGE_KEY, value, ctx)


def context_without_session(context: Optional[Context] = None) -> Context:
    """A copy of ``context`` with no active session and no session baggage."""
    ctx = set_value(SESSION_KEY, None, context)
    return baggage.remove_baggage(BAGGAGE_KEY, ctx)


def active_session(context: Optional[Context] = None) -> Optional[str]:
    """The session bound in ``context`` (default: current) by this process's API, if any."""
    ctx = get_current() if context is None else context
    value = ctx.get(SESSION_KEY)
    return value if isinstance(value, str) else None
