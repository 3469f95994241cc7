"""The delivery queue: which items a sender may take, its lease on them, and their outcome.

Order is the point. The sender delivers by ``seq`` (global recording order), and two rules hold
an item back however due it is: a session's end waits for every earlier item of its session, and
an event waits for its session's init. A claim leases the items for a while, which keeps the
senders of other processes off them; if the sender dies, its lease expires and they become
claimable again. ``attempts`` counts claims that reached the network: a claimed item given
back unsent (the sender paused, stopped, or held it behind its parent) has its claim undone by
:meth:`Queue.release_unattempted`, so that its own backoff does not grow.

Parents before children (the official SDK's order; the contract allows either): a child
usually ends, and is recorded, before its parent. A claim therefore brings the claimable
pending parent events of the events it took (and theirs, a few levels up) into the batch, and
orders the batch so that an event comes after its parent; the sender's dispatcher then holds
a child until its parent's request completed. A child whose parent event is pending but in
back-off is held back briefly (not leased, due again at the parent's retry or within
``_HOLD_STEP_S``), and only while it is younger than ``_HOLD_MAX_S``: a parent that is not
recorded (its span still open, or sessionless), in another sender's hands, or failing for a
while never holds a child up for long.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from lucidic_otel.outbox.db import Database
from lucidic_otel.outbox.reads import event_parents
from lucidic_otel.outbox.records import MAX_TEXT, OUTBOX_COLUMNS, OutboxItem, as_text, outbox_item
from lucidic_otel.outbox.schema import KIND_EVENT, sql

logger = logging.getLogger(__name__)

MAX_CLAIM = 10000
_PARENT_LEVELS = 4  # how far up a claim follows pending parents
_PARENT_WINDOW = 256  # pending items looked at, after the batch and before it, per level
_HOLD_MAX_S = 5.0  # a child recorded longer ago than this is never held for its parent
_HOLD_STEP_S = 0.5

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
# Undo this process's claim of an item it never sent: the lease it took (and only that one: an
# item whose lease expired and that another sender claimed since is theirs), and its attempt.
_RELEASE_UNATTEMPTED = sql(
    "UPDATE outbox SET next_attempt_at = ?, last_error = coalesce(?, last_error), lease_until = 0,"
    " attempts = max(attempts - 1, 0), updated_at = ?"
    " WHERE seq = ? AND state = {pending} AND lease_until = ?"
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
# Where a batch's missing parents may be: recorded after it (the common case: a parent ends
# after its children), or before it but not claimed (in back-off, or leased).
_PENDING_AFTER = sql(
    f"SELECT {OUTBOX_COLUMNS}, lease_until FROM outbox"
    " WHERE state = {pending} AND seq > ? ORDER BY seq LIMIT ?"
)
_PENDING_BEFORE_SEQ = sql(
    f"SELECT {OUTBOX_COLUMNS}, lease_until FROM outbox"
    " WHERE state = {pending} AND seq < ? ORDER BY seq LIMIT ?"
)
_HOLD = sql("UPDATE outbox SET next_attempt_at = ? WHERE seq = ? AND state = {pending}")
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
            if any(item.kind == KIND_EVENT for item in items):
                items = _parents_first(conn, items, now, limit)
            if items:
                until = now + lease_seconds
                conn.executemany(_LEASE, [(until, item.seq) for item in items])
                for item in items:
                    item.attempts += 1
                    item.lease_until = until
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

    def release_unattempted(self, items: Sequence[OutboxItem], next_attempt_at: float,
                            why: Optional[str] = None) -> bool:
        """See :meth:`lucidic_otel.outbox.store.Store.release_unattempted`."""
        now, error = time.time(), as_text(why)[:MAX_TEXT] if why else None
        rows = [(float(next_attempt_at), error, now, int(item.seq), float(item.lease_until))
                for item in items]
        return self._db.update("release_unattempted", _RELEASE_UNATTEMPTED, rows)

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


Key = Tuple[str, str]  # (session id, client event id)


def _event_key(item: OutboxItem) -> Optional[Key]:
    return (item.session_id, item.key) if item.kind == KIND_EVENT and item.key else None


def _parents_first(conn: sqlite3.Connection, items: List[OutboxItem], now: float,
                   budget: int) -> List[OutboxItem]:
    """The batch with the claimable pending parents of its events added (at most ``budget``),
    the children of parents in back-off held (see the module docstring), parents first."""
    batch = list(items)
    keys = {key for key in map(_event_key, batch) if key is not None}
    parents = event_parents(conn, batch)
    backoff: Dict[Key, float] = {}
    new = batch
    for _ in range(_PARENT_LEVELS):
        missing = {
            (item.session_id, parents[item.seq]) for item in new
            if parents.get(item.seq) and (item.session_id, parents[item.seq]) not in keys
        }
        if not missing or budget <= 0:
            break
        new = []
        for item, due in _pending(conn, missing, batch):
            key = (item.session_id, item.key or "")
            if due <= now and budget > 0:
                new.append(item)
                keys.add(key)
                budget -= 1
            elif due > now:
                backoff[key] = due
        parents.update(event_parents(conn, new))
        batch.extend(new)
    if backoff:
        batch = _hold_children(conn, batch, parents, backoff, now)
    return _ordered(batch, parents)


def _pending(conn: sqlite3.Connection, wanted: Set[Key], batch: List[OutboxItem]
             ) -> List[Tuple[OutboxItem, float]]:
    """The pending events of ``wanted`` near the batch, with when each can be claimed."""
    taken = {item.seq for item in batch}
    last = max(taken)
    rows = [*conn.execute(_PENDING_AFTER, (last, _PARENT_WINDOW)),
            *conn.execute(_PENDING_BEFORE_SEQ, (last, _PARENT_WINDOW))]
    found: List[Tuple[OutboxItem, float]] = []
    for row in rows:
        if row["kind"] == KIND_EVENT and (row["session_id"], row["key"]) in wanted \
                and row["seq"] not in taken:
            taken.add(row["seq"])
            found.append((outbox_item(row), max(row["next_attempt_at"], row["lease_until"])))
    return found


def _hold_children(conn: sqlite3.Connection, batch: List[OutboxItem],
                   parents: Dict[int, Optional[str]], backoff: Dict[Key, float], now: float
                   ) -> List[OutboxItem]:
    """Young children of a parent in back-off (and their own children) are not claimed now:
    due again at the parent's retry, or within ``_HOLD_STEP_S``."""
    held: Dict[Key, float] = dict(backoff)
    kept: List[OutboxItem] = []
    holds: List[Tuple[float, int]] = []
    for item in sorted(batch, key=lambda i: -i.seq):  # a parent usually after its children
        parent = parents.get(item.seq)
        due = held.get((item.session_id, parent)) if parent else None
        if due is None or now - item.created_at >= _HOLD_MAX_S:
            kept.append(item)
            continue
        until = max(now + 0.05, min(due, now + _HOLD_STEP_S))
        holds.append((until, item.seq))
        key = _event_key(item)
        if key is not None:
            held[key] = until
    if holds:
        conn.executemany(_HOLD, holds)
    return kept


def _ordered(batch: List[OutboxItem], parents: Dict[int, Optional[str]]) -> List[OutboxItem]:
    """Recording order, except that an event comes after its parent event in the batch."""
    by_key = {key: item for item in batch if (key := _event_key(item)) is not None}
    out: List[OutboxItem] = []
    placed: Set[int] = set()
    for item in sorted(batch, key=lambda i: i.seq):
        chain: List[OutboxItem] = []
        current: Optional[OutboxItem] = item
        while current is not None and current.seq not in placed:
            placed.add(current.seq)
            chain.append(current)
            parent = parents.get(current.seq)
            current = by_key.get((current.session_id, parent)) if parent else None
        out.extend(reversed(chain))
    return out
