"""Span -> Lucidic event conversion, on spans shaped exactly like the real instrumentations'.

The attribute values below were captured by running the real openai client against a loopback
fake server with (a) opentelemetry-instrumentation-genai-openai 1.3b0 / util-genai 1.3b0,
(b) opentelemetry-instrumentation-openai-v2 2.4b0 on util-genai 1.1b0 and (c) the same on
util-genai 0.4b0 (the legacy path, whose message bodies are copied here onto span events as
semantic conventions 1.28-1.36 describe them), with content capture on.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from lucidic_otel.convert import events
from lucidic_otel.convert.events import is_llm_span, llm_summary, span_to_event
from lucidic_otel.ids import event_id

START = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z
END = START + 1_500_000_000
OCCURRED_AT = "2023-11-14T22:13:20.123456+00:00"
GENAI_SCOPE = ("opentelemetry.instrumentation.genai.openai", "1.3b0")
UTIL_SCOPE = ("opentelemetry.util.genai.handler", "1.1b0")
V2_SCOPE = ("opentelemetry.instrumentation.openai_v2", "")

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider(
    resource=Resource({"service.name": "checkout"}), shutdown_on_exit=False
)
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))

EventSpec = Tuple[str, Dict[str, Any]]


def make_span(
    name: str,
    attributes: Optional[Dict[str, Any]] = None,
    *,
    events_: Sequence[EventSpec] = (),
    status: Optional[Status] = None,
    scope: Tuple[str, str] = GENAI_SCOPE,
    kind: SpanKind = SpanKind.CLIENT,
    parent: Optional[ReadableSpan] = None,
) -> ReadableSpan:
    """A finished span from a local provider (never the global one)."""
    _EXPORTER.clear()
    tracer = _PROVIDER.get_tracer(scope[0], scope[1] or None)
    context = None
    if parent is not None:
        from opentelemetry.trace import NonRecordingSpan

        context = set_span_in_context(NonRecordingSpan(parent.context))
    span = tracer.start_span(
        name, context=context, kind=kind, attributes=attributes, start_time=START
    )
    for event_name, event_attributes in events_:
        span.add_event(event_name, event_attributes, timestamp=START + 1000)
    if status is not None:
        span.set_status(status)
    span.end(end_time=END)
    (finished,) = _EXPORTER.get_finished_spans()
    return finished


def envelope(
    span: ReadableSpan,
    event_type: str,
    payload: Dict[str, Any],
    *,
    scope: Tuple[str, str] = GENAI_SCOPE,
    parent_event_id: Optional[str] = None,
) -> Dict[str, Any]:
    metadata = {
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "span_name": span.name,
        "service_name": "checkout",
        "scope_name": scope[0],
    }
    if scope[1]:
        metadata["scope_version"] = scope[1]
    return {
        "client_event_id": event_id(span.context.trace_id, span.context.span_id),
        "client_parent_event_id": parent_event_id,
        "session_id": "sess-1",
        "type": event_type,
        "occurred_at": OCCURRED_AT,
        "duration": 1.5,
        "tags": [],
        "metadata": metadata,
        "payload": payload,
    }


def convert(span: ReadableSpan, **kwargs: Any) -> Optional[Dict[str, Any]]:
    result = span_to_event(span, "sess-1", kwargs.pop("parent_event_id", None), **kwargs)
    if result is not None:
        json.dumps(result, allow_nan=False)  # always sendable as-is
    return result


def strings(value: Any) -> Iterator[str]:
    """Every string (keys included) anywhere in a JSON-like value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings(item)


def assert_no_text(event: Dict[str, Any], secrets: Iterable[str]) -> None:
    blob = "\x00".join(strings(event))
    for secret in secrets:
        assert secret not in blob, secret


# ------------------------------------------------------------------------ real shapes

# opentelemetry-instrumentation-genai-openai 1.3b0, chat.completions.create
GENAI_CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "server.address": "127.0.0.1",
    "server.port": 38551,
    "gen_ai.request.temperature": 0.2,
    "gen_ai.request.top_p": 0.9,
    "gen_ai.request.max_tokens": 50,
    "gen_ai.request.seed": 7,
    "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": "chatcmpl-123",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 5,
    "gen_ai.input.messages": '[{"role":"system","parts":[{"content":"Be brief.","type":"text"}],'
    '"name":null},{"role":"user","parts":[{"content":"Hi","type":"text"}],"name":null}]',
    "gen_ai.output.messages": '[{"role":"assistant","parts":[{"content":"Hello there!",'
    '"type":"text"}],"finish_reason":"stop","name":null}]',
}

# ... stream=True, stream_options={"include_usage": True}
GENAI_STREAM = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "server.address": "127.0.0.1",
    "server.port": 38551,
    "gen_ai.request.stream": True,
    "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": "chatcmpl-s1",
    "gen_ai.usage.input_tokens": 9,
    "gen_ai.usage.output_tokens": 3,
    "gen_ai.response.time_to_first_chunk": 0.006387266999979602,
    "gen_ai.input.messages": '[{"role":"user","parts":[{"content":"Hi","type":"text"}],'
    '"name":null}]',
    "gen_ai.output.messages": '[{"role":"assistant","parts":[{"content":"Hello!",'
    '"type":"text"}],"finish_reason":"stop","name":null}]',
}

TOOL_DEFINITIONS = (
    '[{"name":"get_weather","description":"Weather","parameters":{"type":"object",'
    '"properties":{"city":{"type":"string"}}},"type":"function"}]'
)

# ... tools=[get_weather], the model answers with a tool call
GENAI_TOOL = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "server.address": "127.0.0.1",
    "server.port": 38551,
    "gen_ai.response.finish_reasons": ("tool_calls",),
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": "chatcmpl-123",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 5,
    "gen_ai.input.messages": '[{"role":"user","parts":[{"content":"Weather in Paris?",'
    '"type":"text"}],"name":null}]',
    "gen_ai.output.messages": '[{"role":"assistant","parts":[{"arguments":{"city":"Paris"},'
    '"name":"get_weather","id":"call_abc123","type":"tool_call"}],"finish_reason":"tool_call",'
    '"name":null}]',
    "gen_ai.tool.definitions": TOOL_DEFINITIONS,
}

