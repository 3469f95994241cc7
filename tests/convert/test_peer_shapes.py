"""OpenInference's and OpenLLMetry's spellings of an LLM call, as their real packages write them.

The attributes below are copied from spans of openinference-instrumentation-openai 0.1.66 and
opentelemetry-instrumentation-openai 0.62.4 (OpenLLMetry) on the recorded exchanges of
``tests/data/openai`` (``tests/test_peer_instrumentations.py`` runs them end to end).
"""

from __future__ import annotations

from typing import Any, Dict

import pytest

from lucidic_otel.convert.aliases import llm_attributes
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
    assert llm_attributes(attrs) is attrs
    assert llm_attributes({}) == {}
