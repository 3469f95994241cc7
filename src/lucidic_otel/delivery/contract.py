"""The Lucidic backend wire contract, in one place.

Everything the sender needs to know about the backend lives here: endpoint names and methods,
headers, which fields each body may carry, the blob (large payload) flow, and what each HTTP
status means for the record that was sent. Points the contract marks as unverified are
decided here and nowhere else, so that confirming them against the real backend is a change
to this file only:

* a ``409 Conflict`` means the record already exists (``client_event_id`` / ``session_id``
  used as an idempotency key): it counts as delivered, never as a bad record;
* a ``413 Payload Too Large`` on an event that was sent inline is answered by sending it again
  through the blob flow (preview inline, full payload to ``blob_url``); anywhere else it is a
  bad record;
* a redirect (3xx) is never a property of one record: the base URL is wrong, so delivery stops
  and the data stays, exactly as for a bad key;
* ``initsession`` is re-sent for a session that was re-opened with more fields (the backend is
  assumed idempotent on ``session_id``).

The module is pure: no I/O, no clock reads except :func:`now_iso`, so it is easy to test.
"""

from __future__ import annotations

import email.utils
import enum
import gzip
import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Optional, Tuple

from lucidic_otel.version import __version__

# ------------------------------------------------------------------------------ endpoints


@dataclass(frozen=True)
class Endpoint:
    """One backend operation: an HTTP method and an endpoint name under the base URL."""

    method: str
    name: str

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.name}"


INIT_SESSION = Endpoint("POST", "initsession")
UPDATE_SESSION = Endpoint("PUT", "updatesession")
CREATE_EVENT = Endpoint("POST", "events")

# ------------------------------------------------------------------------------ bodies

#: Fields ``initsession`` accepts; anything else recorded locally is not sent.
INIT_FIELDS = (
    "agent_id",
    "session_id",
    "session_name",
    "task",
    "tags",
    "experiment_id",
    "datasetitem_id",
    "evaluators",
    "production_monitoring",
)
#: Fields ``updatesession`` accepts; only the ones that were given are sent.
UPDATE_FIELDS = (
    "session_id",
    "is_finished",
    "is_successful",
    "is_successful_reason",
    "session_eval",
    "session_eval_reason",
    "task",
    "tags",
)
#: Fields ``events`` accepts (besides ``current_time``).
EVENT_FIELDS = (
    "client_event_id",
    "client_parent_event_id",
    "session_id",
    "type",
    "occurred_at",
    "duration",
    "tags",
    "metadata",
    "payload",
    "needs_blob",
)
EVENT_TYPES = ("llm_generation", "function_call", "error_traceback", "generic")
CURRENT_TIME = "current_time"

PREVIEW_STRING_CHARS = 200
PREVIEW_MESSAGES = 5
# A preview also keeps at most this many items of any other list and keys of any object, so
# that a payload made of many short strings still previews small.
_PREVIEW_ITEMS = 20
_PREVIEW_DEPTH = 6
#: How much of an error response body is kept with a failed record.
ERROR_BODY_CHARS = 500

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=str)


def user_agent() -> str:
    """Names this package and its version, as the contract asks, plus the Python runtime."""
    return f"lucidic-otel/{__version__} (python {platform.python_version()})"


def api_headers(api_key: str, agent_id: str) -> Dict[str, str]:
    """Headers of every API request. The key uses the ``Api-Key`` scheme, not ``Bearer``."""
    return {
        "Authorization": f"Api-Key {api_key}",
        "x-agent-id": agent_id,
        "Content-Type": "application/json",
        "User-Agent": user_agent(),
    }


def blob_headers() -> Dict[str, str]:
    """Headers of the blob PUT: a presigned URL, so no credentials of ours may travel."""
    return {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "User-Agent": user_agent(),
    }


def now_iso() -> str:
    """``current_time``: the client's ISO-8601 UTC time, taken when the request is sent."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON. Text that cannot be UTF-8 (lone surrogates) is sent escaped."""
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(value).encode("ascii")


