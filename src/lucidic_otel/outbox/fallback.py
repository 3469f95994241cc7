"""The in-memory fallback: what a process does when its store's file cannot be used.

A file that cannot be used at all (cannot create the directory, read-only location, corrupt or
foreign file, disk full, I/O error, a schema from a newer version) gets one warning naming the
path, the error and the fix; the process then keeps working on a private in-memory database of
the same schema, capped at ``min(max_bytes, 64 MB)`` with the same eviction rules and warnings.
The sender can still deliver from it; what is undelivered at exit is counted and reported at
close. The file is never moved or deleted: another process may still be using it, and it is the
user's data.

Why the carry (copying what the file still owes into memory at the switch) is kept rather than
starting empty: an event written to memory must still wait for its session's ``initsession``
that was pending in the file, an end must follow its events, and a session opened before the
switch must stay endable, with the backend's id for it. Starting empty and re-recording open
sessions would send those events before their session exists (the backend rejects them) or
twice with new seqs; the tests of the switch pin this behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from lucidic_otel.outbox.capacity import Capacity
from lucidic_otel.outbox.db import MEMORY, Database, abandon, transaction
from lucidic_otel.outbox.health import Health
from lucidic_otel.outbox.problems import (
    BadPathError,
    describe,
    remedy,
    store_path_problem,
)
from lucidic_otel.outbox.schema import SCHEMA_VERSION, UnusableStoreError, sql

logger = logging.getLogger(__name__)

# Leases are not carried (lease_until = 0): the sender holding one may be unable to mark the
# item, in the file (a delivery process, another process) or at all, and a kept lease would
# hold the item, and every later item of its session, for up to half a minute. An item in
# flight at the switch may so be sent twice, with the same client_event_id (at-least-once).
_OUTBOX_COLUMNS = (
    "seq, kind, session_id, key, body, nbytes, attempts, next_attempt_at, lease_until,"
    " last_error, created_at, updated_at"
)
_CARRY_OUTBOX = sql(
    "SELECT seq, kind, session_id, key, body, nbytes, attempts, next_attempt_at, 0,"
    " last_error, created_at, updated_at FROM outbox WHERE state = {pending} ORDER BY seq"
)
_SESSION_COLUMNS = (
    "session_id, initiated, name, task, meta, started_ns, last_end_ns, ended_ns, is_successful,"
    " is_successful_reason, session_eval, session_eval_reason, span_count, llm_calls,"
    " input_tokens, output_tokens, cost, updated_at"
)
# Sessions with pending items, and sessions opened here and not ended yet (their end must be
# recordable in memory); filtered in Python against the carried items.
_CARRY_SESSIONS = sql(
    f"SELECT {_SESSION_COLUMNS} FROM sessions AS s"
    " WHERE (s.initiated = 1 AND s.ended_ns IS NULL) OR EXISTS (SELECT 1 FROM outbox AS o"
    " WHERE o.session_id = s.session_id AND o.state = {pending})"
)
_CARRY_ALIASES = "SELECT session_id, backend_session_id FROM session_aliases"
_CARRY_TIMEOUT_S = 5.0
_UNCARRIED_PENDING = sql("SELECT count(*) FROM outbox WHERE state = {pending} AND seq > ?")
_MAX_MARK_FAILURES = 3


def _marks(columns: str) -> str:
    return ",".join("?" * len(columns.split(",")))


def _insert_carried(conn: sqlite3.Connection, rows: List[tuple], sessions: List[tuple],
                    aliases: List[tuple]) -> None:
    conn.executemany(
        f"INSERT OR IGNORE INTO outbox ({_OUTBOX_COLUMNS}) VALUES ({_marks(_OUTBOX_COLUMNS)})",
        rows,
    )
    conn.executemany(
        f"INSERT OR IGNORE INTO sessions ({_SESSION_COLUMNS})"
        f" VALUES ({_marks(_SESSION_COLUMNS)})",
        sessions,
    )
    conn.executemany(
        "INSERT OR IGNORE INTO session_aliases (session_id, backend_session_id) VALUES (?, ?)",
        aliases,
    )


@dataclass
class _Owed:
    """What the file still owes, as plain tuples in the column order of :func:`_insert_carried`."""

    items: List[tuple] = field(default_factory=list)
    sessions: List[tuple] = field(default_factory=list)
    aliases: List[tuple] = field(default_factory=list)
    last_seq: int = 0


def _read_owed(src: sqlite3.Connection, budget: int) -> _Owed:
    """Pending items up to ``budget`` bytes, their sessions and the open ones, their aliases."""
    owed = _Owed()
    sids = set()
    used = 0
    for row in src.execute(_CARRY_OUTBOX):
        used += row["nbytes"]
        if used > budget:
            break
        owed.items.append(tuple(row))
        sids.add(row["session_id"])
        owed.last_seq = row["seq"]  # ascending
    carried_sids = set(sids)
    for row in src.execute(_CARRY_SESSIONS):
        if row["session_id"] in sids or (row["initiated"] and row["ended_ns"] is None):
            owed.sessions.append(tuple(row))
            carried_sids.add(row["session_id"])
    owed.aliases = [tuple(row) for row in src.execute(_CARRY_ALIASES)
                    if row["session_id"] in carried_sids]
    return owed


class MemoryFallback:
    """The switch of one store to memory, and the bookkeeping of what it carried."""

    def __init__(self, db: Database, health: Health, capacity: Capacity) -> None:
        self._db = db
        self._health = health
        self._capacity = capacity
        self.carried_up_to = 0  # items up to this seq are in the file too (after a switch)
        self._marks_lock = threading.Lock()
        self._marks_conn: Optional[sqlite3.Connection] = None
        self._marks_failures = 0

    def after_fork(self) -> None:
        abandon([self._marks_conn])
        self._marks_conn = None
        self._marks_lock = threading.Lock()
        self.carried_up_to = 0  # the child's memory store starts empty

    def close(self) -> None:
        with self._marks_lock:
            conn, self._marks_conn = self._marks_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def switch(self, exc: BaseException) -> None:
        """Move the store to memory, carrying over what the file still owes.

        The memory lock is held from the switch until the carry is done, so no memory
        transaction runs before the carried items are there. File transactions that already
        hold the write lock finish first (the carry waits for the lock); later ones see the
        switch and retry in memory.
        """
        # The same error ("unable to open database file", ENOTDIR from mkdir) has several
        # causes; when the path itself is the cause, the warning says what is wrong with it.
        problem = None if isinstance(exc, BadPathError) else store_path_problem(self._db.path)
        if problem is not None:
            exc = BadPathError(problem)
        with self._db.mem_lock:
            if not self._db.switch_to_memory():
                return
            self._health.count(errors=1)
            # A newer version's file is never written, so nothing of it is carried (its items
            # would be marked in it), a damaged one has nothing readable, and a path that
            # cannot hold a store holds nothing.
            carry = not isinstance(exc, (UnusableStoreError, BadPathError))
            mem = self._db.mem_conn  # opened by the switch
            items, sessions = self._carry_into(mem) if carry and mem is not None else (0, 0)
        carried = (
            f" {items} undelivered items and {sessions} open sessions were carried over from "
            "the file, which keeps them too, for the next process or `lucidic-otel upload`."
            if items or sessions else ""
        )
        logger.warning(
            "lucidic-otel: cannot use the local store %s (%s). This process keeps its "
            "telemetry in memory instead (at most %d MB; anything undelivered is lost at exit, "
            "and `lucidic-otel sessions` will not show it).%s To fix: %s.",
            self._db.path, describe(exc), self._capacity.cap() // (1024 * 1024), carried,
            remedy(exc, self._db.path),
        )

    def _read_file(self) -> Optional[_Owed]:
        try:
            src = sqlite3.connect(str(self._db.path), timeout=_CARRY_TIMEOUT_S,
                                  isolation_level=None)
            src.row_factory = sqlite3.Row
        except Exception:  # noqa: BLE001 - nothing to carry from a file that will not open
            return None
        try:
            if src.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                return None  # not a file this version writes
            try:
                # Waits for a writer that committed to the file before the switch.
                src.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                src.execute("BEGIN")
            owed = _read_owed(src, self._capacity.cap() // 2)
            src.execute("ROLLBACK")
            return owed
        except Exception as exc:  # noqa: BLE001 - a damaged file carries nothing
            logger.debug("nothing carried from %s: %s", self._db.path, exc)
            return None
        finally:
            with contextlib.suppress(Exception):
                src.close()

    def _carry_into(self, mem: sqlite3.Connection) -> Tuple[int, int]:
        """Copy the file's pending outbox items, open sessions and aliases into ``mem``.

        Items keep their seq, so ordering holds across the switch (an end still follows its
        events), an item this process's sender claimed from the file can be marked in memory,
        and new items get later seqs. Leases are released (see ``_CARRY_OUTBOX``). Best
        effort: a file that cannot be read carries nothing (it still holds everything it
        held). Returns (items, sessions) carried.
        """
        owed = self._read_file()
        if owed is None:
            return 0, 0
        try:
            with transaction(mem, True):
                _insert_carried(mem, owed.items, owed.sessions, owed.aliases)
        except Exception as exc:  # noqa: BLE001 - the file still has them
            self._health.log_error("carry to memory", exc)
            return 0, 0
        self.carried_up_to = owed.last_seq
        return len(owed.items), len(owed.sessions)

    def mark_in_file_too(self, sql_text: str, rows: List[tuple]) -> None:
        """After a switch to memory, also settle carried items in the file, if it lets us.

        The file keeps every item it held at the switch, and the next process or
        ``lucidic-otel upload`` would deliver the ones this process already delivered a second
        time (same ids, so the backend can tell, but avoidable). Updating rows in place often
        still works on a full disk or at a file-size limit (the WAL reuses its space); when it
        does not, a few attempts are made and then the file is left alone. Each row ends with
        the item's seq.
        """
        carried = self.carried_up_to
        if not carried or self._db.mode != MEMORY or self._marks_failures >= _MAX_MARK_FAILURES:
            return
        rows = [row for row in rows if row[-1] <= carried]
        if not rows:
            return
        with self._marks_lock:
            try:
                if self._marks_conn is None:
                    self._marks_conn = sqlite3.connect(
                        str(self._db.path), timeout=0.2, isolation_level=None,
                        check_same_thread=False,
                    )
                with transaction(self._marks_conn, True):
                    self._marks_conn.executemany(sql_text, rows)
                self._marks_failures = 0
            except Exception as exc:  # noqa: BLE001 - the file is known to be failing
                self._marks_failures += 1
                logger.debug("could not settle carried items in %s too: %s", self._db.path, exc)

    def undelivered_only_in_memory(self) -> int:
        """Pending items in memory that the file does not also hold (carried ones it does)."""
        return self._db.run(
            "close",
            lambda conn: conn.execute(_UNCARRIED_PENDING, (self.carried_up_to,)).fetchone()[0],
            write=False, default=0,
        )
