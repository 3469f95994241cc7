"""What the store hands out (spans, outbox items, session rows) and how values are encoded.

Why one module: the conversion between a Python value and a column is where binding errors
and undecodable text come from, so every direction of it is here. Rows are read by column name
(``sqlite3.Row``; see :func:`named`), never by position, so a column added to a query cannot
shift the others.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from lucidic_otel.outbox.schema import STATE_PENDING, STATES

logger = logging.getLogger(__name__)

MAX_TEXT = 4000


@dataclass
class SpanRecord:
    """One finished span as stored for the local tree view.

    Ids are lowercase hex (trace 32, span 16 chars). The LLM summary fields (model, tokens,
    cost) are filled for LLM spans only, so that listing sessions is a cheap aggregate instead
    of a parse of every span's attributes.
    """

    trace_id: str
    span_id: str
    parent_span_id: Optional[str] = None
    session_id: Optional[str] = None
    name: str = ""
    kind: str = "INTERNAL"
    service: Optional[str] = None
    pid: Optional[int] = None
    start_ns: int = 0
    end_ns: int = 0
    status_code: str = "UNSET"
    status_message: Optional[str] = None
    attributes: Dict[str, Any] = field(default_factory=dict)
    events: List[Dict[str, Any]] = field(default_factory=list)
    resource: Dict[str, Any] = field(default_factory=dict)
    event_id: Optional[str] = None
    event_type: Optional[str] = None
    model: Optional[str] = None
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    cost: Optional[float] = None

    @property
    def is_llm_call(self) -> bool:
        return self.event_type == "llm_generation" or self.model is not None


@dataclass
class OutboxItem:
    """One backend operation waiting for (or done with) delivery.

    ``kind`` is ``session_init``, ``event`` or ``session_end``; ``key`` is the
    ``client_event_id`` for events and the session id otherwise. ``seq`` is the global
    recording order: the sender delivers in that order.
    """

    seq: int
    kind: str
    session_id: str
    key: Optional[str]
    body: Dict[str, Any]
    attempts: int = 0
    state: str = STATE_PENDING
    next_attempt_at: float = 0.0
    last_error: Optional[str] = None
    created_at: float = 0.0
    lease_until: float = 0.0  # the lease this process's claim took on it (0: not claimed)


# ------------------------------------------------------------------------------- encoding

_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def dumps(value: Any) -> str:
    """Compact JSON that never raises: unknown types become ``str``; the unencodable, a repr.

    ``ensure_ascii`` stays on so lone surrogates are escaped instead of failing to bind.
    """
    try:
        return _ENCODER.encode(value)
    except Exception:  # noqa: BLE001 - circular, non-str keys, a __str__ that raises ...
        try:
            shown = repr(value)[:MAX_TEXT]
        except Exception:  # noqa: BLE001
            shown = f"<unrepresentable {type(value).__name__}>"
        return _ENCODER.encode({"_unencodable": shown})


def loads(text: Optional[str], empty: Any) -> Any:
    """The decoded JSON, ``empty`` for no text, and a marker (not an error) for bad text."""
    if not text:
        return empty
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return {"_undecodable": text[:MAX_TEXT]}


def as_text(value: Any) -> Optional[str]:
    """A value SQLite can always bind as TEXT (used only when the fast path failed)."""
    if value is None:
        return None
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001
        text = f"<unprintable {type(value).__name__}>"
    return text.encode("utf-8", "replace").decode("utf-8")


def as_int(value: Any) -> Optional[int]:
    """A number SQLite can bind as INTEGER (64 bits), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = int(value)
    except (ValueError, OverflowError):
        return None
    return number if -(2**63) <= number < 2**63 else None


