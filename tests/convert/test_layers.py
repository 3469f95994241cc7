"""Layered LLM spans: one API call, one ``llm_generation`` event, counted once.

Real SDK spans (a local provider, never the global one) go through the real exporter into a
real store, in the orders and batches an application can produce: the inner layer ending first
or last, both layers in one export batch or in two. The store is then read as the CLI and the
sender read it: the outbox events, the span table and the session totals.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import set_span_in_context

from lucidic_otel.config import Settings
from lucidic_otel.convert.layers import LayerSpan, LayerTracker, merge_payloads
from lucidic_otel.convert.pricing import cost as price_cost
from lucidic_otel.outbox.store import Store
from lucidic_otel.sdk.exporter import LucidicSpanExporter
from lucidic_otel.sessions.context import SESSION_ATTRIBUTE
from lucidic_otel.sessions.lifecycle import LifecycleJournal

SESSION = "layers-1"
MODEL = "claude-haiku-4-5"
SNAPSHOT = "claude-haiku-4-5-20251001"
INSTRUMENTATION = "opentelemetry.instrumentation.genai.anthropic"
CLIENT = "com.anthropic.sdk.python"
FRAMEWORK = "framework.emulated"


class Recorder:
    """Spans made with chosen parents, ended in a chosen order, exported in chosen batches."""

    def __init__(self) -> None:
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource({"service.name": "svc"}),
                                       shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))

    def start(self, name: str, attributes: Dict[str, Any], scope: str = INSTRUMENTATION,
              parent: Any = None):
        tracer = self.provider.get_tracer(scope)
        context = set_span_in_context(parent) if parent is not None else None
        return tracer.start_span(name, context=context,
                                 attributes={SESSION_ATTRIBUTE: SESSION, **attributes})

    def finished(self) -> Dict[str, ReadableSpan]:
        return {s.name: s for s in self.memory.get_finished_spans()}


def instrumentation_layer(response_id: Optional[str] = "msg_1", **extra: Any) -> Dict[str, Any]:
    """What opentelemetry-instrumentation-genai-anthropic records: content and full usage."""
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": MODEL,
        "gen_ai.response.model": SNAPSHOT,
        "gen_ai.usage.input_tokens": 176,
        "gen_ai.usage.output_tokens": 8,
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": "Say hello."}]}]),
        "gen_ai.output.messages": json.dumps(
            [{"role": "assistant", "parts": [{"type": "text", "content": "Hello."}],
              "finish_reason": "stop"}]),
        **extra,
    }
    if response_id is not None:
        attributes["gen_ai.response.id"] = response_id
    return attributes


def client_layer(response_id: Optional[str] = "msg_1", **extra: Any) -> Dict[str, Any]:
    """What anthropic's own tracing records: no content, no input token count."""
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.max_tokens": 100,
        "gen_ai.response.model": SNAPSHOT,
        "gen_ai.usage.output_tokens": 8,
        "gen_ai.usage.cache_write.input_tokens": 0,
        **extra,
    }
    if response_id is not None:
        attributes["gen_ai.response.id"] = response_id
    return attributes


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store.db")
    yield store
    store.close()


@pytest.fixture
def exporter(store):
    return LucidicSpanExporter(Settings(), store=store, journal=LifecycleJournal())


def llm_events(store: Store) -> List[Dict[str, Any]]:
    return [i.body for i in store.session_events(SESSION) if i.body["type"] == "llm_generation"]


def session_totals(store: Store) -> Dict[str, Any]:
    (session,) = [s for s in store.list_sessions() if s["session_id"] == SESSION]
    return session


def spans_by_name(store: Store):
    return {s.name: s for s in store.session_spans(SESSION)}


EXPECTED_COST = price_cost(SNAPSHOT, 176, 8)