# ... streamed tool call, no include_usage (so no token counts)
GENAI_STREAM_TOOL = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "server.address": "127.0.0.1",
    "server.port": 38551,
    "gen_ai.request.stream": True,
    "gen_ai.response.finish_reasons": ("tool_calls",),
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": "chatcmpl-s1",
    "gen_ai.response.time_to_first_chunk": 0.0029026800000053754,
    "gen_ai.input.messages": '[{"role":"user","parts":[{"content":"Weather in Rome?",'
    '"type":"text"}],"name":null}]',
    "gen_ai.output.messages": '[{"role":"assistant","parts":[{"arguments":{"city":"Rome"},'
    '"name":"get_weather","id":"call_s1","type":"tool_call"}],"finish_reason":"tool_call",'
    '"name":null}]',
    "gen_ai.tool.definitions": TOOL_DEFINITIONS,
}

# ... the follow-up turn carrying the tool call and its result in the history
GENAI_TOOL_FOLLOWUP_INPUT = (
    '[{"role":"user","parts":[{"content":"Weather in Paris?","type":"text"}],"name":null},'
    '{"role":"assistant","parts":[{"arguments":{"city":"Paris"},"name":"get_weather",'
    '"id":"call_abc123","type":"tool_call"}],"name":null},{"role":"tool","parts":'
    '[{"response":"sunny, 22C","id":"call_abc123","type":"tool_call_response"}],"name":null}]'
)

# ... a 400 from the server
GENAI_ERROR = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "boom",
    "server.address": "127.0.0.1",
    "server.port": 38551,
    "gen_ai.input.messages": '[{"role":"user","parts":[{"content":"Hi","type":"text"}],'
    '"name":null}]',
    "error.type": "openai.BadRequestError",
}

# ... responses.create(model="gpt-4o", input="Say hi", instructions="Be nice")
GENAI_RESPONSES = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "server.address": "127.0.0.1",
    "server.port": 38551,
    "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.response.model": "gpt-4o",
    "gen_ai.response.id": "resp_1",
    "gen_ai.usage.input_tokens": 7,
    "gen_ai.usage.output_tokens": 2,
    "gen_ai.input.messages": '[{"role":"user","parts":[{"content":"Say hi","type":"text"}],'
    '"name":null}]',
    "gen_ai.output.messages": '[{"role":"assistant","parts":[{"content":"Resp hi",'
    '"type":"text"}],"finish_reason":"stop","name":null}]',
    "gen_ai.system_instructions": '[{"content":"Be nice","type":"text"}]',
    "openai.api.type": "responses",
}

# ... a user message with a name, a text part and an inline image
GENAI_MULTIPART_INPUT = (
    '[{"role":"user","parts":[{"content":"Look","type":"text"},{"mime_type":"image/png",'
    '"modality":"image","content":"AAAA","type":"blob"}],"name":"bob"}]'
)

# opentelemetry-instrumentation-openai-v2 2.4b0 on util-genai 1.1b0: same JSON attributes,
# no "name" keys, finish_reason "tool_calls", scope opentelemetry.util.genai.handler.
V2_NEW_TOOL = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.provider.name": "openai",
    "server.address": "127.0.0.1",
    "server.port": 41151,
    "gen_ai.response.finish_reasons": ("tool_calls",),
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": "chatcmpl-123",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 5,
    "gen_ai.input.messages": '[{"role":"user","parts":[{"content":"Weather in Paris?",'
    '"type":"text"}]}]',
    "gen_ai.output.messages": '[{"role":"assistant","parts":[{"arguments":{"city":"Paris"},'
    '"name":"get_weather","id":"call_abc123","type":"tool_call"}],"finish_reason":"tool_calls"}]',
}

# opentelemetry-instrumentation-openai-v2 2.4b0 on util-genai 0.4b0 (legacy conventions):
# gen_ai.system, no content attributes (content went to gen_ai.* events).
V2_LEGACY_CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.system": "openai",
    "gen_ai.request.temperature": 0.2,
    "gen_ai.request.top_p": 0.9,
    "gen_ai.request.max_tokens": 50,
    "gen_ai.request.seed": 7,
    "server.address": "127.0.0.1",
    "server.port": 44929,
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.response.id": "chatcmpl-123",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 5,
}
V2_LEGACY_STREAM = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.system": "openai",
    "server.address": "127.0.0.1",
    "server.port": 44929,
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": "chatcmpl-s1",
    "gen_ai.usage.input_tokens": 9,
    "gen_ai.usage.output_tokens": 3,
}
V2_LEGACY_CHAT_EVENTS = [
    ("gen_ai.system.message", {"gen_ai.system": "openai", "body": {"content": "Be brief."}}),
    ("gen_ai.user.message", {"gen_ai.system": "openai", "body": {"content": "Hi"}}),
    (
        "gen_ai.choice",
        {
            "gen_ai.system": "openai",
            "body": {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hello there!"},
            },
        },
    ),
]
WEATHER_CALL = {
    "id": "call_abc123",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
V2_LEGACY_FOLLOWUP_EVENTS = [
    ("gen_ai.user.message", {"gen_ai.system": "openai", "body": {"content": "Weather in Paris?"}}),
    (
        "gen_ai.assistant.message",
        {"gen_ai.system": "openai", "body": {"tool_calls": [WEATHER_CALL]}},
    ),
    (
        "gen_ai.tool.message",
        {"gen_ai.system": "openai", "body": {"content": "sunny, 22C", "id": "call_abc123"}},
    ),
    (
        "gen_ai.choice",
        {
            "gen_ai.system": "openai",
            "body": {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {"role": "assistant", "tool_calls": [WEATHER_CALL]},
            },
        },
    ),
]

# util-genai 1.3b0 TelemetryHandler.tool(...)
TOOL_SPAN = {
    "gen_ai.operation.name": "execute_tool",
    "gen_ai.tool.name": "get_weather",
    "gen_ai.tool.type": "function",
    "gen_ai.tool.call.id": "call_abc123",
    "gen_ai.tool.call.arguments": '{"city":"Paris"}',
    "gen_ai.tool.call.result": '{"temp_c":22,"sky":"sunny"}',
}
TOOL_SPAN_FAILED = {
    "gen_ai.operation.name": "execute_tool",
    "gen_ai.tool.name": "explode",
    "gen_ai.tool.call.arguments": "raw-args",
    "error.type": "RuntimeError",
}

WEATHER_TOOL_CALL = {
    "id": "call_abc123",
    "type": "function",
    "name": "get_weather",
    "arguments": {"city": "Paris"},
}
# A tool-call-only answer's readable output, as the official SDK writes it.
WEATHER_OUTPUT = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}, indent=4)
CHAT_MISC = {
    "operation": "chat",
    "response_id": "chatcmpl-123",
    "response_model": "gpt-4o-mini-2024-07-18",
    "request_model": "gpt-4o-mini",
    "server_address": "127.0.0.1",
    "finish_reasons": ["stop"],
    "streaming": False,
}


