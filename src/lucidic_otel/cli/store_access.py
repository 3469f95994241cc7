"""Opening the local store for reading: which path, whether it is a store, and why not.

Every command that reads (``sessions``, ``show``, ``doctor``, the ``ui`` viewer, the demo's
summary) starts here. Why a module of its own: the :class:`~lucidic_otel.outbox.store.Store`
class is built for an exporter, so it creates a missing file and silently falls back to memory
on a bad one; a reader must do neither. It must leave a missing store missing, and refuse, in
one line, a path that is not a readable store, instead of showing an empty list for a broken
file. So the file is first looked at through a connection SQLite forbids from writing
(:func:`probe_store`), and the ``Store`` is opened only when there is something to read.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional
from urllib.parse import quote

from lucidic_otel.cli.text import one_line
from lucidic_otel.config import Settings, load_settings
from lucidic_otel.outbox.store import SCHEMA_VERSION, Store, default_store_path

logger = logging.getLogger(__name__)

_SQLITE_HEADER = b"SQLite format 3\x00"
# The store's modules log under this name; a reader reports their problems itself.
STORE_LOGGER = "lucidic_otel.outbox"


class CommandError(Exception):
    """A failure to report as one line on stderr, with the exit status to return."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class StoreUnreadableError(Exception):
    """The store path holds something that is not a readable lucidic-otel store.

    ``kind`` says what, for advice: ``not-sqlite`` and ``damaged`` files make recording
    programs fall back to memory too; other kinds (``unreadable``) only stop the reader.
    """

    def __init__(self, message: str, kind: str = "unreadable") -> None:
        super().__init__(message)
        self.kind = kind


def store_path_for(settings: Settings, override: Optional[os.PathLike[str] | str] = None) -> Path:
    """The store a command reads: ``--store``, else the path the exporter would write."""
    if override is not None:
        return Path(override).expanduser()
    return settings.store_path or default_store_path(os.environ)


def _file_state(path: Path) -> bool:
    """False for a path with nothing recorded yet (missing, empty); raises for a path that
    cannot hold a store (a directory, a device, an unreadable entry)."""
    try:
        if not path.exists():
            return False
        if path.is_dir():
            raise StoreUnreadableError(f"cannot read the store {path}: it is a directory")
        if not path.is_file():
            raise StoreUnreadableError(f"cannot read the store {path}: it is not a regular file")
        return path.stat().st_size != 0
    except OSError as exc:
        raise StoreUnreadableError(f"cannot read the store {path}: {exc.strerror or exc}") from exc


