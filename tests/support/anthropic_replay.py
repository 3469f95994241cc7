"""A loopback Anthropic Messages API that answers with recorded exchanges.

The recordings (``tests/data/anthropic/*.json``, see the README there) were made against the
real API by the GenAI instrumentation's own test suite. Each request is matched to the
recording whose request body it equals, and gets that recording's status, content type and
body verbatim: JSON, a server-sent event stream, or an API error. A request that matches no
recording gets a 400 and is counted in :attr:`AnthropicReplayServer.unmatched`, so a test can
tell a wrong request from a wrong answer. Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional

DATA = Path(__file__).resolve().parent.parent / "data" / "anthropic"


def load_recordings(names: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Recorded exchanges by name (the file name without ``.json``)."""
    found = {path.stem: json.loads(path.read_text("utf-8")) for path in sorted(DATA.glob("*.json"))}
    if names is None:
        return found
    return {name: found[name] for name in names}


class AnthropicReplayServer:
    """``with AnthropicReplayServer() as server:``, then
    ``anthropic.Anthropic(base_url=server.base_url)``."""

    def __init__(self, recordings: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        self.recordings = recordings if recordings is not None else load_recordings()
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

    def __enter__(self) -> AnthropicReplayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _match(self, path: str, body: Any) -> Optional[str]:
        for name, recording in self.recordings.items():
            request = recording["request"]
            if path.split("?")[0] == request["path"] and body == request["body"]:
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
                name = server._match(self.path, body)
                with server._lock:
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
