"""Recording: span batches with their events, session starts and ends, late LLM layers.

A batch of spans and the events derived from it is ONE transaction, so ``kill -9`` loses at
most the batch in flight and never leaves half a batch. Rows are encoded before the write lock
is taken (:func:`prepare_batch`), so the lock is held only for the inserts. A value SQLite
cannot bind (lone surrogates, integers over 64 bits, odd types) makes the write run again with
every field coerced to text/number/None (``sanitize``); a write that still fails is dropped,
counted in ``stats()["dropped"]`` and logged.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from lucidic_otel import gil
from lucidic_otel.outbox.capacity import SPAN_OVERHEAD, Capacity, on_disk, outbox_size
from lucidic_otel.outbox.db import Database
from lucidic_otel.outbox.health import Health
from lucidic_otel.outbox.problems import BadDataError, classify
from lucidic_otel.outbox.records import SpanRecord, as_float, as_int, as_text, dumps
from lucidic_otel.outbox.schema import (
    KIND_EVENT,
    KIND_SESSION_END,
    KIND_SESSION_INIT,
    STATE_FAILED,
    STATE_PENDING,
    sql,
)

logger = logging.getLogger(__name__)

_INSERT_SPAN = (
    "INSERT INTO spans (session_no, resource_id, trace_id, span_id, parent_span_id, name, kind,"
    " service, pid, start_ns, end_ns, status_code, status_message, attributes, events, event_id,"
    " event_type, model, input_tokens, output_tokens, cost, nbytes)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_OUTBOX = (
    "INSERT INTO outbox (kind, session_id, key, body, nbytes, state, last_error, created_at,"
    " updated_at) VALUES (?,?,?,?,?,?,?,?,?)"
)
# No UPSERT (SQLite >= 3.24): Python 3.9 builds on older distributions link an older SQLite.
# Everything here works from SQLite 3.8.3 on.
_ENSURE_SESSION = "INSERT OR IGNORE INTO sessions (session_id, updated_at) VALUES (?, ?)"
_ADD_SESSION_ROLLUP = """
    UPDATE sessions SET
        started_ns = min(coalesce(started_ns, :start), coalesce(:start, started_ns)),
        last_end_ns = max(coalesce(last_end_ns, :end), coalesce(:end, last_end_ns)),
        span_count = span_count + :spans,
        llm_calls = llm_calls + :llm,
        input_tokens = input_tokens + :input_tokens,
        output_tokens = output_tokens + :output_tokens,
        cost = cost + :cost,
        updated_at = :now
    WHERE session_id = :session_id
"""
_TOUCH_SESSION = "UPDATE sessions SET updated_at = ? WHERE session_id = ?"
_MARK_SESSION_INITIATED = """
    UPDATE sessions SET
        initiated = 1,
        name = coalesce(:name, name),
        task = coalesce(:task, task),
        meta = :meta,
        started_ns = min(coalesce(started_ns, :start), :start),
        updated_at = :now
    WHERE session_id = :session_id
"""
_UPDATE_SESSION_END = """
    UPDATE sessions SET
        ended_ns = ?,
        is_successful = coalesce(?, is_successful),
        is_successful_reason = coalesce(?, is_successful_reason),
        session_eval = coalesce(?, session_eval),
        session_eval_reason = coalesce(?, session_eval_reason),
        task = coalesce(?, task),
        updated_at = ?
    WHERE no = ?