# ------------------------------------------------------------- genai-openai (util >= 1.0)


def test_genai_openai_chat_full_event() -> None:
    span = make_span("chat gpt-4o-mini", GENAI_CHAT)
    assert convert(span, parent_event_id="parent-1") == envelope(
        span,
        "llm_generation",
        {
            "request": {
                "provider": "openai",
                "model": "gpt-4o-mini-2024-07-18",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                ],
                "params": {"temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "seed": 7},
            },
            "response": {"output": "Hello there!", "tool_calls": []},
            "usage": {"input_tokens": 12, "output_tokens": 5, "cost": 4.8e-06},
            "misc": CHAT_MISC,
        },
        parent_event_id="parent-1",
    )


def test_genai_openai_stream() -> None:
    payload = convert(make_span("chat gpt-4o-mini", GENAI_STREAM))["payload"]
    assert payload["request"]["messages"] == [{"role": "user", "content": "Hi"}]
    assert payload["request"]["params"] == {}
    assert payload["response"] == {"output": "Hello!", "tool_calls": []}
    assert payload["usage"]["input_tokens"] == 9
    assert payload["usage"]["output_tokens"] == 3
    assert payload["usage"]["cost"] == pytest.approx((9 * 0.15 + 3 * 0.60) / 1e6)
    assert payload["misc"] == {
        "operation": "chat",
        "response_id": "chatcmpl-s1",
        "response_model": "gpt-4o-mini-2024-07-18",
        "request_model": "gpt-4o-mini",
        "time_to_first_chunk": 0.006387266999979602,
        "server_address": "127.0.0.1",
        "finish_reasons": ["stop"],
        "streaming": True,
    }
    assert "status" not in payload and "error" not in payload


