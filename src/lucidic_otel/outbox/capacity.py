"""The size cap: how big rows are, when the size is measured, and what goes first.

``max_bytes`` caps the live size of the database (``(page_count - freelist) * page_size``; the
WAL adds at most a few MB on top). The size is measured every ``_CHECK_EVERY_WRITES`` writes or
every ``max_bytes / 32`` bytes written, never on every write. Over the cap, the oldest
*settled* data goes first without fuss: spans and delivered items of sessions that are ended
(or were only joined) and have nothing left to deliver, sessionless spans, then delivered items
of open sessions. Only if the store is still over the cap, undelivered data is dropped, just
enough to get back to 90%: failed-aside items first (they will never be delivered), then the
oldest data by time, spans of undelivered sessions and pending items alike, with a warning that
says how much was dropped and names ``LUCIDIC_STORE_MAX_MB``. A second, rate-limited warning
fires when undelivered data alone reaches 90% of the cap (measured from the outbox, or seen
when eviction runs out of settled data), so it normally comes before anything is lost.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import List, Optional, Tuple

from lucidic_otel.outbox.db import MEMORY, Database
from lucidic_otel.outbox.health import Health
from lucidic_otel.outbox.problems import MAX_MB_VARIABLE
from lucidic_otel.outbox.schema import sql

logger = logging.getLogger(__name__)

MIN_MAX_BYTES = 64 * 1024
MEMORY_MAX_BYTES = 64 * 1024 * 1024
_CHECK_EVERY_WRITES = 64
_LOW_WATER = 0.8  # settled data is evicted down to this fraction of the cap
_DROP_TARGET = 0.9  # undelivered data is dropped only down to this fraction
_UNDELIVERED_WARN = 0.9
_EVICT_CHUNK = 2000
_MAX_EVICT_STEPS = 2000
_VACUUM_PAGES = 2048  # per pass: each moved page is also written to the WAL
_DROP_WARN_INTERVAL_S = 600.0  # later drops are summed into the next warning
_UNDELIVERED_WARN_INTERVAL_S = 3600.0
# Rough on-disk bytes of a row beyond its variable text (ids, numbers, record header, index
# entries). With the page model in on_disk, stored per row as ``nbytes`` so that sums of it
# estimate file space (how much the cap dropped, how much undelivered data there is).
SPAN_OVERHEAD = 300
_OUTBOX_OVERHEAD = 120
PAGE = 4096  # SQLite's default page size, which this package never changes
_MAX_LOCAL = PAGE - 35  # the largest row a table leaf page holds without overflow pages

# Settled: not an open session of ours, and nothing left to deliver. Oldest activity first.
_SETTLED_SESSION = sql("""
    SELECT s.no, s.session_id, (SELECT min(id) FROM spans WHERE session_no = s.no) AS first_span
    FROM sessions AS s
    WHERE NOT (s.initiated = 1 AND s.ended_ns IS NULL)
      AND NOT EXISTS (SELECT 1 FROM outbox AS o
                      WHERE o.session_id = s.session_id AND o.state = {pending})
    ORDER BY s.updated_at, s.no LIMIT 1
