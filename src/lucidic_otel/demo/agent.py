"""The demo's downstream **agent service**: a tiny LLM agent behind a plain WSGI server.

It exists to show what a service that never heard of Lucidic gets when it runs under
``opentelemetry-instrument`` with this package installed: its spans land in the caller's
session and trace. Nothing in this module mentions sessions. The only OpenTelemetry code is the
standard WSGI middleware (there is no auto-instrumentor for a bare ``wsgiref`` server, and it is
what turns the inbound ``traceparent``/``baggage`` headers into the request's context) and the
tool span, because no instrumentation can know that a Python function is an agent's tool.

Each ``POST /run`` runs one agent turn with the real ``openai`` client against the endpoint
given by ``--openai-base-url`` (the demo's offline fake): a plain chat, a streaming chat with
usage, and a tool-call round trip, so the local store ends up with every kind of LLM event.

Run it as ``opentelemetry-instrument python -m lucidic_otel.demo.agent --openai-base-url URL``;
it prints ``READY <port>`` once it accepts connections. It installs no signal handler of its
own: the distro's SIGTERM handler (installed only over the default disposition) flushes the
spans before the process ends.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import traceback
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

HOST = "127.0.0.1"
MODEL = "gpt-4o-mini"
AGENT_NAME = "weather-agent"
MAX_BODY_BYTES = 64 * 1024
OPENAI_TIMEOUT_S = 30.0
SYSTEM_PROMPT = "You are a concise travel assistant. Use tools for live data."

WEATHER_TOOL: Dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}

StartResponse = Callable[..., Any]
_tracer = trace.get_tracer("lucidic_otel.demo.agent")


def get_weather(city: str) -> Dict[str, Any]:
    """A fake weather lookup, deterministic so the demo's output is the same on every run."""
    digest = hashlib.sha256(city.strip().lower().encode("utf-8")).digest()
    conditions = ("sunny", "cloudy", "light rain", "windy")
    return {
        "city": city,
        "temperature_c": 8 + digest[0] % 20,
        "conditions": conditions[digest[1] % len(conditions)],
    }


TOOLS: Dict[str, Callable[..., Dict[str, Any]]] = {"get_weather": get_weather}


def execute_tool(call: Any) -> str:
    """Run the tool the model asked for inside an ``execute_tool`` span; return its JSON result.

    The span follows the GenAI semantic conventions (operation, tool name, call id, arguments,
    result), which is what the exporter turns into a Lucidic ``function_call`` event.
    """
    name = call.function.name
    arguments = call.function.arguments or "{}"
    with _tracer.start_as_current_span(
        f"execute_tool {name}",
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "function",
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.call.arguments": arguments,
        },
    ) as span:
        tool = TOOLS.get(name)
        if tool is None:
            raise ValueError(f"the model asked for an unknown tool {name!r}")
        result = json.dumps(tool(**json.loads(arguments)), sort_keys=True)
        span.set_attribute("gen_ai.tool.call.result", result)
        return result


class Agent:
    """One agent turn per request: the three kinds of OpenAI call an agent typically makes."""

    def __init__(self, openai_base_url: str) -> None:
        from openai import OpenAI  # imported here so that --help works without the extra

        # The fake endpoint ignores the key, but the client refuses to start without one.
        self.client = OpenAI(
            base_url=openai_base_url,
            api_key="offline-demo-key",
            max_retries=0,
            timeout=OPENAI_TIMEOUT_S,
        )

    def run(self, question: str, city: str) -> Dict[str, Any]:
        """Answer ``question``, then summarise by streaming, then look up ``city``'s weather."""
        with _tracer.start_as_current_span(
            f"invoke_agent {AGENT_NAME}",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": AGENT_NAME},
        ):
            system = {"role": "system", "content": SYSTEM_PROMPT}
            answer = self._chat([system, {"role": "user", "content": question}])
            summary = self._stream([system, {"role": "user", "content": f"Summarise: {answer}"}])
            weather = self._tool_round_trip(
                [system, {"role": "user", "content": f"What is the weather in {city}?"}]
            )
        return {"answer": answer, "summary": summary, "weather": weather}

    def _chat(self, messages: List[Dict[str, Any]]) -> str:
        reply = self.client.chat.completions.create(model=MODEL, messages=messages)
        return reply.choices[0].message.content or ""

    def _stream(self, messages: List[Dict[str, Any]]) -> str:
        """A streamed reply read to the end, so the instrumentation records usage and ends
        the span (``include_usage`` makes the last chunk carry the token counts).

        Closed by ``close()`` rather than ``with``: each OpenAI instrumentation wraps the
        stream in its own object, and not every wrapper is a context manager.
        """
        parts = []
        stream = self.client.chat.completions.create(
            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        return "".join(parts)

    def _tool_round_trip(self, messages: List[Dict[str, Any]]) -> str:
        """Model asks for a tool, the agent runs it, the model answers from its result."""
        first = self.client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER_TOOL]
        )
        message = first.choices[0].message
        if not message.tool_calls:
            return message.content or ""
        call = message.tool_calls[0]
        result = execute_tool(call)
        messages = [
            *messages,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": call.function.arguments,
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": result},
        ]
        final = self.client.chat.completions.create(
            model=MODEL, messages=messages, tools=[WEATHER_TOOL]
        )
        return final.choices[0].message.content or ""


