"""One API call, one ``llm_generation`` event, however many layers instrumented it.

A call is often recorded by more than one layer: ``anthropic`` 2.x traces itself
(``anthropic.messages.create``) inside the ``chat <model>`` span of the GenAI instrumentation;
a framework's LLM span (LangChain, the OpenAI Agents SDK, LlamaIndex) wraps the client
instrumentation's span; two instrumentation packages wrap one library. Each layer's span is an
LLM span on its own, so each would become an event, and the call and its cost would count
twice.

:class:`LayerTracker` groups the LLM spans of one call and keeps one event for the group:

* two LLM spans are layers of one call when one is the other's parent, or when they carry the
  same ``gen_ai.response.id`` in one session and come from different instrumentation scopes;
  never when both carry response ids that differ, and never when they are siblings (two
  calls made inside one span are two calls, whatever their model);
* an LLM span over several LLM calls (its children, in different groups) is a layer over all
  of them and claims none: it stays a span in the tree, without an event or tokens;
* the event is the innermost layer's (the one closest to the wire; of layers joined by
  response id only, the one that has a parent span, so the event stays in the run's tree),
  carrying the union of
  what the layers recorded: messages, output, tool calls and thinking from whichever has them,
  parameters merged, usage once (the innermost value of each count), the most specific model,
  the response id, an error if any layer failed, and ``misc.layers`` naming the spans merged;
* the other layers' spans are stored as plain spans (they keep their place in the tree, with
  their children) and are not counted in the session's calls, tokens or cost.

Spans of one call usually end together and reach the exporter in one batch; the state kept
here (bounded, most recent calls) also joins layers that arrive in different batches, in
either order: a late layer then updates the event already written (see :class:`LateMerge`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lucidic_otel.convert.pricing import PriceTable
from lucidic_otel.convert.pricing import cost as _price_cost
from lucidic_otel.convert.pricing import price as _price

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
# Recent calls remembered for layers that arrive in a later batch; the layers of one call end
# within moments of each other, so a short memory is enough and keeps this cheap.
MAX_CALLS = 2048


@dataclass
class LayerSpan:
    """What the tracker needs of one finished LLM span (hex ids, as stored)."""

    trace_id: str
    span_id: str
    parent_span_id: Optional[str]
    session_id: str
    scope: Optional[str]
    name: str
    event: Dict[str, Any]


@dataclass
class LateMerge:
    """A layer that arrived after its call's event was written: the event's new body and
    summary, for :meth:`lucidic_otel.outbox.store.Store.merge_llm_layer`."""

    session_id: str
    event_key: str
    trace_id: str
    span_id: str
    body: Dict[str, Any]
    model: Optional[str]
    input_tokens: Optional[int]
    output_tokens: Optional[int]
    cost: Optional[float]


class _Call:
    __slots__ = ("trace_id", "session_id", "members", "scopes", "response_id", "event",
                 "primary", "written")

    def __init__(self, span: LayerSpan) -> None:
        self.trace_id = span.trace_id
        self.session_id = span.session_id
        # (trace id, span id) of each layer -> its parent span id
        self.members: Dict[Tuple[str, str], Optional[str]] = {
            (span.trace_id, span.span_id): span.parent_span_id
        }
        self.scopes = {span.scope}
        self.response_id = response_id(span.event)
        self.event = span.event
        self.primary = (span.trace_id, span.span_id)  # the span that holds the event
        self.written = False


def response_id(event: Dict[str, Any]) -> Optional[str]:
    misc = event.get("payload", {}).get("misc")
    value = misc.get("response_id") if isinstance(misc, dict) else None
    return value if isinstance(value, str) and value else None


class LayerTracker:
    """Groups the LLM spans of one call across export batches. Used by one exporter, on its
    export thread (the SDK never runs two exports of one exporter at once)."""

    def __init__(self, max_calls: int = MAX_CALLS, prices: Optional[PriceTable] = None) -> None:
        self._max_calls = max_calls
        self._prices = prices
        self._calls: OrderedDict[int, _Call] = OrderedDict()
        self._by_span: Dict[Tuple[str, str], _Call] = {}
        self._by_parent: Dict[Tuple[str, str], List[_Call]] = {}
        self._by_response: Dict[Tuple[str, str], _Call] = {}

    def add(self, span: LayerSpan) -> Tuple[str, Optional[_Call]]:
        """Place one LLM span. Returns ``("new", call)`` for a call first seen here,
        ``("merged", call)`` when the span is another layer of a known call, and
        ``("over", None)`` for a span over several calls (no event of its own)."""
        children = self._by_parent.get((span.trace_id, span.span_id), ())
        call = self._match(span, children)
        if call is None:
            if len({id(c) for c in children}) > 1:
                return "over", None
            call = _Call(span)
            self._remember(call, span)
            return "new", call
        inner = _is_child_of(span, call) and not _is_parent_of(span, call)
        moves = (inner or _better_placed(call, span)) and not call.written
        call.event = _merge_events(call, span, inner, moves, self._prices)
        call.members[(span.trace_id, span.span_id)] = span.parent_span_id
        call.scopes.add(span.scope)
        if moves:
            call.primary = (span.trace_id, span.span_id)
        if call.response_id is None:
            call.response_id = response_id(span.event)
        self._index(call, span)
        return "merged", call

    def mark_written(self, calls: Sequence[_Call]) -> None:
        for call in calls:
            call.written = True

    # ------------------------------------------------------------------ matching

    def _match(self, span: LayerSpan, children: Sequence[_Call]) -> Optional[_Call]:
        """The known call ``span`` is a layer of: by response id, else its parent's call, else
        the one call its children belong to."""
        rid = response_id(span.event)
        return (
            self._match_response(span, rid)
            or self._match_parent(span, rid)
            or self._match_children(span, children, rid)
        )

    def _match_response(self, span: LayerSpan, rid: Optional[str]) -> Optional[_Call]:
        if rid is None:
            return None
        call = self._by_response.get((span.session_id, rid))
        if call is not None and self._joinable(call, span, rid) and (
            span.scope not in call.scopes or _related(call, span)
        ):
            return call
        return None

    def _match_parent(self, span: LayerSpan, rid: Optional[str]) -> Optional[_Call]:
        if span.parent_span_id is None:
            return None
        call = self._by_span.get((span.trace_id, span.parent_span_id))
        if call is not None and self._joinable(call, span, rid):
            return call
        return None

    def _match_children(
        self, span: LayerSpan, children: Sequence[_Call], rid: Optional[str]
    ) -> Optional[_Call]:
        distinct = {id(c): c for c in children if self._joinable(c, span, rid)}
        if len(distinct) == 1:
            return next(iter(distinct.values()))
        return None

    @staticmethod
    def _joinable(call: _Call, span: LayerSpan, rid: Optional[str]) -> bool:
        if call.session_id != span.session_id or (span.trace_id, span.span_id) in call.members:
            return False
        if rid is not None and call.response_id is not None and rid != call.response_id:
            return False
        if span.parent_span_id is not None:
            # A sibling of a layer is another call made inside the same span.
            for (trace_id, _), parent in call.members.items():
                if trace_id == span.trace_id and parent == span.parent_span_id:
                    return False
        return True

    # ------------------------------------------------------------------ bookkeeping

    def _remember(self, call: _Call, span: LayerSpan) -> None:
        self._calls[id(call)] = call
        self._index(call, span)
        while len(self._calls) > self._max_calls:
            _, old = self._calls.popitem(last=False)
            self._forget(old)

    def _index(self, call: _Call, span: LayerSpan) -> None:
        self._by_span[(span.trace_id, span.span_id)] = call
        if span.parent_span_id is not None:
            self._by_parent.setdefault((span.trace_id, span.parent_span_id), []).append(call)
        if call.response_id is not None:
            self._by_response.setdefault((call.session_id, call.response_id), call)

    def _forget(self, call: _Call) -> None:
        for (trace_id, member), parent in call.members.items():
            if self._by_span.get((trace_id, member)) is call:
                del self._by_span[(trace_id, member)]
            if parent is not None:
                key = (trace_id, parent)
                siblings = [c for c in self._by_parent.get(key, ()) if c is not call]
                if siblings:
                    self._by_parent[key] = siblings
                else:
                    self._by_parent.pop(key, None)
        if call.response_id is not None:
            key = (call.session_id, call.response_id)
            if self._by_response.get(key) is call:
                del self._by_response[key]


def _is_child_of(span: LayerSpan, call: _Call) -> bool:
    return (span.trace_id, span.parent_span_id) in call.members


def _is_parent_of(span: LayerSpan, call: _Call) -> bool:
    return any(
        trace_id == span.trace_id and parent == span.span_id
        for (trace_id, _), parent in call.members.items()
    )


def _related(call: _Call, span: LayerSpan) -> bool:
    return _is_child_of(span, call) or _is_parent_of(span, call)


def _better_placed(call: _Call, span: LayerSpan) -> bool:
    """Joined by response id only, ``span`` has a parent where the event's span is a root: a
    framework that starts its spans outside the current context (OpenInference's LangChain
    instrumentation) leaves the client's span a root of its own trace, and the event belongs
    in the framework's tree."""
    return (
        span.parent_span_id is not None
        and call.members.get(call.primary) is None
        and not _related(call, span)
    )


