"""The session processor: stamping precedence, the inbound trust modes, and never raising.

Every test uses its own local ``TracerProvider``; the global provider is never set here.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, attach, create_key, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from lucidic_otel.config import load_settings, reset_settings
from lucidic_otel.ids import sign_session_id
from lucidic_otel.sdk.processor import PROCESS_SESSION, LucidicSpanProcessor
from lucidic_otel.sessions.context import (
    BAGGAGE_KEY,
    SEMCONV_SESSION_ATTRIBUTE,
    SESSION_ATTRIBUTE,
    SESSION_KEY,
)

SECRET = "0123456789abcdef-shared-secret"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("LUCIDIC_"):
            monkeypatch.delenv(name)
    reset_settings()
    monkeypatch.setattr(PROCESS_SESSION, "session_id", None)
    yield
    reset_settings()


class Pipeline:
    """A local provider whose spans go through a session processor into memory."""

    def __init__(self, env: Optional[Dict[str, str]] = None) -> None:
        self.processor = LucidicSpanProcessor(load_settings(env or {}))
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(self.processor)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test_processor")

    def stamp(self, context: Optional[Context] = None) -> Optional[str]:
        """The session of one span started (and ended) in ``context``."""
        span = self.tracer.start_span("probe", context=context)
        span.end()
        return finished_session(span)

    def started(self, session: str, context: Optional[Context] = None) -> trace.Span:
        """A live span stamped with ``session`` through the context key."""
        span = self.tracer.start_span("parent", context=set_value(SESSION_KEY, session, context))
        assert finished_session(span) == session
        return span


def finished_session(span: object) -> Optional[str]:
    assert isinstance(span, ReadableSpan)
    attributes = span.attributes or {}
    sid = attributes.get(SESSION_ATTRIBUTE)
    assert attributes.get(SEMCONV_SESSION_ATTRIBUTE) == sid  # mirrored, or both absent
    return sid  # type: ignore[return-value]


def with_baggage(value: object, context: Optional[Context] = None) -> Context:
    return baggage.set_baggage(BAGGAGE_KEY, value, context or Context())


def remote_parent(context: Optional[Context] = None) -> Context:
    span_context = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context), context or Context())


# --- precedence ----------------------------------------------------------------------------


def test_nothing_means_no_stamp() -> None:
    p = Pipeline()
    assert p.stamp(Context()) is None
    span = p.exporter.get_finished_spans()[0]
    assert SESSION_ATTRIBUTE not in (span.attributes or {})
    assert SEMCONV_SESSION_ATTRIBUTE not in (span.attributes or {})


def test_process_default_when_nothing_else() -> None:
    PROCESS_SESSION.session_id = "default-s"
    p = Pipeline()
    assert p.stamp(Context()) == "default-s"
    span = p.exporter.get_finished_spans()[0]
    assert span.attributes == {
        SESSION_ATTRIBUTE: "default-s",
        SEMCONV_SESSION_ATTRIBUTE: "default-s",
    }


def test_active_session_beats_baggage() -> None:
    PROCESS_SESSION.session_id = "default-s"
    p = Pipeline()
    ctx = set_value(SESSION_KEY, "active-s", with_baggage("baggage-s"))
    assert p.stamp(ctx) == "active-s"


def test_active_session_beats_parent_stamp() -> None:
    p = Pipeline()
    parent = p.started("parent-s")
    ctx = set_value(SESSION_KEY, "active-s", trace.set_span_in_context(parent, Context()))
    assert p.stamp(ctx) == "active-s"
    parent.end()


def test_active_session_beats_process_default() -> None:
    PROCESS_SESSION.session_id = "default-s"
    p = Pipeline()
    assert p.stamp(set_value(SESSION_KEY, "active-s", Context())) == "active-s"


def test_baggage_beats_parent_stamp() -> None:
    p = Pipeline()
    parent = p.started("parent-s")
    ctx = with_baggage("baggage-s", trace.set_span_in_context(parent, Context()))
    assert p.stamp(ctx) == "baggage-s"
    parent.end()


def test_baggage_beats_process_default() -> None:
    PROCESS_SESSION.session_id = "default-s"
    p = Pipeline()
    assert p.stamp(with_baggage("baggage-s")) == "baggage-s"


def test_local_parent_stamp_beats_process_default() -> None:
    p = Pipeline()
    parent = p.started("parent-s")
    PROCESS_SESSION.session_id = "default-s"
    assert p.stamp(trace.set_span_in_context(parent, Context())) == "parent-s"
    parent.end()


def test_ended_local_parent_still_gives_its_session() -> None:
    p = Pipeline()
    parent = p.started("parent-s")
    parent.end()
    PROCESS_SESSION.session_id = "default-s"
    assert p.stamp(trace.set_span_in_context(parent, Context())) == "parent-s"


def test_unstamped_local_parent_falls_through_to_default() -> None:
    p = Pipeline()
    parent = p.tracer.start_span("parent", context=Context())
    assert finished_session(parent) is None
    PROCESS_SESSION.session_id = "default-s"
    assert p.stamp(trace.set_span_in_context(parent, Context())) == "default-s"
    parent.end()


def test_remote_parent_is_not_a_stamped_local_parent() -> None:
    PROCESS_SESSION.session_id = "default-s"
    p = Pipeline()
    assert p.stamp(remote_parent()) == "default-s"
    PROCESS_SESSION.session_id = None
    assert p.stamp(remote_parent()) is None


def test_stamp_is_inherited_down_a_chain_of_local_spans() -> None:
    p = Pipeline()
    root = p.started("root-s")
    with trace.use_span(root, end_on_exit=True):
        with p.tracer.start_as_current_span("child"):
            with p.tracer.start_as_current_span("grandchild"):
                pass
    sessions = {s.name: finished_session(s) for s in p.exporter.get_finished_spans()}
    assert sessions == {"parent": "root-s", "child": "root-s", "grandchild": "root-s"}


def test_parent_context_none_reads_the_current_context() -> None:
    p = Pipeline()
    token = attach(set_value(SESSION_KEY, "current-s", Context()))
    try:
        assert p.processor.session_for(None) == "current-s"
        assert p.stamp() == "current-s"
    finally:
        detach(token)
    assert p.processor.session_for(None) is None


def test_explicit_parent_context_wins_over_the_current_one() -> None:
    p = Pipeline()
    token = attach(set_value(SESSION_KEY, "current-s", Context()))
    try:
        assert p.stamp(set_value(SESSION_KEY, "explicit-s", Context())) == "explicit-s"
        assert p.stamp(Context()) is None
    finally:
        detach(token)


def test_session_key_is_private_to_this_process_api() -> None:
    # Another library's key with the same name is a different key.
    p = Pipeline()
    lookalike = create_key("lucidic.session_id")
    assert lookalike != SESSION_KEY
    assert p.stamp(set_value(lookalike, "lookalike-s", Context())) is None


# --- inbound trust: accept -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["x" * 129, "has space", ";prop=1", "a,b", "ünï", "", "a~" + "0" * 32],
)
def test_invalid_baggage_is_not_stamped_and_is_counted(value: str) -> None:
    PROCESS_SESSION.session_id = "default-s"
    p = Pipeline()
    assert p.processor.rejected_baggage == 0
    assert p.stamp(with_baggage(value)) == "default-s"
    assert p.processor.rejected_baggage == 1
    assert p.stamp(with_baggage(value)) == "default-s"  # memoised verdict, still counted
    assert p.processor.rejected_baggage == 2


def test_non_str_baggage_value_is_rejected() -> None:
    p = Pipeline()
    assert p.stamp(with_baggage(12345)) is None
    assert p.processor.rejected_baggage == 1


def test_rejected_baggage_falls_through_to_the_parent_stamp() -> None:
    p = Pipeline()
    parent = p.started("parent-s")
    under_parent = trace.set_span_in_context(parent, Context())
    assert p.stamp(with_baggage("bad value", under_parent)) == "parent-s"
    parent.end()


def test_baggage_properties_from_a_real_header_are_stripped() -> None:
    # The SDK's W3C propagator keeps ``;prop=1`` in the value; W3C says it is metadata, so a
    # peer that adds properties must not lose its session.
    ctx = W3CBaggagePropagator().extract({"baggage": "lucidic.session_id=v;prop=1"}, Context())
    assert baggage.get_baggage(BAGGAGE_KEY, ctx) == "v;prop=1"
    p = Pipeline()
    assert p.stamp(ctx) == "v"
    assert p.processor.rejected_baggage == 0


def test_valid_baggage_from_a_real_header_is_stamped() -> None:
    ctx = W3CBaggagePropagator().extract({"baggage": "lucidic.session_id=req%3A42"}, Context())
    p = Pipeline()
    assert p.stamp(ctx) == "req:42"
    assert p.processor.rejected_baggage == 0


def test_first_rejection_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    p = Pipeline()
    with caplog.at_level(logging.WARNING, logger="lucidic_otel"):
        for value in ("bad one", "bad two", "bad three"):
            p.stamp(with_baggage(value))
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("lucidic_otel")]
    assert len(messages) == 1
    assert "'bad one'" in messages[0] and "[A-Za-z0-9._:-]" in messages[0]
    assert p.processor.rejected_baggage == 3


def test_memoised_verdict_follows_the_value() -> None:
    p = Pipeline()
    for _ in range(3):
        assert p.stamp(with_baggage("good-1")) == "good-1"
        assert p.stamp(with_baggage("bad 1")) is None
        assert p.stamp(with_baggage("good-2")) == "good-2"
    assert p.processor.rejected_baggage == 3


# --- inbound trust: ignore -----------------------------------------------------------------


def test_ignore_mode_ignores_baggage() -> None:
    p = Pipeline({"LUCIDIC_BAGGAGE_TRUST": "ignore"})
    assert p.stamp(with_baggage("baggage-s")) is None
    PROCESS_SESSION.session_id = "default-s"
    assert p.stamp(with_baggage("baggage-s")) == "default-s"
    parent = p.started("parent-s")
    under_parent = trace.set_span_in_context(parent, Context())
    assert p.stamp(with_baggage("baggage-s", under_parent)) == "parent-s"
    parent.end()
    assert p.stamp(set_value(SESSION_KEY, "active-s", with_baggage("baggage-s"))) == "active-s"
    assert p.processor.rejected_baggage == 0  # ignoring by policy is not a rejection


# --- inbound trust: signed -----------------------------------------------------------------


def signed_pipeline() -> Pipeline:
    return Pipeline({"LUCIDIC_BAGGAGE_TRUST": "signed", "LUCIDIC_BAGGAGE_SECRET": SECRET})


def test_signed_value_is_stamped_with_the_bare_id() -> None:
    p = signed_pipeline()
    value = sign_session_id("sess-1", SECRET.encode())
    assert p.stamp(with_baggage(value)) == "sess-1"
    span = p.exporter.get_finished_spans()[0]
    assert span.attributes == {SESSION_ATTRIBUTE: "sess-1", SEMCONV_SESSION_ATTRIBUTE: "sess-1"}
    assert p.processor.rejected_baggage == 0


def test_signed_value_through_a_real_header() -> None:
    value = sign_session_id("req:7", SECRET.encode())
    carrier: Dict[str, str] = {}
    W3CBaggagePropagator().inject(carrier, with_baggage(value))
    ctx = W3CBaggagePropagator().extract(carrier, Context())
    assert signed_pipeline().stamp(ctx) == "req:7"


def _forgeries() -> List[Tuple[str, str]]:
    key = SECRET.encode()
    victim_sig = sign_session_id("victim", key).rpartition("~")[2]
    return [
        ("unsigned", "sess-1"),
        ("wrong secret", sign_session_id("sess-1", b"not-the-shared-secret")),
        ("tampered id", "sess-2~" + sign_session_id("sess-1", key).rpartition("~")[2]),
        ("replayed", f"attacker~{victim_sig}"),
        ("truncated", sign_session_id("sess-1", key)[:-4]),
        ("bad chars", "a b~" + sign_session_id("a b", key).rpartition("~")[2]),
    ]


@pytest.mark.parametrize(("kind", "value"), _forgeries(), ids=[k for k, _ in _forgeries()])
def test_signed_mode_refuses_forged_values(kind: str, value: str) -> None:
    PROCESS_SESSION.session_id = "default-s"
    p = signed_pipeline()
    assert p.stamp(with_baggage(value)) == "default-s", kind
    assert p.processor.rejected_baggage == 1


def test_signed_mode_without_a_secret_refuses_everything(caplog: pytest.LogCaptureFixture) -> None:
    p = Pipeline({"LUCIDIC_BAGGAGE_TRUST": "signed"})
    with caplog.at_level(logging.WARNING, logger="lucidic_otel"):
        assert p.stamp(with_baggage(sign_session_id("sess-1", SECRET.encode()))) is None
        assert p.stamp(with_baggage("sess-1")) is None
    assert p.processor.rejected_baggage == 2
    assert any("signature" in r.getMessage() for r in caplog.records)


def test_signed_mode_still_trusts_this_process_api() -> None:
    p = signed_pipeline()
    assert p.stamp(set_value(SESSION_KEY, "active-s", with_baggage("unsigned"))) == "active-s"
    assert p.processor.rejected_baggage == 0


def test_baggage_verdicts_are_right_under_concurrency() -> None:
    """Threads alternating good and forged values never get another value's verdict."""
    p = signed_pipeline()
    key = SECRET.encode()
    errors: List[str] = []

    def work(n: int) -> None:
        good = with_baggage(sign_session_id(f"good-{n}", key))
        forged = with_baggage(f"good-{n}~" + "0" * 32)
        for _ in range(400):
            got = p.processor.session_for(good)
            if got != f"good-{n}":
                errors.append(f"good-{n} -> {got}")
            got = p.processor.session_for(forged)
            if got is not None:
                errors.append(f"forged good-{n} -> {got}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


# --- never raises --------------------------------------------------------------------------


def _weird_contexts() -> List[Tuple[str, object]]:
    from opentelemetry.baggage import _BAGGAGE_KEY
    from opentelemetry.trace.propagation import _SPAN_KEY

    return [
        ("garbage under unknown keys", Context({"x": object(), "y": [1, 2]})),
        ("garbage baggage mapping", Context({_BAGGAGE_KEY: "not-a-dict"})),
        ("baggage value is an object", Context({_BAGGAGE_KEY: {BAGGAGE_KEY: object()}})),
        ("garbage current span", Context({_SPAN_KEY: "not-a-span"})),
        ("session key holds None", Context({SESSION_KEY: None})),
        ("a plain dict", {"x": 1}),
        ("an int", 42),
        ("a str", "context"),
    ]


@pytest.mark.parametrize(("kind", "ctx"), _weird_contexts(), ids=[k for k, _ in _weird_contexts()])
def test_on_start_never_raises(kind: str, ctx: object) -> None:
    PROCESS_SESSION.session_id = "default-s"
    p = Pipeline()
    span = p.tracer.start_span("probe", context=Context())
    p.processor.on_start(span, parent_context=ctx)  # type: ignore[arg-type]
    span.end()
    # A mapping, however odd its contents, resolves normally; anything else is a counted
    # failure, never an exception in the application.
    assert p.processor.failures == (0 if hasattr(ctx, "get") else 1)


def test_on_start_failure_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    p = Pipeline()
    span = p.tracer.start_span("probe", context=Context())
    with caplog.at_level(logging.ERROR, logger="lucidic_otel"):
        for _ in range(3):
            p.processor.on_start(span, parent_context=42)  # type: ignore[arg-type]
    span.end()
    assert p.processor.failures == 3
    assert len([r for r in caplog.records if r.name.startswith("lucidic_otel")]) == 1


def test_garbage_contexts_still_resolve_to_the_default() -> None:
    from opentelemetry.baggage import _BAGGAGE_KEY
    from opentelemetry.trace.propagation import _SPAN_KEY

    PROCESS_SESSION.session_id = "default-s"
    p = Pipeline()
    assert p.stamp(Context({_BAGGAGE_KEY: "not-a-dict"})) == "default-s"
    assert p.stamp(Context({_SPAN_KEY: "not-a-span"})) == "default-s"
    assert p.stamp(Context({SESSION_KEY: None})) == "default-s"


def test_processor_contract_methods() -> None:
    p = Pipeline()
    assert p.processor.force_flush() is True
    assert p.processor.force_flush(timeout_millis=1) is True
    p.processor.shutdown()
    assert LucidicSpanProcessor.lucidic_session_processor is True
    p.provider.shutdown()


def test_on_end_reads_the_kind_of_sdk_spans_and_never_raises_for_span_like_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """on_end reads the kind through the verified private slot (or the public property when
    the SDK was not verified); an object that is not a span (no kind, no context) is counted
    as a failure, never raised into the application's ``span.end()``."""
    import operator

    from opentelemetry.trace import SpanKind

    from lucidic_otel.sdk import _fastpath
    from lucidic_otel.sdk import processor as processor_module
    from lucidic_otel.sdk.egress import LLM_CALLS

    span = TracerProvider().get_tracer("t").start_span("s", kind=SpanKind.SERVER)
    span.end()
    assert _fastpath.kind_of(span) is span.kind is SpanKind.SERVER

    class NoKind:
        attributes: Dict[str, str] = {}

    requested: List[object] = []
    monkeypatch.setattr(processor_module, "_after_request", requested.append)
    for getter in (_fastpath.kind_of, operator.attrgetter("kind")):  # verified, public
        monkeypatch.setattr(processor_module, "_kind_of", getter)
        processor = LucidicSpanProcessor(load_settings({}))
        processor.on_end(span)
        assert requested[-1] is span  # the SERVER span was seen as one
        LLM_CALLS.open[987654321] = True  # a call is open: on_end looks the span up
        try:
            processor.on_end(NoKind())  # type: ignore[arg-type]
        finally:
            LLM_CALLS.open.pop(987654321, None)
        assert processor.failures == 1
    assert len(requested) == 2