def _pick(recorded: Mapping[str, Any], fields: Tuple[str, ...]) -> Dict[str, Any]:
    return {key: recorded[key] for key in fields if key in recorded and recorded[key] is not None}


def init_session_body(
    recorded: Mapping[str, Any], agent_id: str, current_time: str
) -> Dict[str, Any]:
    """The ``initsession`` body for a recorded session start; ``agent_id`` is required."""
    body = _pick(recorded, INIT_FIELDS)
    body["agent_id"] = agent_id
    body[CURRENT_TIME] = current_time
    return body


def update_session_body(
    recorded: Mapping[str, Any], session_id: str, current_time: str
) -> Dict[str, Any]:
    """The ``updatesession`` body: only the fields that were given, under the backend's id."""
    body = _pick(recorded, UPDATE_FIELDS)
    body["session_id"] = session_id
    body[CURRENT_TIME] = current_time
    return body


@dataclass(frozen=True)
class EventRequest:
    """An encoded ``POST events`` body and, for the blob flow, the gzipped full payload."""

    body: bytes
    blob: Optional[bytes]

    @property
    def needs_blob(self) -> bool:
        return self.blob is not None


def event_request(
    recorded: Mapping[str, Any],
    *,
    session_id: str,
    parent_event_id: Optional[str],
    blob_threshold: int,
    current_time: str,
    force_blob: bool = False,
) -> EventRequest:
    """Encode one event for sending, choosing the blob flow when the payload is too large.

    The payload size is measured as compact UTF-8 JSON, as the contract defines it. Over the
    threshold (or with ``force_blob``, after a 413), the body carries ``needs_blob: true`` and
    a short preview, and the full payload is returned gzipped for the PUT to ``blob_url``.
    """
    body = _pick(recorded, EVENT_FIELDS)
    body["session_id"] = session_id
    body["client_parent_event_id"] = parent_event_id
    payload = recorded.get("payload")
    if not isinstance(payload, Mapping):
        payload = {}
    body["payload"] = payload
    body["needs_blob"] = False
    body[CURRENT_TIME] = current_time
    if not force_blob:
        inline = encode_json(body)
        if len(inline) <= blob_threshold:  # the payload is smaller still: no need to measure
            return EventRequest(inline, None)
    full = encode_json(payload)
    if not force_blob and len(full) <= blob_threshold:
        return EventRequest(inline, None)
    body["payload"] = preview_payload(str(recorded.get("type")), payload)
    body["needs_blob"] = True
    return EventRequest(encode_json(body), gzip.compress(full, compresslevel=6, mtime=0))


# ------------------------------------------------------------------------------ preview


def _cut(value: Any, depth: int = 0) -> Any:
    """Strings cut to the preview length; containers shortened; nothing left unbounded."""
    if isinstance(value, str):
        return value[:PREVIEW_STRING_CHARS]
    if depth >= _PREVIEW_DEPTH:
        return None if isinstance(value, (Mapping, list, tuple)) else value
    if isinstance(value, Mapping):
        return {
            str(key)[:PREVIEW_STRING_CHARS]: _cut(item, depth + 1)
            for key, item in list(value.items())[:_PREVIEW_ITEMS]
        }
    if isinstance(value, (list, tuple)):
        return [_cut(item, depth + 1) for item in list(value)[:_PREVIEW_ITEMS]]
    return value


