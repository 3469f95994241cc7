"""HTTP for the sender: one worker's keep-alive connections, behind a two-method protocol.

Why a protocol: the sender and the contract flow (:mod:`~lucidic_otel.delivery.attempt`) only
need "send this request, give me the status, the body and two headers". Everything about
sockets (keep-alive per origin, reconnecting once after the server closed an idle connection,
timeouts, bounded reply bodies) is here, and a test or a bench can hand the sender another
:class:`Transport` through its ``transport`` argument.

Why suppressed instrumentation (:func:`untraced`): an instrumentation of ``http.client`` or
``sqlite3`` would turn the sender's own work into spans, which are exported into the outbox and
wake the sender again, forever.
"""

from __future__ import annotations

import functools
import http.client
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Tuple, TypeVar
from urllib.parse import urlsplit

from opentelemetry.instrumentation.utils import suppress_instrumentation

logger = logging.getLogger(__name__)

MAX_REPLY_BYTES = 64 * 1024
IDLE_CONNECTION_S = 30.0

T = TypeVar("T")


def untraced(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` with instrumentation suppressed (the instrumentations' own switch)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        with suppress_instrumentation():
            return fn(*args, **kwargs)

    return run


class TransportError(Exception):
    """No HTTP reply: refused, reset, timed out, or not HTTP at all."""


@dataclass
class Reply:
    """What the sender reads of an HTTP reply: only the headers a verdict needs."""

    status: int
    data: bytes
    retry_after: Optional[str] = None
    location: Optional[str] = None


class Transport(Protocol):
    """One worker's way to send requests; used by a single thread, so it needs no locking."""

    def request(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Send one request; raise :class:`TransportError` when there is no HTTP reply."""
        ...

    def close(self) -> None:
        """Release what the transport holds (the worker ends)."""
        ...


#: How the sender makes each worker's transport (called on the worker's thread).
TransportFactory = Callable[[], Transport]


class SharedTLS:
    """The default TLS context, loaded on first use and shared by every worker.

    Loading the CA certificates takes a while, and a sender that only ever talks plain HTTP
    (the loopback tests, a local proxy) should not pay for it.
    """

    def __init__(self) -> None:
        self._context: Optional[ssl.SSLContext] = None
        self._lock = threading.Lock()

    def __call__(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                self._context = ssl.create_default_context()
            return self._context


_Origin = Tuple[str, str, int]
_DROPPED_CONNECTION = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


class Connections:
    """One worker's keep-alive connections, one per origin (API host, blob host).

    Owned by a single thread, so no locking. A request on a reused connection that the server
    had closed meanwhile (its idle timeout) is retried once on a fresh one; every request and
    connect has a timeout.
    """

    def __init__(
        self, timeout_s: float, connect_timeout_s: float, tls: Callable[[], ssl.SSLContext]
    ) -> None:
        self._timeout = timeout_s
        self._connect_timeout = connect_timeout_s
        self._tls = tls
        self._conns: Dict[_Origin, Tuple[http.client.HTTPConnection, float]] = {}

    def request(self, method: str, url: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        origin, target = _split(url)
        for attempt in (0, 1):
            conn, reused = self._connection(origin)
            try:
                reply, reusable = _exchange(conn, method, target, body, headers)
            except _DROPPED_CONNECTION as exc:
                self._close(origin)
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: reconnect
                raise TransportError(_describe(exc, self._timeout)) from exc
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._close(origin)
                raise TransportError(_describe(exc, self._timeout)) from exc
            if reusable:
                self._conns[origin] = (conn, time.monotonic())
            else:
                self._close(origin)
            return reply
        raise TransportError("connection closed twice")  # pragma: no cover - loop returns

    def close(self) -> None:
        for origin in list(self._conns):
            self._close(origin)

    def _connection(self, origin: _Origin) -> Tuple[http.client.HTTPConnection, bool]:
        held = self._conns.get(origin)
        if held is not None:
            conn, last_used = held
            if time.monotonic() - last_used < IDLE_CONNECTION_S:
                return conn, True
            self._close(origin)
        scheme, host, port = origin
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=self._connect_timeout, context=self._tls()
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(self._timeout)
                # Each request is written whole; never hold its last segment back.
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            raise TransportError(_describe(exc, self._connect_timeout)) from exc
        self._conns[origin] = (conn, time.monotonic())
        return conn, False

    def _close(self, origin: _Origin) -> None:
        held = self._conns.pop(origin, None)
        if held is not None:
            try:
                held[0].close()
            except Exception:  # noqa: BLE001 - closing a broken socket may fail; it is gone
                pass


def _split(url: str) -> Tuple[_Origin, str]:
    """The origin to connect to and the request target, or TransportError for a bad URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(f"unsupported URL {url[:200]!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise TransportError(f"bad port in URL {url[:200]!r}") from exc
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname, port), target


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    body: bytes,
    headers: Mapping[str, str],
) -> Tuple[Reply, bool]:
    """One request and its reply on ``conn``; whether the connection can be used again."""
    conn.request(method, target, body=body, headers=headers)
    response = conn.getresponse()
    data, reusable = _read_reply(response)
    # Only the headers a verdict needs: each lookup parses, and this is per event.
    status = response.status
    reply = Reply(
        status,
        data,
        retry_after=response.getheader("retry-after") if status in (429, 503) else None,
        location=response.getheader("location") if 300 <= status < 400 else None,
    )
    return reply, reusable


def _read_reply(response: http.client.HTTPResponse) -> Tuple[bytes, bool]:
    """The reply body (at most 64 KB) and whether the connection can be used again."""
    length = response.getheader("content-length")
    try:
        declared = int(length) if length is not None else None
    except ValueError:
        declared = None
    if declared is not None and declared > MAX_REPLY_BYTES:
        return b"", False  # not worth reading: close instead
    data = response.read(MAX_REPLY_BYTES + 1)
    if len(data) > MAX_REPLY_BYTES or not response.isclosed():
        return data[:MAX_REPLY_BYTES], False
    return data, not response.will_close


def _describe(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
