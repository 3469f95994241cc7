"""The demo's front **gateway**: opens one Lucidic session per request and calls the agent.

This is the one place in the demo that uses the Lucidic API, the way a real front service
would: :func:`lucidic_otel.with_lucidic` around the work of a request starts a session, runs
the work in it, flushes the session's spans and ends it. The call to the agent goes out with
plain ``urllib.request``; the urllib instrumentation (applied by the launcher) injects
``traceparent`` and ``baggage``, and that is all the agent service needs to stamp its own spans
with this session.

The session opens *inside* the WSGI middleware's SERVER span, so that span (already running
when the request reached the app) keeps no session, as documented for spans that were open
before a scope started; the ``gateway`` span opened inside the session is the session's root.

Run it as ``opentelemetry-instrument python -m lucidic_otel.demo.gateway --agent-url URL``;
it prints ``READY <port>`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterable, Optional, Sequence
from wsgiref.simple_server import make_server

from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

import lucidic_otel
from lucidic_otel.demo.agent import (
    HOST,
    QuietHandler,
    add_common_arguments,
    json_response,
    read_json,
    serve,
)

AGENT_TIMEOUT_S = 60.0

StartResponse = Callable[..., Any]
_tracer = trace.get_tracer("lucidic_otel.demo.gateway")


class AgentError(Exception):
    """The agent service answered with an error or not at all."""


class Gateway:
    """Numbers requests and runs each one in its own session."""

    def __init__(self, agent_url: str) -> None:
        self.agent_url = agent_url.rstrip("/") + "/run"
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def handle(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """One request, one session: named after the request's number so it is easy to find."""
        with self._lock:
            number = next(self._numbers)
        return lucidic_otel.with_lucidic(
            self._forward, request, number, session_name=f"demo request {number}", tags=["demo"]
        )

    def _forward(self, request: Dict[str, Any], number: int) -> Dict[str, Any]:
        session_id = lucidic_otel.current_session_id()
        with _tracer.start_as_current_span(
            "gateway chat", attributes={"demo.request": number, "demo.city": request["city"]}
        ):
            reply = self._call_agent(request)
        return {"request": number, "session_id": session_id, **reply}

    def _call_agent(self, request: Dict[str, Any]) -> Dict[str, Any]:
        data = json.dumps(request).encode("utf-8")
        call = urllib.request.Request(
            self.agent_url, data=data, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(call, timeout=AGENT_TIMEOUT_S) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")[:500]
            raise AgentError(f"the agent answered {exc.code}: {detail}") from exc
        except (OSError, ValueError) as exc:
            raise AgentError(f"the agent did not answer: {exc}") from exc


def make_app(gateway: Gateway) -> Callable[[Dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI app, wrapped in the OpenTelemetry middleware."""

    def app(environ: Dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != "/chat":
            return json_response(start_response, "404 Not Found", {"error": "POST /chat"})
        body = read_json(environ)
        if body is None or not isinstance(body.get("city"), str):
            return json_response(
                start_response, "400 Bad Request", {"error": 'expected {"question", "city"}'}
            )
        try:
            result = gateway.handle({"question": body.get("question"), "city": body["city"]})
        except AgentError as exc:
            print(f"gateway: {exc}", file=sys.stderr, flush=True)
            return json_response(start_response, "502 Bad Gateway", {"error": str(exc)})
        return json_response(start_response, "200 OK", result)

    return OpenTelemetryMiddleware(app)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Start the gateway on 127.0.0.1 and print ``READY <port>``."""
    parser = argparse.ArgumentParser(prog="python -m lucidic_otel.demo.gateway")
    add_common_arguments(parser)
    parser.add_argument("--agent-url", required=True, help="e.g. http://127.0.0.1:PORT")
    args = parser.parse_args(argv)
    try:
        server = make_server(
            HOST, args.port, make_app(Gateway(args.agent_url)), handler_class=QuietHandler
        )
    except OSError as exc:
        print(f"gateway: cannot bind {HOST}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return serve(server, args.exit_with_parent)


if __name__ == "__main__":
    sys.exit(main())