"""
_MERGE_EVENT_BODY = sql(
    "UPDATE outbox SET body = ?, nbytes = ?, updated_at = ? WHERE kind = {event}"
    " AND session_id = ? AND key = ? AND state = {pending}"
)


class _Group:
    """Per-session aggregate of one batch, applied to the session row in one update."""

    __slots__ = ("spans", "llm", "input_tokens", "output_tokens", "cost", "start", "end",
                 "services")

    def __init__(self) -> None:
        self.spans = 0
        self.llm = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost = 0.0
        self.start: Optional[int] = None
        self.end: Optional[int] = None
        self.services: set = set()

    def add(self, span: SpanRecord, sanitize: bool) -> None:
        self.spans += 1
        if span.is_llm_call:
            self.llm += 1
            self.input_tokens += as_int(span.input_tokens) or 0
            self.output_tokens += as_int(span.output_tokens) or 0
            self.cost += as_float(span.cost) or 0.0
        start, end = as_int(span.start_ns), as_int(span.end_ns)
        if start and (self.start is None or start < self.start):
            self.start = start
        if end and (self.end is None or end > self.end):
            self.end = end
        if span.service is not None:
            self.services.add(as_text(span.service) if sanitize else span.service)


class _PreparedBatch:
    """A batch encoded outside the transaction, so the write lock is held only for inserts."""

    __slots__ = ("span_rows", "groups", "resources", "event_rows", "event_sessions", "nbytes")

    def __init__(self) -> None:
        # (session_id, resource_json, row values after session_no and resource_id)
        self.span_rows: List[Tuple[Optional[str], str, tuple]] = []
        self.groups: Dict[str, _Group] = {}
        self.resources: Dict[str, None] = {}
        self.event_rows: List[tuple] = []
        self.event_sessions: Dict[str, None] = {}
        self.nbytes = 0


def _span_values(span: SpanRecord, attributes: str, events: str, size: int,
                 sanitize: bool) -> tuple:
    if sanitize:
        return (
            as_text(span.trace_id) or "", as_text(span.span_id) or "",
            as_text(span.parent_span_id), as_text(span.name) or "", as_text(span.kind),
            as_text(span.service), as_int(span.pid), as_int(span.start_ns),
            as_int(span.end_ns), as_text(span.status_code), as_text(span.status_message),
            attributes, events, as_text(span.event_id), as_text(span.event_type),
            as_text(span.model), as_int(span.input_tokens), as_int(span.output_tokens),
            as_float(span.cost), size,
        )
    return (
        span.trace_id, span.span_id, span.parent_span_id, span.name, span.kind,
        span.service, span.pid, span.start_ns, span.end_ns, span.status_code,
        span.status_message, attributes, events, span.event_id,
        span.event_type, span.model, span.input_tokens, span.output_tokens,
        span.cost, size,
    )


def _prepare_spans(batch: _PreparedBatch, spans: List[SpanRecord], sanitize: bool) -> None:
    resource_json: Dict[int, str] = {}
    for span in spans:
        gil.tick()  # long work on the application's GIL
        attributes = dumps(span.attributes) if span.attributes else "{}"
        span_events = dumps(span.events) if span.events else "[]"
        resource = span.resource
        rjson = resource_json.get(id(resource))
        if rjson is None:
            rjson = resource_json[id(resource)] = dumps(resource) if resource else "{}"
            batch.resources[rjson] = None
        size = on_disk(len(attributes) + len(span_events) + SPAN_OVERHEAD)
        session_id = as_text(span.session_id) if sanitize else span.session_id
        batch.span_rows.append(
            (session_id, rjson, _span_values(span, attributes, span_events, size, sanitize))
        )
        batch.nbytes += size
        if session_id is not None:
            group = batch.groups.get(session_id)
            if group is None:
                group = batch.groups[session_id] = _Group()
            group.add(span, sanitize)


def _prepare_events(batch: _PreparedBatch, events: List[Mapping[str, Any]], now: float) -> None:
    for event in events:
        gil.tick()  # long work on the application's GIL
        body = dumps(event)
        get = event.get if isinstance(event, Mapping) else (lambda _key: None)
        session_id = get("session_id")
        state, error = STATE_PENDING, None
        if not session_id:
            # Undeliverable, but kept visibly instead of vanishing.
            state, error = STATE_FAILED, "event has no session_id"
        session_id = as_text(session_id) or ""
        if session_id:
            batch.event_sessions[session_id] = None
        key = as_text(get("client_event_id"))
        size = outbox_size(body, session_id, key)
        batch.event_rows.append((KIND_EVENT, session_id, key, body, size, state, error, now, now))
        batch.nbytes += size


def prepare_batch(spans: List[SpanRecord], events: List[Mapping[str, Any]], now: float,
                  sanitize: bool) -> _PreparedBatch:
    """Encode a batch for :func:`apply_batch` (``sanitize``: coerce every value first)."""
    batch = _PreparedBatch()
    _prepare_spans(batch, spans, sanitize)
    _prepare_events(batch, events, now)
    return batch


def _apply_groups(conn: sqlite3.Connection, batch: _PreparedBatch,
                  now: float) -> Dict[Optional[str], Optional[int]]:
    session_nos: Dict[Optional[str], Optional[int]] = {None: None}
    services: List[Tuple[int, str]] = []
    for session_id, group in batch.groups.items():
        conn.execute(_ENSURE_SESSION, (session_id, now))
        conn.execute(
            _ADD_SESSION_ROLLUP,
            {"session_id": session_id, "start": group.start, "end": group.end,
             "spans": group.spans, "llm": group.llm, "input_tokens": group.input_tokens,
             "output_tokens": group.output_tokens, "cost": group.cost, "now": now},
        )
        no = conn.execute(
            "SELECT no FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()[0]
        session_nos[session_id] = no
        services.extend((no, service) for service in group.services)
    if services:
        conn.executemany("INSERT OR IGNORE INTO session_services VALUES (?, ?)", services)
    return session_nos


def apply_batch(conn: sqlite3.Connection, batch: _PreparedBatch) -> Tuple[None, int]:
    """Insert a prepared batch (inside the write transaction); returns (None, its bytes)."""
    now = time.time()
    resource_ids: Dict[str, int] = {}
    for rjson in batch.resources:
        conn.execute("INSERT OR IGNORE INTO resources (json) VALUES (?)", (rjson,))
        resource_ids[rjson] = conn.execute(
            "SELECT id FROM resources WHERE json = ?", (rjson,)
        ).fetchone()[0]
    session_nos = _apply_groups(conn, batch, now)
    if batch.span_rows:
        conn.executemany(
            _INSERT_SPAN,
            [
                (session_nos[sid], resource_ids[rjson], *values)
                for sid, rjson, values in batch.span_rows
            ],
        )
    if batch.event_rows:
        touched = [sid for sid in batch.event_sessions if sid not in batch.groups]
        conn.executemany(_ENSURE_SESSION, [(sid, now) for sid in touched])
        conn.executemany(_TOUCH_SESSION, [(now, sid) for sid in touched])
        conn.executemany(_INSERT_OUTBOX, batch.event_rows)
    return None, batch.nbytes


# ------------------------------------------------------------------ session starts and ends


def _prepare_init(session_id: str, body: Mapping[str, Any], now: float,
                  sanitize: bool) -> tuple:
    sid = as_text(session_id) if sanitize else session_id
    name = body.get("session_name") if isinstance(body, Mapping) else None
    task = body.get("task") if isinstance(body, Mapping) else None
    return (sid, as_text(name), as_text(task), dumps(body), time.time_ns(), now)


def _apply_init(conn: sqlite3.Connection, row: tuple) -> Tuple[int, int]:
    sid, name, task, body_json, now_ns, now_s = row
    conn.execute(_ENSURE_SESSION, (sid, now_s))
    conn.execute(
        _MARK_SESSION_INITIATED,
        {"session_id": sid, "name": name, "task": task, "meta": body_json,
         "start": now_ns, "now": now_s},
    )
    size = outbox_size(body_json, sid, sid)
    cur = conn.execute(
        _INSERT_OUTBOX,
        (KIND_SESSION_INIT, sid, sid, body_json, size, STATE_PENDING, None, now_s, now_s),
    )
    return cur.lastrowid, size


def _prepare_end(session_id: str, body: Mapping[str, Any], now: float, sanitize: bool) -> tuple:
    get = body.get if isinstance(body, Mapping) else (lambda _key: None)
    successful = get("is_successful")
    return (
        as_text(session_id) if sanitize else session_id,
        None if successful is None else int(bool(successful)),
        as_text(get("is_successful_reason")),
        as_float(get("session_eval")),
        as_text(get("session_eval_reason")),
        as_text(get("task")),
        dumps(body),
        time.time_ns(),
        now,
    )


def _apply_end(conn: sqlite3.Connection, row: tuple) -> Tuple[Optional[int], int]:
    sid, successful, reason, evaluation, eval_reason, task, body_json, now_ns, now_s = row
    found = conn.execute(
        "SELECT no, initiated FROM sessions WHERE session_id = ?", (sid,)
    ).fetchone()
    if found is None or not found["initiated"]:
        return None, 0
    conn.execute(
        _UPDATE_SESSION_END,
        (now_ns, successful, reason, evaluation, eval_reason, task, now_s, found["no"]),
    )
    size = outbox_size(body_json, sid, sid)
    cur = conn.execute(
        _INSERT_OUTBOX,
        (KIND_SESSION_END, sid, sid, body_json, size, STATE_PENDING, None, now_s, now_s),
    )
    return cur.lastrowid, size


def _merge_layer(conn: sqlite3.Connection, merge: Any, body: str, size: int,
                 now: float) -> bool:
    conn.execute(_MERGE_EVENT_BODY, (body, size, now, merge.session_id, merge.event_key))
    row = conn.execute(
        "SELECT id, session_no, input_tokens, output_tokens, cost FROM spans"
        " WHERE trace_id = ? AND span_id = ? LIMIT 1",
        (merge.trace_id, merge.span_id),
    ).fetchone()
    if row is None:
        return False
    new_in, new_out = as_int(merge.input_tokens), as_int(merge.output_tokens)
    new_cost = as_float(merge.cost)
    conn.execute(
        "UPDATE spans SET model = ?, input_tokens = ?, output_tokens = ?, cost = ? WHERE id = ?",
        (as_text(merge.model), new_in, new_out, new_cost, row["id"]),
    )
    if row["session_no"] is not None:
        conn.execute(
            "UPDATE sessions SET input_tokens = input_tokens + ?,"
            " output_tokens = output_tokens + ?, cost = cost + ?, updated_at = ?"
            " WHERE no = ?",
            ((new_in or 0) - (row["input_tokens"] or 0),
             (new_out or 0) - (row["output_tokens"] or 0),
             (new_cost or 0.0) - (row["cost"] or 0.0), now, row["session_no"]),
        )
    return True


class Writer:
    """The write side of a store, with its degradation policy (see the module docstring)."""

    def __init__(self, db: Database, health: Health, capacity: Capacity) -> None:
        self._db = db
        self._health = health
        self._capacity = capacity

    def write_batch(
        self, spans: Sequence[SpanRecord], events: Sequence[Mapping[str, Any]] = ()
    ) -> bool:
        """See :meth:`lucidic_otel.outbox.store.Store.write_batch`."""
        try:
            spans = list(spans)
            events = list(events)
        except Exception:  # noqa: BLE001 - a broken iterable must not break the exporter
            self._health.log_error("write_batch", None)
            return False
        if not spans and not events:
            return True

        def prepare(sanitize: bool) -> _PreparedBatch:
            return prepare_batch(spans, events, time.time(), sanitize)

        stored = self._write("write_batch", prepare, apply_batch, len(spans) + len(events))
        if stored:
            self._health.count(spans_written=len(spans), events_written=len(events))
        return stored

    def record_session_init(self, session_id: str, body: Mapping[str, Any]) -> Optional[int]:
        """See :meth:`lucidic_otel.outbox.store.Store.record_session_init`."""
        now = time.time()
        return self._write_lifecycle(
            "record_session_init",
            lambda sanitize: _prepare_init(session_id, body, now, sanitize), _apply_init)

    def record_session_end(self, session_id: str, body: Mapping[str, Any]) -> Optional[int]:
        """See :meth:`lucidic_otel.outbox.store.Store.record_session_end`."""
        now = time.time()
        seq = self._write_lifecycle(
            "record_session_end",
            lambda sanitize: _prepare_end(session_id, body, now, sanitize), _apply_end)
        if seq is None:
            logger.debug("session %r was not opened by this store; no end recorded", session_id)
        return seq

    def merge_llm_layer(self, merge: Any) -> bool:
        """See :meth:`lucidic_otel.outbox.store.Store.merge_llm_layer`."""
        now = time.time()
        body = dumps(merge.body)
        size = outbox_size(body, merge.session_id, merge.event_key)
        return self._db.run(
            "merge_llm_layer", lambda conn: _merge_layer(conn, merge, body, size, now),
            write=True, default=False,
        )

    def _write_lifecycle(
        self,
        what: str,
        prepare: Callable[[bool], tuple],
        apply: Callable[[sqlite3.Connection, tuple], Tuple[Optional[int], int]],
    ) -> Optional[int]:
        result: List[Optional[int]] = [None]

        def apply_and_keep(conn: sqlite3.Connection, row: tuple) -> Tuple[None, int]:
            seq, nbytes = apply(conn, row)
            result[0] = seq
            return None, nbytes

        if self._write(what, prepare, apply_and_keep, 1) and result[0] is not None:
            self._health.count(lifecycle_written=1)
            return result[0]
        return None

    def _write(
        self,
        what: str,
        prepare: Callable[[bool], Any],
        apply: Callable[[sqlite3.Connection, Any], Tuple[Any, int]],
        rows: int,
    ) -> bool:
        """One write transaction with the full degradation policy; True when stored."""
        for sanitize in (False, True):
            try:
                prepared = prepare(sanitize)
                _, nbytes = self._db.transact(
                    lambda conn, prepared=prepared: apply(conn, prepared), write=True)
            except Exception as exc:  # noqa: BLE001 - the policy below decides
                if not sanitize and (isinstance(exc, BadDataError) or classify(exc) == "data"):
                    continue
                self._health.lose(what, rows, exc)
                return False
            self._capacity.after_write(nbytes)
            return True
        return False
