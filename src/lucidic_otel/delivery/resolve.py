"""Turning claimed outbox items into jobs: the backend's session id and each event's parent.

Both answers live in the outbox and may have changed since the item was written: a session's
``initsession`` reply can give it another id (its alias), and an event's parent event is the
nearest ancestor span that became an event, which may have been recorded after the child. They
are read when the item is claimed, for the whole claim at once.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Iterator, List, Optional, Set, Tuple

from lucidic_otel.delivery.attempt import Job
from lucidic_otel.outbox.store import (
    KIND_SESSION_END,
    KIND_SESSION_INIT,
    OutboxItem,
    Store,
)

logger = logging.getLogger(__name__)

_ALIAS_TTL_S = 60.0
_ALIAS_CACHE_MAX = 10_000


class Resolver:
    """Resolves claimed items for one store; used from the dispatcher thread only."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._aliases: Dict[str, Tuple[str, float]] = {}

    def jobs(self, items: List[OutboxItem]) -> Iterator[Job]:
        """A job per item, in order. A session's end whose events are not all settled is
        scheduled again instead (the claim already guarantees it; a read error must still
        not end a session early)."""
        aliases = self._backend_session_ids(items)
        parents = self._parents(items)
        for item in items:
            if item.kind == KIND_SESSION_END and not self._store.session_events_delivered(
                item.session_id, item.seq
            ):
                self._store.release_unattempted(
                    [item], time.time() + 1.0, "waiting for the session's events"
                )
                continue
            session_id = (
                item.session_id
                if item.kind == KIND_SESSION_INIT
                else aliases.get(item.session_id, item.session_id)
            )
            yield Job(item, session_id, parents.get(item.seq))

    def adopt(self, session_id: str, backend_id: str) -> None:
        """``initsession`` gave ``session_id`` another id: record it before the init is
        marked delivered (its events are claimable after that)."""
        self._store.set_session_alias(session_id, backend_id)
        self._aliases[session_id] = (backend_id, time.monotonic())

    def _parents(self, items: List[OutboxItem]) -> Dict[int, Optional[str]]:
        """Each event's parent event: the nearest recorded ancestor, else what the event
        recorded when it was written."""
        return self._store.event_parents(items)

    def _backend_session_ids(self, items: List[OutboxItem]) -> Dict[str, str]:
        """The backend's id for each session, cached for a minute.

        A session's alias is written when its ``initsession`` is delivered, which is before
        any of its events or its end can be claimed, so an answer read for a claimed event or
        end is final; the expiry only bounds memory and a re-init elsewhere.
        """
        now = time.monotonic()
        cache = self._aliases
        stale = self._stale(items, now)
        if stale:
            if len(cache) > _ALIAS_CACHE_MAX:
                cache.clear()
            found = self._store.session_aliases(sorted(stale))
            for sid in stale:
                cache[sid] = (found.get(sid, sid), now)
        return {sid: cache[sid][0] for sid in {item.session_id for item in items} if sid in cache}

    def _stale(self, items: List[OutboxItem], now: float) -> Set[str]:
        cache = self._aliases
        return {
            item.session_id
            for item in items
            if item.kind != KIND_SESSION_INIT
            and (item.session_id not in cache or now - cache[item.session_id][1] > _ALIAS_TTL_S)
        }

