"""Conversion reads spans through the SpanLike protocol, so a caller without an SDK span (the
CLI and the viewer rebuild spans from stored rows) passes a PlainSpan and gets the same event."""

from __future__ import annotations

import json
from typing import Any, Dict

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, Status, StatusCode

from lucidic_otel.convert.events import span_to_event
from lucidic_otel.convert.spanlike import PlainEvent, PlainSpan, SpanIds, SpanLike

START = 1_700_000_000_123_456_789
ROW: Dict[str, Any] = {
    "trace_id": "0af7651916cd43dd8448eb211c80319c",
    "span_id": "b7ad6b7169203331",
    "name": "chat gpt-4o",
    "attributes": {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]
        ),
    },
    "events": [
        {"name": "gen_ai.choice", "attributes": {"body": '{"message": {"content": "hello"}}'},
         "time_ns": START},
        {"name": "exception", "attributes": {"exception.type": "ValueError",
                                             "exception.message": "bad"}, "time_ns": START},
    ],
    "status_code": "ERROR",
    "status_message": "bad",
    "start_ns": START,
    "end_ns": START + 1_500_000_000,
}


def _readable(row: Dict[str, Any]) -> ReadableSpan:
    """How the CLI rebuilt a span before the protocol existed."""
    return ReadableSpan(
        name=row["name"],
        context=SpanContext(int(row["trace_id"], 16), int(row["span_id"], 16), is_remote=False),
        attributes=row["attributes"],
        events=[Event(e["name"], e["attributes"], e["time_ns"]) for e in row["events"]],
        status=Status(StatusCode[row["status_code"]], row["status_message"]),
        start_time=row["start_ns"],
        end_time=row["end_ns"],
    )


def _plain(row: Dict[str, Any]) -> PlainSpan:
    return PlainSpan(
        name=row["name"],
        context=SpanIds(int(row["trace_id"], 16), int(row["span_id"], 16)),
        attributes=row["attributes"],
        events=[PlainEvent(e["name"], e["attributes"]) for e in row["events"]],
        status=Status(StatusCode[row["status_code"]], row["status_message"]),
        start_time=row["start_ns"],
        end_time=row["end_ns"],
    )


def test_sdk_spans_and_plain_spans_both_satisfy_the_protocol() -> None:
    assert isinstance(_readable(ROW), SpanLike)
    assert isinstance(_plain(ROW), SpanLike)


def test_a_plain_span_converts_like_the_sdk_span_it_stands_for() -> None:
    from_sdk = span_to_event(_readable(ROW), "sess-1", None)
    from_plain = span_to_event(_plain(ROW), "sess-1", None)
    assert from_sdk is not None and from_plain is not None
    assert from_plain["payload"] == from_sdk["payload"]
    assert from_plain["payload"]["response"]["output"] == "hello"
    assert from_plain["payload"]["error"] == "bad"
    # The SDK gives a span without a resource the default one; a plain span has none.
    assert from_sdk["metadata"].pop("service_name")
    assert from_plain["metadata"] == from_sdk["metadata"]
    assert {k: v for k, v in from_plain.items() if k != "metadata"} == {
        k: v for k, v in from_sdk.items() if k != "metadata"
    }


def test_a_plain_span_without_context_is_not_an_event() -> None:
    span = PlainSpan(name="chat", context=None, attributes={"gen_ai.operation.name": "chat"})
    assert span_to_event(span, "sess-1", None) is None


def test_defaults_of_a_plain_span_are_a_span_that_did_nothing() -> None:
    span = PlainSpan(name="GET /", context=SpanIds(1, 2))
    assert span_to_event(span, "sess-1", None) is None
