"""The launcher helpers, and the full offline GenAI path they exist for.

The end-to-end test runs a script that uses the real ``openai`` client under the real
``opentelemetry-instrument``, with the genai-openai and httpx instrumentations, against the
fake OpenAI server, exporting OTLP/HTTP to the local receiver. It uses the stock SDK
configurator (``opentelemetry-distro``) so that it checks this infrastructure rather than the
lucidic distro; installed ``opentelemetry_post_instrument`` hooks still run, as they always do.
"""

from __future__ import annotations

import json
import signal
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Iterator

import pytest
from support.launcher import (
    INSTRUMENT,
    PYTHON,
    clean_env,
    otlp_env,
    run_instrumented,
    spawn,
    spawn_instrumented,
    stop,
    wait_ready,
    write_script,
)
from support.otlp_receiver import OTLPTraceReceiver

from lucidic_otel.testing.fake_openai import FakeOpenAIServer


def _has_entry_point(group: str, name: str) -> bool:
    try:
        found = entry_points(group=group)
    except TypeError:  # Python 3.9: entry_points() takes no arguments
        found = entry_points().get(group, [])  # type: ignore[attr-defined]
    return any(ep.name == name for ep in found)


needs_stock_sdk_configurator = pytest.mark.skipif(
    not _has_entry_point("opentelemetry_configurator", "configurator"),
    reason="needs opentelemetry-distro==0.66b1 for the stock SDK configurator",
)

STOCK_SDK = {"OTEL_PYTHON_DISTRO": "distro", "OTEL_PYTHON_CONFIGURATOR": "configurator"}


@pytest.fixture
def receiver() -> Iterator[OTLPTraceReceiver]:
    with OTLPTraceReceiver() as rx:
        yield rx


@pytest.fixture
def llm() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def test_clean_env_scrubs_otel_and_lucidic_and_applies_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-the-shell")
    monkeypatch.setenv("LUCIDIC_API_KEY", "shell-key")
    monkeypatch.setenv("KEEP_ME", "yes")
    env = clean_env(OTEL_SERVICE_NAME="svc", PYTHONUNBUFFERED=None, OTEL_LOGS_EXPORTER=None)
    assert env["KEEP_ME"] == "yes"
    assert "LUCIDIC_API_KEY" not in env
    assert env["OTEL_SERVICE_NAME"] == "svc"
    assert env["OTEL_PYTHON_DISTRO"] == env["OTEL_PYTHON_CONFIGURATOR"] == "lucidic"
    assert env["OTEL_METRICS_EXPORTER"] == "none"
    assert "PYTHONUNBUFFERED" not in env and "OTEL_LOGS_EXPORTER" not in env
    assert {k for k in env if k.startswith("OTEL_")} == {
        "OTEL_SERVICE_NAME",
        "OTEL_PYTHON_DISTRO",
        "OTEL_PYTHON_CONFIGURATOR",
        "OTEL_METRICS_EXPORTER",
    }


def test_otlp_env_selects_the_http_protobuf_exporter() -> None:
    env = otlp_env("http://127.0.0.1:1/v1/traces")
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "http://127.0.0.1:1/v1/traces"
    assert int(env["OTEL_BSP_SCHEDULE_DELAY"]) <= 100


def test_launcher_binaries_exist() -> None:
    assert INSTRUMENT.is_file() and PYTHON.is_file()


def test_write_script_dedents(tmp_path: Path) -> None:
    path = write_script(
        tmp_path,
        "s.py",
        """
        if True:
            print("ok")
        """,
    )
    assert path.read_text() == 'if True:\n    print("ok")\n'


OPENAI_APP = """
    import sys
    from openai import OpenAI
    from opentelemetry import baggage, context

    WEATHER = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    client = OpenAI(base_url=sys.argv[1], api_key="test", max_retries=0)
    token = context.attach(
        baggage.set_baggage("team", "blue", baggage.set_baggage("lucidic.session_id", "sess-123")))
    try:
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
        ]
        first = client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=[WEATHER]
        )
        call = first.choices[0].message.tool_calls[0]
        messages.append(first.choices[0].message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"})
        final = client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=[WEATHER]
        )
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        context.detach(token)
    print(final.choices[0].message.content)
    print(streamed)
"""


def _chat_spans(receiver: OTLPTraceReceiver) -> list[dict[str, Any]]:
    return receiver.wait_for("chat gpt-4o-mini", timeout=5, count=3)