def json_response(
    start_response: StartResponse, status: str, payload: Dict[str, Any]
) -> Iterable[bytes]:
    data = json.dumps(payload).encode("utf-8")
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def read_json(environ: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The request's JSON object body, or None when it is missing, too big or not an object."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if not 0 < length <= MAX_BODY_BYTES:
        return None
    try:
        body = json.loads(environ["wsgi.input"].read(length).decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def make_app(agent: Agent) -> Callable[[Dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI app, wrapped in the OpenTelemetry middleware (SERVER span, inbound context)."""

    def app(environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != "/run":
            return json_response(start_response, "404 Not Found", {"error": "POST /run"})
        body = read_json(environ)
        if body is None or not isinstance(body.get("city"), str):
            return json_response(
                start_response, "400 Bad Request", {"error": 'expected {"question", "city"}'}
            )
        question = str(body.get("question") or f"Tell me about {body['city']}.")
        try:
            result = agent.run(question, body["city"])
        except Exception as exc:  # noqa: BLE001 - reported to the caller, and on stderr
            traceback.print_exc()
            return json_response(
                start_response, "502 Bad Gateway", {"error": f"{type(exc).__name__}: {exc}"}
            )
        return json_response(start_response, "200 OK", result)

    return OpenTelemetryMiddleware(app)


class QuietHandler(WSGIRequestHandler):
    """No access log: the demo prints its own progress, and the spans are the record."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        pass


def exit_when_stdin_closes() -> None:
    """End this process (by SIGTERM, so spans are flushed) once stdin reaches end of file.

    The demo runner holds the write end of each service's stdin; the OS closes it however the
    runner ends, even by SIGKILL, so a service started with ``--exit-with-parent`` never
    outlives the demo.
    """

    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def serve(server: WSGIServer, exit_with_parent: bool = False) -> int:
    """Announce the port, then serve until a signal ends the process."""
    if exit_with_parent:
        exit_when_stdin_closes()
    print(f"READY {server.server_port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options both demo services take."""
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    parser.add_argument(
        "--exit-with-parent", action="store_true",
        help="exit (flushing spans) when stdin is closed, i.e. when the process that started "
        "this one is gone",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Start the agent service on 127.0.0.1 and print ``READY <port>``."""
    parser = argparse.ArgumentParser(prog="python -m lucidic_otel.demo.agent")
    add_common_arguments(parser)
    parser.add_argument("--openai-base-url", required=True, help="e.g. http://127.0.0.1:PORT/v1")
    args = parser.parse_args(argv)
    try:
        agent = Agent(args.openai_base_url)
    except ImportError:
        print("agent: the openai package is missing: pip install 'lucidic-otel[openai]'",
              file=sys.stderr)
        return 2
    try:
        server = make_server(HOST, args.port, make_app(agent), handler_class=QuietHandler)
    except OSError as exc:
        print(f"agent: cannot bind {HOST}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return serve(server, args.exit_with_parent)


if __name__ == "__main__":
    sys.exit(main())