def test_genai_openai_tool_call_is_structured_not_flattened() -> None:
    payload = convert(make_span("chat gpt-4o-mini", GENAI_TOOL))["payload"]
    assert payload["response"] == {"output": WEATHER_OUTPUT, "tool_calls": [WEATHER_TOOL_CALL]}
    assert payload["request"]["messages"] == [{"role": "user", "content": "Weather in Paris?"}]
    assert payload["request"]["params"] == {
        "tools": [
            {
                "name": "get_weather",
                "type": "function",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ]
    }
    assert payload["misc"]["finish_reasons"] == ["tool_calls"]


def test_genai_openai_streamed_tool_call_without_usage() -> None:
    payload = convert(make_span("chat gpt-4o-mini", GENAI_STREAM_TOOL))["payload"]
    assert payload["response"]["tool_calls"] == [
        {"id": "call_s1", "type": "function", "name": "get_weather", "arguments": {"city": "Rome"}}
    ]
    assert payload["response"]["output"] == json.dumps(
        {"name": "get_weather", "arguments": {"city": "Rome"}}, indent=4)
    assert payload["usage"] == {"input_tokens": None, "output_tokens": None, "cost": None}
    assert payload["misc"]["streaming"] is True


def test_genai_openai_tool_history_keeps_calls_and_results() -> None:
    attributes = dict(GENAI_CHAT, **{"gen_ai.input.messages": GENAI_TOOL_FOLLOWUP_INPUT})
    payload = convert(make_span("chat gpt-4o-mini", attributes))["payload"]
    assert payload["request"]["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [WEATHER_TOOL_CALL]},
        {"role": "tool", "content": "sunny, 22C", "tool_call_id": "call_abc123"},
    ]


def test_genai_openai_error_stays_llm_generation() -> None:
    span = make_span(
        "chat boom",
        GENAI_ERROR,
        status=Status(StatusCode.ERROR, "Error code: 400 - bad model"),
    )
    assert convert(span) == envelope(
        span,
        "llm_generation",
        {
            "request": {
                "provider": "openai",
                "model": "boom",
                "messages": [{"role": "user", "content": "Hi"}],
                "params": {},
            },
            "response": {"output": None, "tool_calls": []},
            # A failed call counts 0 tokens, not null, as the official SDK sends it.
            "usage": {"input_tokens": 0, "output_tokens": 0, "cost": None},
            "status": "error",
            "error": "Error code: 400 - bad model",
            "misc": {
                "operation": "chat",
                "server_address": "127.0.0.1",
                "error_type": "openai.BadRequestError",
                "streaming": False,
            },
        },
    )


def test_genai_openai_responses_api_system_instructions_come_first() -> None:
    payload = convert(make_span("chat gpt-4o", GENAI_RESPONSES))["payload"]
    assert payload["request"]["messages"] == [
        {"role": "system", "content": "Be nice"},
        {"role": "user", "content": "Say hi"},
    ]
    assert payload["response"]["output"] == "Resp hi"
    assert payload["misc"]["api_type"] == "responses"
    assert payload["usage"]["cost"] == pytest.approx((7 * 2.5 + 2 * 10) / 1e6)


def test_genai_openai_multipart_message_keeps_name_and_drops_image_bytes() -> None:
    attributes = dict(GENAI_CHAT, **{"gen_ai.input.messages": GENAI_MULTIPART_INPUT})
    payload = convert(make_span("chat gpt-4o", attributes))["payload"]
    assert payload["request"]["messages"] == [
        {"role": "user", "content": "Look\n[image blob image/png]", "name": "bob"}
    ]


def test_genai_openai_embeddings_span_is_a_generation() -> None:
    span = make_span(
        "embeddings text-embedding-3-small",
        {
            "gen_ai.operation.name": "embeddings",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "text-embedding-3-small",
            "gen_ai.usage.input_tokens": 1000,
        },
    )
    payload = convert(span)["payload"]
    assert payload["request"]["model"] == "text-embedding-3-small"
    assert payload["request"]["messages"] == []
    assert payload["usage"] == {
        "input_tokens": 1000,
        "output_tokens": None,
        "cost": pytest.approx(0.00002),
    }
    assert payload["misc"]["operation"] == "embeddings"


# ------------------------------------------------------------------------- openai-v2


def test_openai_v2_on_util_genai_1_1_tool_call() -> None:
    span = make_span("chat gpt-4o-mini", V2_NEW_TOOL, scope=UTIL_SCOPE)
    assert convert(span) == envelope(
        span,
        "llm_generation",
        {
            "request": {
                "provider": "openai",
                "model": "gpt-4o-mini-2024-07-18",
                "messages": [{"role": "user", "content": "Weather in Paris?"}],
                "params": {},
            },
            "response": {"output": WEATHER_OUTPUT, "tool_calls": [WEATHER_TOOL_CALL]},
            "usage": {"input_tokens": 12, "output_tokens": 5, "cost": 4.8e-06},
            "misc": dict(CHAT_MISC, finish_reasons=["tool_calls"]),
        },
        scope=UTIL_SCOPE,
    )


def test_openai_v2_legacy_span_without_content() -> None:
    span = make_span("chat gpt-4o-mini", V2_LEGACY_CHAT, scope=V2_SCOPE)
    assert convert(span) == envelope(
        span,
        "llm_generation",
        {
            "request": {
                "provider": "openai",
                "model": "gpt-4o-mini-2024-07-18",
                "messages": [],
                "params": {"temperature": 0.2, "top_p": 0.9, "max_tokens": 50, "seed": 7},
            },
            "response": {"output": None, "tool_calls": []},
            "usage": {"input_tokens": 12, "output_tokens": 5, "cost": 4.8e-06},
            "misc": CHAT_MISC,
        },
        scope=V2_SCOPE,
    )


def test_openai_v2_legacy_stream_has_no_stream_flag_or_finish_reasons() -> None:
    payload = convert(make_span("chat gpt-4o-mini", V2_LEGACY_STREAM, scope=V2_SCOPE))["payload"]
    assert payload["misc"] == {
        "operation": "chat",
        "response_id": "chatcmpl-s1",
        "response_model": "gpt-4o-mini-2024-07-18",
        "request_model": "gpt-4o-mini",
        "server_address": "127.0.0.1",
        "streaming": False,
    }
    assert payload["usage"]["input_tokens"] == 9


def test_legacy_message_events_on_the_span() -> None:
    span = make_span(
        "chat gpt-4o-mini", V2_LEGACY_CHAT, events_=V2_LEGACY_CHAT_EVENTS, scope=V2_SCOPE
    )
    payload = convert(span)["payload"]
    assert payload["request"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert payload["response"] == {"output": "Hello there!", "tool_calls": []}


def test_legacy_events_with_tool_calls_and_tool_results() -> None:
    span = make_span(
        "chat gpt-4o-mini",
        dict(V2_LEGACY_CHAT, **{"gen_ai.response.finish_reasons": ("tool_calls",)}),
        events_=V2_LEGACY_FOLLOWUP_EVENTS,
        scope=V2_SCOPE,
    )
    payload = convert(span)["payload"]
    assert payload["request"]["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [WEATHER_TOOL_CALL]},
        {"role": "tool", "content": "sunny, 22C", "tool_call_id": "call_abc123"},
    ]
    assert payload["response"] == {"output": WEATHER_OUTPUT, "tool_calls": [WEATHER_TOOL_CALL]}


def test_legacy_event_body_as_json_string_and_prompt_tokens() -> None:
    attributes = {
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.prompt_tokens": 100,
        "gen_ai.usage.completion_tokens": 20,
    }
    span = make_span(
        "chat gpt-4o",
        attributes,
        events_=[
            ("gen_ai.user.message", {"body": json.dumps({"content": [
                {"type": "text", "text": "Look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]})}),
            ("gen_ai.choice", {"body": '{"index": 0, "finish_reason": "stop", '
                               '"message": {"content": "A cat"}}'}),
        ],
        scope=V2_SCOPE,
    )
    payload = convert(span)["payload"]
    assert payload["request"]["messages"] == [{"role": "user", "content": "Look\n[image_url]"}]
    assert payload["response"] == {"output": "A cat", "tool_calls": []}
    assert payload["usage"] == {
        "input_tokens": 100,
        "output_tokens": 20,
        "cost": pytest.approx((100 * 2.5 + 20 * 10) / 1e6),
    }
    assert payload["misc"]["finish_reasons"] == ["stop"]
    assert "operation" not in payload["misc"]


def test_new_attributes_win_over_events() -> None:
    span = make_span("chat gpt-4o-mini", GENAI_CHAT, events_=V2_LEGACY_FOLLOWUP_EVENTS)
    payload = convert(span)["payload"]
    assert payload["request"]["messages"][1] == {"role": "user", "content": "Hi"}
    assert payload["response"]["output"] == "Hello there!"


# --------------------------------------------------------------------- flat shapes


def test_traceloop_flat_shape() -> None:
    span = make_span(
        "openai.chat",
        {
            "llm.request.type": "chat",
            "gen_ai.system": "OpenAI",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "Be brief.",
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": '[{"type": "text", "text": "Weather?"}]',
            "gen_ai.prompt.2.role": "assistant",
            "gen_ai.prompt.2.tool_calls.0.id": "call_1",
            "gen_ai.prompt.2.tool_calls.0.name": "get_weather",
            "gen_ai.prompt.2.tool_calls.0.arguments": '{"city": "Oslo"}',
            "gen_ai.prompt.3.role": "tool",
            "gen_ai.prompt.3.content": "cold",
            "gen_ai.prompt.3.tool_call_id": "call_1",
            "gen_ai.prompt.10.role": "user",
            "gen_ai.prompt.10.content": "tenth",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "It is cold.",
            "gen_ai.completion.0.finish_reason": "stop",
            "gen_ai.usage.prompt_tokens": 40,
            "gen_ai.usage.completion_tokens": 4,
            "llm.is_streaming": True,
        },
        scope=("opentelemetry.instrumentation.openai.v1", "0.40.0"),
    )
    payload = convert(span, parent_event_id=None)["payload"]
    assert payload["request"]["provider"] == "openai"
    assert payload["request"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "name": "get_weather",
                 "arguments": {"city": "Oslo"}}
            ],
        },
        {"role": "tool", "content": "cold", "tool_call_id": "call_1"},
        {"role": "user", "content": "tenth"},
    ]
    assert payload["response"] == {"output": "It is cold.", "tool_calls": []}
    assert payload["usage"]["input_tokens"] == 40
    assert payload["usage"]["cost"] == pytest.approx((40 * 2.5 + 4 * 10) / 1e6)
    assert payload["misc"]["finish_reasons"] == ["stop"]
    assert payload["misc"]["streaming"] is True


def test_openinference_llm_shape() -> None:
    span = make_span(
        "ChatCompletion",
        {
            "openinference.span.kind": "LLM",
            "llm.provider": "anthropic",
            "llm.model_name": "claude-3-5-sonnet-20241022",
            "llm.invocation_parameters": '{"temperature": 0.5, "max_tokens": 64, '
            '"messages": "nope", "tools": [{"x": 1}]}',
            "llm.input_messages.0.message.role": "user",
            "llm.input_messages.0.message.contents.0.message_content.type": "text",
            "llm.input_messages.0.message.contents.0.message_content.text": "Hi",
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": "Hello",
            "llm.output_messages.0.message.tool_calls.0.tool_call.id": "tu_1",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "lookup",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": "{}",
            "llm.token_count.prompt": 10,
            "llm.token_count.completion": 2,
        },
        scope=("openinference.instrumentation.anthropic", "0.1.0"),
    )
    payload = convert(span)["payload"]
    assert payload["request"] == {
        "provider": "anthropic",
        "model": "claude-3-5-sonnet-20241022",
        "messages": [{"role": "user", "content": "Hi"}],
        "params": {"temperature": 0.5, "max_tokens": 64},
    }
    assert payload["response"] == {
        "output": "Hello",
        "tool_calls": [{"id": "tu_1", "type": "function", "name": "lookup", "arguments": {}}],
    }
    assert payload["usage"] == {
        "input_tokens": 10,
        "output_tokens": 2,
        "cost": pytest.approx((10 * 3 + 2 * 15) / 1e6),
    }


def test_reasoning_parts_become_thinking() -> None:
    span = make_span(
        "chat o3",
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "o3",
            "gen_ai.output.messages": json.dumps([{
                "role": "assistant",
                "parts": [
                    {"type": "reasoning", "content": "Think first."},
                    {"type": "text", "content": "42"},
                ],
                "finish_reason": "stop",
            }]),
        },
    )
    response = convert(span)["payload"]["response"]
    assert response == {"output": "42", "tool_calls": [], "thinking": ["Think first."]}


# -------------------------------------------------------------------------- tools


def test_execute_tool_span_becomes_function_call() -> None:
    span = make_span(
        "execute_tool get_weather", TOOL_SPAN, scope=UTIL_SCOPE, kind=SpanKind.INTERNAL
    )
    assert convert(span) == envelope(
        span,
        "function_call",
        {
            "function_name": "get_weather",
            "arguments": {"city": "Paris"},
            "return_value": {"temp_c": 22, "sky": "sunny"},
            "misc": {"tool_call_id": "call_abc123", "tool_type": "function"},
        },
        scope=UTIL_SCOPE,
    )
    assert not is_llm_span(span)
    assert llm_summary(span) is None


def test_failed_tool_span_carries_the_error() -> None:
    span = make_span(
        "execute_tool explode",
        TOOL_SPAN_FAILED,
        status=Status(StatusCode.ERROR, "tool broke"),
        scope=UTIL_SCOPE,
    )
    assert convert(span)["payload"] == {
        "function_name": "explode",
        "arguments": "raw-args",
        "return_value": None,
        "error": "tool broke",
        "misc": {"error_type": "RuntimeError"},
    }


def test_tool_name_falls_back_to_span_name_and_plain_results_stay_text() -> None:
    span = make_span(
        "execute_tool search",
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.call.result": "forty-two"},
    )
    assert convert(span)["payload"] == {
        "function_name": "search",
        "arguments": None,
        "return_value": "forty-two",
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [("42", 42), (" -1.5e3 ", -1500.0), ("true", True), ("false", False), ("null", None),
     ("0", 0), ("42 apples", "42 apples"), ("NaN", "NaN"), ("Infinity", "Infinity"),
     ("1e999", "1e999"), ("+1", "+1"), ("007", "007"), ("True", "True"), ("", None)],
)
def test_a_result_that_is_wholly_a_json_scalar_keeps_its_type(text: str, value: Any) -> None:
    span = make_span(
        "execute_tool count",
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.call.result": text,
         "gen_ai.tool.call.arguments": text},
    )
    payload = convert(span)["payload"]
    expected = text if text == "" else value
    assert payload["return_value"] == expected and payload["arguments"] == expected
    assert type(payload["return_value"]) is type(expected)


def test_openinference_and_traceloop_tool_spans() -> None:
    openinference = make_span(
        "lookup",
        {
            "openinference.span.kind": "TOOL",
            "tool.name": "lookup",
            "input.value": '{"q": "x"}',
            "output.value": "found",
        },
    )
    assert convert(openinference)["payload"] == {
        "function_name": "lookup",
        "arguments": {"q": "x"},
        "return_value": "found",
    }
    traceloop = make_span(
        "add.tool",
        {
            "traceloop.span.kind": "tool",
            "traceloop.entity.name": "add",
            "traceloop.entity.input": '{"args": [1, 2], "kwargs": {}}',
            "traceloop.entity.output": "3",
        },
    )
    assert convert(traceloop)["payload"] == {
        "function_name": "add",
        "arguments": {"args": [1, 2], "kwargs": {}},
        "return_value": 3,  # Traceloop writes the result as JSON
    }


# ------------------------------------------------------------------ errors and others

EXCEPTION_ATTRIBUTES = {
    "exception.type": "KeyError",
    "exception.message": "'nope'",
    "exception.stacktrace": "Traceback (most recent call last):\n  ...\nKeyError: 'nope'\n",
    "exception.escaped": "False",
}


def test_user_span_with_exception_becomes_error_traceback() -> None:
    span = make_span(
        "work",
        {"code.function": "work"},
        events_=[("exception", EXCEPTION_ATTRIBUTES)],
        status=Status(StatusCode.ERROR, "KeyError: 'nope'"),
        scope=("myapp", ""),
        kind=SpanKind.INTERNAL,
    )
    assert convert(span) == envelope(
        span,
        "error_traceback",
        {
            "error": "KeyError: 'nope'",
            "traceback": "Traceback (most recent call last):\n  ...\nKeyError: 'nope'\n",
        },
        scope=("myapp", ""),
    )


def test_real_record_exception_and_child_metadata() -> None:
    parent = make_span("parent", {})
    _EXPORTER.clear()
    tracer = _PROVIDER.get_tracer("myapp")
    from opentelemetry.trace import NonRecordingSpan

    span = tracer.start_span(
        "child", context=set_span_in_context(NonRecordingSpan(parent.context))
    )
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR))
    span.end()
    (child,) = _EXPORTER.get_finished_spans()
    event = convert(child)
    assert event["type"] == "error_traceback"
    assert event["payload"]["error"] == "ValueError: bad input"
    assert "raise ValueError" in event["payload"]["traceback"]
    assert event["metadata"]["parent_span_id"] == f"{parent.context.span_id:016x}"
    assert event["metadata"]["trace_id"] == f"{parent.context.trace_id:032x}"


def test_llm_span_with_exception_event_uses_it_for_the_error() -> None:
    span = make_span(
        "chat gpt-4o-mini",
        GENAI_CHAT,
        events_=[("exception", {"exception.type": "TimeoutError", "exception.message": "slow"})],
        status=Status(StatusCode.ERROR),
    )
    event = convert(span)
    assert event["type"] == "llm_generation"
    assert event["payload"]["status"] == "error"
    assert event["payload"]["error"] == "TimeoutError: slow"


@pytest.mark.parametrize(
    ("name", "attributes"),
    [
        ("GET", {"http.request.method": "GET", "url.full": "https://example.com/"}),
        ("SELECT", {"db.system": "sqlite", "db.statement": "SELECT 1"}),
        ("my work", {}),
        ("create_agent planner", {"gen_ai.operation.name": "create_agent",
                                  "gen_ai.provider.name": "openai"}),
        ("retriever", {"openinference.span.kind": "RETRIEVER"}),
    ],
)
def test_other_spans_are_not_events(name: str, attributes: Dict[str, Any]) -> None:
    span = make_span(name, attributes, status=Status(StatusCode.ERROR, "500"))
    assert convert(span) is None
    assert not is_llm_span(span)
    assert llm_summary(span) is None


def test_exception_on_span_that_ended_ok_is_not_an_error() -> None:
    span = make_span(
        "retry", {}, events_=[("exception", EXCEPTION_ATTRIBUTES)], status=Status(StatusCode.OK)
    )
    assert convert(span) is None


def test_agent_and_workflow_spans_are_generic_events() -> None:
    agent = make_span(
        "invoke_agent planner",
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner",
         "gen_ai.agent.id": "a-1", "gen_ai.agent.description": "plans trips",
         "gen_ai.provider.name": "openai", "gen_ai.conversation.id": "conv-9"},
    )
    event = convert(agent)
    assert event["type"] == "generic"
    assert event["payload"] == {
        "details": "Agent planner",
        "misc": {"operation": "invoke_agent", "agent_name": "planner", "agent_id": "a-1",
                 "conversation_id": "conv-9", "provider": "openai",
                 "description": "plans trips"},
    }
    workflow = make_span("invoke_workflow Agent workflow",
                         {"gen_ai.operation.name": "invoke_workflow"})
    assert convert(workflow)["payload"] == {
        "details": "Workflow Agent workflow", "misc": {"operation": "invoke_workflow"}}
    hidden = span_to_event(agent, "sess-1", None, capture_content=False)
    assert "description" not in hidden["payload"]["misc"]
    assert not is_llm_span(agent) and llm_summary(agent) is None


