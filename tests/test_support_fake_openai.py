"""The offline OpenAI server against the real ``openai`` client.

The demo and every GenAI test rely on this server behaving like the real API as far as the
official client can tell, so these tests drive it only through that client (sync, async,
streaming, tools, embeddings, errors) or, for malformed input, raw HTTP.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.launcher import clean_env, spawn, stop, wait_ready

from lucidic_otel.testing.fake_openai import FakeOpenAIServer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def shared_client(server: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


@pytest.fixture
def client(server: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    server.clear_requests()
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as c:
        yield c


def _post_raw(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_chat_echoes_last_user_message_with_word_count_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there world"},
        ],
    )
    assert reply.model == "gpt-4o-mini"
    assert reply.id.startswith("chatcmpl-")
    assert reply.created > 0
    choice = reply.choices[0]
    assert choice.message.content == "Echo: hello there world"
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    # One token per word, plus one per prompt message.
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1 + 2 + 1 + 3, 4)
    assert reply.usage.total_tokens == 11


def test_requests_are_recorded_with_headers_and_body(
    client: openai.OpenAI, server: FakeOpenAIServer
) -> None:
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"baggage": "lucidic.session_id=abc"},
    )
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["baggage"] == "lucidic.session_id=abc"
    assert request.headers["authorization"] == "Bearer test"
    assert request.body["messages"] == [{"role": "user", "content": "hi"}]


def test_async_client(server: FakeOpenAIServer) -> None:
    async def call() -> str | None:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", max_retries=0
        ) as client:
            reply = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "async hi"}]
            )
            return reply.choices[0].message.content

    assert asyncio.run(call()) == "Echo: async hi"


def test_stream_with_include_usage_ends_with_a_usage_chunk(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "stream these four words"}]
    plain = client.chat.completions.create(model="m", messages=messages)
    chunks = list(
        client.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert len(chunks) > 3, "content must arrive in several chunks"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x y"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_tool_call_round_trip(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    # Strings get the last word of the user message, enums their first value, integers 1.
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius", "days": 1}
    again = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert again.choices[0].message.tool_calls == choice.message.tool_calls, "deterministic"

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"})
    final = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert "sunny, 21C" in (final.choices[0].message.content or "")


def test_tool_choice_none_and_named_tool(client: openai.OpenAI) -> None:
    other = {"type": "function", "function": {"name": "lookup", "parameters": {}}}
    messages = [{"role": "user", "content": "hi"}]
    none = client.chat.completions.create(
        model="m", messages=messages, tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert none.choices[0].message.content == "Echo: hi"
    named = client.chat.completions.create(
        model="m",
        messages=messages,
        tools=[WEATHER_TOOL, other],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    )
    [call] = named.choices[0].message.tool_calls or []
    assert (call.function.name, call.function.arguments) == ("lookup", "{}")


def test_streamed_tool_call_assembles_to_the_non_streamed_call(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Weather in Rome?"}]
    plain = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    [expected] = plain.choices[0].message.tool_calls or []
    name, arguments, call_id, finish = "", "", None, None
    for chunk in client.chat.completions.create(
        model="m", messages=messages, tools=[WEATHER_TOOL], stream=True
    ):
        delta = chunk.choices[0].delta
        for piece in delta.tool_calls or []:
            call_id = piece.id or call_id
            name += (piece.function.name or "") if piece.function else ""
            arguments += (piece.function.arguments or "") if piece.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert (call_id, name, arguments) == (
        expected.id,
        expected.function.name,
        expected.function.arguments,
    )
    assert finish == "tool_calls"


def test_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "one two three four"}], max_tokens=2
    )
    assert reply.choices[0].message.content == "Echo: one"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_embeddings_are_deterministic_unit_vectors(client: openai.OpenAI) -> None:
    # Without encoding_format the client asks for base64 and decodes float32 itself.
    decoded = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    assert decoded.model == "text-embedding-3-small"
    assert [d.index for d in decoded.data] == [0, 1]
    assert decoded.usage.prompt_tokens == 3
    assert len(decoded.data) == len(floats.data)
    for packed, exact in ((decoded.data[i], floats.data[i]) for i in range(len(floats.data))):
        assert len(exact.embedding) == 8
        assert packed.embedding == pytest.approx(exact.embedding, abs=1e-6)
        assert math.sqrt(sum(v * v for v in exact.embedding)) == pytest.approx(1.0, abs=1e-4)
    assert decoded.data[0].embedding != decoded.data[1].embedding
    sized = client.embeddings.create(model="e", input="a b", dimensions=16, encoding_format="float")
    assert len(sized.data[0].embedding) == 16


@pytest.mark.parametrize(
    ("model", "error", "status"),
    [("fail-500", openai.InternalServerError, 500), ("fail-429", openai.RateLimitError, 429)],
)
def test_fault_models_raise_openai_errors(
    client: openai.OpenAI, model: str, error: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(error) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == status
    assert "injected fault" in caught.value.message
    with pytest.raises(error):
        client.embeddings.create(model=model, input="x")


def test_delay_from_model_suffix_and_constructor(client: openai.OpenAI) -> None:
    started = time.monotonic()
    reply = client.chat.completions.create(
        model="gpt-4o-mini@200ms", messages=[{"role": "user", "content": "slow"}]
    )
    assert time.monotonic() - started >= 0.2
    assert reply.model == "gpt-4o-mini@200ms"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="fail-500@10ms", messages=[{"role": "user", "content": "x"}]
        )

    with FakeOpenAIServer(delay_seconds=0.15) as slow:
        started = time.monotonic()
        status, _ = _post_raw(f"{slow.base_url}/embeddings", b'{"model": "m", "input": "x"}')
        assert status == 200
        assert time.monotonic() - started >= 0.15


def test_malformed_requests_get_openai_shaped_errors(server: FakeOpenAIServer) -> None:
    status, body = _post_raw(f"{server.base_url}/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = _post_raw(f"{server.base_url}/chat/completions", b'{"model": "m"}')
    assert status == 400 and "messages" in body["error"]["message"]
    status, body = _post_raw(f"{server.base_url}/nope", b"{}")
    assert status == 404 and body["error"]["code"] == "unknown_url"
    with openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=[])


def test_recorded_requests_are_bounded() -> None:
    with FakeOpenAIServer(max_recorded=3) as srv:
        for index in range(5):
            body = json.dumps({"model": str(index)}).encode()
            _post_raw(f"{srv.base_url}/chat/completions", body)
        assert [r.body["model"] for r in srv.requests] == ["2", "3", "4"]


def test_stop_is_prompt_with_an_idle_keep_alive_connection() -> None:
    srv = FakeOpenAIServer().start()
    port = srv.port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Connection") != "close"
    response.read()
    started = time.monotonic()
    srv.stop()
    srv.stop()
    assert time.monotonic() - started < 2.0
    connection.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(RuntimeError):
        _ = srv.base_url


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60))
def test_replies_are_a_pure_function_of_the_request(
    shared_client: openai.OpenAI, text: str
) -> None:
    messages = [{"role": "user", "content": text}]
    first = shared_client.chat.completions.create(model="m", messages=messages)
    second = shared_client.chat.completions.create(model="m", messages=messages)
    assert first.choices[0].message.content == f"Echo: {text}"
    assert first.usage == second.usage
    assert first.usage is not None
    assert first.usage.prompt_tokens == 1 + len(text.split())
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_module_entry_point_prints_ready_and_exits_cleanly_on_signal(sig: int) -> None:
    proc = spawn([sys.executable, "-m", "lucidic_otel.testing.fake_openai"], env=clean_env())
    try:
        port = int(wait_ready(proc, timeout=10))
        status, body = _post_raw(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "cli"}]}).encode(),
        )
        assert (status, body["choices"][0]["message"]["content"]) == (200, "Echo: cli")
    finally:
        result = stop(proc, sig, timeout=5)
    assert result.returncode == 0, result.stdout


def test_module_entry_point_honours_max_seconds() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "lucidic_otel.testing.fake_openai", "--max-seconds", "0.3"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("READY ")
    assert time.monotonic() - started < 5