def probe_store(path: Path) -> bool:
    """True when ``path`` is a store with tables, False when nothing was recorded there yet.

    Opens the file read-only, so a command that only reads never creates or changes it (the
    :class:`Store` class creates missing files and degrades to memory on bad ones, which is
    right for an exporter and wrong for a reader). Raises :class:`StoreUnreadableError` with
    a one-line reason for a directory, an unreadable file, a file that is not SQLite, another
    program's database, or a store written by a newer lucidic-otel.
    """
    if not _file_state(path):
        return False
    try:
        with read_only(path) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )}
    except sqlite3.Error as exc:
        raise unreadable(path, exc) from exc
    if version > SCHEMA_VERSION:
        raise StoreUnreadableError(
            f"cannot read the store {path}: it was written by a newer lucidic-otel (schema "
            f"{version}, this one reads {SCHEMA_VERSION}); upgrade lucidic-otel"
        )
    if not tables:
        return False
    if version != SCHEMA_VERSION or not {"sessions", "spans", "outbox"} <= tables:
        raise StoreUnreadableError(
            f"cannot read the store {path}: it is an SQLite database but not a lucidic-otel store"
        )
    return True


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that can neither create ``path`` nor change it."""
    uri = "file:" + quote(str(path.resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=2.0)
    try:
        yield conn
    finally:
        conn.close()


def unreadable(path: Path, exc: sqlite3.Error) -> StoreUnreadableError:
    """The error for a file SQLite refused. A file that is not SQLite at all and a damaged
    SQLite file need different care (the second may be a store worth recovering), so the
    reason says which it is."""
    try:
        with path.open("rb") as file:
            is_sqlite = file.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError as error:
        return StoreUnreadableError(f"cannot read the store {path}: {error.strerror or error}")
    if not is_sqlite:
        return StoreUnreadableError(
            f"cannot read the store {path}: it is not an SQLite database ({exc})", "not-sqlite"
        )
    return StoreUnreadableError(
        f"cannot read the store {path}: it is a damaged SQLite database ({exc})", "damaged"
    )


def session_ids_with_prefix(path: Path, prefix: str, limit: int) -> List[str]:
    """Up to ``limit`` session ids of the store at ``path`` that start with ``prefix``, sorted.

    Read-only, like :func:`probe_store` (call that first). Raises
    :class:`StoreUnreadableError` when the file cannot be read.
    """
    try:
        with read_only(path) as conn:
            rows = conn.execute(
                "SELECT session_id FROM sessions WHERE substr(session_id, 1, length(?1)) = ?1"
                " ORDER BY session_id LIMIT ?2",
                (prefix, limit),
            ).fetchall()
    except sqlite3.Error as exc:
        raise unreadable(path, exc) from exc
    return [str(row[0]) for row in rows]


def count_sessions(path: Path) -> Optional[int]:
    """How many sessions the store at ``path`` holds, or None if it cannot be read."""
    try:
        with read_only(path) as conn:
            return int(conn.execute("SELECT count(*) FROM sessions").fetchone()[0])
    except (sqlite3.Error, OSError):
        return None


def check_integrity(path: Path) -> None:
    """Raise :class:`StoreUnreadableError` for a store with damaged pages.

    Opening a damaged file often works and the damage only shows in the rows a query reaches,
    so ``doctor`` (run to find problems) reads every page once; the other commands do not.
    """
    try:
        with read_only(path) as conn:
            verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.Error as exc:
        raise unreadable(path, exc) from exc
    if verdict != "ok":
        raise StoreUnreadableError(
            f"cannot read the store {path}: it is a damaged SQLite database "
            f"({' '.join(str(verdict).split())})",
            "damaged",
        )


def store_size(path: Path) -> int:
    """The bytes the store takes on disk: the file and its write-ahead log."""
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(str(path) + suffix).st_size
    return total


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[List[str]]:
    """Collect what ``name`` (and its child loggers) log instead of printing it; yields the
    list of messages.

    The store and the settings log their problems for programs under instrumentation; the CLI
    reports them itself, in one line, so the log lines (and any traceback) must not reach the
    terminal.
    """
    named = logging.getLogger(name)
    handler = _Collect()
    saved = named.propagate
    named.addHandler(handler)
    named.propagate = False
    try:
        yield handler.messages
    finally:
        named.removeHandler(handler)
        named.propagate = saved


def check_store_usable(store: Store, messages: List[str]) -> None:
    """Raise :class:`StoreUnreadableError` if reads from ``store`` silently returned nothing.

    ``Store`` never raises: an unusable file makes it switch to an empty in-memory database,
    and a failed read returns an empty answer. A reader must tell that apart from "no data".
    """
    stats = store.stats()
    if stats.get("mode") != "file" or stats.get("errors"):
        reason = messages[0] if messages else "the file could not be used"
        raise StoreUnreadableError(f"cannot read the store {store.path}: {reason}")


class StoreReader:
    """The store at a path, opened for reading only when there is something to read."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._max_bytes = max_bytes

    def read(self, reader: Callable[[Store], Any], empty: Any) -> Any:
        """``reader(store)``, or ``empty`` when no store exists yet; raises ``CommandError``."""
        try:
            if not probe_store(self.path):
                return empty
            with quiet_logger(STORE_LOGGER) as messages:
                store = Store(self.path, max_bytes=self._max_bytes)
                try:
                    result = reader(store)
                    check_store_usable(store, messages)
                finally:
                    store.close()
        except StoreUnreadableError as exc:
            raise CommandError(one_line(exc)) from exc
        return result


def reader_for(args: argparse.Namespace) -> StoreReader:
    """The reader of the store a command was given (``args.store``, already resolved)."""
    return StoreReader(args.store, load_settings().store_max_bytes)
