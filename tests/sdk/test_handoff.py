"""Sessions that cross services: held ends and the prompt flush (sdk.handoff).

The end-to-end figure (two services, the contract server) is bench/end_ordering.py, run by
tests/test_bench.py; these tests pin the pieces.
"""

from __future__ import annotations

import threading
import time
from typing import List

from opentelemetry import baggage, trace
from opentelemetry.context import attach, detach
from opentelemetry.propagate import get_global_textmap
from opentelemetry.sdk.trace import TracerProvider

from lucidic_otel.sdk import handoff
from lucidic_otel.sdk.egress import SessionBaggagePolicy
from lucidic_otel.sessions.context import BAGGAGE_KEY


def test_sent_out_is_bounded_oldest_first() -> None:
    sent = handoff.SentOut(kept=3)
    for sid in "abcd":
        sent.mark(sid)
    assert "a" not in sent and all(s in sent for s in "bcd")
    sent.forget("c")
    assert "c" not in sent


def test_an_end_of_a_session_that_went_out_is_held_then_released_by_the_timer() -> None:
    released = threading.Event()
    held = handoff.HeldEnds(0.2, released.set)
    handoff.SENT_OUT.mark("went-out")
    try:
        assert held.hold("stayed-home", {}) is False  # never left: written at once
        start = time.monotonic()
        assert held.hold("went-out", {"is_finished": True}) is True
        assert held.due() == []  # not yet
        assert released.wait(5), "the grace timer never fired"
        assert time.monotonic() - start >= 0.2
        [(kind, sid, body)] = held.due()
        assert (sid, body) == ("went-out", {"is_finished": True})
        assert not held
    finally:
        handoff.SENT_OUT.forget("went-out")


def test_release_all_and_a_zero_grace() -> None:
    held = handoff.HeldEnds(30.0, lambda: None)
    handoff.SENT_OUT.mark("s1")
    assert held.hold("s1", {}) is True
    assert [sid for _, sid, _ in held.due(everything=True)] == ["s1"]
    handoff.SENT_OUT.mark("s2")
    assert handoff.HeldEnds(0.0, lambda: None).hold("s2", {}) is False
    handoff.SENT_OUT.forget("s2")


def test_exit_waits_for_held_ends_but_no_longer_than_its_limit() -> None:
    held = handoff.HeldEnds(10.0, lambda: None)
    handoff.SENT_OUT.mark("slow")
    held.hold("slow", {})
    start = time.monotonic()
    held.wait(0.3)
    assert 0.25 <= time.monotonic() - start < 2


def test_the_outbound_policy_notes_sessions_it_lets_out_and_not_withheld_ones() -> None:
    policy = SessionBaggagePolicy(get_global_textmap())
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    token = attach(baggage.set_baggage(BAGGAGE_KEY, "conv-9~signature"))
    try:
        with tracer.start_as_current_span(
            "GET", kind=trace.SpanKind.CLIENT,
            attributes={"url.full": "http://10.1.2.3:8080/work", "server.address": "10.1.2.3"},
        ):
            carrier: dict = {}
            policy.inject(carrier)
        assert "conv-9" in handoff.SENT_OUT  # the signature is not part of the id
        handoff.SENT_OUT.forget("conv-9")
        with tracer.start_as_current_span(
            "POST", kind=trace.SpanKind.CLIENT,
            attributes={"url.full": "https://api.openai.com/v1/chat/completions",
                        "server.address": "api.openai.com"},
        ):
            carrier = {}
            policy.inject(carrier)
        assert "lucidic.session_id" not in carrier.get("baggage", "")
        assert "conv-9" not in handoff.SENT_OUT  # withheld from a provider: not out
    finally:
        detach(token)


def test_prompt_flush_flushes_the_provider_once_for_a_burst_and_stops_when_idle(
    monkeypatch,
) -> None:
    calls: List[int] = []

    class Provider:
        def force_flush(self, timeout_millis: int = 30000) -> bool:
            calls.append(timeout_millis)
            return True

    monkeypatch.setattr(handoff.trace, "get_tracer_provider", lambda: Provider())
    monkeypatch.setattr(handoff, "_IDLE_STOP_S", 0.3)
    flush = handoff.PromptFlush()
    for _ in range(20):
        flush.request()
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(handoff.FLUSH_EVERY_S * 3)
    assert 1 <= len(calls) <= 2  # one burst, one (or at most two) flushes
    deadline = time.monotonic() + 5
    while flush._thread is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flush._thread is None  # the thread stopped by itself