# ----------------------------------------------------------------------------- merging


def _merge_events(
    call: _Call, span: LayerSpan, inner: bool, moves: bool,
    prices: Optional[PriceTable] = None,
) -> Dict[str, Any]:
    """The call's event with ``span``'s layer joined; the envelope (ids, timing, metadata) is
    ``span``'s when the event ``moves`` to it (see :meth:`LayerTracker.add`)."""
    known, new = call.event, span.event
    inner_event, outer_event = (new, known) if inner else (known, new)
    envelope = new if moves else known
    merged = dict(envelope)
    merged["payload"] = merge_payloads(inner_event.get("payload", {}),
                                       outer_event.get("payload", {}), prices)
    layers = _layers(outer_event) + _layers(inner_event)
    merged["payload"].setdefault("misc", {})["layers"] = layers
    return merged


def _layers(event: Dict[str, Any]) -> List[Dict[str, Any]]:
    misc = event.get("payload", {}).get("misc")
    if isinstance(misc, dict) and isinstance(misc.get("layers"), list):
        return list(misc["layers"])
    meta = event.get("metadata") or {}
    layer = {"span_id": meta.get("span_id"), "span_name": meta.get("span_name")}
    if meta.get("scope_name"):
        layer["scope"] = meta["scope_name"]
    return [layer]