def preview_payload(event_type: str, payload: Mapping[str, Any]) -> Dict[str, Any]:
    """The short inline payload sent with ``needs_blob``, shaped like the SDKs' previews.

    ``llm_generation`` keeps provider, model, the first five messages, usage and the output;
    ``function_call`` the function name and arguments; ``error_traceback`` the error;
    ``generic`` the details. Every string is cut to 200 characters.
    """

    def get(mapping: Any, key: str) -> Any:
        return mapping.get(key) if isinstance(mapping, Mapping) else None

    if event_type == "llm_generation":
        request = get(payload, "request")
        messages = get(request, "messages")
        messages = list(messages)[:PREVIEW_MESSAGES] if isinstance(messages, list) else []
        usage = get(payload, "usage")
        return {
            "request": {
                "provider": _cut(get(request, "provider")),
                "model": _cut(get(request, "model")),
                "messages": [_cut(m) for m in messages],
            },
            "response": {"output": _cut(get(get(payload, "response"), "output"))},
            "usage": {
                "input_tokens": get(usage, "input_tokens"),
                "output_tokens": get(usage, "output_tokens"),
                "cost": get(usage, "cost"),
            },
        }
    if event_type == "function_call":
        return {
            "function_name": _cut(get(payload, "function_name")),
            "arguments": _cut(get(payload, "arguments")),
        }
    if event_type == "error_traceback":
        return {"error": _cut(get(payload, "error"))}
    return {"details": _cut(get(payload, "details"))}


# ------------------------------------------------------------------------------ replies


class Verdict(enum.Enum):
    """What a reply means for the record that was sent."""

    DELIVERED = "delivered"
    RETRY = "retry"  # transient: back off and send again
    TOO_LARGE = "too_large"  # 413: an inline event goes again through the blob flow
    REJECTED = "rejected"  # this record is bad: move it aside with the reason
    STOP_AUTH = "stop_auth"  # 401/403: the key is refused; stop, keep everything
    STOP_CREDITS = "stop_credits"  # 402: out of credits; stop, keep everything
    STOP_CONFIG = "stop_config"  # 3xx: the base URL is wrong; stop, keep everything


_RETRY_STATUSES = frozenset({408, 425, 429})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER_S = 600.0


def classify(status: int) -> Verdict:
    """The contract's status table (plus the decisions in the module docstring)."""
    if 200 <= status < 300 or status == 409:
        return Verdict.DELIVERED
    if status in _RETRY_STATUSES or 500 <= status < 600:
        return Verdict.RETRY
    if status in (401, 403):
        return Verdict.STOP_AUTH
    if status == 402:
        return Verdict.STOP_CREDITS
    if status == 413:
        return Verdict.TOO_LARGE
    if 300 <= status < 400:
        return Verdict.STOP_CONFIG
    if 400 <= status < 500:
        return Verdict.REJECTED
    return Verdict.RETRY  # 1xx or nonsense: nothing was accepted, try again later


def honours_retry_after(status: int) -> bool:
    return status in _RETRY_AFTER_STATUSES


def retry_after_seconds(value: Optional[str], now: float) -> Optional[float]:
    """``Retry-After`` as seconds from ``now`` (epoch seconds): delta-seconds or an HTTP date.

    Unparseable values are ignored (None); the result is clamped to ``[0, 600]`` so a broken
    header cannot park delivery for days.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def parse_reply(data: bytes) -> Optional[Dict[str, Any]]:
    """A reply body as a JSON object, or None (empty, not JSON, or not an object)."""
    if not data or not data.strip():
        return None
    try:
        value = json.loads(data.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def adopted_session_id(reply: Optional[Mapping[str, Any]], sent: str) -> str:
    """The session id to use from now on: the one ``initsession`` returned, else ours."""
    value = reply.get("session_id") if reply else None
    if isinstance(value, str) and value.strip():
        return value.strip()
    return sent


def blob_url(reply: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The presigned URL from a ``needs_blob`` event reply, if it holds a usable one."""
    value = reply.get("blob_url") if reply else None
    if isinstance(value, str) and value.startswith(("http://", "https://", "/")):
        return value
    return None


def error_text(status: int, endpoint: str, data: bytes) -> str:
    """``HTTP <status> from <endpoint>: <body, truncated>`` for logs and failed records."""
    body = data.decode("utf-8", "replace").strip().replace("\n", " ")
    if len(body) > ERROR_BODY_CHARS:
        body = body[:ERROR_BODY_CHARS] + "..."
    return f"HTTP {status} from {endpoint}" + (f": {body}" if body else " (empty body)")