def assert_one_call(store: Store) -> Dict[str, Any]:
    (event,) = llm_events(store)
    payload = event["payload"]
    assert payload["usage"] == {"input_tokens": 176, "output_tokens": 8, "cost": EXPECTED_COST}
    assert payload["request"]["messages"] == [{"role": "user", "content": "Say hello."}]
    assert payload["response"]["output"] == "Hello."
    assert payload["request"]["params"]["max_tokens"] == 100  # only the client layer had it
    assert payload["misc"]["response_id"] == "msg_1"
    assert payload["misc"]["response_model"] == SNAPSHOT
    assert sorted(layer["span_name"] for layer in payload["misc"]["layers"]) == [
        "anthropic.messages.create", f"chat {MODEL}"]
    totals = session_totals(store)
    assert (totals["llm_calls"], totals["input_tokens"], totals["output_tokens"]) == (1, 176, 8)
    assert totals["cost"] == pytest.approx(EXPECTED_COST)
    spans = spans_by_name(store)
    assert [n for n, s in spans.items() if s.is_llm_call] == [event["metadata"]["span_name"]]
    holder = spans[event["metadata"]["span_name"]]
    assert (holder.input_tokens, holder.output_tokens, holder.cost) == (176, 8, EXPECTED_COST)
    return event


# --------------------------------------------------------------- parent/child, any order


@pytest.mark.parametrize("inner_ends_first", [True, False], ids=["inner-first", "outer-first"])
@pytest.mark.parametrize("batches", ["one", "two"])
def test_parent_and_child_layers_are_one_event(store, exporter, inner_ends_first, batches):
    rec = Recorder()
    root = rec.start("agent run", {}, scope="app")
    outer = rec.start(f"chat {MODEL}", instrumentation_layer(), parent=root)
    inner = rec.start("anthropic.messages.create", client_layer(), scope=CLIENT, parent=outer)
    for span in ((inner, outer) if inner_ends_first else (outer, inner)):
        span.end()
    root.end()
    done = rec.finished()
    first, second = (
        (done["anthropic.messages.create"], done[f"chat {MODEL}"]) if inner_ends_first
        else (done[f"chat {MODEL}"], done["anthropic.messages.create"])
    )
    if batches == "one":
        exporter.export([first, second, done["agent run"]])
    else:
        exporter.export([first])
        exporter.export([second, done["agent run"]])

    event = assert_one_call(store)
    spans = spans_by_name(store)
    # The outer layer keeps its place: stored, under the agent run, over the client span.
    assert spans[f"chat {MODEL}"].parent_span_id == spans["agent run"].span_id
    assert spans["anthropic.messages.create"].parent_span_id == spans[f"chat {MODEL}"].span_id
    if batches == "one" or inner_ends_first:
        # The event is the innermost layer's, the span closest to the wire.
        assert event["metadata"]["span_name"] == "anthropic.messages.create"


def test_a_late_layer_updates_the_pending_event_and_the_totals(store, exporter):
    """The client layer alone has no input tokens: until the instrumentation's layer arrives
    the event and the session count 0 of them, then 176, still once."""
    rec = Recorder()
    outer = rec.start(f"chat {MODEL}", instrumentation_layer())
    inner = rec.start("anthropic.messages.create", client_layer(), scope=CLIENT, parent=outer)
    inner.end()
    outer.end()
    done = rec.finished()
    exporter.export([done["anthropic.messages.create"]])
    (early,) = llm_events(store)
    assert early["payload"]["usage"]["input_tokens"] is None
    assert session_totals(store)["input_tokens"] == 0
    exporter.export([done[f"chat {MODEL}"]])
    late = assert_one_call(store)
    assert late["client_event_id"] == early["client_event_id"]


# ------------------------------------------------------------------ response id only


def test_layers_sharing_only_a_response_id_are_one_event(store, exporter):
    """Not parent and child: a framework's retry span sits between them."""
    rec = Recorder()
    outer = rec.start(f"chat {MODEL}", instrumentation_layer())
    middle = rec.start("retry", {}, scope="app", parent=outer)
    inner = rec.start("anthropic.messages.create", client_layer(), scope=CLIENT, parent=middle)
    inner.end()
    middle.end()
    outer.end()
    done = rec.finished()
    exporter.export([done["anthropic.messages.create"]])
    exporter.export([done["retry"], done[f"chat {MODEL}"]])
    assert_one_call(store)


