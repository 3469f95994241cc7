"""Environment-variable carriers, so a session follows work into child processes.

HTTP propagation needs nothing from us (the global ``tracecontext,baggage`` propagators and the
HTTP instrumentations carry the baggage entry). A child process has no headers, so the parent
writes ``TRACEPARENT``/``TRACESTATE``/``BAGGAGE`` into the child's environment and the child,
started under the launcher, joins the context found there at start-up.

With ``LUCIDIC_PROPAGATE=false`` the session must not leave the process at all. Sessions
opened here never enter baggage then, but a service that *joined* a session keeps the inbound
entry in its context (that is how its spans are stamped), and the stock propagators would
forward it to every outbound destination, the LLM provider included. So the global propagator
is wrapped to drop that one entry on the way out.
"""

from __future__ import annotations

import os
from typing import List, MutableMapping, Optional

from opentelemetry import baggage, propagate
from opentelemetry.context import Context, get_current
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)

from lucidic_otel.context import BAGGAGE_KEY

CARRIER_VARIABLES = ("TRACEPARENT", "TRACESTATE", "BAGGAGE")


class _EnvSetter(Setter[MutableMapping[str, str]]):
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


class WithoutSessionBaggage(TextMapPropagator):
    """``inner`` unchanged, except that ``inject`` never writes the session baggage entry."""

    def __init__(self, inner: TextMapPropagator) -> None:
        self.inner = inner

    def extract(
        self,
        carrier: CarrierT,
        context: Optional[Context] = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        return self.inner.extract(carrier, context=context, getter=getter)

    def inject(
        self,
        carrier: CarrierT,
        context: Optional[Context] = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        ctx = get_current() if context is None else context
        if baggage.get_baggage(BAGGAGE_KEY, ctx) is not None:
            ctx = baggage.remove_baggage(BAGGAGE_KEY, ctx)
        self.inner.inject(carrier, context=ctx, setter=setter)

    @property
    def fields(self) -> set:
        return self.inner.fields


def withhold_session_baggage() -> bool:
    """Wrap the global propagator so no outbound carrier gets the session; True if it did."""
    current = propagate.get_global_textmap()
    if isinstance(current, WithoutSessionBaggage):
        return False
    propagate.set_global_textmap(WithoutSessionBaggage(current))
    return True
