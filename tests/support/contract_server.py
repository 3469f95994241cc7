"""A loopback Lucidic backend that checks every request against the wire contract.

It is written from the backend's published wire contract alone and shares no code with the
client, so a mistake in ``lucidic_otel.delivery.contract`` cannot hide behind the same mistake
here. Every request is checked
strictly (method and path, headers, body field names and types, ``current_time``, payload
shape by event type, the blob PUT) and so is the order across requests: ``initsession``
before a session's events, no event after the session's end, and no ``updatesession`` with
``is_finished`` while an event of that session the server has already seen (even in a request
it failed on purpose) is not yet accepted. Problems are appended to :attr:`violations`; tests
assert that list is empty.

Faults are injected on demand, so the client's failure handling can be proven: 5xx, 429 with
``Retry-After`` (seconds or HTTP date), connection resets before or after the request was
processed, replies slower than the client's timeout, 401/402/403, 413 for bodies over a limit,
garbage bodies and garbage HTTP, each forced for the next requests or drawn at a configurable
rate from a seeded RNG.

Run in-process (``with ContractServer() as server``) or as a subprocess::

    python tests/support/contract_server.py --port 0 --fault-rate 0.3 --report out.json

which prints ``READY <port>`` and writes its report (JSON) when it receives SIGTERM.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import http.server
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

HOST = "127.0.0.1"
API_PREFIX = "/api"
BLOB_PREFIX = "/blob/"
EVENT_TYPES = ("llm_generation", "function_call", "error_traceback", "generic")
PREVIEW_CHARS = 200
PREVIEW_MESSAGES = 5
HARD_BODY_LIMIT = 64 * 1024 * 1024
USER_AGENT = re.compile(r"^lucidic-otel/\d+\.\d+(\.\d+)?\S*( |$)")

#: Faults drawn at random by default: everything transient the contract says to retry.
TRANSIENT_FAULTS = (
    "500",
    "502",
    "503",
    "429",
    "429-date",
    "reset",
    "reset-after",
    "slow",
    "garbage",
    "garbage-http",
    "empty",
)
#: Every fault name accepted by :meth:`ContractServer.inject` and ``Faults.kinds``.
ALL_FAULTS = TRANSIENT_FAULTS + ("401", "402", "403", "413", "400", "301")
_STATUS_FAULTS = (
    "500",
    "502",
    "503",
    "429",
    "429-date",
    "401",
    "402",
    "403",
    "413",
    "400",
    "301",
)

_INIT_FIELDS = {
    "agent_id": "str",
    "session_id": "str",
    "session_name": "str",
    "task": "str",
    "tags": "list[str]",
    "experiment_id": "str",
    "datasetitem_id": "str",
    "evaluators": "list",
    "production_monitoring": "bool",
    "current_time": "time",
}
_UPDATE_FIELDS = {
    "session_id": "str",
    "is_finished": "bool",
    "is_successful": "bool",
    "is_successful_reason": "str",
    "session_eval": "number",
    "session_eval_reason": "str",
    "task": "str",
    "tags": "list[str]",
    "current_time": "time",
}
_EVENT_FIELDS = {
    "client_event_id": "str",
    "client_parent_event_id": "str?",
    "session_id": "str",
    "type": "str",
    "occurred_at": "time",
    "duration": "number?",
    "tags": "list[str]",
    "metadata": "dict",
    "payload": "dict",
    "needs_blob": "bool",
    "current_time": "time",
}
_REQUIRED = {
    "initsession": ("agent_id", "session_id", "current_time"),
    "updatesession": ("session_id", "current_time"),
    "events": ("client_event_id", "session_id", "type", "occurred_at", "payload", "current_time"),
}
_PAYLOAD_KEYS = {
    "llm_generation": {"request", "response", "usage", "status", "error", "misc"},
    "function_call": {"function_name", "arguments", "return_value", "error", "misc"},
    "error_traceback": {"error", "traceback", "misc"},
    "generic": {"details", "misc"},
}
_MESSAGE_KEYS = {"role", "content", "name", "tool_call_id", "tool_calls"}
_TOOL_CALL_KEYS = {"id", "type", "name", "arguments"}


# ------------------------------------------------------------------------------ checks


def _is_type(value: Any, kind: str) -> bool:
    if kind.endswith("?"):
        return value is None or _is_type(value, kind[:-1])
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "time":
        return parse_time(value) is not None
    raise ValueError(kind)


def parse_time(value: Any) -> Optional[datetime]:
    """An ISO-8601 timestamp *with a zone* (``Z`` or an offset), else None."""
    if not isinstance(value, str) or "T" not in value:
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def check_fields(endpoint: str, body: Any, *, skew_s: float) -> List[str]:
    """Field names, required fields and types of one API body."""
    if not isinstance(body, dict):
        return [f"{endpoint}: body is not a JSON object"]
    spec = {"initsession": _INIT_FIELDS, "updatesession": _UPDATE_FIELDS, "events": _EVENT_FIELDS}[
        endpoint
    ]
    problems = []
    for key in _REQUIRED[endpoint]:
        if key not in body or body[key] is None:
            problems.append(f"{endpoint}: required field {key!r} missing")
    for key, value in body.items():
        kind = spec.get(key)
        if kind is None:
            problems.append(f"{endpoint}: unknown field {key!r}")
        elif value is not None and not _is_type(value, kind):
            problems.append(f"{endpoint}: field {key!r} should be {kind}, got {value!r:.80}")
    for key in ("session_id", "client_event_id", "agent_id"):
        if key in body and body[key] == "":
            problems.append(f"{endpoint}: field {key!r} is empty")
    sent = parse_time(body.get("current_time"))
    if sent is not None:
        off = abs(time.time() - sent.timestamp())
        if off > skew_s:
            problems.append(
                f"{endpoint}: current_time is {off:.1f} s off the server clock "
                "(it must be taken when the request is sent)"
            )
    if endpoint == "updatesession":
        evaluation = body.get("session_eval")
        if isinstance(evaluation, (int, float)) and not 0.0 <= evaluation <= 1.0:
            problems.append("updatesession: session_eval outside 0.0-1.0")
    if endpoint == "events":
        problems += _check_event(body)
    return problems


def _check_event(body: Dict[str, Any]) -> List[str]:
    problems = []
    event_type = body.get("type")
    if event_type not in EVENT_TYPES:
        return [f"events: type {event_type!r} is not one of {EVENT_TYPES}"]
    duration = body.get("duration")
    if isinstance(duration, (int, float)) and duration < 0:
        problems.append("events: negative duration")
    if body.get("client_parent_event_id") is not None and (
        body.get("client_parent_event_id") == body.get("client_event_id")
    ):
        problems.append("events: an event is its own parent")
    payload = body.get("payload")
    if isinstance(payload, dict):
        problems += check_payload(event_type, payload, preview=bool(body.get("needs_blob")))
    return problems


def check_payload(event_type: str, payload: Dict[str, Any], *, preview: bool) -> List[str]:
    """The payload shape for ``event_type``; a preview must also be short."""
    where = f"events: {event_type} payload"
    problems = [
        f"{where}: unknown key {key!r}" for key in payload if key not in _PAYLOAD_KEYS[event_type]
    ]
    if event_type == "llm_generation":
        request = payload.get("request")
        if not isinstance(request, dict):
            return problems + [f"{where}: request should be an object"]
        for key in ("provider", "model"):
            if not isinstance(request.get(key), str) or not request.get(key):
                problems.append(f"{where}: request.{key} should be a non-empty string")
        messages = request.get("messages")
        if not isinstance(messages, list):
            problems.append(f"{where}: request.messages should be a list")
        else:
            for message in messages:
                problems += _check_message(where, message)
            if preview and len(messages) > PREVIEW_MESSAGES:
                problems.append(f"{where}: preview has {len(messages)} messages (at most 5)")
        if "params" in request and not isinstance(request["params"], dict):
            problems.append(f"{where}: request.params should be an object")
        response = payload.get("response")
        if not isinstance(response, dict):
            problems.append(f"{where}: response should be an object")
        else:
            if not _is_type(response.get("output"), "str?"):
                problems.append(f"{where}: response.output should be a string or null")
            calls = response.get("tool_calls", [])
            if not isinstance(calls, list):
                problems.append(f"{where}: response.tool_calls should be a list")
            else:
                for call in calls:
                    problems += _check_tool_call(where, call)
        usage = payload.get("usage")
        if not isinstance(usage, dict):
            problems.append(f"{where}: usage should be an object")
        else:
            for key in ("input_tokens", "output_tokens"):
                value = usage.get(key)
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    problems.append(f"{where}: usage.{key} should be an integer or null")
            if not _is_type(usage.get("cost"), "number?"):
                problems.append(f"{where}: usage.cost should be a number or null")
    elif event_type == "function_call":
        if not isinstance(payload.get("function_name"), str) or not payload.get("function_name"):
            problems.append(f"{where}: function_name should be a non-empty string")
    elif event_type == "error_traceback":
        if not isinstance(payload.get("error"), str):
            problems.append(f"{where}: error should be a string")
        if not preview and not isinstance(payload.get("traceback"), str):
            problems.append(f"{where}: traceback should be a string")
    elif "details" not in payload:
        problems.append(f"{where}: details missing")
    if preview:
        longest = _longest_string(payload)
        if longest > PREVIEW_CHARS:
            problems.append(f"{where}: preview holds a {longest}-char string (at most 200)")
    return problems


def _check_message(where: str, message: Any) -> List[str]:
    if not isinstance(message, dict):
        return [f"{where}: a message is not an object"]
    problems = [
        f"{where}: message key {key!r} unknown" for key in message if key not in _MESSAGE_KEYS
    ]
    if not isinstance(message.get("role"), str):
        problems.append(f"{where}: message.role should be a string")
    if not (message.get("content") is None or isinstance(message.get("content"), (str, list))):
        problems.append(f"{where}: message.content should be a string, a list or null")
    for call in message.get("tool_calls") or []:
        problems += _check_tool_call(where, call)
    return problems


def _check_tool_call(where: str, call: Any) -> List[str]:
    if not isinstance(call, dict):
        return [f"{where}: a tool call is not an object"]
    problems = [
        f"{where}: tool call key {key!r} unknown" for key in call if key not in _TOOL_CALL_KEYS
    ]
    if not isinstance(call.get("name"), str):
        problems.append(f"{where}: tool_call.name should be a string")
    if not _is_type(call.get("id"), "str?"):
        problems.append(f"{where}: tool_call.id should be a string or null")
    return problems


def _longest_string(value: Any, depth: int = 0) -> int:
    if isinstance(value, str):
        return len(value)
    if depth > 20:
        return 0
    if isinstance(value, dict):
        return max(
            [len(str(k)) for k in value]
            + [_longest_string(v, depth + 1) for v in value.values()]
            + [0]
        )
    if isinstance(value, list):
        return max([_longest_string(v, depth + 1) for v in value] + [0])
    return 0


def compact_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


# ------------------------------------------------------------------------------ faults


@dataclass(frozen=True)
class Faults:
    """What goes wrong, and how often. Immutable: swap a new one in with ``set_faults``."""

    rate: float = 0.0  # probability that a request draws a fault from ``kinds``
    kinds: Tuple[str, ...] = TRANSIENT_FAULTS
    status: Optional[int] = None  # every API request is answered with this status
    retry_after: str = "1"  # for 429/503: delta-seconds (``429-date`` sends an HTTP date)
    slow_s: float = 2.0  # how late a ``slow`` reply comes
    max_body_bytes: Optional[int] = None  # larger API bodies are answered 413
    only: Optional[Tuple[str, ...]] = None  # endpoints random faults apply to (None: all)


@dataclass
class Seen:
    """One request as it arrived, and what the server did with it."""

    method: str
    path: str
    endpoint: str  # initsession, updatesession, events, blob, or "?"
    status: Optional[int]  # None when the connection was reset or garbage was sent
    fault: Optional[str]
    key: Optional[str]  # client_event_id or session_id
    at: float


@dataclass
class _Session:
    initiated: bool = False
    inits: int = 0
    updates: List[Dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    announced: Set[str] = field(default_factory=set)
    accepted: Set[str] = field(default_factory=set)
    rejected: Set[str] = field(default_factory=set)  # refused for good (4xx): not expected


class _Reset(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Abort the connection with an RST instead of a reply."""


