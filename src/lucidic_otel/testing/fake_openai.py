"""An offline, deterministic OpenAI-compatible HTTP server.

The demo and the test suite need a real LLM endpoint that costs nothing, needs no network and
answers identically every time, so the whole path (the official ``openai`` client, the GenAI
instrumentation, the exporter) can be exercised anywhere the package is installed. That is why
this module uses the standard library only.

It speaks enough of the Chat Completions and Embeddings APIs for the official client: JSON and
SSE replies, tool calls, token usage and OpenAI-shaped errors. Replies are functions of the
request alone, so a test can predict them:

- a conversation that offers ``tools`` and ends with a ``user`` message gets one call to the
  first tool; one that ends with a ``tool`` message gets a text answer quoting the result;
  anything else gets ``"Echo: <last user message>"``;
- token counts are one per whitespace-separated word (plus one per message for prompts);
- embeddings are unit vectors hashed from the input text.

Faults and latency are chosen through the model name, because that is the one field every
client lets a caller set: ``fail-500`` (any 4xx/5xx code) returns that HTTP error, and a
``@<n>ms`` suffix such as ``gpt-4o-mini@250ms`` delays the reply.

Every request is recorded (bounded, oldest dropped first) before it is answered, so a test can
assert on what arrived, for example that a ``baggage`` header was propagated.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import http.server
import itertools
import json
import math
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

__all__ = ["FakeOpenAIServer", "RecordedRequest", "main"]

HOST = "127.0.0.1"
DEFAULT_MAX_RECORDED = 1000
DEFAULT_EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 4096
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_DELAY_SECONDS = 30.0
# Idle keep-alive connections are dropped after this long, so no handler thread lives forever.
IDLE_CONNECTION_TIMEOUT_SECONDS = 30.0
# Caps on how much of a request is looked at, so a hostile body cannot make a reply loop long.
_MAX_TOOL_PROPERTIES = 32
_MAX_EMBEDDING_INPUTS = 2048

_FAULT_MODEL = re.compile(r"^fail-([45][0-9][0-9])$")
_DELAY_SUFFIX = re.compile(r"^(?P<model>.*)@(?P<ms>[0-9]+(?:\.[0-9]+)?)ms$")
_STREAM_PIECE = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it; ``headers`` keys are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class _HTTPError(Exception):
    """Raised while building a reply to answer with an OpenAI-shaped error instead."""

    def __init__(self, status: int, message: str, error_type: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {
            "error": {"message": message, "type": error_type, "param": None, "code": code}
        }


def _words(text: str) -> int:
    return len(text.split())


def _text_of(content: Any) -> str:
    """Text of a message ``content``, which may be a string, None or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return " ".join(p for p in parts if isinstance(p, str))
    return ""


def _split_model(model: str) -> tuple[str, float]:
    """Split ``name@250ms`` into the name used for fault selection and a delay in seconds."""
    match = _DELAY_SUFFIX.match(model)
    if match is None:
        return model, 0.0
    return match.group("model"), float(match.group("ms")) / 1000.0


def _check_fault(base_model: str) -> None:
    match = _FAULT_MODEL.match(base_model)
    if match is None:
        return
    status = int(match.group(1))
    if status == 429:
        raise _HTTPError(
            429, "Rate limit reached (injected fault).", "requests", "rate_limit_exceeded"
        )
    if status >= 500:
        raise _HTTPError(status, "The server had an error (injected fault).", "server_error")
    raise _HTTPError(status, f"Injected fault {status}.", "invalid_request_error")


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        total += 1 + _words(_text_of(message.get("content")))
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += _words(str(function.get("name", ""))) + _words(
                    str(function.get("arguments", ""))
                )
    return total


def _tool_name(tool: Any) -> str:
    if isinstance(tool, dict):
        for holder in (tool.get("function"), tool.get("custom"), tool):
            if isinstance(holder, dict) and isinstance(holder.get("name"), str):
                return holder["name"]
    return "tool"


def _chosen_tool(tools: list[Any], tool_choice: Any) -> Any:
    """The tool named by a ``tool_choice`` object, else the first tool."""
    if isinstance(tool_choice, dict):
        wanted = _tool_name(tool_choice)
        for tool in tools:
            if _tool_name(tool) == wanted:
                return tool
    return tools[0]