@needs_stock_sdk_configurator
def test_openai_under_the_launcher_exports_genai_spans(
    tmp_path: Path, receiver: OTLPTraceReceiver, llm: FakeOpenAIServer
) -> None:
    script = write_script(tmp_path, "app.py", OPENAI_APP)
    env = clean_env(
        **otlp_env(receiver.endpoint),
        **STOCK_SDK,
        OTEL_SERVICE_NAME="support-selftest",
        OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="SPAN_ONLY",
    )
    result = run_instrumented([script, llm.base_url], env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["The tool returned: sunny, 21C", "Echo: stream me"]

    tool_call, tool_answer, streamed = _chat_spans(receiver)
    for span in (tool_call, tool_answer, streamed):
        assert span["kind"] == "CLIENT"
        assert span["scope"] == "opentelemetry.instrumentation.genai.openai"
        assert span["resource"]["service.name"] == "support-selftest"
        assert span["attributes"]["gen_ai.provider.name"] == "openai"
        assert span["attributes"]["gen_ai.request.model"] == "gpt-4o-mini"

    # First call: the fake's usage (one token per word plus one per message) and the messages,
    # which span_only mode records as JSON strings in the semconv "parts" shape.
    attrs = tool_call["attributes"]
    assert attrs["gen_ai.usage.input_tokens"] == (1 + 2) + (1 + 3)
    assert attrs["gen_ai.response.finish_reasons"] == ["tool_calls"]
    input_messages = json.loads(attrs["gen_ai.input.messages"])
    assert [m["role"] for m in input_messages] == ["system", "user"]
    assert input_messages[1]["parts"] == [{"type": "text", "content": "Weather in Paris?"}]
    [output] = json.loads(attrs["gen_ai.output.messages"])
    [call_part] = output["parts"]
    assert output["finish_reason"] == "tool_call"  # normalised: the API said "tool_calls"
    assert call_part["type"] == "tool_call"
    assert (call_part["name"], call_part["arguments"]) == ("get_weather", {"city": "Paris"})
    assert json.loads(attrs["gen_ai.tool.definitions"])[0]["name"] == "get_weather"

    # Second call: the tool result travels as a tool_call_response part.
    answer_input = json.loads(tool_answer["attributes"]["gen_ai.input.messages"])
    assert answer_input[-1]["role"] == "tool"
    assert answer_input[-1]["parts"] == [
        {"type": "tool_call_response", "id": call_part["id"], "response": "sunny, 21C"}
    ]

    # Streaming: usage only because include_usage was requested.
    stream_attrs = streamed["attributes"]
    assert stream_attrs["gen_ai.request.stream"] is True
    assert stream_attrs["gen_ai.usage.output_tokens"] == 3
    assert stream_attrs["gen_ai.response.time_to_first_chunk"] >= 0
    [stream_output] = json.loads(stream_attrs["gen_ai.output.messages"])
    assert stream_output["parts"] == [{"type": "text", "content": "Echo: stream me"}]

    # The httpx instrumentation propagated context into the requests the fake server saw: the
    # trace and the other baggage, but not the session (the outbound policy keeps it from LLM
    # calls, see tests/test_egress.py).
    requests = llm.requests
    assert len(requests) == 3
    for request, span in (
        (requests[0], tool_call),
        (requests[1], tool_answer),
        (requests[2], streamed),
    ):
        assert request.headers["traceparent"].split("-")[1] == span["trace_id"]
        assert request.headers["baggage"] == "team=blue"


SERVE_UNTIL_SIGNALLED = """
    import signal, sys, time

    def on_term(signum, frame):
        print("got SIGTERM", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    print("READY hello world", flush=True)
    time.sleep(30)
"""


@needs_stock_sdk_configurator
def test_spawn_instrumented_wait_ready_and_stop(tmp_path: Path) -> None:
    script = write_script(tmp_path, "serve.py", SERVE_UNTIL_SIGNALLED)
    proc = spawn_instrumented([script], clean_env(**STOCK_SDK, OTEL_TRACES_EXPORTER="none"))
    try:
        assert wait_ready(proc, timeout=30) == "hello world"
    finally:
        result = stop(proc, signal.SIGTERM, timeout=10)
    assert result.returncode == 0, result.stdout
    assert "got SIGTERM" in result.stdout


def test_sigint_works_in_children_of_a_parent_that_ignores_it(tmp_path: Path) -> None:
    script = write_script(tmp_path, "wait.py", 'import time\nprint("READY")\ntime.sleep(30)\n')
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = spawn([PYTHON, script], clean_env())
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        wait_ready(proc, timeout=10)
    finally:
        result = stop(proc, signal.SIGINT, timeout=5)
    # An uncaught KeyboardInterrupt ends Python by re-raising SIGINT: not ignored, not killed.
    assert result.returncode == -signal.SIGINT, result.stdout


def test_stop_kills_a_process_that_ignores_the_signal(tmp_path: Path) -> None:
    script = write_script(
        tmp_path,
        "stubborn.py",
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("READY", flush=True)
        time.sleep(30)
        """,
    )
    proc = spawn([PYTHON, script], clean_env())
    wait_ready(proc, timeout=10)
    started = time.monotonic()
    result = stop(proc, signal.SIGTERM, timeout=0.5)
    assert result.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_wait_ready_reports_the_output_of_a_process_that_exits(tmp_path: Path) -> None:
    script = write_script(tmp_path, "boom.py", 'import sys\nprint("boom")\nsys.exit(3)\n')
    proc = spawn([PYTHON, script], clean_env())
    try:
        with pytest.raises(AssertionError, match=r"(?s)exited with 3.*boom"):
            wait_ready(proc, timeout=10)
    finally:
        stop(proc)
