"""OpenInference's and OpenLLMetry's spellings of an LLM call, as their real packages write them.

The attributes below are copied from spans of openinference-instrumentation-openai 0.1.66 and
opentelemetry-instrumentation-openai 0.62.4 (OpenLLMetry) on the recorded exchanges of
``tests/data/openai`` (``tests/test_peer_instrumentations.py`` runs them end to end).
"""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest
from opentelemetry.trace import Status, StatusCode

from lucidic_otel.convert.aliases import llm_attributes
from lucidic_otel.convert.events import span_to_event
from lucidic_otel.convert.parts import Parts
from tests.convert.test_events import convert, make_span

OI_SCOPE = ("openinference.instrumentation.openai", "0.1.66")
OL_SCOPE = ("opentelemetry.instrumentation.openai.v1", "0.62.4")

OI_CACHED: Dict[str, Any] = {
    "openinference.span.kind": "LLM",
    "llm.system": "openai",
    "llm.invocation_parameters": '{"model": "gpt-4o-mini", "stream": false, "max_tokens": 8}',
    "llm.input_messages.0.message.role": "user",
    "llm.input_messages.0.message.content": "Reply with OK only.",
    "llm.model_name": "gpt-4o-mini-2024-07-18",
    "llm.token_count.total": 1459,
    "llm.token_count.prompt": 1457,
    "llm.token_count.completion": 2,
    "llm.token_count.prompt_details.cache_read": 1408,
    "llm.token_count.completion_details.reasoning": 0,
    "llm.output_messages.0.message.role": "assistant",
    "llm.output_messages.0.message.content": "OK",
    "llm.finish_reason": "stop",
}


def test_openinference_models_cached_tokens_and_finish_reason() -> None:
    payload = convert(make_span("ChatCompletion", OI_CACHED, scope=OI_SCOPE))["payload"]
    assert payload["request"]["model"] == "gpt-4o-mini-2024-07-18"
    assert payload["request"]["params"] == {"max_tokens": 8}
    misc = payload["misc"]
    assert misc["request_model"] == "gpt-4o-mini"
    assert misc["response_model"] == "gpt-4o-mini-2024-07-18"
    assert misc["cache_read_input_tokens"] == 1408
    assert misc["reasoning_output_tokens"] == 0
    assert misc["finish_reasons"] == ["stop"]
    assert misc["streaming"] is False
    # gpt-4o-mini: 0.15 input, 0.075 cached input, 0.60 output per 1M tokens.
    assert payload["usage"] == {"input_tokens": 1457, "output_tokens": 2, "cost": pytest.approx(
        ((1457 - 1408) * 0.15 + 1408 * 0.075 + 2 * 0.60) / 1e6, rel=1e-9)}


def test_openinference_failed_call_names_the_requested_model() -> None:
    from opentelemetry.trace import Status, StatusCode

    span = make_span("ChatCompletion", {
        "openinference.span.kind": "LLM",
        "llm.system": "openai",
        "llm.invocation_parameters": '{"model": "this-model-does-not-exist"}',
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": "Say this is a test",
    }, scope=OI_SCOPE, status=Status(StatusCode.ERROR, "NotFoundError: Error code: 404"))
    payload = convert(span)["payload"]
    assert payload["request"]["model"] == "this-model-does-not-exist"
    assert "request_model" not in payload["misc"]
    assert payload["status"] == "error" and "404" in payload["error"]


def test_openinference_embedding_models() -> None:
    span = make_span("CreateEmbeddings", {
        "openinference.span.kind": "EMBEDDING",
        "llm.system": "openai",
        "embedding.invocation_parameters": '{"model": "text-embedding-3-small"}',
        "embedding.model_name": "text-embedding-3-small",
        "embedding.embeddings.0.embedding.text": "This is a test for embeddings",
        "llm.token_count.prompt": 6,
        "llm.token_count.total": 6,
    }, scope=OI_SCOPE)
    payload = convert(span)["payload"]
    assert payload["request"]["model"] == "text-embedding-3-small"
    assert payload["misc"]["response_model"] == "text-embedding-3-small"
    assert payload["usage"]["cost"] == pytest.approx(6 * 0.02 / 1e6)