def _example_value(schema: Any, hint: str) -> Any:
    """A value that fits a JSON-schema property, so tool code written for real models runs."""
    if not isinstance(schema, dict):
        return hint
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    return {"integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}.get(kind, hint)


def _tool_arguments(tool: Any, user_text: str) -> str:
    """JSON arguments for ``tool``: strings get the last word of the user's message."""
    words = user_text.split()
    hint = words[-1].strip(".,;:!?\"'()[]{}") if words else ""
    hint = hint or user_text
    function = tool.get("function") if isinstance(tool, dict) else None
    parameters = function.get("parameters") if isinstance(function, dict) else None
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    arguments: dict[str, Any] = {}
    if isinstance(properties, dict):
        for name, schema in itertools.islice(properties.items(), _MAX_TOOL_PROPERTIES):
            arguments[name] = _example_value(schema, hint)
    return json.dumps(arguments, sort_keys=True)


def _reply(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant message, finish reason and usage for a chat request."""
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        raise _HTTPError(
            400, "'messages' must be a non-empty list of objects.", "invalid_request_error"
        )
    last = messages[-1]
    user_text = next(
        (_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    tools = body.get("tools")
    prompt_tokens = _prompt_tokens(messages)
    tool_choice = body.get("tool_choice")
    if tools and isinstance(tools, list) and last.get("role") == "user" and tool_choice != "none":
        tool = _chosen_tool(tools, tool_choice)
        name = _tool_name(tool)
        arguments = _tool_arguments(tool, user_text)
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode("utf-8")).hexdigest()
        call = {
            "id": f"call_{digest[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [call],
            "refusal": None,
        }
        completion_tokens = max(1, _words(name) + _words(arguments))
        finish_reason = "tool_calls"
    else:
        if last.get("role") == "tool":
            text = f"The tool returned: {_text_of(last.get('content'))}"
        else:
            text = f"Echo: {user_text}"
        finish_reason = "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit > 0 and _words(text) > limit:
            text = " ".join(text.split()[:limit])
            finish_reason = "length"
        message = {"role": "assistant", "content": text, "refusal": None}
        completion_tokens = max(1, _words(text))
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return {"message": message, "finish_reason": finish_reason, "usage": usage}


def _embedding(text: str, dimensions: int) -> list[float]:
    raw = hashlib.shake_256(text.encode("utf-8")).digest(2 * dimensions)
    values = [int.from_bytes(raw[i : i + 2], "big") / 32767.5 - 1.0 for i in range(0, len(raw), 2)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _embedding_inputs(value: Any) -> list[tuple[str, int]]:
    """Each input as (text to hash, token count); token-id arrays count one token per id."""
    if isinstance(value, str):
        return [(value, _words(value))]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [(" ".join(map(str, value)), len(value))]
        items = value[:_MAX_EMBEDDING_INPUTS]
        if all(isinstance(v, str) for v in items):
            return [(v, _words(v)) for v in items]
        if all(isinstance(v, list) and all(isinstance(t, int) for t in v) for v in items):
            return [(" ".join(map(str, v)), len(v)) for v in items]
    raise _HTTPError(
        400, "'input' must be a string, a list of strings or token arrays.", "invalid_request_error"
    )


def _embeddings_response(body: dict[str, Any], model: str) -> dict[str, Any]:
    dimensions = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
    if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS:
        raise _HTTPError(
            400, f"'dimensions' must be 1..{MAX_EMBEDDING_DIMENSIONS}.", "invalid_request_error"
        )
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for index, (text, count) in enumerate(_embedding_inputs(body.get("input"))):
        vector = _embedding(text, dimensions)
        tokens += count
        encoded: Any = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _stream_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """Split a finished completion into the chunk sequence the real API streams."""
    choice = completion["choices"][0]
    message = choice["message"]
    head = {
        key: completion[key] for key in ("id", "object", "created", "model", "system_fingerprint")
    }
    head["object"] = "chat.completion.chunk"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        out = dict(
            head,
            choices=[
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        )
        if include_usage:
            out["usage"] = None
        return out

    chunks: list[dict[str, Any]] = []
    if message.get("tool_calls"):
        call = message["tool_calls"][0]
        opening = {
            "index": 0,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        chunks.append(chunk({"role": "assistant", "content": None, "tool_calls": [opening]}))
        for piece in _STREAM_PIECE.findall(call["function"]["arguments"]):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    else:
        chunks.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        for piece in _STREAM_PIECE.findall(message["content"]):
            chunks.append(chunk({"content": piece}))
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append(dict(head, choices=[], usage=completion["usage"]))
    return chunks


class _LoopbackHTTPServer(http.server.ThreadingHTTPServer):
    """Tracks open connections so ``stop()`` can end idle keep-alive handlers immediately."""

    daemon_threads = True

    def __init__(self, owner: FakeOpenAIServer, port: int) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    # Keep-alive, so latency benchmarks measure requests rather than TCP connects.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the client's delayed ACK would
    # add about 40 ms to every reply and swamp any latency being measured.
    disable_nagle_algorithm = True
    timeout = IDLE_CONNECTION_TIMEOUT_SECONDS
    server: _LoopbackHTTPServer
    server_version = "FakeOpenAI/1.0"

    def log_message(self, *args: Any) -> None:
        """Silent: the demo's output is the spans, not an access log."""

    def handle(self) -> None:
        """Treat a vanished client as normal, not as a traceback on stderr.

        The ``openai`` client stops reading a stream at ``[DONE]`` and drops the connection,
        and idle keep-alive connections time out; neither is an error worth printing.
        """
        try:
            super().handle()
        except OSError:  # reset, broken pipe or timeout (not TimeoutError on Python 3.9)
            self.close_connection = True

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        self._sequence = 0
        try:
            try:
                body = self._read_body()
            except _HTTPError:
                self.close_connection = True  # the unread body would corrupt the next request
                raise
            request = RecordedRequest(self.command, self.path, self._headers(), body)
            self._sequence = self.server.owner._record(request)
            self._route(body)
        except _HTTPError as error:
            self._send_error(error)
        except ConnectionError:
            self.close_connection = True

    def _send_error(self, error: _HTTPError) -> None:
        try:
            self._send_json(error.status, error.payload)
        except ConnectionError:
            self.close_connection = True

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    def _read_body(self) -> Any:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            if self.headers.get("Transfer-Encoding"):
                raise _HTTPError(411, "Send a Content-Length.", "invalid_request_error")
            return None
        try:
            length = int(length_header)
        except ValueError:
            raise _HTTPError(400, "Bad Content-Length.", "invalid_request_error") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise _HTTPError(413, "Request body too large.", "invalid_request_error")
        raw = self.rfile.read(length)
        if not raw:
            return None
        text = raw.decode("utf-8", errors="replace")
        try:
            return json.loads(text)
        except ValueError:
            return text

    def _route(self, body: Any) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if self.command != "POST" or path not in ("/v1/chat/completions", "/v1/embeddings"):
            raise _HTTPError(
                404,
                f"Unknown request URL: {self.command} {self.path}",
                "invalid_request_error",
                "unknown_url",
            )
        if not isinstance(body, dict):
            raise _HTTPError(400, "The body must be a JSON object.", "invalid_request_error")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _HTTPError(400, "'model' is required.", "invalid_request_error")
        base_model, delay = _split_model(model)
        delay = min(MAX_DELAY_SECONDS, delay + self.server.owner.delay_seconds)
        if delay > 0:
            time.sleep(delay)
        _check_fault(base_model)
        if path == "/v1/embeddings":
            self._send_json(200, _embeddings_response(body, model))
            return
        reply = _reply(body)
        completion = {
            "id": f"chatcmpl-fake-{self._sequence}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": reply["message"],
                    "logprobs": None,
                    "finish_reason": reply["finish_reason"],
                }
            ],
            "usage": reply["usage"],
        }
        if body.get("stream") is True:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self._send_stream(_stream_chunks(completion, include_usage))
        else:
            self._send_json(200, completion)

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_fake_{self._sequence}")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, chunks: list[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", f"req_fake_{self._sequence}")
        self.end_headers()
        events = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks]
        events.append(b"data: [DONE]\n\n")
        framed = [b"%x\r\n%s\r\n" % (len(event), event) for event in events]
        # The last event and the end-of-body marker go out together, so a client that stops
        # reading at [DONE] has usually received the whole body and can reuse the connection.
        framed[-1] += b"0\r\n\r\n"
        for frame in framed:
            self.wfile.write(frame)


