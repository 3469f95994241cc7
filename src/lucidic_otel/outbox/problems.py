"""What can go wrong with the store's file, and what the user should do about it.

Why apart: the store reacts to an error by its class (retry a lock, coerce a value that would
not bind, give up on the file), and the one warning it prints must name the cause and the fix.
Both decisions are made here, from the exception alone, so they can be read (and tested) next
to each other.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lucidic_otel.environment_variables import LUCIDIC_STORE_MAX_MB, LUCIDIC_STORE_PATH
from lucidic_otel.outbox.schema import UnusableStoreError

logger = logging.getLogger(__name__)

# Named in messages (the variables themselves are read by lucidic_otel.config only).
PATH_VARIABLE = LUCIDIC_STORE_PATH
MAX_MB_VARIABLE = LUCIDIC_STORE_MAX_MB


@dataclass(frozen=True)
class StorePathProblem:
    """Why a path can never hold the store (``reason``) and what to do (``remedy``)."""

    reason: str
    remedy: str


class BadPathError(Exception):
    """The path can never hold a store; found by :func:`store_path_problem`, before opening."""

    def __init__(self, problem: StorePathProblem) -> None:
        super().__init__(problem.reason)
        self.problem = problem


class BadDataError(Exception):
    """A value could not be bound; the caller retries with coerced values."""


class UnavailableError(Exception):
    """The operation could not be completed (lock held too long, memory store failed)."""


class SwitchedError(Exception):
    """The store moved to memory while this transaction waited for the file; retry there."""


def classify(exc: BaseException) -> str:
    """``locked`` (retry), ``data`` (coerce and retry), ``fatal`` (file unusable) or ``bug``."""
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        if "locked" in message or "busy" in message:
            return "locked"
    if isinstance(
        exc,
        (sqlite3.InterfaceError, sqlite3.ProgrammingError, sqlite3.IntegrityError,
         UnicodeError, OverflowError, TypeError, ValueError),
    ):
        return "data"
    if isinstance(exc, (sqlite3.DatabaseError, OSError, UnusableStoreError, BadPathError)):
        return "fatal"
    return "bug"


def root_cause(exc: BaseException) -> BaseException:
    """The error behind this package's own wrapper exceptions, for log messages."""
    if isinstance(exc, (UnavailableError, BadDataError)) and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def describe(exc: BaseException) -> str:
    """The error for the warning line: our own path reasons need no exception type."""
    return str(exc) if isinstance(exc, BadPathError) else f"{type(exc).__name__}: {exc}"


def _is_unwritable(exc: BaseException, message: str) -> bool:
    return isinstance(exc, (PermissionError, NotADirectoryError, FileExistsError)) or any(
        words in message
        for words in ("readonly", "read-only", "unable to open", "permission")
    )


def remedy(exc: BaseException, path: Path) -> str:
    """What the user should do about ``exc`` at ``path`` (the "To fix:" part of the warning)."""
    message = str(exc).lower()
    if isinstance(exc, BadPathError):
        return exc.problem.remedy
    if isinstance(exc, UnusableStoreError):
        return (
            f"upgrade lucidic-otel in this environment or point {PATH_VARIABLE} at another "
            "file, then restart"
        )
    if "not a database" in message or "malformed" in message or "corrupt" in message:
        return (
            f"the file is damaged or is not a lucidic-otel store: move it aside (mv '{path}' "
            f"'{path}.bad') or point {PATH_VARIABLE} at another file, then restart"
        )
    if "full" in message or getattr(exc, "errno", None) == 28:
        return f"free disk space (or lower {MAX_MB_VARIABLE}), then restart"
    if _is_unwritable(exc, message):
        return (
            f"make '{path.parent}' writable by this user or point {PATH_VARIABLE} at a "
            "writable location, then restart"
        )
    return (
        "check the disk and the file system (network file systems without working locks are "
        f"not supported) or point {PATH_VARIABLE} at a file on a local disk, then restart"
    )


def _missing_path_problem(path: Path) -> Optional[StorePathProblem]:
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return StorePathProblem(
            f"'{ancestor}' is a file, not a directory",
            f"point {PATH_VARIABLE} at a file in a directory (not under the file "
            f"'{ancestor}'), then restart",
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        missing = "the file" if ancestor == path.parent else f"the directory '{path.parent}'"
        return StorePathProblem(
            f"{missing} cannot be created: '{ancestor}' is not writable by this user",
            f"make '{ancestor}' writable by this user or point {PATH_VARIABLE} at a "
            "writable location, then restart",
        )
    return None


def store_path_problem(path: os.PathLike[str] | str) -> Optional[StorePathProblem]:
    """What makes ``path`` unusable as a store, known without creating or opening anything.

    Only certain answers: a directory where the file should be, a regular file where a
    directory should be, or a missing file whose nearest existing directory this user cannot
    write (so neither it nor its directory can be created). Whatever else can go wrong (a
    damaged or read-only file, a full disk) is only known by opening the file, and is
    reported then. Never raises: a path it cannot examine gets None.
    """
    try:
        path = Path(os.path.abspath(os.fspath(path)))
        if path.is_dir():
            return StorePathProblem(
                "it is a directory, and a file path is expected",
                f"point {PATH_VARIABLE} at a file, for example '{path / 'store.db'}', then "
                "restart",
            )
        if path.exists() or path.is_symlink():
            return None  # a file: opening it tells whether it is a usable store
        return _missing_path_problem(path)
    except (OSError, ValueError):
        return None
