"""Read-only queries for the viewer, on the store file opened with ``mode=ro``.

Why not :class:`~lucidic_otel.outbox.store.Store`:
it opens the file read-write (it creates the schema,
and a closing last connection checkpoints the WAL into the main file), and on a bad file it
silently switches to an empty in-memory database. A viewer must never change the store, and
must say when it cannot read it, so every request here gets its own ``mode=ro`` connection
(cheap, and private to the handler thread), which SQLite forbids from writing at all.

The SQL is the store's own (``_LIST_SESSIONS`` and ``Store.session_spans`` in store.py),
reshaped for what a page needs: a page of sessions at an offset, a count, a search, and a
session's spans without their attribute JSON (the detail of one span is fetched when it is
selected), so a 100,000-session store or a 5,000-span session stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote

from lucidic_otel.cli.store_access import StoreUnreadableError, probe_store
from lucidic_otel.outbox.store import _session_dict as _store_session_dict
from lucidic_otel.outbox.store import status_text

logger = logging.getLogger(__name__)

_TIMEOUT_S = 2.0
_SESSION_COLUMNS = (
    "no, session_id, name, task, meta, initiated, started_ns, last_end_ns, ended_ns,"
    " is_successful, is_successful_reason, session_eval, session_eval_reason,"
    " span_count, llm_calls, input_tokens, output_tokens, cost"
)
# Newest first, as `lucidic-otel sessions`: the store orders by coalesce(started_ns, 0), which
# no index serves. Sessions with a start come first through the sessions_started index (its
# entries end with the rowid, `no`), then those without one: the same order, with no sort.
_PAGE_STARTED = (
    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE started_ns IS NOT NULL {{filter}}"
    " ORDER BY started_ns DESC, no DESC LIMIT :limit OFFSET :offset"
)
_PAGE_UNSTARTED = (
    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE started_ns IS NULL {{filter}}"
    " ORDER BY no DESC LIMIT :limit OFFSET :offset"
)
_COUNT = "SELECT count(*) FROM sessions WHERE 1 {filter}"
_COUNT_STARTED = "SELECT count(*) FROM sessions WHERE started_ns IS NOT NULL {filter}"
# The services subquery is not correlated: SQLite runs it once into a temporary index, so a
# search is one pass over session_services and one over sessions, not a lookup per session.
_SEARCH = (
    " AND (session_id LIKE :p ESCAPE '\\' OR name LIKE :p ESCAPE '\\' OR no IN ("
    "SELECT session_no FROM session_services WHERE service LIKE :p ESCAPE '\\'))"
)
# What the waterfall needs of every span; attributes are read for the selected span only.
_LIGHT_SPANS = (
    "SELECT trace_id, span_id, parent_span_id, name, kind, service, pid, start_ns, end_ns,"
    " status_code, event_type, model, input_tokens, output_tokens, cost,"
    " instr(events, '\"name\":\"exception\"') > 0"
    " FROM spans WHERE session_no = ? ORDER BY start_ns, id"
)
_FULL_SPAN = (
    "SELECT s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.service, s.pid,"
    " s.start_ns, s.end_ns, s.status_code, s.status_message, s.attributes, s.events,"
    " s.event_id, s.event_type, s.model, s.input_tokens, s.output_tokens, s.cost, r.json"
    " FROM spans AS s LEFT JOIN resources AS r ON r.id = s.resource_id"
    " WHERE s.trace_id = ? AND s.span_id = ? AND s.session_no = ? ORDER BY s.id LIMIT 1"
)
LIGHT_FIELDS = (
    "trace_id", "span_id", "parent_span_id", "name", "kind", "service", "pid", "start_ns",
    "end_ns", "status_code", "event_type", "model", "input_tokens", "output_tokens", "cost",
    "has_exception",
)


class StoreProblemError(Exception):
    """The store cannot be read; the message is one line, fit for a page or a JSON error."""


def _loads(text: Optional[str], empty: Any) -> Any:
    if not text:
        return empty
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return {"_undecodable": text[:4000]}


def like_pattern(text: str) -> str:
    r"""``text`` as a LIKE pattern matching it anywhere, with ``%``, ``_`` and ``\`` literal
    (a search for ``a_b`` must not match ``axb``). LIKE is case-insensitive for ASCII."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class ReadOnlyStore:
    """The store at ``path``, read through one short read-only connection per call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Optional[sqlite3.Connection]]:
        """A connection inside one read transaction (every query of a request sees the same
        data while writers commit), or None when nothing was recorded at the path yet.

        Raises :class:`StoreProblemError` for a path that is not a readable store of this version.
        """
        try:
            if not probe_store(self.path):
                yield None
                return
        except StoreUnreadableError as exc:
            raise StoreProblemError(str(exc)) from None
        uri = "file:" + quote(str(self.path.resolve())) + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=_TIMEOUT_S, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreProblemError(f"cannot read the store {self.path}: {exc}") from None
        try:
            conn.execute("BEGIN")
            yield conn
        except sqlite3.Error as exc:
            raise StoreProblemError(f"cannot read the store {self.path}: {exc}") from None
        finally:
            conn.close()

    # ------------------------------------------------------------------------- sessions

    def sessions_page(self, query: str, page: int, per_page: int) -> Dict[str, Any]:
        """One page of sessions, newest first, optionally those whose id, name or a service
        contains ``query``; with the total, so the page can say "page 3 of 200"."""
        with self.snapshot() as conn:
            if conn is None:
                return {"exists": False, "total": 0, "sessions": []}
            filter_sql, params = (_SEARCH, {"p": like_pattern(query)}) if query else ("", {})
            offset = (page - 1) * per_page
            rows = self._page(conn, filter_sql, params, offset, per_page)
            if page == 1 and len(rows) < per_page:
                total = len(rows)  # the whole answer is on this page: no second pass to count
            else:
                total = conn.execute(_COUNT.format(filter=filter_sql), params).fetchone()[0]
            return {
                "exists": True,
                "total": int(total),
                "sessions": [session_dict(conn, row) for row in rows],
            }

    @staticmethod
    def _page(
        conn: sqlite3.Connection, filter_sql: str, params: Dict[str, Any], offset: int, limit: int
    ) -> List[tuple]:
        rows = conn.execute(
            _PAGE_STARTED.format(filter=filter_sql), {**params, "limit": limit, "offset": offset}
        ).fetchall()
        if len(rows) < limit:
            # Past the sessions with a start: how far into those without one.
            rest = 0
            if not rows and offset:
                started = conn.execute(_COUNT_STARTED.format(filter=filter_sql), params)
                rest = max(0, offset - int(started.fetchone()[0]))
            rows += conn.execute(
                _PAGE_UNSTARTED.format(filter=filter_sql),
                {**params, "limit": limit - len(rows), "offset": rest},
            ).fetchall()
        return rows

    def session(self, session_id: str) -> Optional[Dict[str, Any]]:
        """The session's summary, or None for an id the store does not hold."""
        with self.snapshot() as conn:
            if conn is None:
                return None
            row = _session_row(conn, session_id)
            return None if row is None else session_dict(conn, row)

    def session_with_spans(self, session_id: str) -> Optional[Tuple[Dict[str, Any], List[tuple]]]:
        """The summary and every span of a session, by start time: tuples of the waterfall's
        fields only (``LIGHT_FIELDS``, in that order)."""
        with self.snapshot() as conn:
            if conn is None:
                return None
            row = _session_row(conn, session_id)
            if row is None:
                return None
            spans = conn.execute(_LIGHT_SPANS, (row[0],)).fetchall()
            return session_dict(conn, row), spans

    def span(
        self, session_id: str, trace_id: str, span_id: str
    ) -> Optional[Tuple[Dict[str, Any], Optional[Dict[str, Any]]]]:
        """One span of the session with everything stored about it, and the Lucidic event
        the exporter derived from it (None when it made none, or the store evicted it)."""
        with self.snapshot() as conn:
            if conn is None:
                return None
            session = _session_row(conn, session_id)
            if session is None:
                return None
            row = conn.execute(_FULL_SPAN, (trace_id, span_id, session[0])).fetchone()
            if row is None:
                return None
            span = {
                "trace_id": row[0], "span_id": row[1], "parent_span_id": row[2],
                "name": row[3], "kind": row[4], "service": row[5], "pid": row[6],
                "start_ns": row[7], "end_ns": row[8], "status_code": row[9],
                "status_message": row[10], "attributes": _loads(row[11], {}),
                "events": _loads(row[12], []), "event_id": row[13], "event_type": row[14],
                "model": row[15], "input_tokens": row[16], "output_tokens": row[17],
                "cost": row[18], "resource": _loads(row[19], {}),
            }
            event = None
            if row[13]:
                found = conn.execute(
                    "SELECT body FROM outbox WHERE session_id = ? AND kind = 'event'"
                    " AND key = ? ORDER BY seq DESC LIMIT 1",
                    (session_id, row[13]),
                ).fetchone()
                event = _loads(found[0], None) if found else None
            return span, event if isinstance(event, dict) else None


def _session_row(conn: sqlite3.Connection, session_id: str) -> Optional[tuple]:
    return conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
    ).fetchone()


def session_dict(conn: sqlite3.Connection, row: tuple) -> Dict[str, Any]:
    """A session row exactly as ``Store.list_sessions`` returns it (the store's own
    conversion), with the status text every view prints, so the page shows what
    ``lucidic-otel sessions`` prints."""
    session = _store_session_dict(conn, row)
    session["status_text"] = status_text(session)
    return session
