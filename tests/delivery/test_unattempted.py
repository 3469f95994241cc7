"""A claimed job that never reached the network counts no attempt and gets no backoff.

A job that meets a pause on its worker (a Retry-After or an outage pause that arrived after it
was queued), a queued job taken back by a pause or a stop, and a child held behind a parent
whose request failed all go back to the outbox unsent. Their claim had raised ``attempts``;
if that stayed, each bounce would grow the item's own backoff (0.5 s doubling up to 60 s in
production) for requests never made. These tests drive the sender's own code paths on one
thread, with no backend (a transport that is used fails the test), and assert what the store
holds afterwards.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Dict, Iterator, List, Mapping

import pytest

from lucidic_otel.config import load_settings
from lucidic_otel.delivery import contract as backend
from lucidic_otel.delivery.attempt import Job, Result
from lucidic_otel.delivery.sender import Sender
from lucidic_otel.delivery.transport import Reply
from lucidic_otel.outbox.store import OutboxItem, Store

LEASE_S = 1000.0  # longer than any test: an item claimable again had its lease released
SESSION = "joined"  # a joined session: its events need no initsession first


class NoNetwork:
    def request(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        raise AssertionError("an unattempted job reached the transport")

    def close(self) -> None:
        pass


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as opened:
        yield opened


@pytest.fixture()
def sender(store: Store) -> Sender:
    settings = load_settings({
        "LUCIDIC_API_KEY": "k", "LUCIDIC_AGENT_ID": "a",
        "LUCIDIC_BASE_URL": "http://127.0.0.1:9", "LUCIDIC_DELIVERY": "thread",
    })
    # Production backoff (0.5 s base, 60 s cap); never started: no threads, no requests.
    return Sender(store, settings, backoff_base_s=0.5, backoff_cap_s=60.0, lease_s=LEASE_S,
                  rng=random.Random(0), transport=NoNetwork)


def record(store: Store, *keys: str) -> None:
    events = [{"client_event_id": k, "session_id": SESSION, "type": "generic"} for k in keys]
    assert store.write_batch([], events)


def stored(store: Store) -> Dict[str, OutboxItem]:
    return {item.key or "": item for item in store.session_events(SESSION)}


def claim(store: Store, now: float) -> List[OutboxItem]:
    return store.claim_pending(10, now, LEASE_S)


def test_a_job_that_meets_a_pause_counts_no_attempt_and_gets_no_backoff(
    store: Store, sender: Sender
) -> None:
    record(store, "e1")
    loop, policy = sender._loop, sender._policy
    start = time.time()
    claimed_at = start
    for bounce in range(1, 6):  # five pauses in a row, each met by the job on its worker
        [item] = claim(store, claimed_at)
        assert item.attempts == 1  # every earlier claim was undone
        pause_until = start + 100.0 * bounce
        policy.pause(pause_until)
        result = sender._run(Job(item, SESSION, None), NoNetwork())
        assert result.verdict is backend.Verdict.RETRY
        loop._in_flight = 1
        loop._apply([result])
        after = stored(store)["e1"]
        # Back as it was before the claim: no attempt, due when the pause ends, no lease
        # (the next claim, at that time, gets it although the old lease runs longer).
        assert (after.state, after.attempts, after.next_attempt_at) == (
            "pending", 0, pause_until)
        assert after.last_error == "delivery paused"
        claimed_at = pause_until
    assert sender.stats.retried == 0  # a bounce is not a failed request

    # Its first real attempt fails: the first step of the backoff (0.5 s, jittered), not
    # the sixth (16 s) it would be if the bounces had counted.
    [item] = claim(store, claimed_at)
    assert item.attempts == 1
    failed = Result(item, backend.Verdict.RETRY, "HTTP 503", status=503, outage=True)
    loop._in_flight = 1
    before = time.time()
    loop._apply([failed])
    after = stored(store)["e1"]
    assert after.attempts == 1 and after.last_error == "HTTP 503"
    assert before + 0.25 <= after.next_attempt_at <= time.time() + 0.5
    assert sender.stats.retried == 1


def test_queued_and_held_jobs_taken_back_keep_their_attempt_count(
    store: Store, sender: Sender
) -> None:
    record(store, "parent", "child", "queued")
    loop = sender._loop
    now = time.time()
    items = {item.key: item for item in claim(store, now)}
    assert {key: item.attempts for key, item in items.items()} == {
        "parent": 1, "child": 1, "queued": 1}
    # The parent is in a worker's hands, its child held behind it, a third job queued
    # (the pool has no worker: nothing runs it).
    parent = Job(items["parent"], SESSION, None)
    child = Job(items["child"], SESSION, "parent")
    loop._holds.sent(parent)
    assert loop._holds.hold(child)
    sender._pool.put(Job(items["queued"], SESSION, None))
    loop._in_flight = 3

    # The parent's request failed and its Retry-After paused the sender: the child and the
    # queued job go back unsent; only the parent counts an attempt.
    pause_until = now + 100.0
    failed = Result(items["parent"], backend.Verdict.RETRY, "HTTP 503", status=503,
                    retry_after=pause_until - time.time(), outage=True)
    loop._apply([failed])
    assert loop._in_flight == 0 and len(loop._holds) == 0
    after = stored(store)
    assert {key: item.attempts for key, item in after.items()} == {
        "parent": 1, "child": 0, "queued": 0}
    assert after["child"].last_error == "waiting for its parent event"
    assert after["child"].next_attempt_at <= time.time()  # due (the claim holds it, bounded)
    assert after["queued"].last_error == "delivery paused"
    assert after["queued"].next_attempt_at == sender._policy.pause_until
    assert after["parent"].next_attempt_at >= pause_until  # the Retry-After, at least

    # None is leased any more: all are claimable once the pause is over.
    again = {item.key: item.attempts for item in claim(store, after["parent"].next_attempt_at)}
    assert again == {"parent": 2, "child": 1, "queued": 1}


def test_a_stop_takes_queued_jobs_back_without_an_attempt(store: Store, sender: Sender) -> None:
    record(store, "e1", "e2")
    now = time.time()
    for item in claim(store, now):
        sender._pool.put(Job(item, SESSION, None))
    sender._loop._in_flight = 2
    assert sender._loop.take_back_queued(now, "the sender stopped") == 2
    after = stored(store)
    assert [(i.attempts, i.next_attempt_at, i.last_error) for i in after.values()] == [
        (0, now, "the sender stopped")] * 2
    assert [i.attempts for i in claim(store, now)] == [1, 1]