def merge_payloads(
    inner: Dict[str, Any], outer: Dict[str, Any], prices: Optional[PriceTable] = None
) -> Dict[str, Any]:
    """The union of two layers' ``llm_generation`` payloads; the inner layer wins ties."""
    inner_misc, outer_misc = inner.get("misc", {}) or {}, outer.get("misc", {}) or {}
    misc, response_model = _merge_misc(inner_misc, outer_misc)
    request = _merge_request(inner.get("request", {}), outer.get("request", {}))
    payload: Dict[str, Any] = {
        "request": request,
        "response": _merge_response(inner.get("response", {}), outer.get("response", {})),
        "usage": _merge_usage(inner.get("usage") or {}, outer.get("usage") or {},
                              (response_model, request["model"]), misc, prices),
    }
    for failed in (inner, outer):
        if failed.get("status") == "error":
            payload["status"] = "error"
            payload["error"] = failed.get("error") or "error"
            break
    payload["misc"] = misc
    return payload


def _merge_misc(
    inner: Dict[str, Any], outer: Dict[str, Any]
) -> Tuple[Dict[str, Any], Optional[str]]:
    """Both layers' misc (the inner wins), and the more specific response model."""
    misc = {**outer, **inner}
    response_model = _specific(inner.get("response_model"), outer.get("response_model"))
    if response_model is not None:
        misc["response_model"] = response_model
    if inner.get("streaming") or outer.get("streaming"):
        misc["streaming"] = True
    return misc, response_model


def _merge_request(inner: Dict[str, Any], outer: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "provider": _known(inner.get("provider"), outer.get("provider")),
        "model": _specific(inner.get("model"), outer.get("model")) or UNKNOWN,
        "messages": inner.get("messages") or outer.get("messages") or [],
        "params": {**(outer.get("params") or {}), **(inner.get("params") or {})},
    }


def _merge_response(inner: Dict[str, Any], outer: Dict[str, Any]) -> Dict[str, Any]:
    response: Dict[str, Any] = {
        "output": _first(inner.get("output"), outer.get("output")),
        "tool_calls": inner.get("tool_calls") or outer.get("tool_calls") or [],
    }
    thinking = inner.get("thinking") or outer.get("thinking")
    if thinking:
        response["thinking"] = thinking
    return response


def _merge_usage(inner: Dict[str, Any], outer: Dict[str, Any], models: Tuple[Any, str],
                 misc: Dict[str, Any], prices: Optional[PriceTable]) -> Dict[str, Any]:
    """Each count from the innermost layer that has it, priced once for the merged call
    (cache reads and writes from the merged misc at their own rates)."""
    input_tokens = _first(inner.get("input_tokens"), outer.get("input_tokens"))
    output_tokens = _first(inner.get("output_tokens"), outer.get("output_tokens"))
    usd = None
    if input_tokens is not None or output_tokens is not None:
        response_model, request_model = models
        model = response_model if _price(response_model, prices) is not None else request_model
        usd = _price_cost(model, input_tokens, output_tokens,
                          misc.get("cache_read_input_tokens"),
                          misc.get("cache_creation_input_tokens"), table=prices)
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "cost": usd}


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _known(*values: Any) -> str:
    for value in values:
        if isinstance(value, str) and value and value != UNKNOWN:
            return value
    return UNKNOWN


def _specific(inner: Any, outer: Any) -> Optional[str]:
    """The more specific of two model names: a dated snapshot over its alias
    (``gpt-4o-2024-08-06`` over ``gpt-4o``), else the inner layer's."""
    names = [v for v in (inner, outer) if isinstance(v, str) and v and v != UNKNOWN]
    if not names:
        return None
    if len(names) == 2:
        a, b = names
        if b.lower().startswith(a.lower()) and len(b) > len(a):
            return b
    return names[0]
