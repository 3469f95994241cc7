"""The wire contract module: status table, Retry-After, bodies, previews and the blob payload.

These are the decisions the sender acts on, so each row of the contract's status table and
each body rule is pinned here; the property tests make sure no payload, however odd, can make
encoding raise or a preview grow past the contract's limits.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import time
from datetime import datetime
from typing import Any, Dict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lucidic_otel.delivery import contract as backend
from lucidic_otel.delivery.contract import Verdict
from lucidic_otel.version import __version__


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (201, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (409, Verdict.DELIVERED),
        (408, Verdict.RETRY),
        (425, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (599, Verdict.RETRY),
        (401, Verdict.STOP_AUTH),
        (403, Verdict.STOP_AUTH),
        (402, Verdict.STOP_CREDITS),
        (413, Verdict.TOO_LARGE),
        (301, Verdict.STOP_CONFIG),
        (302, Verdict.STOP_CONFIG),
        (308, Verdict.STOP_CONFIG),
        (400, Verdict.REJECTED),
        (404, Verdict.REJECTED),
        (422, Verdict.REJECTED),
        (451, Verdict.REJECTED),
    ],
)
def test_status_table(status: int, verdict: Verdict) -> None:
    assert backend.classify(status) is verdict


def test_retry_after_is_honoured_only_where_the_contract_says() -> None:
    assert backend.honours_retry_after(429) and backend.honours_retry_after(503)
    assert not backend.honours_retry_after(500) and not backend.honours_retry_after(408)


def test_retry_after_parses_seconds_and_http_dates_and_clamps() -> None:
    now = time.time()
    assert backend.retry_after_seconds("7", now) == 7.0
    assert backend.retry_after_seconds(" 0.5 ", now) == 0.5
    assert backend.retry_after_seconds("-3", now) == 0.0
    assert backend.retry_after_seconds("99999999", now) == backend.MAX_RETRY_AFTER_S
    future = email.utils.formatdate(now + 30, usegmt=True)
    assert 28.0 <= backend.retry_after_seconds(future, now) <= 31.0  # type: ignore[operator]
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert backend.retry_after_seconds(past, now) == 0.0
    for junk in (None, "", "soon", "nan", "Mon, 99 Foo 2024 99:99:99 GMT"):
        assert backend.retry_after_seconds(junk, now) is None


def test_headers_use_the_api_key_scheme_and_name_the_package() -> None:
    headers = backend.api_headers("k-123", "agent-9")
    assert headers["Authorization"] == "Api-Key k-123"
    assert headers["x-agent-id"] == "agent-9"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith(f"lucidic-otel/{__version__} ")
    blob = backend.blob_headers()
    assert "Authorization" not in blob and "x-agent-id" not in blob
    assert blob["Content-Encoding"] == "gzip" and blob["Content-Type"] == "application/json"


def test_current_time_is_iso_utc_with_zone() -> None:
    stamp = datetime.fromisoformat(backend.now_iso())
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
    assert abs(stamp.timestamp() - time.time()) < 5


def test_session_bodies_carry_only_contract_fields() -> None:
    recorded = {
        "session_id": "s1",
        "session_name": "n",
        "tags": ["a"],
        "task": None,
        "private_thing": 1,
    }
    body = backend.init_session_body(recorded, "agent-1", "T")
    assert body == {
        "session_id": "s1",
        "session_name": "n",
        "tags": ["a"],
        "agent_id": "agent-1",
        "current_time": "T",
    }
    end = backend.update_session_body(
        {"session_id": "s1", "is_finished": True, "session_eval": 0.5, "junk": 2}, "srv-1", "T"
    )
    assert end == {
        "session_id": "srv-1",
        "is_finished": True,
        "session_eval": 0.5,
        "current_time": "T",
    }


def _event(payload: Dict[str, Any], event_type: str = "llm_generation") -> Dict[str, Any]:
    return {
        "client_event_id": "e1",
        "client_parent_event_id": None,
        "session_id": "s1",
        "type": event_type,
        "occurred_at": "2025-01-01T00:00:00+00:00",
        "duration": 0.1,
        "tags": [],
        "metadata": {"trace_id": "t"},
        "payload": payload,
        "extra": "dropped",
    }


def _llm_payload(messages: int, text: str) -> Dict[str, Any]:
    return {
        "request": {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text} for _ in range(messages)],
            "params": {"temperature": 0.1},
        },
        "response": {"output": text, "tool_calls": []},
        "usage": {"input_tokens": 3, "output_tokens": 4, "cost": 0.001},
    }


def test_small_event_goes_inline() -> None:
    request = backend.event_request(
        _event(_llm_payload(2, "hi")),
        session_id="srv-1",
        parent_event_id="p1",
        blob_threshold=1024,
        current_time="T",
    )
    body = json.loads(request.body)
    assert request.blob is None and body["needs_blob"] is False
    assert body["session_id"] == "srv-1" and body["client_parent_event_id"] == "p1"
    assert body["payload"] == _llm_payload(2, "hi") and "extra" not in body
    assert body["current_time"] == "T"


def test_large_event_sends_a_preview_and_the_full_payload_gzipped() -> None:
    payload = _llm_payload(12, "x" * 5000)
    request = backend.event_request(
        _event(payload),
        session_id="s1",
        parent_event_id=None,
        blob_threshold=1024,
        current_time="T",
    )
    body = json.loads(request.body)
    assert body["needs_blob"] is True and request.blob is not None
    assert json.loads(gzip.decompress(request.blob)) == payload
    preview = body["payload"]
    assert len(preview["request"]["messages"]) == backend.PREVIEW_MESSAGES
    assert all(len(m["content"]) == 200 for m in preview["request"]["messages"])
    assert preview["response"]["output"] == "x" * 200
    assert preview["usage"] == payload["usage"]
    assert len(request.body) < 3000


def test_the_threshold_is_the_compact_utf8_size_of_the_payload() -> None:
    payload = {"details": "é" * 100}
    size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
    inline = backend.event_request(
        _event(payload, "generic"),
        session_id="s",
        blob_threshold=size,
        parent_event_id=None,
        current_time="T",
    )
    blob = backend.event_request(
        _event(payload, "generic"),
        session_id="s",
        blob_threshold=size - 1,
        parent_event_id=None,
        current_time="T",
    )
    assert not inline.needs_blob and blob.needs_blob


def test_force_blob_is_used_after_a_413() -> None:
    request = backend.event_request(
        _event({"function_name": "f", "arguments": {"a": 1}}, "function_call"),
        session_id="s",
        parent_event_id=None,
        blob_threshold=10**6,
        current_time="T",
        force_blob=True,
    )
    body = json.loads(request.body)
    assert body["needs_blob"] is True
    assert body["payload"] == {"function_name": "f", "arguments": {"a": 1}}


@pytest.mark.parametrize(
    ("event_type", "payload", "keys"),
    [
        (
            "function_call",
            {"function_name": "f" * 300, "arguments": {"q": "y" * 300}, "return_value": "z" * 9000},
            {"function_name", "arguments"},
        ),
        ("error_traceback", {"error": "E" * 300, "traceback": "t" * 9000}, {"error"}),
        ("generic", {"details": ["d" * 300] * 100}, {"details"}),
    ],
)
def test_previews_by_type(event_type: str, payload: Dict[str, Any], keys: set) -> None:
    preview = backend.preview_payload(event_type, payload)
    assert set(preview) == keys
    assert _longest(preview) <= backend.PREVIEW_STRING_CHARS


def test_replies_are_read_leniently() -> None:
    assert backend.parse_reply(b"") is None
    assert backend.parse_reply(b"  \n") is None
    assert backend.parse_reply(b"<html>\xff") is None
    assert backend.parse_reply(b"[1, 2]") is None
    assert backend.parse_reply(b'{"session_id": "x"}') == {"session_id": "x"}
    assert backend.adopted_session_id(None, "mine") == "mine"
    assert backend.adopted_session_id({"session_id": ""}, "mine") == "mine"
    assert backend.adopted_session_id({"session_id": "theirs"}, "mine") == "theirs"
    assert backend.blob_url({"blob_url": "https://s3/x?sig=1"}) == "https://s3/x?sig=1"
    assert backend.blob_url({"blob_url": "ftp://x"}) is None
    assert backend.blob_url({}) is None


def test_error_text_names_status_endpoint_and_truncates_the_body() -> None:
    text = backend.error_text(422, "POST /api/events", b"bad " * 1000)
    assert text.startswith("HTTP 422 from POST /api/events: bad bad")
    assert len(text) < backend.ERROR_BODY_CHARS + 60
    assert backend.error_text(400, "X", b"").endswith("(empty body)")


def _longest(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max([len(str(k)) for k in value] + [_longest(v) for v in value.values()] + [0])
    if isinstance(value, list):
        return max([_longest(v) for v in value] + [0])
    return 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=400),
    lambda children: (
        st.lists(children, max_size=30)
        | st.dictionaries(st.text(max_size=300), children, max_size=30)
    ),
    max_leaves=200,
)


@settings(max_examples=150, deadline=None)
@given(event_type=st.sampled_from(backend.EVENT_TYPES + ("custom",)), payload=_json)
def test_any_payload_encodes_and_previews_within_limits(event_type: str, payload: Any) -> None:
    recorded = _event(payload if isinstance(payload, dict) else {"details": payload}, event_type)
    request = backend.event_request(
        recorded,
        session_id="s",
        parent_event_id=None,
        blob_threshold=1024,
        current_time="T",
        force_blob=True,
    )
    body = json.loads(request.body)
    assert _longest(body["payload"]) <= backend.PREVIEW_STRING_CHARS
    assert isinstance(json.loads(gzip.decompress(request.blob or b"")), dict)


def test_lone_surrogates_are_sent_escaped_instead_of_failing() -> None:
    request = backend.event_request(
        _event({"details": "bad \ud800 text"}, "generic"),
        session_id="s",
        parent_event_id=None,
        blob_threshold=10**6,
        current_time="T",
    )
    assert json.loads(request.body)["payload"]["details"] == "bad \ud800 text"