def as_float(value: Any) -> Optional[float]:
    """A number SQLite can bind as REAL, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


# ------------------------------------------------------------------------------- reading

OUTBOX_COLUMNS = (
    "seq, kind, session_id, key, body, attempts, state, next_attempt_at, last_error, created_at"
)
SPAN_COLUMNS = (
    "s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.service, s.pid, s.start_ns,"
    " s.end_ns, s.status_code, s.status_message, s.attributes, s.events, s.event_id,"
    " s.event_type, s.model, s.input_tokens, s.output_tokens, s.cost, s.resource_id,"
    " r.json AS resource_json"
)
SESSION_COLUMNS = (
    "no, session_id, name, task, meta, initiated, started_ns, last_end_ns, ended_ns,"
    " is_successful, is_successful_reason, session_eval, session_eval_reason,"
    " span_count, llm_calls, input_tokens, output_tokens, cost"
)
_SESSION_NAMES = tuple(name.strip() for name in SESSION_COLUMNS.split(","))


def named(row: Sequence[Any], columns: Sequence[str]) -> Mapping[str, Any]:
    """``row`` with access by column name: a ``sqlite3.Row`` as is, a plain tuple (from a
    connection that is not the store's, such as the viewer's) zipped with ``columns``."""
    if isinstance(row, sqlite3.Row):
        return row  # type: ignore[return-value]
    return dict(zip(columns, row, strict=True))


def outbox_item(row: sqlite3.Row) -> OutboxItem:
    """An :class:`OutboxItem` from a row of :data:`OUTBOX_COLUMNS`."""
    return OutboxItem(
        seq=row["seq"], kind=row["kind"], session_id=row["session_id"], key=row["key"],
        body=loads(row["body"], {}), attempts=row["attempts"], state=row["state"],
        next_attempt_at=row["next_attempt_at"], last_error=row["last_error"],
        created_at=row["created_at"],
    )


def span_record(row: sqlite3.Row, session_id: Optional[str],
                resource: Dict[str, Any]) -> SpanRecord:
    """A :class:`SpanRecord` from a row of :data:`SPAN_COLUMNS` (resource decoded once)."""
    return SpanRecord(
        trace_id=row["trace_id"], span_id=row["span_id"], parent_span_id=row["parent_span_id"],
        session_id=session_id, name=row["name"], kind=row["kind"], service=row["service"],
        pid=row["pid"], start_ns=row["start_ns"], end_ns=row["end_ns"],
        status_code=row["status_code"], status_message=row["status_message"],
        attributes=loads(row["attributes"], {}), events=loads(row["events"], []),
        resource=resource, event_id=row["event_id"], event_type=row["event_type"],
        model=row["model"], input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"], cost=row["cost"],
    )


def status_text(session: Mapping[str, Any]) -> str:
    """The status as every view prints it: the lifecycle, and "(no spans)" when nothing was
    recorded in the session (a scope no span ran in, an ``init()`` in a process that made
    none), which a bare "open" would hide: it suggests spans are still on their way."""
    status = str(session.get("status"))
    return status if session.get("span_count") else f"{status} (no spans)"


def _status(ended_ns: Optional[int], is_successful: Optional[int]) -> str:
    if ended_ns is None:
        return "open"
    if is_successful is None:
        return "ended"
    return "ok" if is_successful else "failed"


def session_dict(conn: sqlite3.Connection, row: Sequence[Any]) -> Dict[str, Any]:
    """One session as ``Store.list_sessions`` returns it, from a row of
    :data:`SESSION_COLUMNS` (a ``sqlite3.Row`` or a tuple in that order), with its services
    and outbox counts read through ``conn``."""
    r = named(row, _SESSION_NAMES)
    services = [
        service for (service,) in conn.execute(
            "SELECT service FROM session_services WHERE session_no = ? ORDER BY service",
            (r["no"],),
        )
    ]
    counts = dict.fromkeys(STATES, 0)
    for state, count in conn.execute(
        "SELECT state, count(*) FROM outbox WHERE session_id = ? GROUP BY state",
        (r["session_id"],),
    ):
        counts[state] = count
    started_ns, ended_ns = r["started_ns"], r["ended_ns"]
    finish = ended_ns if ended_ns is not None else r["last_end_ns"]
    meta = loads(r["meta"], {}) if r["meta"] else {}
    is_successful = r["is_successful"]
    return {
        "session_id": r["session_id"],
        "name": r["name"],
        "task": r["task"],
        "tags": meta.get("tags") if isinstance(meta, dict) else None,
        "initiated": bool(r["initiated"]),
        "started_ns": started_ns,
        "ended_ns": ended_ns,
        "last_end_ns": r["last_end_ns"],
        "duration_s": (finish - started_ns) / 1e9 if finish and started_ns else None,
        "services": services,
        "span_count": r["span_count"],
        "llm_calls": r["llm_calls"],
        "input_tokens": r["input_tokens"],
        "output_tokens": r["output_tokens"],
        "cost": r["cost"],
        "status": _status(ended_ns, is_successful),
        "is_successful": None if is_successful is None else bool(is_successful),
        "is_successful_reason": r["is_successful_reason"],
        "session_eval": r["session_eval"],
        "session_eval_reason": r["session_eval_reason"],
        **counts,
    }