def test_a_failed_agent_span_is_a_generic_event_with_the_error() -> None:
    span = make_span(
        "invoke_agent planner",
        {"gen_ai.operation.name": "invoke_agent"},
        events_=[("exception", {"exception.type": "RuntimeError",
                                "exception.stacktrace": "Traceback ..."})],
    )
    event = convert(span)
    assert event["type"] == "generic"
    assert event["payload"] == {
        "details": "Agent planner failed: RuntimeError",
        "misc": {"operation": "invoke_agent", "error": "RuntimeError",
                 "traceback": "Traceback ..."},
    }


# --------------------------------------------------------------------- robustness


def test_bare_llm_span_defaults_to_unknown() -> None:
    span = make_span("chat", {"gen_ai.operation.name": "chat"})
    payload = convert(span)["payload"]
    assert payload == {
        "request": {"provider": "unknown", "model": "unknown", "messages": [], "params": {}},
        "response": {"output": None, "tool_calls": []},
        "usage": {"input_tokens": None, "output_tokens": None, "cost": None},
        "misc": {"operation": "chat", "streaming": False},
    }
    assert llm_summary(span) == {
        "model": "unknown",
        "provider": "unknown",
        "input_tokens": None,
        "output_tokens": None,
        "cost": None,
    }


def test_response_model_is_used_when_request_model_is_missing() -> None:
    span = make_span(
        "chat",
        {
            "gen_ai.provider.name": "openai",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 1_000_000,
            "gen_ai.usage.output_tokens": 0,
        },
    )
    assert llm_summary(span) == {
        "model": "gpt-4o-2024-08-06",
        "provider": "openai",
        "input_tokens": 1_000_000,
        "output_tokens": 0,
        "cost": 2.5,
    }


