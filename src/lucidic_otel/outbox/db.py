"""Connections to the store's file (or to the in-memory fallback), and transactions on them.

Why this is its own layer: everything that makes SQLite safe to share between threads,
processes and ``fork()`` is here, so the rest of the package only says what a transaction
does (:meth:`Database.transact`).

- Writes use ``BEGIN IMMEDIATE`` (take the write lock up front, so a transaction never fails
  half-way when upgrading a read lock), wait on ``busy_timeout`` and are retried with a bounded,
  jittered backoff on ``database is locked``.
- Connections are opened lazily, one per thread and per process. A SQLite connection must not
  cross ``fork()``: a child notices the pid change (and ``os.register_at_fork``) and opens its
  own, leaving the inherited objects untouched (closing them could disturb the parent's locks).
- :class:`_ForkGate`: no transaction of this process is open while it forks.
- A file that proves unusable is reported to ``on_fatal`` (the store then switches to memory,
  or hands the problem to its owner); a transaction that was waiting for the file at the switch
  is retried in memory, never lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TypeVar

from lucidic_otel.outbox import schema
from lucidic_otel.outbox.health import Health
from lucidic_otel.outbox.problems import BadDataError, SwitchedError, UnavailableError, classify

logger = logging.getLogger(__name__)

T = TypeVar("T")

_BUSY_TIMEOUT_S = 1.0
# Sleeps between attempts after busy_timeout expired; the worst case stays under ~10 s.
_LOCK_RETRY_DELAYS = (0.01, 0.03, 0.1, 0.3, 1.0)
_JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024

FILE = "file"
MEMORY = "memory"


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, write: bool) -> Iterator[sqlite3.Connection]:
    """One transaction on ``conn`` (autocommit mode): committed at the end of the block,
    rolled back if the block raises. ``write`` takes the write lock at once."""
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def open_memory() -> sqlite3.Connection:
    """A private in-memory database with the store's schema (the fallback)."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    for statement in schema.all_statements():
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version={schema.SCHEMA_VERSION}")
    return conn


class _ForkGate:
    """No transaction of this process is open while it forks.

    SQLite keeps, per process, which of its connections hold which file lock. A child forked
    while a thread of the parent was inside a transaction (the sender claiming, the exporter
    writing) inherits that record with a connection that will never finish: every new
    connection in the child is then refused with "database is locked", and a pool worker's
    spans were lost (seen: 1 of 6 events delivered, about one run in five). So a fork waits
    (bounded) for open transactions to end and holds new ones back until it is done.
    """

    WAIT_S = 2.0

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._open = 0
        self._held = False

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        """Count a transaction as open for the duration of the block."""
        with self._cond:
            self._open += 1
        try:
            yield
        finally:
            with self._cond:
                self._open -= 1
                if self._open == 0:
                    self._cond.notify_all()

    def before_fork(self) -> None:
        self._cond.acquire()  # new transactions wait from here until the fork is done
        self._held = True
        self._cond.wait_for(lambda: self._open == 0, timeout=self.WAIT_S)

    def after_fork_in_parent(self) -> None:
        if self._held:
            self._held = False
            self._cond.release()

    def after_fork_in_child(self) -> None:
        self.__init__()  # type: ignore[misc]  # no other thread exists in the child


_FORK_GATE = _ForkGate()
# Connections inherited across fork() are never used nor closed in the child (closing could
# release or disturb the parent's locks); they are parked here so garbage collection does not
# close them either. At most one per thread that had a connection at fork time.
_ABANDONED: List[sqlite3.Connection] = []
_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()


def abandon(conns: Sequence[Optional[sqlite3.Connection]]) -> None:
    """Park connections inherited from the parent (see ``_ABANDONED``)."""
    _ABANDONED.extend(conn for conn in conns if conn is not None)


def _reset_after_fork() -> None:
    for database in list(_LIVE):
        database.on_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_FORK_GATE.before_fork,
        after_in_parent=_FORK_GATE.after_fork_in_parent,
        after_in_child=_FORK_GATE.after_fork_in_child,
    )
    os.register_at_fork(after_in_child=_reset_after_fork)


