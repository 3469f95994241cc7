"""Parents before children on the wire, among the jobs of one sender.

The claim orders a batch so that an event comes after its parent event (see
:mod:`lucidic_otel.outbox.queue`), but the workers send in parallel: a child taken by a free
worker could still reach the backend before its parent's request, running on another worker,
completed. So a job whose parent event is in a worker's hands (or itself held) waits here,
not in the pool, until the parent's result is in. Then:

- the parent was delivered or rejected for good: the children go to the pool;
- anything else (a retry, a pause, a halt): the children go back to the outbox, due now,
  where the claim holds them behind their pending parent for a bounded time.

Used from the dispatcher thread only. What is held counts as in flight, and is bounded by the
claims (a held job was claimed, and is released when a job already in flight returns).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Set, Tuple

from lucidic_otel.delivery.attempt import Job
from lucidic_otel.outbox.store import KIND_EVENT, OutboxItem

logger = logging.getLogger(__name__)

Key = Tuple[str, str]  # (client session id, client event id)


def _key(item: OutboxItem) -> Optional[Key]:
    if item.kind != KIND_EVENT or not item.key:
        return None
    return item.session_id, item.key


class Holds:
    """Event jobs in flight by key, and the jobs waiting for one of them."""

    def __init__(self) -> None:
        self._flying: Dict[Key, int] = {}
        self._waiting: Dict[Key, List[Job]] = {}
        self._held: Set[Key] = set()  # keys of the held jobs (their children wait too)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def hold(self, job: Job) -> bool:
        """Keep ``job`` back if its parent event is in flight or held; False: send it now."""
        parent = job.parent_event_id
        if not parent or job.item.kind != KIND_EVENT:
            return False
        key = (job.item.session_id, parent)
        if key not in self._flying and key not in self._held:
            return False
        self._waiting.setdefault(key, []).append(job)
        own = _key(job.item)
        if own is not None:
            self._held.add(own)
        self._count += 1
        return True

    def sent(self, job: Job) -> None:
        """``job`` went to the pool."""
        key = _key(job.item)
        if key is not None:
            self._flying[key] = self._flying.get(key, 0) + 1

    def done(self, item: OutboxItem) -> List[Job]:
        """``item``'s result is in: the jobs that waited for it (none while another job of
        the same key is still in flight)."""
        key = _key(item)
        if key is None or key not in self._flying:
            return []
        left = self._flying[key] - 1
        if left > 0:
            self._flying[key] = left
            return []
        del self._flying[key]
        return self._unwait(key)

    def dependents(self, jobs: List[Job]) -> List[Job]:
        """Every job held, directly or not, behind one of ``jobs`` (which are not sent)."""
        found: List[Job] = []
        todo = list(jobs)
        while todo and len(found) <= self._count:
            key = _key(todo.pop().item)
            if key is not None:
                children = self._unwait(key)
                found.extend(children)
                todo.extend(children)
        return found

    def take_all(self) -> List[Job]:
        """Every held job (a pause, a halt or a stop takes them back to the outbox)."""
        taken = [job for jobs in self._waiting.values() for job in jobs]
        self._waiting.clear()
        self._held.clear()
        self._count = 0
        return taken

    def _unwait(self, key: Key) -> List[Job]:
        jobs = self._waiting.pop(key, [])
        for job in jobs:
            own = _key(job.item)
            if own is not None:
                self._held.discard(own)
        self._count -= len(jobs)
        return jobs
