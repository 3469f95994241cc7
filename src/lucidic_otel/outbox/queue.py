"""The delivery queue: which items a sender may take, its lease on them, and their outcome.

Order is the point. The sender delivers by ``seq`` (global recording order), and two rules hold
an item back however due it is: a session's end waits for every earlier item of its session, and
an event waits for its session's init. A claim leases the items for a while, which keeps the
senders of other processes off them; if the sender dies, its lease expires and they become
claimable again. ``attempts`` counts claims.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Callable, List, Optional, Sequence

from lucidic_otel.outbox.db import Database
from lucidic_otel.outbox.records import MAX_TEXT, OUTBOX_COLUMNS, OutboxItem, as_text, outbox_item
from lucidic_otel.outbox.schema import sql

logger = logging.getLogger(__name__)

MAX_CLAIM = 10000

# An end waits for every earlier item of its session; an event waits for its session's init.
_IN_ORDER = """
      AND NOT (o.kind = {session_end} AND EXISTS (
            SELECT 1 FROM outbox AS p
            WHERE p.session_id = o.session_id AND p.state = {pending} AND p.seq < o.seq))
      AND NOT (o.kind = {event} AND EXISTS (
            SELECT 1 FROM outbox AS p
            WHERE p.session_id = o.session_id AND p.kind = {session_init}
              AND p.state = {pending} AND p.seq < o.seq))
"""
_CLAIMABLE = sql(f"""
    SELECT {OUTBOX_COLUMNS} FROM outbox AS o
    WHERE o.state = {{pending}} AND o.next_attempt_at <= ? AND o.lease_until <= ?
    {_IN_ORDER}
    ORDER BY o.seq LIMIT ?
""")
# When the next item becomes claimable, ignoring items held back by ordering (their blockers
# are pending too and are counted instead).
_NEXT_DUE = sql(f"""
    SELECT min(max(o.next_attempt_at, o.lease_until)) AS due FROM outbox AS o
    WHERE o.state = {{pending}}
    {_IN_ORDER}
""")
_LEASE = "UPDATE outbox SET lease_until = ?, attempts = attempts + 1 WHERE seq = ?"
MARK_DELIVERED = sql(
    "UPDATE outbox SET state = {delivered}, lease_until = 0, last_error = NULL,"
    " updated_at = ? WHERE seq = ? AND state = {pending}"
)
_MARK_RETRY = sql(
    "UPDATE outbox SET next_attempt_at = ?, last_error = ?, lease_until = 0,"
    " updated_at = ? WHERE seq = ? AND state = {pending}"
)
MARK_FAILED = sql(
    "UPDATE outbox SET state = {failed}, last_error = ?, lease_until = 0, updated_at = ?"
    " WHERE seq = ? AND state = {pending}"
)
_PENDING_BEFORE = sql(
    "SELECT 1 FROM outbox WHERE session_id = ? AND state = {pending} AND seq < ? LIMIT 1"
)
_MAKE_DUE = sql(
    "UPDATE outbox SET next_attempt_at = 0 WHERE state = {pending} AND next_attempt_at > 0"
)

# Called with a settling statement and its rows after this process's update: the fallback
# settles carried items in the file as well (see MemoryFallback.mark_in_file_too).
SettleHook = Callable[[str, List[tuple]], None]


class Queue:
    """Claims, leases and outcomes of outbox items (see the module docstring)."""

    def __init__(self, db: Database, settle_in_file: SettleHook) -> None:
        self._db = db
        self._settle_in_file = settle_in_file

    def claim_pending(self, limit: int, now: float, lease_seconds: float) -> List[OutboxItem]:
        """See :meth:`lucidic_otel.outbox.store.Store.claim_pending`."""
        limit = max(1, min(int(limit), MAX_CLAIM))
        now = float(now)

        def claim(conn: sqlite3.Connection) -> List[OutboxItem]:
            items = [outbox_item(row) for row in conn.execute(_CLAIMABLE, (now, now, limit))]
            if items:
                conn.executemany(_LEASE, [(now + lease_seconds, item.seq) for item in items])
                for item in items:
                    item.attempts += 1
            return items

        return self._db.run("claim_pending", claim, write=True, default=[])

    def mark_delivered(self, seqs: Sequence[int]) -> bool:
        """See :meth:`lucidic_otel.outbox.store.Store.mark_delivered`."""
        now = time.time()
        rows = [(now, int(seq)) for seq in seqs]
        self._settle_in_file(MARK_DELIVERED, rows)
        return self._db.update("mark_delivered", MARK_DELIVERED, rows)

    def mark_retry(self, seq: int, error: str, next_attempt_at: float) -> bool:
        """See :meth:`lucidic_otel.outbox.store.Store.mark_retry`."""
        row = (float(next_attempt_at), as_text(error)[:MAX_TEXT] if error else None,
               time.time(), int(seq))
        return self._db.update("mark_retry", _MARK_RETRY, [row])

    def mark_failed(self, seq: int, reason: str) -> bool:
        """See :meth:`lucidic_otel.outbox.store.Store.mark_failed`."""
        row = (as_text(reason)[:MAX_TEXT] if reason else "failed", time.time(), int(seq))
        self._settle_in_file(MARK_FAILED, [row])
        return self._db.update("mark_failed", MARK_FAILED, [row])

    def session_events_delivered(self, session_id: str, up_to_seq: int) -> bool:
        """See :meth:`lucidic_otel.outbox.store.Store.session_events_delivered`."""

        def read(conn: sqlite3.Connection) -> bool:
            return conn.execute(_PENDING_BEFORE, (session_id, int(up_to_seq))).fetchone() is None

        return self._db.run("session_events_delivered", read, write=False, default=False)

    def next_due_at(self) -> Optional[float]:
        """See :meth:`lucidic_otel.outbox.store.Store.next_due_at`."""

        def read(conn: sqlite3.Connection) -> Optional[float]:
            row = conn.execute(_NEXT_DUE).fetchone()
            return None if row is None or row["due"] is None else float(row["due"])

        return self._db.run("next_due_at", read, write=False, default=None)

    def make_due(self) -> int:
        """See :meth:`lucidic_otel.outbox.store.Store.make_due`."""
        return self._db.run(
            "make_due", lambda conn: conn.execute(_MAKE_DUE).rowcount, write=True, default=0
        )