def test_layers_in_different_traces_sharing_a_response_id_are_one_event(store, exporter):
    rec = Recorder()
    rec.start("anthropic.messages.create", client_layer(), scope=CLIENT).end()
    rec.start(f"chat {MODEL}", instrumentation_layer()).end()
    done = rec.finished()
    assert (done[f"chat {MODEL}"].context.trace_id
            != done["anthropic.messages.create"].context.trace_id)
    exporter.export(list(done.values()))
    assert_one_call(store)


def test_a_root_layer_joined_by_response_id_gives_its_event_to_the_layer_in_the_tree(
        store, exporter):
    """OpenInference's LangChain spans are started outside the current context, so the
    client's span of the call is a root of its own trace, and ends first: the one event is
    placed at the framework's layer, under the agent, not left at the root."""
    rec = Recorder()
    agent = rec.start("agent run", {}, scope="app")
    rec.start("anthropic.messages.create", client_layer(), scope=CLIENT).end()
    rec.start(f"chat {MODEL}", instrumentation_layer(), scope=FRAMEWORK, parent=agent).end()
    agent.end()
    done = rec.finished()
    exporter.export([done["anthropic.messages.create"], done[f"chat {MODEL}"],
                     done["agent run"]])
    event = assert_one_call(store)
    assert event["metadata"]["span_name"] == f"chat {MODEL}"
    assert event["metadata"]["parent_span_id"] == spans_by_name(store)["agent run"].span_id


# ------------------------------------------------------------------- never merged


def test_two_calls_with_the_same_model_in_one_span_never_merge(store, exporter):
    rec = Recorder()
    step = rec.start("plan step", {}, scope="app")
    for n in (1, 2):
        rec.start(f"call {n}", instrumentation_layer(response_id=None), parent=step).end()
    step.end()
    exporter.export(list(rec.finished().values()))
    assert len(llm_events(store)) == 2
    totals = session_totals(store)
    assert (totals["llm_calls"], totals["input_tokens"], totals["output_tokens"]) == (2, 352, 16)


def test_two_calls_with_the_same_model_under_an_llm_span_never_merge(store, exporter):
    """The framework's LLM span arrives first (its own batch) and joins the first call; the
    second call, a sibling of the first, stays a call of its own, and the totals count the
    calls' own usage, not the framework's sum on top."""
    rec = Recorder()
    framework = rec.start("ChatModel", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": MODEL, "gen_ai.usage.input_tokens": 352,
        "gen_ai.usage.output_tokens": 16}, scope=FRAMEWORK)
    calls = [rec.start(f"call {n}", instrumentation_layer(response_id=None), parent=framework)
             for n in (1, 2)]
    framework.end()
    for call in calls:
        call.end()
    done = rec.finished()
    exporter.export([done["ChatModel"]])
    exporter.export([done["call 1"]])
    exporter.export([done["call 2"]])
    assert len(llm_events(store)) == 2
    totals = session_totals(store)
    assert (totals["llm_calls"], totals["input_tokens"], totals["output_tokens"]) == (2, 352, 16)


def test_siblings_repeating_a_response_id_never_merge(store, exporter):
    """A fake or caching proxy may answer two calls with one id: siblings stay two calls,
    and so do two calls of one instrumentation, even in different traces."""
    rec = Recorder()
    step = rec.start("plan step", {}, scope="app")
    rec.start("call 1", instrumentation_layer(), parent=step).end()
    rec.start("call 2", client_layer(), scope=CLIENT, parent=step).end()
    step.end()
    rec.start("call 3", instrumentation_layer()).end()
    exporter.export(list(rec.finished().values()))
    assert len(llm_events(store)) == 3
    assert session_totals(store)["llm_calls"] == 3


def test_parent_and_child_with_different_response_ids_are_two_calls(store, exporter):
    rec = Recorder()
    outer = rec.start(f"chat {MODEL}", instrumentation_layer(response_id="msg_outer"))
    rec.start("anthropic.messages.create", client_layer(response_id="msg_inner"),
              scope=CLIENT, parent=outer).end()
    outer.end()
    exporter.export(list(rec.finished().values()))
    assert len(llm_events(store)) == 2


