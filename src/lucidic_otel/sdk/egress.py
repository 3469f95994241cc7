"""Where session baggage may go: the user's own services, not third parties.

The stock baggage propagator writes every entry into every outbound carrier, so without this
each request an instrumented HTTP client makes, the calls to the LLM provider included, carried
``baggage: lucidic.session_id=...`` (signed, in signed mode: a bearer token for "write spans into
this session"). The policy here decides per carrier, at inject time, from what the HTTP client
instrumentation has already put on its client span (the span is current while it injects):

1. ``LUCIDIC_PROPAGATE=false``: never (nothing else is consulted).
2. A child-process carrier (``inject_env``): always; the child is this application's own.
3. A host on ``LUCIDIC_PROPAGATE_DENY``: never.
4. A host on ``LUCIDIC_PROPAGATE_TO``: always, even inside an LLM call or to a provider host.
5. ``LUCIDIC_PROPAGATE_TO`` set and the host not on it (or not known): never.
6. Inside an LLM client call (a GenAI client span or a descendant of one, whatever its base
   URL): never.
7. A known provider host (:data:`PROVIDER_HOSTS`, and the Lucidic backend itself): never.
8. Otherwise: yes.

Only the ``lucidic.session_id`` entry is withheld: ``traceparent`` and every other baggage entry
go out unchanged. The check costs one dictionary lookup when the context carries no session.
Limits: a client that is not instrumented, or whose span is not recording (sampled out), shows
no destination; rules 4, 6 and 7 then cannot apply, and rule 5 withholds.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

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
from opentelemetry.trace import SpanKind, get_current_span

from lucidic_otel.config import Settings, get_settings
from lucidic_otel.sdk import _fastpath
from lucidic_otel.sdk.handoff import SENT_OUT
from lucidic_otel.sessions.context import BAGGAGE_KEY

logger = logging.getLogger(__name__)

#: LLM providers and the Lucidic backend: session baggage is withheld from these hosts.
PROVIDER_HOSTS: Tuple[str, ...] = (
    "api.openai.com",
    "*.openai.azure.com",
    "*.cognitiveservices.azure.com",
    "*.services.ai.azure.com",
    "models.inference.ai.azure.com",
    "models.github.ai",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "aiplatform.googleapis.com",
    "*-aiplatform.googleapis.com",
    "bedrock*.amazonaws.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.cohere.com",
    "api.cohere.ai",
    "api.together.xyz",
    "api.together.ai",
    "api.fireworks.ai",
    "api.deepseek.com",
    "api.x.ai",
    "openrouter.ai",
    "api.perplexity.ai",
    "api.cerebras.ai",
    "api-inference.huggingface.co",
    "router.huggingface.co",
    "api.replicate.com",
    "api.voyageai.com",
    "lucidic.ai",
    "*.lucidic.ai",
)

# Attributes HTTP client instrumentations set when they start the client span: stable semantic
# conventions first, then the older names (OTEL_SEMCONV_STABILITY_OPT_IN decides which).
_URL_ATTRIBUTES = ("url.full", "http.url")
_HOST_ATTRIBUTES = ("server.address", "net.peer.name")
_DECISIONS_KEPT = 1024
#: A span is an LLM client call when it is a CLIENT span holding one of these at start (the
#: processor's pre-check too).
GENAI_CALL_KEYS = frozenset({"gen_ai.operation.name", "gen_ai.system", "gen_ai.provider.name"})


class _Hosts:
    """Host patterns compiled into one regular expression (one match per host, not one per
    pattern: the built-in list alone has some thirty)."""

    def __init__(self, patterns: Tuple[str, ...]) -> None:
        self.patterns = patterns
        joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)
        self._match = re.compile(joined).match if patterns else None

    def __contains__(self, host: str) -> bool:
        return self._match is not None and self._match(host) is not None


def _base_url_endpoint(settings: Settings) -> Optional[Tuple[str, int]]:
    """The Lucidic backend's (host, port): matched with its port, because a backend on the
    same host as the application's own services (self-hosted, tests) must not withhold the
    session from them."""
    try:
        url = urlsplit(settings.base_url)
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        return None
    return (url.hostname.lower(), port) if url.hostname else None


class LlmCalls:
    """The ids of open spans that are LLM client calls or run inside one.

    Fed by the session processor at span start (a GenAI client span, or a span whose local
    parent is in the set) and emptied at span end, so it holds only the calls in flight.
    """

    def __init__(self) -> None:
        #: span id -> True. Never rebound (emptied in place), so the processor can keep a
        #: reference and test it for emptiness without a method call on every span.
        self.open: Dict[int, bool] = {}

    def on_start(self, span: Any, attributes: Optional[Dict[str, Any]]) -> None:
        # Cheapest tests first: the processor calls this only for a span with a GenAI key or
        # while a call is open, on the application's thread.
        if (
            attributes
            and not GENAI_CALL_KEYS.isdisjoint(attributes)
            and span.kind is SpanKind.CLIENT
        ):
            self.open[span.get_span_context().span_id] = True
        elif self.open:
            parent = span.parent
            if parent is not None and parent.span_id in self.open:
                self.open[span.get_span_context().span_id] = True

    def on_end(self, span: Any) -> None:
        if self.open:
            self.open.pop(span.get_span_context().span_id, None)

    def __contains__(self, span_id: int) -> bool:
        return span_id in self.open

    def __len__(self) -> int:
        return len(self.open)

    def after_fork(self) -> None:
        self.open.clear()


LLM_CALLS = LlmCalls()
# Registered here, not by the launcher: the processor that feeds it also runs without one
# (a provider the application built), and a forked child must not see its parent's calls.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=LLM_CALLS.after_fork)


_URL = re.compile(
    r"([A-Za-z][A-Za-z0-9+.-]*)://(?:[^@/?#]*@)?(\[[^\]/?#]*\]|[^:/?#]*)(?::([^/?#]*))?"
)


def _netloc(url: str) -> Tuple[Optional[str], Optional[int]]:
    """(host, port) of an absolute URL with one regular-expression match: ``urlsplit`` costs
    several times more, and this runs for every outgoing request that carries a session."""
    match = _URL.match(url)
    if match is None:
        return None, None
    scheme, host, port_text = match.groups()
    host = host.strip("[]").lower() or None
    if not port_text:
        return host, 443 if scheme.lower() == "https" else 80
    return host, int(port_text) if port_text.isdigit() else None


def destination(span: Any) -> Tuple[Optional[str], Optional[int]]:
    """(host, port) an HTTP client span is about to send to, host lower-cased; None where
    the span does not say."""
    if type(span) is _fastpath.SDK_SPAN_TYPE:  # its attribute dict, without a read-only proxy
        attributes = _fastpath.attributes_of(span)
    else:
        attributes = getattr(span, "attributes", None)
    if not attributes:
        return None, None
    port = attributes.get("server.port")
    if port is None:
        port = attributes.get("net.peer.port")
    port = port if isinstance(port, int) else None
    host = attributes.get("server.address")
    if isinstance(host, str) and host and port is not None:  # cheapest: no URL to parse
        return host.strip("[]").lower(), port
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str) and value:
            url_host, url_port = _netloc(value)
            if url_host:
                return url_host, port or url_port
    for name in _HOST_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str) and value:
            return value.strip("[]").lower(), port
    return None, port


class OutboundPolicy:
    """The rules above, for one settings object."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.propagate
        self.allow = settings.propagate_to
        self.deny = settings.propagate_deny
        self.providers = PROVIDER_HOSTS
        self.backend = _base_url_endpoint(settings)
        self._deny = _Hosts(self.deny)
        self._allow = _Hosts(self.allow or ())
        self._providers = _Hosts(self.providers)
        # Decisions by destination: a service talks to few hosts, and this runs per request.
        self._decided: Dict[Tuple[Optional[str], Optional[int], bool], bool] = {}

    def allows(self, host: Optional[str], in_llm_call: bool, port: Optional[int]) -> bool:
        """:meth:`decide`'s answer, remembered per destination (bounded)."""
        key = (host, port, in_llm_call)
        decided = self._decided.get(key)
        if decided is None:
            decided = self.decide(host, in_llm_call, port)[0]
            if len(self._decided) >= _DECISIONS_KEPT:
                self._decided.clear()
            self._decided[key] = decided
        return decided

    def decide(
        self, host: Optional[str], in_llm_call: bool, port: Optional[int] = None
    ) -> Tuple[bool, str]:
        """(send the session baggage?, the rule that decided)."""
        if not self.enabled:
            return False, "LUCIDIC_PROPAGATE=false"
        if host is not None and host in self._deny:
            return False, "LUCIDIC_PROPAGATE_DENY"
        if self.allow is not None:
            if host is not None and host in self._allow:
                return True, "LUCIDIC_PROPAGATE_TO"
            return False, "not on LUCIDIC_PROPAGATE_TO"
        if in_llm_call:
            return False, "inside an LLM client call"
        if host is not None and host in self._providers:
            return False, "a known LLM provider or Lucidic host"
        if host is not None and (host, port) == self.backend:
            return False, "the Lucidic backend (LUCIDIC_BASE_URL)"
        return True, "default"

    def describe(self) -> Dict[str, Any]:
        """The effective policy, for ``doctor``."""
        return {
            "session_baggage": "off" if not self.enabled else "on, by host",
            "allow": list(self.allow) if self.allow is not None else None,
            "deny": list(self.deny),
            "withheld_inside_llm_calls": self.enabled and self.allow is None,
            "withheld_provider_hosts": list(self.providers) if self.allow is None else [],
            "withheld_backend": f"{self.backend[0]}:{self.backend[1]}" if self.backend else None,
            "child_processes": "carried" if self.enabled else "not carried",
        }