class FakeOpenAIServer:
    """A loopback OpenAI-compatible server on its own daemon thread.

    Use it as a context manager; ``base_url`` is what ``OpenAI(base_url=...)`` needs. Port 0
    picks a free port, so parallel tests never collide.
    """

    def __init__(
        self, port: int = 0, *, delay_seconds: float = 0.0, max_recorded: int = DEFAULT_MAX_RECORDED
    ) -> None:
        """``delay_seconds`` is added to every reply (capped at 30 s) to emulate model latency."""
        self.delay_seconds = max(0.0, float(delay_seconds))
        self._port = port
        self._recorded: collections.deque[RecordedRequest] = collections.deque(
            maxlen=max(1, max_recorded)
        )
        self._lock = threading.Lock()
        self._sequence = itertools.count(1)
        self._server: _LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port; only meaningful after ``start()``."""
        if self._server is None:
            raise RuntimeError("FakeOpenAIServer is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, ready for ``OpenAI(base_url=...)``."""
        return f"http://{HOST}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._recorded)

    def clear_requests(self) -> None:
        """Forget recorded requests, so a test can look only at what it caused."""
        with self._lock:
            self._recorded.clear()

    def start(self) -> FakeOpenAIServer:
        """Bind and serve on a daemon thread; returns self so that calls chain."""
        if self._server is not None:
            raise RuntimeError("FakeOpenAIServer is already running")
        self._server = _LoopbackHTTPServer(self, self._port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close open connections; safe to call twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, request: RecordedRequest) -> int:
        """Store ``request`` and return its 1-based sequence number, used in reply ids."""
        with self._lock:
            self._recorded.append(request)
            return next(self._sequence)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve in the foreground until SIGTERM/SIGINT or ``--max-seconds``; print ``READY <port>``."""
    parser = argparse.ArgumentParser(
        prog="python -m lucidic_otel.testing.fake_openai",
        description="Offline, deterministic OpenAI-compatible server on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency added to every reply")
    parser.add_argument("--max-seconds", type=float, default=None, help="exit after this long")
    args = parser.parse_args(argv)

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server = FakeOpenAIServer(args.port, delay_seconds=args.delay_ms / 1000.0).start()
        except OSError as error:
            print(f"fake_openai: cannot bind {HOST}:{args.port}: {error}", file=sys.stderr)
            return 2
        try:
            print(f"READY {server.port}", flush=True)
            stopping.wait(args.max_seconds)
        finally:
            server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
