"""Environment-variable carriers, so a session follows work into child processes.

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

import os
from typing import List, MutableMapping, Optional

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter

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