class Database:
    """The connections of one store in this process: the file's, or the memory fallback's.

    ``on_fatal(exc)`` is called when the file proved unusable; it returns True when the
    problem was handed elsewhere (the transaction then fails), False when the store switched
    to memory (the transaction is retried there). ``on_fork()`` is called in a forked child
    before its first use of the store.
    """

    def __init__(self, path: Path, health: Health) -> None:
        self.path = path
        self.health = health
        self.mode = FILE
        self.mem_conn: Optional[sqlite3.Connection] = None
        self.on_fatal: Callable[[BaseException], bool] = lambda exc: True
        self.on_fork: Callable[[], None] = self.after_fork
        self._state_lock = threading.Lock()
        self.mem_lock = threading.Lock()
        self.local = threading.local()
        self._conns: Dict[int, sqlite3.Connection] = {}
        self._generation = 0
        self._pid = os.getpid()
        self._schema_ready = False
        _LIVE.add(self)

    # ------------------------------------------------------------------ running

    def transact(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``fn`` in one transaction, retrying lock contention and moving to memory when
        the file is unusable. Raises ``BadDataError`` or ``UnavailableError``."""
        attempt = 0
        for _ in range(len(_LOCK_RETRY_DELAYS) + 3):
            # The mode this attempt used: another thread may switch to memory meanwhile, and
            # then this batch must be retried there, not reported as lost.
            mode = self.mode
            try:
                with _FORK_GATE.open():  # left before any back-off sleep below
                    with self._connection() as conn, transaction(conn, write):
                        if self.mode != FILE and conn is not self.mem_conn:
                            # The file lock was taken after the switch: retry in memory, so a
                            # write either commits before the carry reads the file or lands
                            # in memory; none is left behind.
                            raise SwitchedError()
                        return fn(conn)
            except SwitchedError:
                continue
            except Exception as exc:  # noqa: BLE001 - classified below
                kind = classify(exc)
                if kind == "locked" and attempt < len(_LOCK_RETRY_DELAYS):
                    time.sleep(_LOCK_RETRY_DELAYS[attempt] * (0.5 + random.random()))
                    attempt += 1
                    continue
                if kind == "fatal" and mode == FILE:
                    if self.on_fatal(exc):
                        raise UnavailableError(str(exc)) from exc
                    continue
                if kind == "data":
                    raise BadDataError(str(exc)) from exc
                raise UnavailableError(str(exc)) from exc
        raise UnavailableError("retries exhausted")

    def run(self, what: str, fn: Callable[[sqlite3.Connection], T], *, write: bool,
            default: T) -> T:
        """:meth:`transact`, but ``default`` (counted and logged) instead of an exception."""
        return self.health.guarded(what, lambda: self.transact(fn, write=write), default)

    def update(self, what: str, sql: str, rows: List[tuple]) -> bool:
        """``executemany(sql, rows)`` in one write transaction; False if it failed."""
        if not rows:
            return True

        def apply(conn: sqlite3.Connection) -> bool:
            conn.executemany(sql, rows)
            return True

        return self.run(what, apply, write=True, default=False)

    # ------------------------------------------------------------------ connections

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._pid != os.getpid():
            self.on_fork()
        if self.mode == FILE:
            yield self._file_connection()
            return
        with self.mem_lock:
            if self.mem_conn is None:
                self.mem_conn = open_memory()
            yield self.mem_conn

    def _file_connection(self) -> sqlite3.Connection:
        local = self.local
        conn = getattr(local, "conn", None)
        if conn is not None and local.generation == self._generation:
            return conn
        if conn is not None:
            local.conn = None
            with contextlib.suppress(Exception):
                conn.close()
        conn = self._open_file()
        local.conn, local.generation = conn, self._generation
        with self._state_lock:
            alive = {thread.ident for thread in threading.enumerate()}
            for ident in [ident for ident in self._conns if ident not in alive]:
                with contextlib.suppress(Exception):
                    self._conns.pop(ident).close()
            self._conns[threading.get_ident()] = conn
        return conn

    def _open_file(self) -> sqlite3.Connection:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            # Prompts and completions end up here: readable by this user only.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(
            str(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.row_factory = sqlite3.Row
        try:
            if not self._schema_ready:
                self._ensure_schema(conn)
                self._schema_ready = True
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        """Create or check the schema; safe when several processes open a new file at once.

        ``auto_vacuum`` only takes effect on a file without tables, so it is set first; it
        lets the cap give space back to the file system (``incremental_vacuum``).
        """
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        journal = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(journal).lower() != "wal" and self.health.may_warn("no-wal", float("inf")):
            logger.warning(
                "lucidic-otel: the local store %s cannot use WAL mode (journal_mode=%s); "
                "concurrent processes will wait for each other more often",
                self.path, journal,
            )
        with transaction(conn, True):
            schema.create_or_check(conn)

    # ------------------------------------------------------------------ switching, closing

    def switch_to_memory(self) -> bool:
        """Use the memory database from now on; False if another thread switched first.

        Every thread drops its file connection at its next use. Call with ``mem_lock`` held.
        """
        with self._state_lock:
            if self.mode != FILE:
                return False
            self.mode = MEMORY
            self._generation += 1
        if self.mem_conn is None:
            self.mem_conn = open_memory()
        return True

    def forked(self) -> bool:
        """True in a child forked since this process last used the store."""
        return self._pid != os.getpid()

    def close(self) -> None:
        """Close this process's connections; a later use reopens lazily."""
        with self._state_lock:
            conns = list(self._conns.values())
            self._conns.clear()
            self._generation += 1
            mem, self.mem_conn = self.mem_conn, None
        for conn in conns + ([mem] if mem is not None else []):
            with contextlib.suppress(Exception):
                conn.close()

    def after_fork(self) -> None:
        """Called in a child: drop (without closing) everything the parent had open."""
        self._pid = os.getpid()
        self._state_lock = threading.Lock()
        self.mem_lock = threading.Lock()
        abandon([*self._conns.values(), self.mem_conn])
        self._conns = {}
        self.mem_conn = None
        self.local = threading.local()
        self._generation += 1

