"""The OTLP/HTTP receiver decodes what the real SDK exporter sends.

Launcher tests trust this receiver to report exactly what went over the wire, so it is checked
here against the stock ``OTLPSpanExporter`` with a local ``TracerProvider`` (the global one is
never set in-process).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from support.otlp_receiver import OTLPTraceReceiver, decode_value


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPTraceReceiver]:
    with OTLPTraceReceiver() as rx:
        yield rx


def _provider(endpoint: str, **exporter_kwargs: Any) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": "receiver-selftest", "team": "obs"})
    )
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=5, **exporter_kwargs)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_decodes_spans_from_the_real_exporter(receiver: OTLPTraceReceiver) -> None:
    receiver.clear()
    provider = _provider(receiver.endpoint)
    tracer = provider.get_tracer("support.selftest", "1.2.3")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
        with tracer.start_as_current_span(
            "child",
            kind=SpanKind.CLIENT,
            attributes={"s": "x", "b": True, "i": 7, "f": 1.5, "ls": ["a", "b"], "li": [1, 2]},
            links=[Link(parent.get_span_context(), {"why": "test"})],
        ) as child:
            child.add_event("evt", {"k": "v"})
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()

    [received_child] = receiver.wait_for("child", timeout=5)
    [received_parent] = receiver.wait_for("parent", timeout=5)
    parent_ctx, child_ctx = parent.get_span_context(), child.get_span_context()
    assert received_parent["trace_id"] == format(parent_ctx.trace_id, "032x")
    assert received_parent["span_id"] == format(parent_ctx.span_id, "016x")
    assert received_parent["parent_span_id"] is None
    assert received_parent["kind"] == "SERVER"
    assert received_parent["status_code"] == "UNSET"
    assert received_child["span_id"] == format(child_ctx.span_id, "016x")
    assert received_child["parent_span_id"] == received_parent["span_id"]
    assert received_child["trace_id"] == received_parent["trace_id"]
    assert received_child["kind"] == "CLIENT"
    assert (received_child["status_code"], received_child["status_message"]) == ("ERROR", "boom")
    assert received_child["attributes"] == {
        "s": "x",
        "b": True,
        "i": 7,
        "f": 1.5,
        "ls": ["a", "b"],
        "li": [1, 2],
    }
    assert received_child["resource"]["service.name"] == "receiver-selftest"
    assert received_child["resource"]["team"] == "obs"
    assert (received_child["scope"], received_child["scope_version"]) == (
        "support.selftest",
        "1.2.3",
    )
    [event] = received_child["events"]
    assert (event["name"], event["attributes"]) == ("evt", {"k": "v"})
    assert event["time_unix_nano"] > 0
    [link] = received_child["links"]
    assert (link["span_id"], link["attributes"]) == (received_parent["span_id"], {"why": "test"})
    assert 0 < received_child["start_time_unix_nano"] <= received_child["end_time_unix_nano"]


def test_gzip_payloads_and_request_headers(receiver: OTLPTraceReceiver) -> None:
    receiver.clear()
    provider = _provider(
        receiver.endpoint, compression=Compression.Gzip, headers={"x-api-key": "secret"}
    )
    with provider.get_tracer("t").start_as_current_span("zipped"):
        pass
    provider.shutdown()
    receiver.wait_for("zipped", timeout=5)
    [headers] = receiver.request_headers
    assert headers["content-encoding"] == "gzip"
    assert headers["x-api-key"] == "secret"
    assert headers["content-type"] == "application/x-protobuf"


def test_wait_for_times_out_with_what_did_arrive(receiver: OTLPTraceReceiver) -> None:
    receiver.clear()
    provider = _provider(receiver.endpoint)
    with provider.get_tracer("t").start_as_current_span("present"):
        pass
    provider.shutdown()
    assert receiver.wait_for(lambda s: s["name"] == "present", timeout=5)
    started = time.monotonic()
    with pytest.raises(AssertionError, match="present"):
        receiver.wait_for("absent", timeout=0.2)
    assert time.monotonic() - started < 1.0
    with pytest.raises(AssertionError):
        receiver.wait_for("present", timeout=0.1, count=2)


def test_rejects_other_paths_and_garbage(receiver: OTLPTraceReceiver) -> None:
    base = receiver.endpoint.rsplit("/v1/traces", 1)[0]
    for url, body, status in [
        (f"{base}/v1/metrics", b"", 404),
        (receiver.endpoint, b"\xff\xff\xff not protobuf", 400),
    ]:
        request = urllib.request.Request(url, data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        caught.value.close()
        assert caught.value.code == status


def test_decode_value_handles_nested_and_empty_values() -> None:
    nested = AnyValue(
        kvlist_value=KeyValueList(
            values=[
                KeyValue(key="raw", value=AnyValue(bytes_value=b"\x00\x01")),
                KeyValue(
                    key="list",
                    value=AnyValue(
                        array_value=ArrayValue(
                            values=[AnyValue(int_value=1), AnyValue(string_value="two")]
                        )
                    ),
                ),
            ]
        )
    )
    assert decode_value(nested) == {"raw": b"\x00\x01", "list": [1, "two"]}
    assert decode_value(AnyValue()) is None


_ATTRIBUTE_VALUES = st.one_of(
    st.text(max_size=20),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=5), max_size=4),
    st.lists(st.integers(min_value=0, max_value=1000), max_size=4),
)


@settings(max_examples=30, deadline=None)
@given(attributes=st.dictionaries(st.text(min_size=1, max_size=12), _ATTRIBUTE_VALUES, max_size=6))
def test_attributes_survive_the_wire_unchanged(
    receiver: OTLPTraceReceiver, attributes: dict[str, Any]
) -> None:
    receiver.clear()
    provider = _provider(receiver.endpoint)
    with provider.get_tracer("t").start_as_current_span("prop", attributes=attributes):
        pass
    provider.shutdown()
    [span] = receiver.wait_for("prop", timeout=5)
    assert span["attributes"] == attributes
