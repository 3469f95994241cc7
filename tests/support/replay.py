"""A loopback HTTP API that answers with recorded exchanges (OpenAI, Anthropic, ...).

The recordings (``tests/data/<provider>/*.json``, see the README there) were made against the
real APIs by the GenAI instrumentations' own test suites. Each request is matched to the
recording whose path and request body it equals, and gets that recording's status, headers and
body verbatim: JSON, a server-sent event stream, or an API error. A request that matches no
recording gets a 400 and is counted in :attr:`ReplayServer.unmatched`, so a test can tell a
wrong request from a wrong answer. Listens on 127.0.0.1 only.

Matching is exact by default. ``ignore`` names top-level body keys left out of the comparison
on both sides (e.g. ``encoding_format``, which current ``openai`` clients always send and an
older recording lacks, or a per-run ``prompt_cache_key``). ``same_body`` replaces the
comparison altogether, for a library whose request bodies differ between versions in fields
that do not change the answer. With ``once=True`` each recording answers one request only, in
recording order among equal matches (a two-step exchange whose steps match the same way).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

DATA = Path(__file__).resolve().parent.parent / "data"

BodyMatcher = Callable[[Any, Any], bool]


def load_recordings(
    provider: str, names: Optional[Iterable[str]] = None
) -> Dict[str, Dict[str, Any]]:
    """Recorded exchanges of ``tests/data/<provider>`` by name (the file name without ``.json``)."""
    found = {
        path.stem: json.loads(path.read_text("utf-8"))
        for path in sorted((DATA / provider).glob("*.json"))
    }
    if names is None:
        return found
    return {name: found[name] for name in names}


def without(body: Any, keys: Iterable[str]) -> Any:
    """``body`` without the top-level ``keys`` (bodies that are not objects pass through)."""
    if not isinstance(body, dict):
        return body
    skip = set(keys)
    return {k: v for k, v in body.items() if k not in skip}


class ReplayServer:
    """``with ReplayServer(recordings) as server:``, then point the client at
    ``server.base_url`` (``+ "/v1"`` for ``openai``, whose recorded paths start with ``/v1``)."""

    def __init__(
        self,
        recordings: Dict[str, Dict[str, Any]],
        *,
        ignore: Iterable[str] = (),
        same_body: Optional[BodyMatcher] = None,
        once: bool = False,
    ) -> None:
        self.recordings = recordings
        self.ignore = tuple(ignore)
        self.same_body = same_body
        self.once = once
        self.served: List[str] = []
        self.unmatched: List[Any] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _equal(self, sent: Any, recorded: Any) -> bool:
        if self.same_body is not None:
            return self.same_body(sent, recorded)
        if self.ignore:
            return without(sent, self.ignore) == without(recorded, self.ignore)
        return sent == recorded

    def _match(self, path: str, body: Any) -> Optional[str]:
        """The recording for this request (called under the lock)."""
        for name, recording in self.recordings.items():
            if self.once and name in self.served:
                continue
            request = recording["request"]
            if path.split("?")[0] == request["path"] and self._equal(body, request["body"]):
                return name
        return None

    def _handler(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                with server._lock:
                    name = server._match(self.path, body)
                    if name is None:
                        server.unmatched.append(body)
                    else:
                        server.served.append(name)
                if name is None:
                    self._send(400, {"content-type": "application/json"}, json.dumps(
                        {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": "no recording matches"}}))
                    return
                response = server.recordings[name]["response"]
                self._send(response["status"], response["headers"], response["body"])

            def _send(self, status: int, headers: Dict[str, str], text: str) -> None:
                payload = text.encode("utf-8")
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
