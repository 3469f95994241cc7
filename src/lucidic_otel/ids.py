"""Session and event identifiers.

Session ids are chosen by the client (so a session can be opened before the backend is
reachable) and travel in W3C baggage, so they are restricted to a charset that survives every
propagator unchanged. Event ids are derived from the span identity so that a retried or
re-exported span always maps to the same backend event, and a child can name its parent's
event id without any coordination.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Optional

SESSION_ID_MAX_LEN = 128
SESSION_ID_ALLOWED = "A-Z a-z 0-9 . _ : -"
_ALLOWED_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
# Separates the id from its signature in a signed baggage value: not in the id charset, and
# unreserved in baggage values, so it is never percent-encoded.
SIGNATURE_SEPARATOR = "~"
_SIGNATURE_HEX_LEN = 32
_EVENT_NAMESPACE = uuid.UUID("5b0c4f0e-8f7a-4c1e-9a51-6c7563696469")


def is_valid_session_id(value: object) -> bool:
    """True for a non-empty str of at most 128 chars from ``[A-Za-z0-9._:-]``."""
    return (
        type(value) is str
        and 0 < len(value) <= SESSION_ID_MAX_LEN
        and _ALLOWED_CHARS.issuperset(value)
    )


def session_id_error(value: object) -> Optional[str]:
    """A human-readable reason why ``value`` is not a session id, or None if it is one."""
    if not isinstance(value, str):
        return f"must be a str, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > SESSION_ID_MAX_LEN:
        return f"is {len(value)} chars long; at most {SESSION_ID_MAX_LEN} are allowed"
    bad = sorted(set(value) - _ALLOWED_CHARS)
    if bad:
        shown = "".join(bad[:5]).encode("unicode_escape").decode("ascii")
        return f"contains characters outside [{SESSION_ID_ALLOWED}]: {shown!r}"
    return None


def new_session_id() -> str:
    return str(uuid.uuid4())


_EVENT_NAMESPACE_BYTES = _EVENT_NAMESPACE.bytes


def event_id(trace_id: int, span_id: int) -> str:
    """The backend event id of the span ``(trace_id, span_id)``: a UUIDv5, stable forever.

    Equal to ``uuid.uuid5(namespace, hex ids)``, computed directly because it runs on the
    export thread for every span.
    """
    digest = bytearray(
        hashlib.sha1(
            _EVENT_NAMESPACE_BYTES + f"{trace_id:032x}{span_id:016x}".encode("ascii")
        ).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def sign_session_id(session_id: str, secret: bytes) -> str:
    """``id~sig`` where sig is a truncated HMAC-SHA256 of the id: binds the signature to this id."""
    mac = hmac.new(secret, session_id.encode("ascii"), hashlib.sha256).hexdigest()
    return f"{session_id}{SIGNATURE_SEPARATOR}{mac[:_SIGNATURE_HEX_LEN]}"


def verify_signed_session_id(value: str, secret: bytes) -> Optional[str]:
    """The session id inside a signed value if the signature matches it, else None."""
    session_id, sep, sig = value.rpartition(SIGNATURE_SEPARATOR)
    if not sep or len(sig) != _SIGNATURE_HEX_LEN or not is_valid_session_id(session_id):
        return None
    expected = hmac.new(secret, session_id.encode("ascii"), hashlib.sha256).hexdigest()
    if hmac.compare_digest(expected[:_SIGNATURE_HEX_LEN], sig):
        return session_id
    return None
