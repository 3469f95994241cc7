"""Session id validation, event ids and signed session ids (``lucidic_otel.ids``)."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lucidic_otel.ids import (
    SESSION_ID_MAX_LEN,
    SIGNATURE_SEPARATOR,
    event_id,
    is_valid_session_id,
    new_session_id,
    session_id_error,
    sign_session_id,
    verify_signed_session_id,
)

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SECRET = b"0123456789abcdef-shared-secret"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "A", "0", ".", "_", ":", "-", "run-1", "user:42.task_7", ALPHABET, str(uuid.uuid4())],
)
def test_valid_ids(value: str) -> None:
    assert is_valid_session_id(value)
    assert session_id_error(value) is None


@pytest.mark.parametrize(
    "value",
    ["a b", "a/b", "a,b", "a;b", "a=b", "a~b", "a%20", "é", "a\n", "\x00", "sess\u200bion", " "],
)
def test_charset_outside_the_allowed_set(value: str) -> None:
    assert not is_valid_session_id(value)
    reason = session_id_error(value)
    assert reason is not None and "outside" in reason


def test_length_boundary_is_128() -> None:
    assert SESSION_ID_MAX_LEN == 128
    at_limit = "x" * 128
    over = "x" * 129
    assert is_valid_session_id(at_limit) and session_id_error(at_limit) is None
    assert not is_valid_session_id(over)
    reason = session_id_error(over)
    assert reason is not None and "129" in reason and "128" in reason


def test_empty_is_invalid() -> None:
    assert not is_valid_session_id("")
    assert session_id_error("") == "must not be empty"


@pytest.mark.parametrize("value", [None, 42, 4.2, b"abc", ["abc"], object(), True])
def test_non_str_is_invalid(value: object) -> None:
    assert not is_valid_session_id(value)
    reason = session_id_error(value)
    assert reason is not None and type(value).__name__ in reason


def test_error_shows_the_offending_characters_escaped() -> None:
    reason = session_id_error("ok\nok\tok")
    assert reason is not None
    assert "\\n" in reason and "\\t" in reason
    assert "\n" not in reason


@given(st.text(max_size=200))
def test_validity_agrees_with_the_documented_regex(value: str) -> None:
    expected = SESSION_ID_PATTERN.fullmatch(value) is not None
    assert is_valid_session_id(value) is expected
    assert (session_id_error(value) is None) is expected


@given(st.text(alphabet=ALPHABET, min_size=1, max_size=128))
def test_every_id_from_the_alphabet_is_valid(value: str) -> None:
    assert is_valid_session_id(value)
    assert session_id_error(value) is None


def test_new_session_id_is_a_valid_uuid4() -> None:
    ids = {new_session_id() for _ in range(200)}
    assert len(ids) == 200
    for sid in ids:
        assert is_valid_session_id(sid)
        assert uuid.UUID(sid).version == 4


# --- event ids -----------------------------------------------------------------------------


def test_event_id_is_deterministic() -> None:
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    span_id = 0xB7AD6B7169203331
    first = event_id(trace_id, span_id)
    assert first == event_id(trace_id, span_id)
    assert uuid.UUID(first).version == 5
    # Stable across processes and releases: pinned value.
    assert first == str(
        uuid.uuid5(
            uuid.UUID("5b0c4f0e-8f7a-4c1e-9a51-6c7563696469"),
            "0af7651916cd43dd8448eb211c80319cb7ad6b7169203331",
        )
    )


def test_event_id_distinguishes_trace_and_span() -> None:
    seen = set()
    for trace_id in range(1, 40):
        for span_id in range(1, 40):
            seen.add(event_id(trace_id, span_id))
    assert len(seen) == 39 * 39
    # Swapping the parts, or moving digits between them, is a different event.
    assert event_id(1, 2) != event_id(2, 1)
    assert event_id(0x10, 0x1) != event_id(0x1, 0x10)


@given(
    st.integers(min_value=1, max_value=2**128 - 1),
    st.integers(min_value=1, max_value=2**64 - 1),
)
def test_event_id_is_a_uuid_for_any_span_identity(trace_id: int, span_id: int) -> None:
    value = event_id(trace_id, span_id)
    assert uuid.UUID(value).version == 5
    assert value == event_id(trace_id, span_id)


# --- signed ids ----------------------------------------------------------------------------


def test_sign_then_verify_round_trips() -> None:
    signed = sign_session_id("session-1", SECRET)
    sid, sep, sig = signed.rpartition(SIGNATURE_SEPARATOR)
    assert (sid, sep) == ("session-1", "~")
    assert len(sig) == 32 and all(c in "0123456789abcdef" for c in sig)
    assert verify_signed_session_id(signed, SECRET) == "session-1"


def test_signature_depends_on_the_secret() -> None:
    signed = sign_session_id("session-1", SECRET)
    assert verify_signed_session_id(signed, b"another-secret-of-16-bytes") is None
    assert sign_session_id("session-1", b"another-secret-of-16-bytes") != signed


def test_tampered_id_is_rejected() -> None:
    signed = sign_session_id("session-1", SECRET)
    forged = "session-2" + signed[len("session-1") :]
    assert verify_signed_session_id(forged, SECRET) is None


def test_tampered_signature_is_rejected() -> None:
    signed = sign_session_id("session-1", SECRET)
    flipped = signed[:-1] + ("0" if signed[-1] != "0" else "1")
    assert verify_signed_session_id(flipped, SECRET) is None


def test_signature_cannot_be_replayed_onto_another_id() -> None:
    sig = sign_session_id("victim", SECRET).rpartition(SIGNATURE_SEPARATOR)[2]
    assert verify_signed_session_id(f"attacker~{sig}", SECRET) is None


@pytest.mark.parametrize("cut", [1, 2, 16, 31, 32])
def test_truncated_signature_is_rejected(cut: int) -> None:
    signed = sign_session_id("session-1", SECRET)
    assert verify_signed_session_id(signed[:-cut], SECRET) is None


@pytest.mark.parametrize(
    "value",
    [
        "session-1",
        "",
        "~",
        "session-1~",
        "~" + "0" * 32,
        "a b~" + "0" * 32,
        "x" * 129 + "~" + "0" * 32,
    ],
)
def test_malformed_signed_values_are_rejected(value: str) -> None:
    assert verify_signed_session_id(value, SECRET) is None


def test_extended_signature_is_rejected() -> None:
    signed = sign_session_id("session-1", SECRET)
    assert verify_signed_session_id(signed + "0", SECRET) is None


@given(st.text(alphabet=ALPHABET, min_size=1, max_size=128))
def test_signing_round_trips_for_every_valid_id(sid: str) -> None:
    signed = sign_session_id(sid, SECRET)
    assert verify_signed_session_id(signed, SECRET) == sid
    assert verify_signed_session_id(signed, SECRET + b"x") is None
