"""Read transactions: what the CLI, the viewer, the sender and ``doctor`` ask the store.

Each function takes a connection inside a read transaction and returns plain records; the
store runs them with :meth:`~lucidic_otel.outbox.db.Database.run`, which turns a failed read
into an empty (conservative) answer.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from lucidic_otel.outbox.records import (
    OUTBOX_COLUMNS,
    SESSION_COLUMNS,
    SPAN_COLUMNS,
    OutboxItem,
    SpanRecord,
    loads,
    outbox_item,
    session_dict,
    span_record,
)
from lucidic_otel.outbox.schema import KIND_EVENT, STATES, sql

logger = logging.getLogger(__name__)

_MAX_ANCESTOR_DEPTH = 256
_ALIAS_CHUNK = 500
_LIST_SESSIONS = (
    f"SELECT {SESSION_COLUMNS} FROM sessions"
    " ORDER BY coalesce(started_ns, 0) DESC, no DESC LIMIT ?"
)
_FAILED_ITEMS = sql(
    f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = {{failed}} ORDER BY seq LIMIT ?"
)
_SESSION_EVENTS = sql(
    f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE session_id = ? AND kind = {{event}}"
    " ORDER BY seq"
)


def outbox_counts(conn: sqlite3.Connection) -> Dict[str, int]:
    """Outbox items by state: ``pending``, ``delivered``, ``failed``."""
    counts = dict.fromkeys(STATES, 0)
    for state, count in conn.execute("SELECT state, count(*) FROM outbox GROUP BY state"):
        counts[state] = count
    return counts


def failed_items(conn: sqlite3.Connection, limit: int) -> List[OutboxItem]:
    """Items moved aside, oldest first."""
    return [outbox_item(row) for row in conn.execute(_FAILED_ITEMS, (int(limit),))]


def session_events(conn: sqlite3.Connection, session_id: str) -> List[OutboxItem]:
    """The Lucidic events of a session, in recording order."""
    return [outbox_item(row) for row in conn.execute(_SESSION_EVENTS, (session_id,))]


def is_initiated(conn: sqlite3.Connection, session_id: str) -> bool:
    """True if a ``session_init`` was recorded for ``session_id``."""
    row = conn.execute(
        "SELECT initiated FROM sessions WHERE session_id = ?", (session_id,)
    ).fetchone()
    return bool(row and row["initiated"])


def list_sessions(conn: sqlite3.Connection, limit: int) -> List[Dict[str, Any]]:
    """Sessions newest first, with their rollup."""
    rows = conn.execute(_LIST_SESSIONS, (int(limit),)).fetchall()
    return [session_dict(conn, row) for row in rows]


def session_spans(conn: sqlite3.Connection, session_id: Optional[str],
                  limit: Optional[int]) -> List[SpanRecord]:
    """Every stored span of a session (None: spans with no session), by start time."""
    if session_id is None:
        where, params = "s.session_no IS NULL", ()
    else:
        where = "s.session_no = (SELECT no FROM sessions WHERE session_id = ?)"
        params = (session_id,)
    rows = conn.execute(
        f"SELECT {SPAN_COLUMNS} FROM spans AS s"
        " LEFT JOIN resources AS r ON r.id = s.resource_id"
        f" WHERE {where} ORDER BY s.start_ns, s.id LIMIT ?",
        (*params, -1 if limit is None else int(limit)),
    )
    resources: Dict[Any, Dict[str, Any]] = {}
    spans = []
    for row in rows:
        resource_id = row["resource_id"]
        if resource_id not in resources:
            resources[resource_id] = loads(row["resource_json"], {})
        spans.append(span_record(row, session_id, resources[resource_id]))
    return spans


def _nearest_event(conn: sqlite3.Connection, trace_id: str, span_id: Optional[str]
                   ) -> Optional[str]:
    seen = 0
    while span_id and seen < _MAX_ANCESTOR_DEPTH:
        seen += 1
        row = conn.execute(
            "SELECT parent_span_id, event_type, event_id FROM spans"
            " WHERE trace_id = ? AND span_id = ? LIMIT 1",
            (trace_id, span_id),
        ).fetchone()
        if row is None:
            return None
        if row["event_type"] is not None and row["event_id"]:
            return row["event_id"]
        span_id = row["parent_span_id"]
    return None


def nearest_event_ancestors(conn: sqlite3.Connection,
                            starts: Sequence[Tuple[str, Optional[str]]]) -> List[Optional[str]]:
    """For each ``(trace_id, parent_span_id)``, the event id of the nearest event up the
    chain (the parent itself first), or None; the walk stops at a span not stored."""
    return [_nearest_event(conn, trace_id, span_id) for trace_id, span_id in starts]


def parent_start(body: Mapping[str, Any]) -> Optional[Tuple[str, str]]:
    """Where the walk to an event's parent event starts: its trace and parent span."""
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    trace_id, parent = metadata.get("trace_id"), metadata.get("parent_span_id")
    if isinstance(trace_id, str) and isinstance(parent, str) and trace_id and parent:
        return trace_id, parent
    return None


def recorded_parents(items: Sequence[OutboxItem]) -> Dict[int, Optional[str]]:
    """Each item's parent event as the event recorded it when it was written (the answer
    when the store cannot be read)."""
    found: Dict[int, Optional[str]] = {}
    for item in items:
        recorded = item.body.get("client_parent_event_id")
        found[item.seq] = recorded if isinstance(recorded, str) else None
    return found


def event_parents(conn: sqlite3.Connection, items: Sequence[OutboxItem]
                  ) -> Dict[int, Optional[str]]:
    """Each event's parent event by ``seq``: the nearest recorded ancestor, else what the
    event recorded when it was written (the sender's resolution, see delivery.resolve)."""
    events = [item for item in items if item.kind == KIND_EVENT]
    starts = [parent_start(item.body) for item in events]
    lookups = [start for start in starts if start is not None]
    found = iter(nearest_event_ancestors(conn, lookups) if lookups else [])
    parents: Dict[int, Optional[str]] = {}
    for item, start in zip(events, starts, strict=True):
        recorded = item.body.get("client_parent_event_id")
        resolved = next(found) if start is not None else None
        parents[item.seq] = resolved or (recorded if isinstance(recorded, str) else None)
    return parents


def session_aliases(conn: sqlite3.Connection, wanted: List[str]) -> Dict[str, str]:
    """The backend's ids for those of ``wanted`` it renamed."""
    aliases: Dict[str, str] = {}
    for start in range(0, len(wanted), _ALIAS_CHUNK):
        chunk = wanted[start:start + _ALIAS_CHUNK]
        marks = ",".join("?" * len(chunk))
        for sid, backend_id in conn.execute(
            "SELECT session_id, backend_session_id FROM session_aliases"
            f" WHERE session_id IN ({marks})",
            chunk,
        ):
            aliases[sid] = backend_id
    return aliases


def recent_setups(conn: sqlite3.Connection, limit: int) -> List[Dict[str, Any]]:
    """The set-ups of the processes that wrote here last, newest first."""
    rows = conn.execute(
        "SELECT recorded_at, json FROM setups ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [{**loads(row["json"], {}), "recorded_at": row["recorded_at"]} for row in rows]