def test_openllmetry_reasoning_tokens_and_streaming_flag() -> None:
    span = make_span("openai.chat", {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-5.1",
        "gen_ai.is_streaming": True,
        "gen_ai.response.model": "gpt-5.1-2025-11-13",
        "gen_ai.usage.input_tokens": 29,
        "gen_ai.usage.output_tokens": 85,
        "gen_ai.usage.reasoning_tokens": 19,
        "gen_ai.output.messages": '[{"role": "assistant", "parts": [{"content": "9", '
                                  '"type": "text"}], "finish_reason": "stop"}]',
    }, scope=OL_SCOPE)
    misc = convert(span)["payload"]["misc"]
    assert misc["reasoning_output_tokens"] == 19
    assert misc["streaming"] is True


def test_openllmetry_refusal_part_is_the_answer() -> None:
    span = make_span("openai.chat", {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.output.messages": '[{"role": "assistant", "parts": [{"type": "refusal", '
                                  '"content": "I\'m sorry, I can\'t help with that."}], '
                                  '"finish_reason": "stop"}]',
    }, scope=OL_SCOPE)
    assert convert(span)["payload"]["response"]["output"] == "I'm sorry, I can't help with that."
    assert Parts([{"type": "refusal", "refusal": "no"}]).texts == ["no"]


def test_an_empty_text_part_beside_tool_calls_leaves_the_calls_readable() -> None:
    """OpenLLMetry's streamed tool-call answer starts with ``{"content": "", "type": "text"}``."""
    span = make_span("openai.chat", {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.output.messages": '[{"role": "assistant", "parts": [{"content": "", "type": '
                                  '"text"}, {"type": "tool_call", "name": "get_weather", "id": '
                                  '"call_1", "arguments": {"location": "Seattle, WA"}}]}]',
    }, scope=OL_SCOPE)
    response = convert(span)["payload"]["response"]
    assert response["tool_calls"][0]["id"] == "call_1"
    assert "get_weather" in response["output"] and "Seattle, WA" in response["output"]


def test_aliases_never_replace_a_semantic_conventions_value() -> None:
    attrs = {"gen_ai.response.model": "a", "llm.model_name": "b",
             "gen_ai.usage.reasoning.output_tokens": 3, "gen_ai.usage.reasoning_tokens": 4,
             "gen_ai.request.model": "x", "llm.invocation_parameters": '{"model": "y"}'}
    merged = llm_attributes(attrs)
    assert {k: merged[k] for k in attrs} == attrs


def test_aliases_leave_other_spans_alone() -> None:
    attrs = {"gen_ai.request.model": "gpt-4o", "llm.invocation_parameters": "not json"}
    before = dict(attrs)
    got = llm_attributes(attrs)
    assert got == before and got is not attrs  # nothing added, and a copy the caller owns
    assert attrs == before  # the span's own attributes are never written
    assert llm_attributes({}) == {}


def test_openinference_response_id_from_its_output_value() -> None:
    """OpenInference records no response id; its outputs hold it (OpenAI's response, and
    LangChain's result with it in ``response_metadata``), so the layers of a call join."""
    client = {**OI_CACHED, "output.mime_type": "application/json",
              "output.value": '{"id":"chatcmpl-EMcrRZ","choices":[]}'}
    framework = {**OI_CACHED, "output.value": json.dumps({"generations": [[{"message": {
        "id": ["langchain", "schema", "messages", "AIMessage"], "kwargs": {
            "content": 'say "id": "chatcmpl-fake"', "response_metadata": {
                "id": "chatcmpl-EMcrRZ"}, "id": "lc_run--1"}}}]]})}
    for attrs in (client, framework):
        assert llm_attributes(attrs)["gen_ai.response.id"] == "chatcmpl-EMcrRZ"
        event = convert(make_span("ChatOpenAI", attrs, scope=OI_SCOPE))
        assert event["payload"]["misc"]["response_id"] == "chatcmpl-EMcrRZ"
    assert "gen_ai.response.id" not in llm_attributes(
        {**OI_CACHED, "output.value": '{"id": "lc_run--1"}'})


