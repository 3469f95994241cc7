"""The viewer's HTTP server and the ``lucidic-otel ui`` command.

The standard library's ``ThreadingHTTPServer`` is enough: the viewer serves one person on one
machine, every answer is a few indexed SQLite reads, and adding a web framework would add a
dependency to every install of a telemetry distro for a command most never run. One thread per
connection also means a slow query never stalls the page's live polling.

Only GET and HEAD are answered; every response says ``no-store`` for data, forbids framing and
sniffing, and carries a Content-Security-Policy that allows only the viewer's own files, so
even a hostile span name rendered by mistake could not load or send anything.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import webbrowser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Optional, Tuple
from urllib.parse import quote

from lucidic_otel.cli.store_access import StoreUnreadableError, probe_store
from lucidic_otel.cli.ui.queries import ReadOnlyStore
from lucidic_otel.cli.ui.routes import Response, Routes, error_page, json_response, load_static
from lucidic_otel.cli.ui.safety import WILDCARDS, host_allowed, is_loopback
from lucidic_otel.version import __version__

logger = logging.getLogger(__name__)

PROG = "lucidic-otel ui"
DEFAULT_HOST = "127.0.0.1"
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


class ViewerServer(ThreadingHTTPServer):
    """A threading server that knows its routes and the ``Host`` values it answers."""

    daemon_threads = True  # a browser's idle keep-alive connection must not delay Ctrl-C
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], routes: Routes) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ViewerHandler)
        self.routes = routes
        self.bound_host = address[0]

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line instead of socketserver's traceback (a browser closing a connection
        mid-answer is the usual cause, and not the user's problem)."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            print(f"{PROG}: error answering a request: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)


class ViewerHandler(BaseHTTPRequestHandler):
    """GET/HEAD only; checks ``Host`` before anything else."""

    server: ViewerServer
    protocol_version = "HTTP/1.1"
    server_version = f"lucidic-otel-ui/{__version__}"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _not_allowed(self) -> None:
        response = json_response(405, {"error": "the viewer is read-only: GET only",
                                       "status": 405})
        response.headers["Allow"] = "GET, HEAD"
        self._send(response, head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    def _answer(self, head: bool) -> None:
        server = self.server
        if not host_allowed(self.headers.get("Host"), server.bound_host, server.port):
            response = error_page(
                403, "Forbidden",
                f"this viewer answers only requests addressed to {server.bound_host}:"
                f"{server.port} (the Host header was {self.headers.get('Host')!r}); "
                "a page reaching it through another name is refused (DNS rebinding)",
            )
        else:
            try:
                response = server.routes.get(self.path)
            except Exception as exc:  # noqa: BLE001 - a clear 500, never a traceback
                print(f"{PROG}: error answering {self.path}: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
                message = f"internal error: {type(exc).__name__}: {exc}"
                response = (json_response(500, {"error": message, "status": 500})
                            if self.path.startswith("/api/")
                            else error_page(500, "Internal error", message))
        self._send(response, head)

    def _send(self, response: Response, head: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        headers: Dict[str, str] = {"Cache-Control": "no-store", **_SECURITY_HEADERS,
                                   **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        """Quiet: an access log would bury the one line that matters (the URL)."""


def make_server(store: Path, host: str = DEFAULT_HOST, port: int = 0) -> ViewerServer:
    """A viewer server for ``store``, bound but not yet serving (tests and the bench use it
    in-process; the command adds the output, the browser and Ctrl-C)."""
    return ViewerServer((host, port), Routes(ReadOnlyStore(store), load_static()))


def url_for(server: ViewerServer, session_id: Optional[str] = None) -> str:
    host = server.bound_host
    if host in WILDCARDS:
        host = DEFAULT_HOST if host == "0.0.0.0" else "::1"
    shown = f"[{host}]" if ":" in host else host
    path = "/" if session_id is None else "/sessions/" + quote(session_id, safe="")
    return f"http://{shown}:{server.port}{path}"


def _has_browser() -> bool:
    """Whether ``webbrowser`` would open a graphical browser. Without a display it falls
    back to console browsers (lynx, w3m) that would take over this very terminal."""
    if sys.platform in ("darwin", "win32") or os.environ.get("BROWSER"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run(args: argparse.Namespace) -> int:
    """``lucidic-otel ui``: serve until Ctrl-C (or SIGTERM); 0 after a clean stop, 1 for a
    store that cannot be read, 2 for a refused bind address."""
    store: Path = args.store
    host: str = args.host
    if not 0 <= args.port <= 65535:
        print(f"{PROG}: --port: expected 0 (any free port) to 65535, got {args.port}",
              file=sys.stderr)
        return 2
    if not is_loopback(host) and not args.allow_remote:
        print(f"{PROG}: refusing to listen on {host}: the viewer shows prompts, completions "
              "and tool results to whoever can reach it; pass --allow-remote to do it anyway",
              file=sys.stderr)
        return 2
    try:
        exists = probe_store(store)
    except StoreUnreadableError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        server = make_server(store, host, args.port)
    except OSError as exc:
        print(f"{PROG}: cannot listen on {host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    if not is_loopback(host):
        print(f"{PROG}: WARNING: listening on {host}, not loopback: anyone who can reach "
              "this machine on that port can read every recorded prompt and result",
              file=sys.stderr, flush=True)
    url = url_for(server, getattr(args, "session", None))
    print(f"{PROG}: serving {store} (read-only) at {url}", flush=True)
    if not exists:
        print(f"{PROG}: nothing recorded at {store} yet; the page fills in as programs "
              "record there", flush=True)
    print(f"{PROG}: press Ctrl-C to stop", flush=True)
    if not args.no_browser:
        if _has_browser():
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
        else:
            print(f"{PROG}: no graphical browser here; open {url} yourself", flush=True)
    return _serve(server)


def _serve(server: ViewerServer) -> int:
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)
    print(f"{PROG}: stopped", flush=True)
    return 0


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
