"""Per request: a FastAPI chat service whose sessions are conversations.

Every request runs inside the session of its conversation (``lucidic_otel.with_session``, or
the ``lucidic_otel.session`` block), so all the spans of one conversation, across many
requests, form one session; the server span FastAPI makes for a request joins it too.
Neither call ever ends a session: a conversation spans requests, so only the application knows
when it is over. Here ``POST /conversations/{id}/end`` ends it with ``lucidic_otel.end_session``;
a conversation that is never ended stays open.

The script is its own client, so it runs and stops by itself: it serves on a free loopback
port, holds two conversations (``trip-42`` is ended, ``support-7`` is left open) and exits.
It needs ``pip install fastapi uvicorn opentelemetry-instrumentation-fastapi`` and runs under
the launcher, which instruments FastAPI and sets OpenTelemetry up:

    opentelemetry-instrument python examples/per_request.py
    lucidic-otel sessions
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import uvicorn
from fastapi import FastAPI
from opentelemetry import trace
from pydantic import BaseModel

import lucidic_otel

HOST = "127.0.0.1"
tracer = trace.get_tracer("examples.per_request")
app = FastAPI()


class ChatRequest(BaseModel):
    conversation_id: str
    message: str


async def handle(req: ChatRequest) -> dict[str, str]:
    with tracer.start_as_current_span("agent turn") as span:
        span.set_attribute("chat.message", req.message)
        return {"reply": f"You said: {req.message}"}


@app.post("/chat")
async def chat(req: ChatRequest) -> dict[str, str]:
    return await lucidic_otel.with_session(req.conversation_id, handle, req)


@app.post("/conversations/{conversation_id}/end")
def end_conversation(conversation_id: str) -> dict[str, bool]:
    with lucidic_otel.session(conversation_id):
        with tracer.start_as_current_span("summarise conversation"):
            pass
    ended = lucidic_otel.end_session(conversation_id, is_successful=True)
    return {"ended": ended}


def post(port: int, path: str, body: dict[str, str] | None = None) -> dict:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}",
        data=json.dumps(body or {}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def converse(port: int) -> None:
    for message in ("Plan a trip to Lisbon", "Make it three days"):
        print(post(port, "/chat", {"conversation_id": "trip-42", "message": message})["reply"])
    print("trip-42 ended:", post(port, "/conversations/trip-42/end")["ended"])
    print(post(port, "/chat", {"conversation_id": "support-7", "message": "Hello"})["reply"])


def main() -> None:
    sock = socket.socket()
    sock.bind((HOST, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        converse(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