def test_unknown_model_has_no_cost_but_keeps_tokens() -> None:
    attributes = dict(GENAI_CHAT, **{
        "gen_ai.request.model": "my-deployment",
        "gen_ai.response.model": "my-deployment",
    })
    usage = convert(make_span("chat", attributes))["payload"]["usage"]
    assert usage == {"input_tokens": 12, "output_tokens": 5, "cost": None}


@pytest.mark.parametrize(
    "key", ["gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_write.input_tokens"]
)
def test_cache_write_tokens_are_read_under_either_spelling(key: str) -> None:
    attributes = dict(GENAI_CHAT, **{key: 7, "gen_ai.usage.cache_read.input_tokens": 3})
    misc = convert(make_span("chat", attributes))["payload"]["misc"]
    assert misc["cache_creation_input_tokens"] == 7
    assert misc["cache_read_input_tokens"] == 3


def test_malformed_json_is_kept_as_raw_text() -> None:
    attributes = dict(GENAI_CHAT, **{
        "gen_ai.input.messages": '[{"role":"user","parts":[{"content":"Hi", "ty',  # truncated
        "gen_ai.output.messages": "{not json",
        "gen_ai.system_instructions": '["unterminated',
        "gen_ai.tool.definitions": "[broken",
    })
    payload = convert(make_span("chat", attributes))["payload"]
    assert payload["request"]["messages"] == [
        {"role": "system", "content": '["unterminated'},
        {"role": "unknown", "content": '[{"role":"user","parts":[{"content":"Hi", "ty'},
    ]
    assert payload["response"] == {"output": "{not json", "tool_calls": []}
    assert payload["misc"]["unparsed_attributes"] == [
        "gen_ai.system_instructions",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
    ]
    assert payload["usage"]["input_tokens"] == 12


