"""Carriers that take a session into other processes: environment variables and pickles.

HTTP propagation needs nothing from us (the global ``tracecontext,baggage`` propagators and the
HTTP instrumentations carry the baggage entry). A child process has no headers, so the parent
writes ``TRACEPARENT``/``TRACESTATE``/``BAGGAGE`` into the child's environment and the child,
started under the launcher, joins the context found there at start-up.

Outbound, the global propagator is wrapped by the session-baggage policy
(:mod:`~lucidic_otel.sdk.egress`):
the session entry goes to the application's own services and child
processes, not to LLM providers. With ``LUCIDIC_PROPAGATE=false`` it goes nowhere: sessions
opened here never enter baggage then, and a service that *joined* a session (it keeps the
inbound entry in its context, which is how its spans are stamped) does not forward it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, MutableMapping, Optional

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

from lucidic_otel.sessions.context import context_with_session

logger = logging.getLogger(__name__)

CARRIER_VARIABLES = ("TRACEPARENT", "TRACESTATE", "BAGGAGE")


class _EnvSetter(Setter[MutableMapping[str, str]]):
    #: A carrier for a child process of this application: the outbound policy lets the
    #: session through unless ``LUCIDIC_PROPAGATE=false``.
    lucidic_child_process = True

    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[key.upper()] = value


class _EnvGetter(Getter[MutableMapping[str, str]]):
    def get(self, carrier: MutableMapping[str, str], key: str) -> Optional[List[str]]:
        value = carrier.get(key.upper())
        return None if value is None else [value]

    def keys(self, carrier: MutableMapping[str, str]) -> List[str]:
        return [k.lower() for k in carrier if k in CARRIER_VARIABLES]


def inject_env(
    env: Optional[MutableMapping[str, str]] = None, context: Optional[Context] = None
) -> MutableMapping[str, str]:
    """Write the current trace context and baggage into ``env`` and return it.

    With no ``env``, a copy of ``os.environ`` is filled, ready for ``subprocess`` (``env=``).
    Stale carrier variables are removed first so a child never joins an older trace.
    """
    target: MutableMapping[str, str] = dict(os.environ) if env is None else env
    for name in CARRIER_VARIABLES:
        target.pop(name, None)
    propagate.inject(target, context=context, setter=_EnvSetter())
    return target


def extract_env(
    env: Optional[MutableMapping[str, str]] = None, context: Optional[Context] = None
) -> Context:
    """The context carried by ``env`` (default: ``os.environ``), as a child process sees it."""
    source: MutableMapping[str, str] = os.environ if env is None else env
    return propagate.extract(source, context=context, getter=_EnvGetter())


def env_has_carrier(env: Optional[MutableMapping[str, str]] = None) -> bool:
    source = os.environ if env is None else env
    return any(name in source for name in CARRIER_VARIABLES)


class CarriedContext:
    """``fn`` bound to the trace and session that were current when it was made
    (what ``lucidic_otel.carry_context`` returns).

    A plain object of four fields so that it pickles (by reference to ``fn``) into spawn and
    forkserver children, which inherit no context at all, and into pool workers forked before
    the session began. The session is carried as the active session, not only as baggage: the
    carrier comes from this application, not from a caller, so the inbound baggage trust policy
    (``LUCIDIC_BAGGAGE_TRUST=ignore`` at an edge) must not drop it. ``setup``, a picklable
    callable, sets a worker with no telemetry of its own up to record as the parent does (no
    credentials: the worker writes to the shared store and the parent, which has them,
    delivers); it is called before each call of ``fn`` and does nothing once set up.
    """

    __slots__ = ("fn", "carrier", "session_id", "setup")

    def __init__(
        self,
        fn: Callable[..., Any],
        carrier: Dict[str, str],
        session_id: Optional[str],
        setup: Optional[Callable[[], Any]] = None,
    ):
        self.fn = fn
        self.carrier = carrier
        self.session_id = session_id
        self.setup = setup

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = None
        try:
            if self.setup is not None:
                self.setup()
            ctx = propagate.extract(self.carrier)
            if self.session_id is not None:
                ctx = context_with_session(self.session_id, ctx)
            token = otel_context.attach(ctx)
        except Exception:  # noqa: BLE001 - not even strict mode may stop the work itself here
            logger.debug("lucidic-otel: could not restore a carried context", exc_info=True)
        try:
            return self.fn(*args, **kwargs)
        finally:
            if token is not None:
                otel_context.detach(token)

    def __getstate__(self) -> tuple:
        return (self.fn, self.carrier, self.session_id, self.setup)

    def __setstate__(self, state: tuple) -> None:
        self.fn, self.carrier, self.session_id, self.setup = state

    def __repr__(self) -> str:
        return f"carry_context({self.fn!r}, session_id={self.session_id!r})"