class ContractServer:
    """The backend, on 127.0.0.1. Thread-safe; every wait has a timeout."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        agent_id: str = "agent-1",
        port: int = 0,
        faults: Optional[Faults] = None,
        seed: int = 0,
        joined_sessions: Sequence[str] = (),
        rename_sessions: bool = False,
        blob_threshold: Optional[int] = None,
        skew_s: float = 10.0,
        require_session_name: bool = False,
        parents_first: bool = False,
    ) -> None:
        self.api_key = api_key
        self.agent_id = agent_id
        self._port = port
        self._faults = faults or Faults()
        self._rng = random.Random(seed)
        self._joined = set(joined_sessions)
        self._rename = rename_sessions
        self._blob_threshold = blob_threshold
        self._skew = skew_s
        #: A backend stricter than the contract's text: ``initsession`` without a non-empty
        #: ``session_name`` is a 400 (the official SDK always sends one).
        self._require_name = require_session_name
        #: Stricter than the contract (which allows either order), as the official SDK sends:
        #: an event whose ``client_parent_event_id`` names an event the server has not
        #: accepted yet is a violation (the request is still accepted).
        self._parents_first = parents_first
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._forced: List[Tuple[Optional[str], str]] = []
        self.violations: List[str] = []
        self.seen: List[Seen] = []
        self.events: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
        self.blobs: Dict[str, Any] = {}
        self.inits: List[Dict[str, Any]] = []
        self.updates: List[Dict[str, Any]] = []
        self._sessions: Dict[str, _Session] = defaultdict(_Session)
        self._aliases: Dict[str, str] = {}  # backend id -> client id
        self._assigned: Dict[str, str] = {}  # client id -> backend id
        self._blob_tokens: Dict[str, Tuple[str, str, Dict[str, Any]]] = {}
        self._forced_blob: Set[str] = set()  # event ids answered 413 while inline
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ control

    def start(self) -> ContractServer:
        self._httpd = _HTTPServer(self, self._port)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="contract-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        if self._thread is not None:
            self._thread.join(5.0)
        self._httpd = None

    def __enter__(self) -> ContractServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}{API_PREFIX}"

    @property
    def connections(self) -> int:
        """TCP connections accepted so far: far fewer than requests when keep-alive works."""
        return self._httpd.connections if self._httpd is not None else 0

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults

    def inject(self, *kinds: str, endpoint: Optional[str] = None) -> None:
        """Force these faults, in order, on the next requests to ``endpoint`` (``events``,
        ``initsession``, ``updatesession``, ``blob``; None: any), before any random one."""
        unknown = set(kinds) - set(ALL_FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}")
        with self._lock:
            self._forced.extend((endpoint, kind) for kind in kinds)

    def join(self, session_id: str) -> None:
        """Declare a session that was initiated elsewhere (events before init are fine)."""
        with self._lock:
            self._joined.add(session_id)

    # ------------------------------------------------------------------ observations

    def delivered_event_ids(self) -> Set[str]:
        with self._lock:
            return set(self.events)

    def session_event_ids(self, session_id: str) -> Set[str]:
        with self._lock:
            return set(self._sessions[self._canonical(session_id)].accepted)

    def duplicates(self) -> int:
        with self._lock:
            return sum(len(bodies) - 1 for bodies in self.events.values())

    def missing_blobs(self) -> Set[str]:
        """Events accepted with ``needs_blob`` whose full payload never arrived."""
        with self._lock:
            wanted = {
                eid
                for eid, bodies in self.events.items()
                if any(b.get("needs_blob") for b in bodies)
            }
            return wanted - set(self.blobs)

    def counts(self) -> Dict[str, int]:
        with self._lock:
            by = Counter(s.endpoint for s in self.seen)
            faults = Counter(s.fault for s in self.seen if s.fault)
            return {
                "requests": len(self.seen),
                **{f"requests_{k}": v for k, v in by.items()},
                **{f"fault_{k}": v for k, v in faults.items()},
                "events_unique": len(self.events),
                "events_duplicates": sum(len(b) - 1 for b in self.events.values()),
                "inits": len(self.inits),
                "updates": len(self.updates),
                "blobs": len(self.blobs),
                "violations": len(self.violations),
            }

    def report(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "counts": self.counts(),
                "violations": list(self.violations),
                "event_ids": sorted(self.events),
                "sessions": {
                    sid: {
                        "inits": s.inits,
                        "updates": len(s.updates),
                        "finished": s.finished,
                        "events": sorted(s.accepted),
                    }
                    for sid, s in self._sessions.items()
                },
                "missing_blobs": sorted(self.missing_blobs()),
            }

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (re-checked on every request), at most ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if predicate():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))

    # ------------------------------------------------------------------ request handling

    def _canonical(self, session_id: str) -> str:
        return self._aliases.get(session_id, session_id)

    def _violate(self, text: str) -> None:
        self.violations.append(text)

    def _draw_fault(self, endpoint: str) -> Optional[str]:
        for index, (target, kind) in enumerate(self._forced):
            if target is None or target == endpoint:
                del self._forced[index]
                return kind
        faults = self._faults
        if endpoint != "blob" and faults.status is not None:
            return str(faults.status)
        if faults.only is not None and endpoint not in faults.only:
            return None
        if faults.rate > 0 and self._rng.random() < faults.rate:
            kinds = [k for k in faults.kinds if endpoint != "blob" or k != "413"]
            return self._rng.choice(kinds) if kinds else None
        return None

    def handle(self, handler: _Handler) -> None:
        method = handler.command
        path = handler.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in handler.headers.items()}
        raw = handler.read_body()
        endpoint = _endpoint(method, path)
        with self._lock:
            faults = self._faults
            fault = self._draw_fault(endpoint) if endpoint != "?" else None
        if endpoint == "?":
            with self._lock:
                self._violate(f"unknown request {method} {path}")
                self._record(method, path, endpoint, 404, None, None)
            handler.reply(404, {"error": "not found"})
            return
        if endpoint == "blob":
            self._handle_blob(handler, path, headers, raw, fault)
            return
        problems = _check_headers(headers, self.api_key, self.agent_id)
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            body = None
            problems.append(f"{endpoint}: body is not UTF-8 JSON")
        problems += check_fields(endpoint, body, skew_s=self._skew)
        if self._require_name and endpoint == "initsession" and isinstance(body, dict):
            name = body.get("session_name")
            if not isinstance(name, str) or not name:
                problems.append("initsession: required field 'session_name' missing or empty")
        key = None
        if isinstance(body, dict):
            key = body.get("client_event_id") if endpoint == "events" else body.get("session_id")
        with self._lock:
            if endpoint == "events" and isinstance(body, dict):
                sid = body.get("session_id")
                if isinstance(sid, str) and isinstance(key, str):
                    self._sessions[self._canonical(sid)].announced.add(key)
            if problems:
                self.violations.extend(problems)
                self._record(method, path, endpoint, 400, None, key)
                self._changed.notify_all()
        if problems:
            handler.reply(400, {"error": "; ".join(problems)[:2000]})
            return
        if faults.max_body_bytes is not None and len(raw) > faults.max_body_bytes:
            with self._lock:
                if endpoint == "events" and isinstance(key, str) and not body.get("needs_blob"):
                    self._forced_blob.add(key)
            fault = "413"
        if fault in _STATUS_FAULTS:
            status = int(fault[:3])
            extra = {}
            if status in (429, 503):
                extra["Retry-After"] = (
                    email.utils.formatdate(time.time() + float(faults.retry_after), usegmt=True)
                    if fault == "429-date"
                    else faults.retry_after
                )
            if status == 301:
                extra["Location"] = f"https://elsewhere.invalid{path}"
            with self._lock:
                self._record(method, path, endpoint, status, fault, key)
                if fault == "413" and endpoint == "events" and isinstance(key, str):
                    self._forced_blob.add(key)
                if status == 400 and endpoint == "events" and isinstance(body, dict):
                    sid = body.get("session_id")
                    if isinstance(sid, str) and isinstance(key, str):
                        self._sessions[self._canonical(sid)].rejected.add(key)
            handler.reply(status, {"error": f"injected {fault}"}, extra)
            return
        if fault == "reset":
            with self._lock:
                self._record(method, path, endpoint, None, fault, key)
            raise _Reset()
        if fault == "garbage-http":
            with self._lock:
                self._record(method, path, endpoint, None, fault, key)
            handler.raw_reply(b"THIS IS NOT HTTP\r\n\r\n")
            return
        with self._lock:  # the request is processed from here on
            reply = self._process(endpoint, body)
            self._record(
                method, path, endpoint, 200 if fault != "reset-after" else None, fault, key
            )
            self._changed.notify_all()
        if fault == "reset-after":
            raise _Reset()
        if fault == "slow":
            time.sleep(faults.slow_s)
        if fault == "garbage":
            handler.raw_body(200, b"<html>\x00\xffnot json")
        elif fault == "empty":
            handler.raw_body(200, b"")
        else:
            handler.reply(200, reply)

    def _process(self, endpoint: str, body: Dict[str, Any]) -> Dict[str, Any]:
        """Apply an accepted request and check the order. Called with the lock held."""
        if endpoint == "initsession":
            sid = body["session_id"]
            if sid in self._aliases:
                self._violate(f"initsession with the backend's id {sid} instead of the client's")
            if sid in self._joined:
                self._violate(f"initsession for {sid}, a session only joined through baggage")
            session = self._sessions[self._canonical(sid)]
            session.initiated = True
            session.inits += 1
            self.inits.append(body)
            assigned = sid
            if self._rename:
                assigned = self._assigned.setdefault(sid, f"srv-{sid}")
                self._aliases[assigned] = sid
            return {"session_id": assigned}
        if endpoint == "updatesession":
            sid = body["session_id"]
            canonical = self._canonical(sid)
            session = self._sessions[canonical]
            self.updates.append(body)
            session.updates.append(body)
            if canonical in self._joined:
                self._violate(f"updatesession for {sid}, a session only joined through baggage")
            if not session.initiated:
                self._violate(f"updatesession for {sid} before any initsession")
            if self._rename and sid == canonical and canonical in self._assigned:
                self._violate(
                    f"updatesession used the client id {sid} after the backend "
                    f"assigned {self._assigned[canonical]}"
                )
            if body.get("is_finished"):
                missing = session.announced - session.accepted - session.rejected
                if missing:
                    self._violate(
                        f"updatesession is_finished for {sid} while {len(missing)} of "
                        f"its events were not delivered yet: {sorted(missing)[:3]}"
                    )
                session.finished = True
            return {}
        sid = body["session_id"]
        canonical = self._canonical(sid)
        session = self._sessions[canonical]
        eid = body["client_event_id"]
        parent = body.get("client_parent_event_id")
        if self._parents_first and parent and parent not in self.events:
            self._violate(f"event {eid} of session {sid} arrived before its parent {parent}")
        if not session.initiated and canonical not in self._joined:
            self._violate(f"event {eid} for session {sid} before its initsession")
        if self._rename and sid == canonical and canonical in self._assigned:
            self._violate(
                f"event {eid} used the client session id {sid} after the backend "
                f"assigned {self._assigned[canonical]}"
            )
        if session.finished and eid not in session.accepted:
            self._violate(f"event {eid} for session {sid} after the session was finished")
        previous = self.events.get(eid)
        if previous:
            first = previous[0]
            for key in ("session_id", "type", "occurred_at"):
                if first.get(key) != body.get(key):
                    self._violate(f"event {eid} sent again with a different {key}")
        if (
            self._blob_threshold is not None
            and not body.get("needs_blob")
            and compact_size(body["payload"]) > self._blob_threshold
        ):
            self._violate(f"event {eid}: inline payload over the blob threshold")
        self.events[eid].append(body)
        session.accepted.add(eid)
        reply: Dict[str, Any] = {"event_id": str(uuid.uuid4())}
        if body.get("needs_blob"):
            token = uuid.uuid4().hex
            self._blob_tokens[token] = (eid, body["type"], body["payload"])
            reply["blob_url"] = f"http://{HOST}:{self.port}{BLOB_PREFIX}{token}"
        return reply

    def _handle_blob(
        self,
        handler: _Handler,
        path: str,
        headers: Dict[str, str],
        raw: bytes,
        fault: Optional[str],
    ) -> None:
        problems = []
        if "authorization" in headers:
            problems.append("blob PUT carries an Authorization header")
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            problems.append(f"blob PUT content-type {headers.get('content-type')!r}")
        if headers.get("content-encoding") != "gzip":
            problems.append(f"blob PUT content-encoding {headers.get('content-encoding')!r}")
        token = path[len(BLOB_PREFIX) :]
        with self._lock:
            issued = self._blob_tokens.get(token)
        payload = None
        try:
            payload = json.loads(gzip.decompress(raw).decode("utf-8"))
        except (OSError, EOFError, UnicodeDecodeError, ValueError):
            problems.append("blob PUT body is not gzipped UTF-8 JSON")
        if issued is None:
            problems.append(f"blob PUT to unknown token {token[:12]}")
        elif isinstance(payload, dict):
            eid, event_type, preview = issued
            problems += [
                p.replace("events:", f"blob {eid}:")
                for p in check_payload(event_type, payload, preview=False)
            ]
            if event_type == "llm_generation":
                model = (payload.get("request") or {}).get("model")
                if isinstance(model, str) and model[:PREVIEW_CHARS] != preview["request"]["model"]:
                    problems.append(f"blob {eid}: model differs from the preview's")
            if (
                self._blob_threshold is not None
                and eid not in self._forced_blob
                and compact_size(payload) <= self._blob_threshold
            ):
                problems.append(f"blob {eid}: payload under the threshold sent as a blob")
        elif payload is not None:
            problems.append("blob PUT body is not a JSON object")
        with self._lock:
            if problems:
                self.violations.extend(problems)
                self._record("PUT", path, "blob", 400, None, None)
            elif fault in _STATUS_FAULTS:
                self._record("PUT", path, "blob", int(fault[:3]), fault, None)
            elif fault in ("reset", "garbage-http"):
                self._record("PUT", path, "blob", None, fault, None)
            else:
                assert issued is not None
                self.blobs[issued[0]] = payload
                self._record("PUT", path, "blob", 200, fault, issued[0])
            self._changed.notify_all()
        if problems:
            handler.reply(400, {"error": "; ".join(problems)[:2000]})
        elif fault in _STATUS_FAULTS:
            handler.reply(int(fault[:3]), {"error": f"injected {fault}"})
        elif fault in ("reset", "reset-after"):
            raise _Reset()
        elif fault == "garbage-http":
            handler.raw_reply(b"NOT HTTP EITHER\r\n\r\n")
        else:
            if fault == "slow":
                time.sleep(self._faults.slow_s)
            handler.raw_body(200, b"")

    def _record(
        self,
        method: str,
        path: str,
        endpoint: str,
        status: Optional[int],
        fault: Optional[str],
        key: Optional[str],
    ) -> None:
        self.seen.append(Seen(method, path, endpoint, status, fault, key, time.time()))


def _endpoint(method: str, path: str) -> str:
    if method == "POST" and path == f"{API_PREFIX}/initsession":
        return "initsession"
    if method == "PUT" and path == f"{API_PREFIX}/updatesession":
        return "updatesession"
    if method == "POST" and path == f"{API_PREFIX}/events":
        return "events"
    if method == "PUT" and path.startswith(BLOB_PREFIX):
        return "blob"
    return "?"


def _check_headers(headers: Mapping[str, str], api_key: str, agent_id: str) -> List[str]:
    problems = []
    if headers.get("authorization") != f"Api-Key {api_key}":
        problems.append(
            f"authorization header {headers.get('authorization')!r:.40} is not 'Api-Key <key>'"
        )
    if headers.get("x-agent-id") != agent_id:
        problems.append(f"x-agent-id header {headers.get('x-agent-id')!r}")
    if headers.get("content-type", "").split(";")[0].strip() != "application/json":
        problems.append(f"content-type header {headers.get('content-type')!r}")
    if not USER_AGENT.match(headers.get("user-agent", "")):
        problems.append(
            f"user-agent {headers.get('user-agent')!r} does not name lucidic-otel and its version"
        )
    if "content-encoding" in headers:
        problems.append("API request bodies must not be compressed")
    return problems


# ------------------------------------------------------------------------------ HTTP


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, owner: ContractServer, port: int) -> None:
        self.owner = owner
        self._open: Set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self.connections = 0  # TCP connections accepted (keep-alive reuses them)
        super().__init__((HOST, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
            self.connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (it exited, or timed out) is not news."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lucidic-contract/1"
    timeout = 30  # idle keep-alive connections end, so no handler thread lives forever
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK add 40 ms to every reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        self._run()

    def do_PUT(self) -> None:
        self._run()

    def do_GET(self) -> None:
        self._run()

    def _run(self) -> None:
        try:
            self.server.owner.handle(self)
        except _Reset:
            self.close_connection = True
            try:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            except OSError:
                pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > HARD_BODY_LIMIT:
            raise _Reset()
        data = self.rfile.read(length) if length else b""
        if len(data) < length:
            raise _Reset()  # the client went away mid-request (it exited): nothing to check
        return data

    def reply(self, status: int, body: Any, headers: Optional[Dict[str, str]] = None) -> None:
        self.raw_body(status, json.dumps(body).encode("utf-8"), headers, "application/json")

    def raw_body(
        self,
        status: int,
        data: bytes,
        headers: Optional[Dict[str, str]] = None,
        content_type: str = "text/plain",
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client gave up (timed out) meanwhile

    def raw_reply(self, data: bytes) -> None:
        self.close_connection = True
        try:
            self.wfile.write(data)
        except OSError:
            pass


# ------------------------------------------------------------------------------ CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--agent-id", default="agent-1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument(
        "--faults",
        default=",".join(TRANSIENT_FAULTS),
        help="comma-separated fault kinds drawn at --fault-rate",
    )
    parser.add_argument("--status", type=int, default=None, help="answer every API request so")
    parser.add_argument("--retry-after", default="1")
    parser.add_argument("--slow", type=float, default=2.0)
    parser.add_argument("--max-body", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma-separated endpoints for faults")
    parser.add_argument("--blob-threshold", type=int, default=None)
    parser.add_argument("--join", action="append", default=[], help="a joined session id")
    parser.add_argument("--rename-sessions", action="store_true")
    parser.add_argument("--require-session-name", action="store_true",
                        help="answer 400 to an initsession without session_name")
    parser.add_argument("--report", default=None, help="write the JSON report here at exit")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.faults.split(",") if k)
    unknown = set(kinds) - set(ALL_FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}")
    faults = Faults(
        rate=args.fault_rate,
        kinds=kinds,
        status=args.status,
        retry_after=args.retry_after,
        slow_s=args.slow,
        max_body_bytes=args.max_body,
        only=tuple(args.only.split(",")) if args.only else None,
    )
    server = ContractServer(
        api_key=args.api_key,
        agent_id=args.agent_id,
        port=args.port,
        faults=faults,
        seed=args.seed,
        joined_sessions=args.join,
        rename_sessions=args.rename_sessions,
        blob_threshold=args.blob_threshold,
        require_session_name=args.require_session_name,
    )
    stopped = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    print(f"READY {server.port}", flush=True)
    while not stopped.wait(0.2):
        pass
    server.stop()
    text = json.dumps(server.report(), indent=2)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        print(text, flush=True)
    return 0


__all__ = ["ALL_FAULTS", "TRANSIENT_FAULTS", "ContractServer", "Faults", "Seen", "main"]

if __name__ == "__main__":
    sys.exit(main())