def _has_session_baggage(ctx: Context) -> bool:
    key = _fastpath.BAGGAGE_CONTEXT_KEY
    if key is not None:  # the SDK's dict, without a read-only proxy
        entries = ctx.get(key)
        return isinstance(entries, dict) and BAGGAGE_KEY in entries
    return baggage.get_baggage(BAGGAGE_KEY, ctx) is not None


def _note_sent_out(ctx: Context) -> None:
    raw = baggage.get_baggage(BAGGAGE_KEY, ctx)
    if isinstance(raw, str) and raw:
        SENT_OUT.mark(raw.partition("~")[0])  # a signed value is "id~signature"


class SessionBaggagePolicy(TextMapPropagator):
    """``inner`` unchanged, except that ``inject`` writes the session entry only where the
    outbound policy allows it (the other baggage entries and the trace context always go)."""

    def __init__(self, inner: TextMapPropagator, policy: Optional[OutboundPolicy] = None) -> None:
        self.inner = inner
        self._policy = policy
        self._lock = threading.Lock()

    @property
    def policy(self) -> OutboundPolicy:
        policy = self._policy
        if policy is None:
            with self._lock:
                if self._policy is None:
                    self._policy = OutboundPolicy(get_settings())
                policy = self._policy
        return policy

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
        if _has_session_baggage(ctx):
            if not self.allows(ctx, setter):
                ctx = baggage.remove_baggage(BAGGAGE_KEY, ctx)
            elif not getattr(setter, "lucidic_child_process", False):
                _note_sent_out(ctx)  # its end waits for that service (sdk.handoff)
        self.inner.inject(carrier, context=ctx, setter=setter)

    def allows(self, ctx: Context, setter: Any) -> bool:
        policy = self.policy
        if getattr(setter, "lucidic_child_process", False):
            return policy.enabled
        span = get_current_span(ctx)
        host, port = destination(span)
        in_llm_call = bool(LLM_CALLS) and span.get_span_context().span_id in LLM_CALLS
        return policy.allows(host, in_llm_call, port)

    @property
    def fields(self) -> set:
        return self.inner.fields


def install_outbound_policy() -> bool:
    """Wrap the global propagator in the outbound session-baggage policy
    (:class:`SessionBaggagePolicy`), once; True if it did."""
    current = propagate.get_global_textmap()
    if isinstance(current, SessionBaggagePolicy):
        return False
    propagate.set_global_textmap(SessionBaggagePolicy(current))
    return True
