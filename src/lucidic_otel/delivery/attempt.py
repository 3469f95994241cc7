"""One delivery attempt of one outbox item: the requests the contract asks for, and a verdict.

This is what a sender worker does with a job, and all it does: build the body with
:mod:`~lucidic_otel.delivery.contract`, send it through the worker's
:class:`~lucidic_otel.delivery.transport.Transport`, follow the blob flow for a large event
(re-sending through it after a 413), and turn the reply into a :class:`Result`. It touches
neither the outbox nor the sender's counters: the dispatcher records results, so that the
store is written from one thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Mapping, Optional
from urllib.parse import urlsplit

from lucidic_otel.delivery import contract as backend
from lucidic_otel.delivery.transport import Reply, Transport, TransportError
from lucidic_otel.outbox.store import KIND_SESSION_END, KIND_SESSION_INIT, OutboxItem

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """An item claimed from the outbox, resolved for sending."""

    item: OutboxItem
    session_id: str  # the backend's id for the session (adopted from initsession)
    parent_event_id: Optional[str]


@dataclass
class Result:
    """What became of one attempt (see :class:`~lucidic_otel.delivery.contract.Verdict`)."""

    item: OutboxItem
    verdict: backend.Verdict
    error: Optional[str] = None
    status: Optional[int] = None
    retry_after: Optional[float] = None
    adopted_session_id: Optional[str] = None
    outage: bool = False  # counts toward the outage run (transport error, 5xx, 408)
    protocol: bool = False  # a 2xx that did not give what the flow needs
    blob: bool = False
    seconds: float = 0.0  # how long the worker spent on it
    drain: int = 0  # the drain request current when the attempt began (see Policy)
    unattempted: bool = False  # never sent (the sender was paused): no attempt, no backoff


class Attempts:
    """Sends jobs to one backend (base URL, agent and key fixed at construction)."""

    def __init__(
        self, base_url: str, agent_id: str, headers: Mapping[str, str], blob_threshold: int
    ) -> None:
        self._base_url = base_url
        self._agent_id = agent_id
        self._headers = headers
        self._blob_threshold = blob_threshold

    def deliver(self, job: Job, transport: Transport) -> Result:
        """Send ``job``'s item; a transport failure is a transient (outage) result."""
        item = job.item
        try:
            if item.kind == KIND_SESSION_INIT:
                body = backend.init_session_body(item.body, self._agent_id, backend.now_iso())
                body["session_id"] = item.session_id
                reply = self._call(transport, backend.INIT_SESSION, backend.encode_json(body))
                result = self._verdict(item, backend.INIT_SESSION, reply)
                if result.verdict is backend.Verdict.DELIVERED:
                    result.adopted_session_id = backend.adopted_session_id(
                        backend.parse_reply(reply.data), item.session_id
                    )
                return result
            if item.kind == KIND_SESSION_END:
                body = backend.update_session_body(item.body, job.session_id, backend.now_iso())
                reply = self._call(transport, backend.UPDATE_SESSION, backend.encode_json(body))
                return self._verdict(item, backend.UPDATE_SESSION, reply)
            return self._deliver_event(job, transport)
        except TransportError as exc:
            return Result(item, backend.Verdict.RETRY, str(exc), outage=True)

    def _deliver_event(self, job: Job, transport: Transport) -> Result:
        item = job.item
        force_blob = False
        while True:  # at most twice: inline, then through the blob flow after a 413
            request = backend.event_request(
                item.body,
                session_id=job.session_id,
                parent_event_id=job.parent_event_id,
                blob_threshold=self._blob_threshold,
                current_time=backend.now_iso(),
                force_blob=force_blob,
            )
            reply = self._call(transport, backend.CREATE_EVENT, request.body)
            result = self._verdict(item, backend.CREATE_EVENT, reply)
            if result.verdict is backend.Verdict.TOO_LARGE and not request.needs_blob:
                force_blob = True
                continue
            break
        if result.verdict is backend.Verdict.TOO_LARGE:
            result.verdict = backend.Verdict.REJECTED
        if result.verdict is not backend.Verdict.DELIVERED or request.blob is None:
            return result
        if reply.status == 409:
            return result  # the backend had it already (with its blob, or it would not say so)
        return self._upload_blob(result, reply, request.blob, transport)

    def _upload_blob(
        self, result: Result, reply: Reply, blob: bytes, transport: Transport
    ) -> Result:
        """The second half of the blob flow: PUT the full payload to the URL the reply gave."""
        item = result.item
        url = backend.blob_url(backend.parse_reply(reply.data))
        if url is None:
            return Result(
                item,
                backend.Verdict.RETRY,
                f"{backend.CREATE_EVENT.name} answered {reply.status} without a usable blob_url",
                status=reply.status,
                protocol=True,
            )
        if url.startswith("/"):
            origin = urlsplit(self._base_url)
            url = f"{origin.scheme}://{origin.netloc}{url}"
        try:
            put = transport.request("PUT", url, blob, backend.blob_headers())
        except TransportError as exc:
            return Result(item, backend.Verdict.RETRY, f"blob upload failed: {exc}", outage=True)
        if not 200 <= put.status < 300:
            return Result(
                item,
                backend.Verdict.RETRY,
                "blob upload failed: " + backend.error_text(put.status, "PUT blob_url", put.data),
                status=put.status,
                retry_after=_retry_after(put),
                outage=put.status >= 500,
            )
        result.blob = True
        return result

    def _call(self, transport: Transport, endpoint: backend.Endpoint, body: bytes) -> Reply:
        return transport.request(
            endpoint.method, endpoint.url(self._base_url), body, self._headers
        )

    def _verdict(self, item: OutboxItem, endpoint: backend.Endpoint, reply: Reply) -> Result:
        verdict = backend.classify(reply.status)
        if verdict is backend.Verdict.DELIVERED:
            return Result(item, verdict, status=reply.status)
        where = f"{endpoint.method} {endpoint.url(self._base_url)}"
        error = backend.error_text(reply.status, where, reply.data)
        if verdict is backend.Verdict.STOP_CONFIG and reply.location:
            error += f" (Location: {reply.location[:200]})"
        return Result(
            item,
            verdict,
            error,
            status=reply.status,
            retry_after=_retry_after(reply),
            outage=verdict is backend.Verdict.RETRY and reply.status not in (425, 429),
        )


def _retry_after(reply: Reply) -> Optional[float]:
    if not backend.honours_retry_after(reply.status):
        return None
    return backend.retry_after_seconds(reply.retry_after, time.time())
