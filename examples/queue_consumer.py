"""Detached roots: a worker thread that takes jobs off a queue, each job in its own session.

A consumer loop has no block around the work of one message (the message arrives in the
middle of the loop, and so does the next one), so it binds the message's session with
``lucidic_otel.set_active_session`` and restores the previous binding with
``clear_active_session(token)``. Binding never starts an OpenTelemetry span and never ends a
session: the consumer ends an order's session after the order's last message, with
``lucidic_otel.end_session``.

The producer enqueues five messages of three orders, interleaved, and a final ``None``; the
consumer stops at the ``None``, so the script ends by itself. Run it under the launcher:

    opentelemetry-instrument python examples/queue_consumer.py
    lucidic-otel sessions

and the store holds three ended sessions (``order-1``, ``order-2``, ``order-3``), while the
consumer's closing ``consumer stats`` span, started after the last message was cleared, is in
none of them.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Optional

from opentelemetry import trace

import lucidic_otel

tracer = trace.get_tracer("examples.queue_consumer")


@dataclass
class Message:
    session_id: str
    step: str
    last: bool = False


def process(message: Message) -> None:
    with tracer.start_as_current_span(f"order {message.step}") as span:
        span.set_attribute("order.step", message.step)


def consume(message: Message) -> None:
    token = lucidic_otel.set_active_session(message.session_id)
    try:
        process(message)
    finally:
        lucidic_otel.clear_active_session(token)
    if message.last:
        lucidic_otel.end_session(message.session_id)


def worker(jobs: queue.Queue[Optional[Message]]) -> None:
    consumed = 0
    while (message := jobs.get()) is not None:
        consume(message)
        consumed += 1
    # The consumer's own work belongs to no order: clear_active_session restored "no session".
    with tracer.start_as_current_span("consumer stats") as span:
        span.set_attribute("messages.consumed", consumed)


def main() -> None:
    jobs: queue.Queue[Optional[Message]] = queue.Queue()
    consumer = threading.Thread(target=worker, args=(jobs,), name="consumer")
    consumer.start()
    for message in (
        Message("order-1", "charge"),
        Message("order-2", "charge"),
        Message("order-1", "ship", last=True),
        Message("order-3", "charge", last=True),
        Message("order-2", "ship", last=True),
    ):
        jobs.put(message)
    jobs.put(None)
    consumer.join(timeout=30)
    print("consumed; sessions order-1, order-2, order-3 ended")


if __name__ == "__main__":
    main()