""")
_UNDELIVERED_BYTES = sql(
    "SELECT coalesce(sum(nbytes), 0) FROM outbox WHERE state IN ({pending}, {failed})"
)
_DELIVERED = sql("state = {delivered}")
_FAILED = sql("state = {failed}")
_PENDING = sql("state = {pending}")


def on_disk(raw: int) -> int:
    """Bytes a row of ``raw`` bytes takes in pages: rows share a leaf page only whole (two
    2.2 KB rows do not fit one 4 KB page), and a larger row fills whole overflow pages."""
    if raw <= _MAX_LOCAL:
        return PAGE // max(1, _MAX_LOCAL // (raw + 4))
    return -(-raw // (PAGE - 4)) * PAGE


def outbox_size(body: str, session_id: str, key: Optional[str]) -> int:
    """The estimated on-disk size of an outbox row (its ``nbytes``)."""
    # The session id is stored in the row and in one index; the key in the row.
    return on_disk(len(body) + 2 * len(session_id) + len(key or "") + _OUTBOX_OVERHEAD)


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return (pages - free) * size


def human(nbytes: int) -> str:
    """``nbytes`` for a message: KB or MB."""
    if nbytes >= 1024 * 1024:
        return f"{nbytes / 1048576:.1f} MB"
    return f"{max(1, round(nbytes / 1024))} KB"


class Capacity:
    """Keeps one store under its cap; called after every successful write."""

    def __init__(self, db: Database, health: Health, max_bytes: int,
                 delivery_enabled: bool) -> None:
        self._db = db
        self._health = health
        self.max_bytes = max(int(max_bytes), MIN_MAX_BYTES)
        # Without delivery (no API key) the outbox is just the local store: nothing is
        # "waiting", so reaching the cap is routine housekeeping, reported at info level.
        self.delivery_enabled = bool(delivery_enabled)
        self._lock = threading.Lock()
        self._writes_since_check = 0
        self._bytes_since_check = 0
        self._checked_once = False
        self._drop_unreported = [0, 0, 0]  # spans, outbox items, bytes

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._writes_since_check = 0
        self._bytes_since_check = 0
        self._drop_unreported = [0, 0, 0]

    def cap(self) -> int:
        """The cap in force: the memory fallback holds at most ``MEMORY_MAX_BYTES``."""
        if self._db.mode == MEMORY:
            return min(self.max_bytes, MEMORY_MAX_BYTES)
        return self.max_bytes

    def after_write(self, nbytes: int) -> None:
        """Count a write of ``nbytes``; enforce the cap when a measurement is due."""
        with self._lock:
            self._writes_since_check += 1
            self._bytes_since_check += nbytes
            due = (
                not self._checked_once
                or self._writes_since_check >= _CHECK_EVERY_WRITES
                or self._bytes_since_check >= max(self.cap() // 32, 16 * 1024)
            )
            if due:
                self._checked_once = True
                self._writes_since_check = 0
                self._bytes_since_check = 0
        if due:
            try:
                self._enforce()
            except Exception as exc:  # noqa: BLE001 - the write itself succeeded
                self._health.log_error("size check", exc)

    def _enforce(self) -> None:
        cap = self.cap()
        used = self._db.transact(_used_bytes, write=False)
        if used >= _UNDELIVERED_WARN * cap:
            self._warn_if_undelivered_near(cap)
        if used <= cap:
            return
        steps, used = self._evict_settled(cap, used)
        # Undelivered data goes only past the cap itself, and then only down to _DROP_TARGET
        # (not _LOW_WATER): as little as possible.
        if used > cap:
            self._drop_undelivered(cap, used, steps)
        self.report_drops(force=False)
        self._db.transact(_release_free_pages, write=True)

    def _evict_settled(self, cap: int, used: int) -> Tuple[int, int]:
        steps = evicted = 0
        exhausted = False
        while used > _LOW_WATER * cap and steps < _MAX_EVICT_STEPS:
            steps += 1
            need = int(used - _LOW_WATER * cap) + PAGE
            removed, used = self._db.transact(
                lambda conn, need=need: _evict_settled_chunk(conn, need), write=True)
            evicted += removed
            if not removed:
                exhausted = True
                break
        self._health.count(evicted=evicted)
        if exhausted and used >= _UNDELIVERED_WARN * cap:
            # Nothing settled is left: everything in the store is still undelivered.
            self._warn_undelivered(used, cap)
        if evicted:
            logger.debug("lucidic-otel: evicted %d settled rows from %s", evicted, self._db.path)
        return steps, used

    def _drop_undelivered(self, cap: int, used: int, steps: int) -> None:
        while used > _DROP_TARGET * cap and steps < _MAX_EVICT_STEPS:
            steps += 1
            need = int(used - _DROP_TARGET * cap) + PAGE
            (spans, items, nbytes), used = self._db.transact(
                lambda conn, need=need: _drop_undelivered_chunk(conn, need), write=True
            )
            if not spans and not items:
                break
            self._health.count(dropped=spans + items)
            with self._lock:
                self._drop_unreported[0] += spans
                self._drop_unreported[1] += items
                self._drop_unreported[2] += nbytes

    def report_drops(self, force: bool) -> None:
        """Say what the cap dropped since the last report (rate-limited unless ``force``)."""
        with self._lock:
            spans, items, nbytes = self._drop_unreported
        if not (spans or items):
            return
        if not force and not self._health.may_warn("dropped", _DROP_WARN_INTERVAL_S):
            return
        with self._lock:
            self._drop_unreported = [0, 0, 0]
        if not self.delivery_enabled:
            logger.info(
                "lucidic-otel: the local store %s reached its cap of %.1f MB (%s): removed the "
                "oldest %d spans and %d records (about %s). Delivery is off (no "
                "LUCIDIC_API_KEY/LUCIDIC_AGENT_ID), so this is a local store only; raise %s to "
                "keep more history.",
                self._db.path, self.cap() / 1048576, MAX_MB_VARIABLE, spans, items,
                human(nbytes), MAX_MB_VARIABLE,
            )
            return
        logger.warning(
            "lucidic-otel: the local store %s reached its cap of %.1f MB (%s) while holding "
            "undelivered data: dropped the oldest %d spans of undelivered sessions and %d "
            "undelivered outbox items "
            "(about %s). Raise %s, or check that delivery to the backend works.",
            self._db.path, self.cap() / 1048576, MAX_MB_VARIABLE, spans, items, human(nbytes),
            MAX_MB_VARIABLE,
        )

    def _warn_if_undelivered_near(self, cap: int) -> None:
        """Early warning while the store is nearly full: is it the outbox that fills it?"""
        if self._health.warned_within("undelivered", _UNDELIVERED_WARN_INTERVAL_S):
            return  # warned recently: skip the sum, too
        undelivered = self._db.transact(
            lambda conn: conn.execute(_UNDELIVERED_BYTES).fetchone()[0], write=False
        )
        if undelivered >= _UNDELIVERED_WARN * cap:
            self._warn_undelivered(undelivered, cap)

    def _warn_undelivered(self, undelivered: int, cap: int) -> None:
        if not self.delivery_enabled:
            return  # a local store only: nothing is waiting for delivery
        if self._health.may_warn("undelivered", _UNDELIVERED_WARN_INTERVAL_S):
            logger.warning(
                "lucidic-otel: about %s of undelivered data is waiting in the local store %s, "
                "%d%% of its %.1f MB cap (%s). Delivery is failing or disabled (no "
                "LUCIDIC_API_KEY?); once the cap is reached the oldest undelivered data is "
                "dropped. Raise %s or check delivery.",
                human(undelivered), self._db.path, int(100 * undelivered / cap), cap / 1048576,
                MAX_MB_VARIABLE, MAX_MB_VARIABLE,
            )


# ------------------------------------------------------------------- one step, one transaction


def _delete_oldest(
    conn: sqlite3.Connection, table: str, key: str, where: str, params: tuple, need: int
) -> Tuple[int, int]:
    """Delete the oldest rows matching ``where`` until their estimated size covers ``need``
    bytes (at least one row, at most ``_EVICT_CHUNK``); returns (rows, bytes)."""
    oldest = conn.execute(
        f"SELECT {key}, nbytes FROM {table} WHERE {where} ORDER BY {key} LIMIT {_EVICT_CHUNK}",
        params,
    ).fetchall()
    doomed: List[Tuple[int]] = []
    total = 0
    for row_key, nbytes in oldest:
        doomed.append((row_key,))
        total += nbytes or 0
        if total >= need:
            break
    conn.executemany(f"DELETE FROM {table} WHERE {key} = ?", doomed)
    return len(doomed), total


def _evict_session(conn: sqlite3.Connection, session: sqlite3.Row, need: int) -> int:
    """Remove the oldest spans of a settled session, and the session once it has none."""
    no, session_id = session["no"], session["session_id"]
    removed = 0
    if session["first_span"] is not None:
        removed, _ = _delete_oldest(conn, "spans", "id", "session_no = ?", (no,), need)
    if conn.execute("SELECT 1 FROM spans WHERE session_no = ? LIMIT 1", (no,)).fetchone():
        return removed
    removed += conn.execute(
        f"DELETE FROM outbox WHERE session_id = ? AND {_DELIVERED}", (session_id,)
    ).rowcount
    conn.execute("DELETE FROM session_services WHERE session_no = ?", (no,))
    conn.execute("DELETE FROM session_aliases WHERE session_id = ?", (session_id,))
    return removed + conn.execute("DELETE FROM sessions WHERE no = ?", (no,)).rowcount


def _evict_settled_chunk(conn: sqlite3.Connection, need: int) -> Tuple[int, int]:
    """One step of silent eviction; returns (rows removed, used bytes after)."""
    session = conn.execute(_SETTLED_SESSION).fetchone()
    sessionless = conn.execute("SELECT min(id) FROM spans WHERE session_no IS NULL").fetchone()[0]
    if session is not None and (
        sessionless is None or session["first_span"] is None
        or session["first_span"] <= sessionless
    ):
        removed = _evict_session(conn, session, need)
    elif sessionless is not None:
        removed, _ = _delete_oldest(conn, "spans", "id", "session_no IS NULL", (), need)
    else:
        removed, _ = _delete_oldest(conn, "outbox", "seq", _DELIVERED, (), need)
        if not removed:
            removed = conn.execute(
                "DELETE FROM resources WHERE id NOT IN"
                " (SELECT resource_id FROM spans WHERE resource_id IS NOT NULL)"
            ).rowcount
    return removed, _used_bytes(conn)


def _drop_undelivered_chunk(
    conn: sqlite3.Connection, need: int
) -> Tuple[Tuple[int, int, int], int]:
    """One step of dropping undelivered data: failed-aside items first (they will never be
    delivered), then the older of the oldest span and the oldest pending item."""
    spans = 0
    items, nbytes = _delete_oldest(conn, "outbox", "seq", _FAILED, (), need)
    if not items:
        span = conn.execute("SELECT end_ns FROM spans ORDER BY id LIMIT 1").fetchone()
        item = conn.execute(
            f"SELECT created_at FROM outbox WHERE {_PENDING} ORDER BY seq LIMIT 1"
        ).fetchone()
        if span is not None and (item is None or (span[0] or 0) / 1e9 <= item[0]):
            spans, nbytes = _delete_oldest(conn, "spans", "id", "1", (), need)
        elif item is not None:
            items, nbytes = _delete_oldest(conn, "outbox", "seq", _PENDING, (), need)
    return (spans, items, nbytes), _used_bytes(conn)


def _release_free_pages(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA incremental_vacuum({_VACUUM_PAGES})").fetchall()