@pytest.mark.parametrize(
    "overrides",
    [
        {"gen_ai.input.messages": "42", "gen_ai.output.messages": "null"},
        {"gen_ai.input.messages": 42, "gen_ai.output.messages": True},
        {"gen_ai.input.messages": ("a", "b"), "gen_ai.output.messages": (1, 2)},
        {"gen_ai.input.messages": '{"role": "user", "parts": "just text"}'},
        {"gen_ai.input.messages": '[1, null, [], {"parts": [1, null, {"type": 5}]}]'},
        {"gen_ai.input.messages": '[{"role": {"x": 1}, "parts": {"type": "text"}}]'},
        {"gen_ai.output.messages": '[{"parts": [{"type": "tool_call", "arguments": "{bad"}]}]'},
        {"gen_ai.input.messages": "[" * 100_000 + "]" * 100_000},
        {"gen_ai.input.messages": "   "},
        {"gen_ai.usage.input_tokens": "12", "gen_ai.usage.output_tokens": -3},
        {"gen_ai.usage.input_tokens": 1.5e300, "gen_ai.usage.output_tokens": float("nan")},
        {"gen_ai.response.finish_reasons": "stop", "gen_ai.request.temperature": float("inf")},
        {"gen_ai.provider.name": 7, "gen_ai.request.model": ("a",)},
        {"gen_ai.tool.definitions": '[{"function": {"name": 3}}, "x", 1]'},
        {"gen_ai.operation.name": ("chat",)},
    ],
)
def test_wrong_types_never_raise(overrides: Dict[str, Any]) -> None:
    attributes = dict(GENAI_CHAT, **overrides)
    for capture in (True, False):
        convert(make_span("chat", attributes), capture_content=capture)


def test_structured_tool_call_with_bad_arguments_keeps_text() -> None:
    attributes = dict(GENAI_CHAT, **{
        "gen_ai.output.messages": '[{"role":"assistant","parts":[{"type":"tool_call",'
        '"id":"c1","name":"f","arguments":"{bad"}]}]',
    })
    response = convert(make_span("chat", attributes))["payload"]["response"]
    assert response["tool_calls"] == [
        {"id": "c1", "type": "function", "name": "f", "arguments": "{bad"}
    ]


def test_huge_message_is_converted_whole_and_fast() -> None:
    big = "x" * (5 * 1024 * 1024)
    attributes = dict(GENAI_CHAT, **{
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": big}]}]
        ),
    })
    span = make_span("chat", attributes)
    started = time.perf_counter()
    event = span_to_event(span, "sess-1", None)
    elapsed = time.perf_counter() - started
    assert event["payload"]["request"]["messages"] == [{"role": "user", "content": big}]
    assert elapsed < 2.0
    off = span_to_event(span, "sess-1", None, capture_content=False)
    assert len(json.dumps(off)) < 2000


