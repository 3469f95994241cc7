"""The store's tables, and the names of outbox kinds and states.

Why the enums: a state spelled as a literal in twenty SQL statements drifts from the one the
Python side compares with, and SQLite would happily store the misspelling. Every statement
interpolates :class:`State` and :class:`Kind` (see :func:`sql`), and the ``CHECK`` constraints
below list exactly their values.

Schema changes: ``SCHEMA_VERSION`` is the version a file's tables were created at
(``PRAGMA user_version``). A file from a newer version is never written. Tables and indexes
added since version 1 are in :data:`SCHEMA_ADDITIONS`, created with ``IF NOT EXISTS`` on every
open, so older files gain them without a version bump.
"""

from __future__ import annotations

import logging
import sqlite3
from enum import Enum
from typing import Tuple

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class Kind(str, Enum):
    """What an outbox item asks the backend to do."""

    SESSION_INIT = "session_init"
    EVENT = "event"
    SESSION_END = "session_end"


class State(str, Enum):
    """Where an outbox item is in its delivery; ``failed`` items were moved aside for good."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# Plain strings, as OutboxItem.kind/state hold them (what SQLite returns) and as callers compare.
KIND_SESSION_INIT = Kind.SESSION_INIT.value
KIND_EVENT = Kind.EVENT.value
KIND_SESSION_END = Kind.SESSION_END.value
STATE_PENDING = State.PENDING.value
STATE_DELIVERED = State.DELIVERED.value
STATE_FAILED = State.FAILED.value
STATES = (STATE_PENDING, STATE_DELIVERED, STATE_FAILED)


def _quoted(*members: Enum) -> str:
    return ", ".join(f"'{member.value}'" for member in members)


def sql(template: str) -> str:
    """``template`` with ``{pending}``, ``{event}`` ... replaced by the quoted SQL literal.

    Done once, at import, for every statement: the values are constants, never user input.
    """
    names = {member.name.lower(): f"'{member.value}'" for member in (*Kind, *State)}
    return template.format(**names)


SCHEMA = (
    # A session known to this store: opened here (initiated=1), or only seen on spans/events.
    # The rollup columns are maintained at write time so the CLI list needs no scan of spans.
    """CREATE TABLE IF NOT EXISTS sessions (
        no INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL UNIQUE,
        initiated INTEGER NOT NULL DEFAULT 0,
        name TEXT,
        task TEXT,
        meta TEXT,
        started_ns INTEGER,
        last_end_ns INTEGER,
        ended_ns INTEGER,
        is_successful INTEGER,
        is_successful_reason TEXT,
        session_eval REAL,
        session_eval_reason TEXT,
        span_count INTEGER NOT NULL DEFAULT 0,
        llm_calls INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_started ON sessions(started_ns)",
    "CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(updated_at)",
    """CREATE TABLE IF NOT EXISTS session_services (
        session_no INTEGER NOT NULL,
        service TEXT NOT NULL,
        PRIMARY KEY (session_no, service)
    ) WITHOUT ROWID""",
    # Resources repeat on every span of a process; stored once.
    """CREATE TABLE IF NOT EXISTS resources (
        id INTEGER PRIMARY KEY,
        json TEXT NOT NULL UNIQUE
    )""",
    """CREATE TABLE IF NOT EXISTS spans (
        id INTEGER PRIMARY KEY,
        session_no INTEGER,
        resource_id INTEGER,
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_span_id TEXT,
        name TEXT NOT NULL,
        kind TEXT,
        service TEXT,
        pid INTEGER,
        start_ns INTEGER,
        end_ns INTEGER,
        status_code TEXT,
        status_message TEXT,
        attributes TEXT NOT NULL,
        events TEXT NOT NULL,
        event_id TEXT,
        event_type TEXT,
        model TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cost REAL,
        nbytes INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS spans_session ON spans(session_no)",
    # seq never goes back (AUTOINCREMENT), even after the newest rows were evicted.
    f"""CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ({_quoted(*Kind)})),
        session_id TEXT NOT NULL,
        key TEXT,
        body TEXT NOT NULL,
        nbytes INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT '{State.PENDING.value}'
            CHECK (state IN ({_quoted(*State)})),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        lease_until REAL NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, seq)",
    "CREATE INDEX IF NOT EXISTS outbox_session ON outbox(session_id, state, seq)",
    sql("""CREATE INDEX IF NOT EXISTS outbox_pending_init ON outbox(session_id, seq)
        WHERE kind = {session_init} AND state = {pending}"""),
)

# The index serves the sender's walk up a trace to an event's nearest ancestor event; the
# aliases keep the session id the backend assigned in answer to ``initsession`` (contract:
# adopt it), across processes and restarts.
SCHEMA_ADDITIONS = (
    "CREATE INDEX IF NOT EXISTS spans_trace ON spans(trace_id, span_id)",
    """CREATE TABLE IF NOT EXISTS session_aliases (
        session_id TEXT PRIMARY KEY,
        backend_session_id TEXT NOT NULL
    ) WITHOUT ROWID""",
    # How each recording process set OpenTelemetry up (who won the launcher's race, whether
    # the lucidic pipeline was attached and why), for ``doctor``; the newest rows are kept.
    """CREATE TABLE IF NOT EXISTS setups (
        id INTEGER PRIMARY KEY,
        recorded_at REAL NOT NULL,
        json TEXT NOT NULL
    )""",
)


class UnusableStoreError(Exception):
    """The file opened but is not a store this version can write (newer schema)."""


def create_or_check(conn: sqlite3.Connection) -> None:
    """Create the tables of a new file, or check an existing file's version; in a transaction.

    Raises :class:`UnusableStoreError` for a file of a newer version, which is never written.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise UnusableStoreError(
            f"it was written by a newer lucidic-otel (schema version {version}, "
            f"this one knows {SCHEMA_VERSION})"
        )
    if version < SCHEMA_VERSION:
        for statement in SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    for statement in SCHEMA_ADDITIONS:
        conn.execute(statement)


def all_statements() -> Tuple[str, ...]:
    """Every statement of the current schema, for a new database (the in-memory fallback)."""
    return SCHEMA + SCHEMA_ADDITIONS
