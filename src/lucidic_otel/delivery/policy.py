"""What the sender does about each verdict: backoff, pauses, stopping, and what it says.

The contract (:mod:`~lucidic_otel.delivery.contract`) says what a reply *means*; this module
decides what follows, in one place:

- a transient failure is retried with exponential backoff and jitter, per item;
- a run of them (an outage) also pauses the whole sender, growing per round, not per item:
  eight requests failing together are one sign of an outage, not eight; ``Retry-After`` on
  429/503 pauses it for as long as asked;
- during a drain (exit, upload), only transient failures of requests sent since it began, in
  more than one round, mean the backend is down: the drain gives up instead of waiting out
  its deadline (a failed reply to a request sent before the drain says how the backend was
  then: a drain that began after it recovered must not give up on that);
- a record the backend rejects is moved aside with its reason, and never retried;
- a refused key, no credits or a redirect stop delivery in this process, keeping every record.

What it says is rate-limited so that an outage or a stream of bad records cannot flood the
application's log: one line per outage (again every ten minutes while it lasts) and one when
delivery resumes; the first few rejects in full, then a count once a minute; one error line
when delivery stops.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from lucidic_otel._diagnostics import log_every
from lucidic_otel.delivery import contract as backend
from lucidic_otel.delivery.attempt import Result
from lucidic_otel.outbox.store import Store

logger = logging.getLogger(__name__)

DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_CAP_S = 60.0
# A run of transient failures this long pauses the whole sender (an outage, not a blip) ...
PAUSE_AFTER_FAILURES = 3
PAUSE_CAP_S = 30.0
# A drain (exit, upload) gives up early after this many transient failures with no success
# since it began: the backend is down, and waiting out the deadline would not help.
DRAIN_GIVE_UP_FAILURES = 3
# A 2xx reply without the blob_url it needs is retried this many times, then moved aside.
MAX_PROTOCOL_ATTEMPTS = 8
_OUTAGE_LOG_INTERVAL_S = 600.0
_REJECT_LOG_INTERVAL_S = 60.0
_REJECTS_LOGGED_IN_FULL = 5
_REJECTED_KEPT = 50

# Each policy's own log keys: two senders (an upload next to a program's) rate-limit apart.
_instances = itertools.count()


@dataclass
class DeliveryStats:
    """What a sender has done so far (a snapshot; see :attr:`Sender.stats`)."""

    delivered: Dict[str, int] = field(default_factory=dict)  # by outbox kind
    failed: int = 0  # moved aside: the backend rejected them
    retried: int = 0  # transient failures, each scheduled again
    blobs: int = 0  # payloads uploaded through the blob flow
    halted: Optional[str] = None  # why delivery stopped in this process, if it did
    last_error: Optional[str] = None
    rejected: List[Dict[str, Any]] = field(default_factory=list)  # the first few, with reasons

    @property
    def delivered_total(self) -> int:
        return sum(self.delivered.values())


@dataclass
class _DrainRun:
    """Counters of the current drain request: do they say the backend is down?"""

    request: int = 0  # the drain request these belong to
    failures: int = 0
    failed_rounds: int = 0
    successes: int = 0

    def counts(self, result: Result) -> bool:
        """Whether ``result``'s failure is evidence for this drain: its request was sent after
        the drain began. (Successes always count: any sign of life keeps a drain going.)"""
        return result.drain >= self.request

    def looks_down(self) -> bool:
        """Only transient failures since it began, in more than one round (so not one burst
        of concurrent requests hitting a blip)."""
        return (
            not self.successes
            and self.failures >= DRAIN_GIVE_UP_FAILURES
            and self.failed_rounds >= 2
        )


class Policy:
    """One sender's decisions and counters. Called from the dispatcher thread, except
    :meth:`pause` and :attr:`pause_until` (workers too) and :meth:`snapshot` (anyone)."""

    def __init__(
        self,
        store: Store,
        base_url: str,
        *,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
        rng: Optional[random.Random] = None,
    ) -> None:
        self._store = store
        self._base_url = base_url
        self._backoff_base = float(backoff_base_s)
        self._backoff_cap = float(backoff_cap_s)
        self._rng = rng or random.Random()
        self._pause_cap = min(PAUSE_CAP_S, self._backoff_cap)
        self._pause_lock = threading.Lock()
        self._pause_until = 0.0
        self._failures = 0  # consecutive transient failures (items)
        self._pause_level = 0  # consecutive rounds that ended in the outage pause
        self.drain = _DrainRun()
        self._key = f"sender-{next(_instances)}"
        self._outages = 0  # outages reported and over: each new one is reported at once
        self._outage_reported = False
        self._rejects_logged = 0
        self._rejects_unlogged = 0
        self._stats = DeliveryStats()
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------ state

    @property
    def halted(self) -> Optional[str]:
        """Why delivery stopped for this process (401/402/403/3xx), or None."""
        return self._stats.halted

    @property
    def pause_until(self) -> float:
        """No request is sent before this time (epoch seconds)."""
        return self._pause_until

    def pause(self, until: float) -> None:
        """No request is sent before ``until`` (from any thread: workers see a Retry-After
        first)."""
        with self._pause_lock:
            self._pause_until = max(self._pause_until, until)

    def snapshot(self) -> DeliveryStats:
        with self._stats_lock:
            return DeliveryStats(
                delivered=dict(self._stats.delivered),
                failed=self._stats.failed,
                retried=self._stats.retried,
                blobs=self._stats.blobs,
                halted=self._stats.halted,
                last_error=self._stats.last_error,
                rejected=list(self._stats.rejected),
            )

    def new_drain(self, request: int) -> None:
        """A new drain request began: its give-up counters start from zero."""
        if request != self.drain.request:
            self.drain = _DrainRun(request)

    # ------------------------------------------------------------------ verdicts

    def delivered(self, kind: str, blob: bool) -> None:
        with self._stats_lock:
            self._stats.delivered[kind] = self._stats.delivered.get(kind, 0) + 1
            if blob:
                self._stats.blobs += 1
        if self._failures and self._outage_reported:
            logger.info(
                "lucidic-otel: delivery to the Lucidic backend at %s resumed", self._base_url
            )
            self._outage_reported = False
            self._outages += 1
        self._failures = 0
        self._pause_level = 0
        self.drain.successes += 1

    def retry(self, result: Result, now: float) -> None:
        """Schedule the item again with backoff (or move it aside: a flow that keeps failing
        the same way is the record's problem, not the backend's)."""
        item = result.item
        if result.protocol and item.attempts >= MAX_PROTOCOL_ATTEMPTS:
            self.reject(result)
            return
        if result.outage:
            self._failures += 1
            if self.drain.counts(result):
                self.drain.failures += 1
        delay = self.jitter(
            min(self._backoff_cap, self._backoff_base * 2 ** min(max(item.attempts, 1) - 1, 30))
        )
        if result.retry_after is not None:
            delay = max(delay, result.retry_after)
            self.pause(now + result.retry_after)
        self._store.mark_retry(item.seq, result.error or "retry", now + delay)
        with self._stats_lock:
            self._stats.retried += 1
            self._stats.last_error = result.error
        logger.debug(
            "lucidic-otel: %s %s: %s; retry in %.2f s", item.kind, item.key, result.error, delay
        )
        if self._failures >= PAUSE_AFTER_FAILURES and result.outage:
            self._report_outage(result.error)

    def _report_outage(self, error: Optional[str]) -> None:
        if log_every(
            logger,
            f"{self._key}:outage:{self._outages}",
            _OUTAGE_LOG_INTERVAL_S,
            "lucidic-otel: cannot deliver to the Lucidic backend at %s (%s); records "
            "stay in the local store %s and are retried with backoff",
            self._base_url,
            error,
            self._store.path,
        ):
            self._outage_reported = True

    def reject(self, result: Result) -> None:
        """Move the item aside with its reason; it is not retried."""
        item = result.item
        reason = result.error or "rejected"
        self._store.mark_failed(item.seq, reason)
        with self._stats_lock:
            self._stats.failed += 1
            self._stats.last_error = reason
            if len(self._stats.rejected) < _REJECTED_KEPT:
                self._stats.rejected.append(
                    {
                        "seq": item.seq,
                        "kind": item.kind,
                        "session_id": item.session_id,
                        "key": item.key,
                        "reason": reason,
                    }
                )
        key = f"{self._key}:rejects"
        if self._rejects_logged < _REJECTS_LOGGED_IN_FULL:
            self._rejects_logged += 1
            # Interval 0: always logged; it starts the minute before the first count.
            log_every(
                logger,
                key,
                0.0,
                "lucidic-otel: the backend rejected %s %s of session %s (%s); it is kept aside "
                "in %s (see failed items) and will not be retried. If every record fails like "
                "this, check LUCIDIC_BASE_URL (%s).",
                item.kind,
                item.key,
                item.session_id,
                reason,
                self._store.path,
                self._base_url,
            )
            return
        self._rejects_unlogged += 1
        if log_every(
            logger,
            key,
            _REJECT_LOG_INTERVAL_S,
            "lucidic-otel: the backend rejected %d more records (latest: %s); they are "
            "kept aside in %s",
            self._rejects_unlogged,
            reason,
            self._store.path,
        ):
            self._rejects_unlogged = 0

    def halt(self, result: Result, now: float) -> None:
        """Keep the item and stop delivery in this process (said once, with the fix)."""
        self._store.mark_retry(result.item.seq, result.error or result.verdict.value, now)
        if self._stats.halted is not None:
            return
        what, fix = _halt_reason(result.verdict, self._base_url)
        with self._stats_lock:
            self._stats.halted = f"{what} ({result.error})"
            self._stats.last_error = result.error
        logger.error(
            "lucidic-otel: %s (%s). Delivery is stopped for this process; everything stays in "
            "the local store %s. To fix: %s, then run `lucidic-otel upload`.",
            what,
            result.error,
            self._store.path,
            fix,
        )

    def end_round(self, delivered: bool, results: Iterable[Result], now: float) -> None:
        """After one batch of results: a round with only transient failures counts toward
        the drain's give-up (if one of them was sent since it began), and (past the outage
        threshold) pauses the sender longer."""
        if delivered or not any(r.outage for r in results):
            return
        if any(r.outage and self.drain.counts(r) for r in results):
            self.drain.failed_rounds += 1
        if self._failures >= PAUSE_AFTER_FAILURES:
            self._pause_level += 1
            step = min(self._pause_cap, 0.25 * 2 ** min(self._pause_level - 1, 16))
            self.pause(now + self.jitter(step))

    def jitter(self, seconds: float) -> float:
        return seconds * (0.5 + 0.5 * self._rng.random())


def _halt_reason(verdict: backend.Verdict, base_url: str) -> Tuple[str, str]:
    """What went wrong and how to fix it, for the one line said when delivery stops."""
    if verdict is backend.Verdict.STOP_CREDITS:
        return "the Lucidic account has no credits left", "add credits to the account"
    if verdict is backend.Verdict.STOP_CONFIG:
        return (
            "the backend redirected the request, so the base URL is wrong",
            f"check LUCIDIC_BASE_URL / LUCIDIC_REGION (now {base_url})",
        )
    return "the Lucidic backend refused the API key", "check LUCIDIC_API_KEY and LUCIDIC_AGENT_ID"
