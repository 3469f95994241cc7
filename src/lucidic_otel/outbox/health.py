"""The store's counters, its rate-limited warnings, and its never-raise boundary.

Why per store and not :mod:`lucidic_otel._diagnostics`: the counters are part of the API
(``Store.stats()``: what was written, evicted, dropped), and the warnings are rate-limited per
store, which is per file. A process can hold several stores (the CLI opens one per command,
tests one per case), and each must say once that its own file fails or overflows; a
process-wide log-once key would silence all but the first. The messages also name the file and
the count of rows lost, which the generic "X failed" line of ``_diagnostics`` does not.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, TypeVar

from lucidic_otel.outbox.problems import classify, root_cause

logger = logging.getLogger(__name__)

T = TypeVar("T")

COUNTERS = ("spans_written", "events_written", "lifecycle_written", "evicted", "dropped", "errors")
ERROR_LOG_INTERVAL_S = 60.0


class Health:
    """Counters and warning times of one store; thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._last_warned: Dict[str, float] = {}

    def after_fork(self) -> None:
        """In a child: counters start at zero (they are this process's); warning times stay."""
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)

    def count(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._counters[name] += amount

    def counters(self) -> Dict[str, Any]:
        with self._lock:
            return dict(self._counters)

    def may_warn(self, key: str, interval: float) -> bool:
        """True (and remembered) if ``key`` was not warned about in the last ``interval`` s."""
        now = time.monotonic()
        with self._lock:
            last = self._last_warned.get(key)
            if last is not None and now - last < interval:
                return False
            self._last_warned[key] = now
            return True

    def warned_within(self, key: str, interval: float) -> bool:
        """True if ``key`` was warned about in the last ``interval`` s (nothing remembered)."""
        with self._lock:
            last = self._last_warned.get(key)
        return last is not None and time.monotonic() - last < interval

    def guarded(self, what: str, call: Callable[[], T], default: T) -> T:
        """``call()``, or ``default`` after counting and logging its exception: the store
        never raises into its callers (the exporter, the sender, the CLI)."""
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - never raise into callers
            self.log_error(what, exc)
            return default

    def log_error(self, what: str, exc: Optional[BaseException]) -> None:
        self.count(errors=1)
        if self.may_warn(f"error:{what}", ERROR_LOG_INTERVAL_S):
            cause = root_cause(exc) if exc is not None else None
            logger.warning(
                "lucidic-otel: local store %s: %s failed (%s: %s)",
                self.path, what, type(cause).__name__, cause,
                exc_info=cause is not None and classify(cause) == "bug",
            )

    def lose(self, what: str, rows: int, exc: BaseException) -> None:
        """A write gave up: its rows are counted as dropped and the loss is logged."""
        self.count(dropped=rows, errors=1)
        if self.may_warn(f"lost:{what}", ERROR_LOG_INTERVAL_S):
            cause = root_cause(exc)
            logger.warning(
                "lucidic-otel: %s could not store %d rows in %s (%s: %s); they are lost "
                "(stats()['dropped'] counts them)",
                what, rows, self.path, type(cause).__name__, cause,
                exc_info=classify(cause) == "bug",
            )