@pytest.mark.parametrize("batches", ["one", "two"])
def test_a_framework_span_over_two_calls_claims_neither(store, exporter, batches):
    rec = Recorder()
    framework = rec.start("ChatModel", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": MODEL, "gen_ai.usage.input_tokens": 352,
        "gen_ai.usage.output_tokens": 16}, scope=FRAMEWORK)
    rec.start("call 1", instrumentation_layer(response_id="msg_a"), parent=framework).end()
    rec.start("call 2", instrumentation_layer(response_id="msg_b"), parent=framework).end()
    framework.end()
    done = rec.finished()
    if batches == "one":
        exporter.export([done["call 1"], done["call 2"], done["ChatModel"]])
    else:
        exporter.export([done["call 1"], done["call 2"]])
        exporter.export([done["ChatModel"]])
    events = llm_events(store)
    assert sorted(e["metadata"]["span_name"] for e in events) == ["call 1", "call 2"]
    totals = session_totals(store)
    assert (totals["llm_calls"], totals["input_tokens"], totals["output_tokens"]) == (2, 352, 16)
    framework_span = spans_by_name(store)["ChatModel"]
    assert not framework_span.is_llm_call and framework_span.input_tokens is None


# ------------------------------------------------------------------- units


def test_merge_prefers_the_inner_layer_and_the_dated_model():
    inner = {"request": {"provider": "openai", "model": "gpt-4o-2024-08-06", "messages": [],
                         "params": {"temperature": 0}},
             "response": {"output": None, "tool_calls": []},
             "usage": {"input_tokens": 10, "output_tokens": None, "cost": None}, "misc": {}}
    outer = {"request": {"provider": "unknown", "model": "gpt-4o",
                         "messages": [{"role": "user", "content": "hi"}],
                         "params": {"temperature": 1, "top_p": 1}},
             "response": {"output": "hello", "tool_calls": []},
             "usage": {"input_tokens": 12, "output_tokens": 3, "cost": 1.0},
             "status": "error", "error": "boom", "misc": {}}
    merged = merge_payloads(inner, outer)
    assert merged["request"] == {"provider": "openai", "model": "gpt-4o-2024-08-06",
                                 "messages": [{"role": "user", "content": "hi"}],
                                 "params": {"temperature": 0, "top_p": 1}}
    assert merged["response"]["output"] == "hello"
    assert merged["usage"] == {"input_tokens": 10, "output_tokens": 3,
                               "cost": price_cost("gpt-4o-2024-08-06", 10, 3)}
    assert (merged["status"], merged["error"]) == ("error", "boom")


def test_the_tracker_forgets_old_calls():
    tracker = LayerTracker(max_calls=2)
    for n in range(5):
        event = {"client_event_id": str(n), "session_id": SESSION, "metadata": {},
                 "payload": {"misc": {"response_id": f"r{n}"}}}
        verdict, _ = tracker.add(LayerSpan(f"{n:032x}", f"{n:016x}", "p", SESSION, "s",
                                           "x", event))
        assert verdict == "new"
    assert len(tracker._calls) == 2
    assert len(tracker._by_span) == 2 and len(tracker._by_response) == 2
    assert len(tracker._by_parent) == 2


def test_a_late_merge_of_a_delivered_event_keeps_the_delivered_body(store, exporter):
    rec = Recorder()
    outer = rec.start(f"chat {MODEL}", instrumentation_layer())
    rec.start("anthropic.messages.create", client_layer(), scope=CLIENT, parent=outer).end()
    outer.end()
    done = rec.finished()
    exporter.export([done["anthropic.messages.create"]])
    (item,) = store.session_events(SESSION)
    store.mark_delivered([item.seq])
    exporter.export([done[f"chat {MODEL}"]])
    (after,) = store.session_events(SESSION)
    assert after.body == item.body  # what the backend has
    # The totals still count the call once, with the tokens the late layer brought.
    totals = session_totals(store)
    assert (totals["llm_calls"], totals["input_tokens"], totals["output_tokens"]) == (1, 176, 8)