def test_a_bug_in_conversion_degrades_to_a_minimal_event(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(events, "_llm_payload", boom)
    span = make_span("chat", GENAI_CHAT)
    event = convert(span)
    assert event["type"] == "llm_generation"
    assert event["payload"] == {
        "request": {"provider": "unknown", "model": "unknown", "messages": [], "params": {}},
        "response": {"output": None, "tool_calls": []},
        "usage": {"input_tokens": None, "output_tokens": None, "cost": None},
        "misc": {"conversion_error": "RuntimeError"},
    }


def test_event_id_is_stable_and_session_and_parent_pass_through() -> None:
    span = make_span("chat", GENAI_CHAT)
    first = span_to_event(span, "s-a", "p-1")
    second = span_to_event(span, "s-a", "p-1")
    assert first == second
    assert first["client_event_id"] == event_id(span.context.trace_id, span.context.span_id)
    assert first["session_id"] == "s-a"
    assert first["client_parent_event_id"] == "p-1"


# ------------------------------------------------------------------- content off

SECRETS = (
    "Be brief.", "Hello there!", "Weather in Paris?", "Paris", "sunny", "22C", "temp_c",
    "Hello!", "Be nice", "Resp hi", "Look", "Think first", "raw-args", "It is cold",
)


@pytest.mark.parametrize(
    ("attributes", "span_events"),
    [
        (GENAI_CHAT, ()),
        (GENAI_TOOL, ()),
        (dict(GENAI_CHAT, **{"gen_ai.input.messages": GENAI_TOOL_FOLLOWUP_INPUT}), ()),
        (GENAI_RESPONSES, ()),
        (dict(GENAI_CHAT, **{"gen_ai.input.messages": GENAI_MULTIPART_INPUT}), ()),
        (V2_LEGACY_CHAT, V2_LEGACY_CHAT_EVENTS),
        (V2_LEGACY_CHAT, V2_LEGACY_FOLLOWUP_EVENTS),
        (dict(GENAI_CHAT, **{"gen_ai.output.messages": '[{"role":"assistant","parts":'
                             '[{"type":"reasoning","content":"Think first."}]}]'}), ()),
        (dict(GENAI_CHAT, **{"gen_ai.input.messages": "Hello there! {broken"}), ()),
        (TOOL_SPAN, ()),
        (TOOL_SPAN_FAILED, ()),
    ],
)
def test_content_off_leaves_no_text(
    attributes: Dict[str, Any], span_events: Sequence[EventSpec]
) -> None:
    span = make_span("op", attributes, events_=span_events)
    event = convert(span, capture_content=False)
    assert_no_text(event, SECRETS)


def test_content_off_keeps_roles_tools_tokens_cost_and_model() -> None:
    attributes = dict(GENAI_TOOL, **{"gen_ai.input.messages": GENAI_TOOL_FOLLOWUP_INPUT})
    payload = convert(make_span("chat", attributes), capture_content=False)["payload"]
    weather = {"id": "call_abc123", "type": "function", "name": "get_weather"}
    assert payload["request"] == {
        "provider": "openai",
        "model": "gpt-4o-mini-2024-07-18",
        "messages": [
            {"role": "user", "content": None},
            {"role": "assistant", "content": None, "tool_calls": [weather]},
            {"role": "tool", "content": None, "tool_call_id": "call_abc123"},
        ],
        "params": {"tools": [{"name": "get_weather", "type": "function"}]},
    }
    assert payload["response"] == {"output": None, "tool_calls": [weather]}
    assert payload["usage"] == {"input_tokens": 12, "output_tokens": 5, "cost": 4.8e-06}


def test_content_off_function_call() -> None:
    span = make_span("execute_tool get_weather", TOOL_SPAN)
    assert convert(span, capture_content=False)["payload"] == {
        "function_name": "get_weather",
        "arguments": None,
        "return_value": None,
        "misc": {"tool_call_id": "call_abc123", "tool_type": "function"},
    }


# ------------------------------------------------------------------ summary / fuzz


def test_llm_summary_of_a_chat_span() -> None:
    span = make_span("chat gpt-4o-mini", GENAI_CHAT)
    assert is_llm_span(span)
    assert llm_summary(span) == {
        "model": "gpt-4o-mini-2024-07-18",
        "provider": "openai",
        "input_tokens": 12,
        "output_tokens": 5,
        "cost": 4.8e-06,
    }


_KEYS = sorted(set(GENAI_CHAT) | set(TOOL_SPAN) | {
    "gen_ai.system", "gen_ai.system_instructions", "gen_ai.tool.definitions",
    "gen_ai.usage.prompt_tokens", "gen_ai.prompt.0.content", "gen_ai.prompt.0.role",
    "gen_ai.completion.0.tool_calls.0.name", "llm.input_messages.0.message.content",
    "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
    "openinference.span.kind", "llm.invocation_parameters", "input.value",
})
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(
        st.sampled_from(["role", "parts", "type", "content", "name", "id", "arguments",
                         "response", "tool_calls", "function", "message", "finish_reason"]),
        inner,
        max_size=4,
    ),
    max_leaves=12,
)
_VALUES = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.booleans(),
    st.lists(st.text(max_size=5), max_size=3).map(tuple),
    _JSON.map(json.dumps),
    st.sampled_from(["chat", "execute_tool", "embeddings", "LLM", "TOOL", "tool_call"]),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    attributes=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=10),
    span_events=st.lists(
        st.tuples(
            st.sampled_from(["exception", "gen_ai.choice", "gen_ai.user.message",
                             "gen_ai.tool.message", "other"]),
            st.dictionaries(
                st.sampled_from(["body", "content", "tool_calls", "id", "exception.type"]),
                _VALUES,
                max_size=3,
            ),
        ),
        max_size=3,
    ),
    capture=st.booleans(),
)
def test_random_spans_never_raise(
    attributes: Dict[str, Any], span_events: Sequence[EventSpec], capture: bool
) -> None:
    span = make_span("fuzz", attributes, events_=span_events)
    convert(span, capture_content=capture)
    is_llm_span(span)
    llm_summary(span)


@pytest.mark.parametrize("count", ["²", "١٢", "12a", "1" * 5000])
def test_a_count_that_is_not_ascii_decimal_is_no_count(count: str) -> None:
    # "²".isdigit() is True but int("²") raises: the payload must not fall back.
    span = make_span("chat gpt-4o-mini", {"gen_ai.operation.name": "chat",
                                          "gen_ai.request.model": "gpt-4o-mini",
                                          "gen_ai.usage.input_tokens": count,
                                          "gen_ai.usage.output_tokens": " 7 "})
    payload = convert(span)["payload"]
    assert "conversion_error" not in payload["misc"]
    assert payload["usage"]["input_tokens"] is None and payload["usage"]["output_tokens"] == 7


def test_cached_input_tokens_are_billed_at_the_cached_rate() -> None:
    span = make_span("chat gpt-4o-mini", {"gen_ai.operation.name": "chat",
                                          "gen_ai.request.model": "gpt-4o-mini",
                                          "gen_ai.usage.input_tokens": 1000,
                                          "gen_ai.usage.cache_read.input_tokens": 800,
                                          "gen_ai.usage.output_tokens": 100,
                                          "gen_ai.usage.reasoning.output_tokens": 60})
    usage = convert(span)["payload"]["usage"]
    # reasoning tokens are inside the 100 output tokens: not billed again
    assert usage["cost"] == pytest.approx((200 * 0.15 + 800 * 0.075 + 100 * 0.60) / 1e6)