@pytest.mark.parametrize(("attributes", "details"), [
    ({"openinference.span.kind": "AGENT"}, "Agent weather_agent"),
    ({"openinference.span.kind": "CHAIN",
      "metadata": '{"langgraph_step": 1, "langgraph_node": "weather_agent"}'},
     "Chain weather_agent"),
    ({"traceloop.span.kind": "workflow", "traceloop.entity.name": "pipeline"},
     "Workflow pipeline"),
    ({"traceloop.span.kind": "task"}, "Task weather_agent"),
])
def test_agent_chain_workflow_and_task_spans_are_generic_events(
        attributes: Dict[str, Any], details: str) -> None:
    event = convert(make_span("weather_agent", attributes, scope=OI_SCOPE))
    assert event["type"] == "generic"
    assert event["payload"]["details"] == details
    kind = attributes.get("openinference.span.kind", attributes.get("traceloop.span.kind"))
    assert event["payload"]["misc"] == {"span_kind": kind}


@pytest.mark.parametrize("metadata", [
    None,  # an LCEL chain: no graph
    '{"langgraph_step": 1, "langgraph_node": "model"}',  # a runnable inside node "model"
    '{"langgraph_node": ',  # not JSON
    '["langgraph_node"]',  # not an object
])
def test_a_chain_that_is_not_a_graph_node_is_not_an_event(metadata: Any) -> None:
    """Prompt templates, parsers and lambdas are CHAIN spans too: no event each."""
    attributes = {"openinference.span.kind": "CHAIN", "input.value": "x", "output.value": "y"}
    if metadata is not None:
        attributes["metadata"] = metadata
    assert convert(make_span("ChatPromptTemplate", attributes, scope=OI_SCOPE)) is None


def test_a_failed_chain_that_is_not_a_graph_node_is_an_error_event() -> None:
    span = make_span(
        "StrOutputParser", {"openinference.span.kind": "CHAIN"}, scope=OI_SCOPE,
        status=Status(StatusCode.ERROR, "bad output"),
        events_=[("exception", {"exception.type": "ValueError",
                                "exception.message": "bad output"})])
    event = convert(span)
    assert event is not None and event["type"] == "error_traceback", event


def test_openinference_langchain_tool_result_is_the_tool_message_content() -> None:
    span = make_span("get_current_weather", {
        "openinference.span.kind": "TOOL",
        "input.value": "Seattle, WA",
        "output.value": json.dumps({"type": "tool", "data": {
            "content": "50 degrees and raining", "type": "tool", "name": "get_current_weather",
            "id": None, "tool_call_id": "call_JpNb", "status": "success"}}),
        "output.mime_type": "application/json",
        "tool.name": "get_current_weather",
        "tool.description": "Get the current weather in a given location",
    }, scope=("openinference.instrumentation.langchain", "0.1.80"))
    payload = convert(span)["payload"]
    assert payload["function_name"] == "get_current_weather"
    assert payload["arguments"] == "Seattle, WA"
    assert payload["return_value"] == "50 degrees and raining"
    assert payload["misc"]["tool_call_id"] == "call_JpNb"
    hidden = span_to_event(span, "sess-1", None, capture_content=False)["payload"]
    assert (hidden["return_value"], hidden["misc"]["tool_call_id"]) == (None, "call_JpNb")


def test_a_tool_output_that_is_not_a_tool_message_stays_as_it_is() -> None:
    from lucidic_otel.convert.aliases import tool_attributes

    for output in ('{"type": "text", "data": {"content": "x"}}', "[1, 2]", "plain", None):
        attrs = {"openinference.span.kind": "TOOL", "output.value": output}
        assert tool_attributes(attrs) == {"openinference.span.kind": "TOOL",
                                          "output.value": output}


@pytest.mark.parametrize(("texts", "calls", "expected"), [
    ([""], [], ""),  # an empty answer stays an empty answer, as before
    (["a", "", "b"], [], "a\n\nb"),  # text parts are kept as they came
    (["", "x"], [], "\nx"),
    ([""], [{"id": "c1", "name": "f", "arguments": {"q": 1}}], None),  # tool calls: readable
])
def test_output_text_drops_empty_parts_only_next_to_tool_calls(texts, calls, expected) -> None:
    from lucidic_otel.convert.output import Output
    from lucidic_otel.convert.payloads import _response, tool_calls_text

    output = Output()
    output.texts.extend(texts)
    output.tool_calls.extend(calls)
    got = _response(output, True)["output"]
    assert got == (tool_calls_text(calls) if expected is None else expected)


def test_a_refusal_part_with_a_null_content_key_keeps_its_refusal() -> None:
    parts = Parts()
    parts.add({"type": "refusal", "content": None, "refusal": "I can't help with that."})
    assert parts.texts == ["I can't help with that."]
