"""The viewer's URLs: pages, static files and the JSON API, as plain functions of a request.

Kept apart from the HTTP plumbing so every answer, including every error, is built in one
place: bad input is a 400 that names the parameter and what is allowed, an unknown session a
404, an unreadable store a 503 with the store's own one-line reason; pages get a small HTML
page, ``/api/`` URLs get ``{"error": ...}``. Never a traceback.
"""

from __future__ import annotations

import html
import json
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, quote, unquote

from lucidic_otel.cli.store_access import StoreUnreadableError, session_ids_with_prefix
from lucidic_otel.cli.ui.queries import ReadOnlyStore, StoreProblemError
from lucidic_otel.cli.ui.views import span_detail, waterfall
from lucidic_otel.version import __version__

logger = logging.getLogger(__name__)

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
MAX_QUERY_CHARS = 200
MAX_ID_CHARS = 256
_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
_STATIC_NAME = re.compile(r"^[a-z0-9_-]+\.(html|css|js|svg)$")
_HEX = re.compile(r"^[0-9a-f]+$")
_DIGITS = re.compile(r"^[0-9]{1,12}$")


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: Dict[str, str] = field(default_factory=dict)


class BadRequestError(Exception):
    """A request to answer with 400 and this message."""


def load_static() -> Dict[str, Tuple[bytes, str]]:
    """The shipped pages, scripts and styles, read once from the package data (so a
    non-editable install serves them too, wherever it put the package)."""
    folder = resources.files("lucidic_otel.cli.ui").joinpath("static")
    files = {}
    for entry in folder.iterdir():
        name = entry.name
        if entry.is_file() and _STATIC_NAME.match(name):
            files[name] = (entry.read_bytes(), _TYPES[name[name.rindex("."):]])
    return files


def json_response(status: int, value: Any) -> Response:
    body = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return Response(status, "application/json; charset=utf-8", body.encode("utf-8"))


def error_page(status: int, title: str, message: str) -> Response:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)} - lucidic-otel</title>"
        "<link rel=stylesheet href=/static/app.css></head><body>"
        "<header><a class=brand href=/>lucidic-otel</a></header>"
        f"<main class=error-page><h1>{html.escape(title)}</h1>"
        f"<p id=error-message>{html.escape(message)}</p>"
        "<p><a href=/>All sessions</a></p></main></body></html>"
    )
    return Response(status, "text/html; charset=utf-8", body.encode("utf-8"))


def _error(api: bool, status: int, title: str, message: str) -> Response:
    if api:
        return json_response(status, {"error": message, "status": status})
    return error_page(status, title, message)


class Routes:
    """Answers GET requests for one store."""

    def __init__(self, store: ReadOnlyStore, static: Dict[str, Tuple[bytes, str]]) -> None:
        self.store = store
        self.static = static

    def get(self, raw_path: str) -> Response:
        path, _, query_string = raw_path.partition("?")
        api = path.startswith("/api/")
        try:
            return self._dispatch(path, query_string)
        except BadRequestError as exc:
            return _error(api, 400, "Bad request", str(exc))
        except StoreProblemError as exc:
            return _error(api, 503, "The store cannot be read", str(exc))

    def _dispatch(self, path: str, query_string: str) -> Response:
        parts = [unquote(p) for p in path.split("/")[1:]]
        if path in ("/", "/index.html"):
            _list_params(query_string)  # the page reads q and page from its URL
            return self._static("index.html")
        if len(parts) == 2 and parts[0] == "static":
            return self._static(parts[1])
        if len(parts) == 2 and parts[0] == "sessions":
            return self._session_page(parts[1])
        if parts[:2] == ["api", "sessions"]:
            if len(parts) == 2:
                return self._sessions_api(query_string)
            if len(parts) == 3:
                return self._session_api(parts[2], query_string)
            if len(parts) == 6 and parts[3] == "spans":
                return self._span_api(parts[2], parts[4], parts[5], query_string)
        if parts == ["api", "health"]:
            return json_response(200, {"ok": True, "version": __version__,
                                       "store": str(self.store.path)})
        return _error(path.startswith("/api/"), 404, "Not found",
                      f"there is no page at {path}")

    def _static(self, name: str) -> Response:
        found = self.static.get(name)
        if found is None:
            return error_page(404, "Not found", f"there is no file {name}")
        return Response(200, found[1], found[0], {"Cache-Control": "no-cache"})

    def _session_page(self, session_id: str) -> Response:
        _check_id(session_id)
        if self.store.session(session_id) is not None:
            return self._static("session.html")
        full = self._by_prefix(session_id)
        if full is not None:
            return Response(302, "text/plain; charset=utf-8", b"",
                            {"Location": "/sessions/" + quote(full, safe="")})
        return error_page(404, "No such session",
                          f"the store {self.store.path} holds no session {session_id}")

    def _by_prefix(self, prefix: str) -> Optional[str]:
        """The one session id starting with ``prefix`` (people paste a few characters, as
        `lucidic-otel show` allows), else None."""
        try:
            matches = session_ids_with_prefix(self.store.path, prefix, 2)
        except (StoreUnreadableError, OSError):
            return None
        return matches[0] if len(matches) == 1 else None

    def _sessions_api(self, query_string: str) -> Response:
        query, page, per_page = _list_params(query_string)
        result = self.store.sessions_page(query, page, per_page)
        total = result["total"]
        return json_response(200, {
            "store": str(self.store.path),
            "store_exists": result["exists"],
            "query": query,
            "page": page,
            "per_page": per_page,
            "total": total,
            "pages": max(1, -(-total // per_page)),
            "sessions": result["sessions"],
        })

    def _session_api(self, session_id: str, query_string: str) -> Response:
        _params(query_string, ())
        _check_id(session_id)
        found = self.store.session_with_spans(session_id)
        if found is None:
            return json_response(404, {"error": f"no session {session_id} in the store "
                                                f"{self.store.path}", "status": 404})
        session, spans = found
        return json_response(200, {"store": str(self.store.path), "session": session,
                                   "waterfall": waterfall(spans)})

    def _span_api(self, session_id: str, trace_id: str, span_id: str,
                  query_string: str) -> Response:
        _params(query_string, ())
        _check_id(session_id)
        if len(trace_id) != 32 or not _HEX.match(trace_id):
            raise BadRequestError("trace id: 32 lowercase hex digits")
        if len(span_id) != 16 or not _HEX.match(span_id):
            raise BadRequestError("span id: 16 lowercase hex digits")
        found = self.store.span(session_id, trace_id, span_id)
        if found is None:
            return json_response(404, {"error": f"no span {span_id} of trace {trace_id} in "
                                                f"session {session_id}", "status": 404})
        return json_response(200, span_detail(*found))


def _check_id(session_id: str) -> None:
    if not session_id or len(session_id) > MAX_ID_CHARS or not session_id.isprintable():
        raise BadRequestError(f"session id: 1 to {MAX_ID_CHARS} printable characters")


def _params(query_string: str, allowed: Tuple[str, ...]) -> Dict[str, str]:
    """The query parameters, each at most once and each one this URL knows."""
    try:
        parsed: Dict[str, List[str]] = parse_qs(
            query_string, keep_blank_values=True, strict_parsing=bool(query_string),
            max_num_fields=20,
        )
    except ValueError as exc:
        raise BadRequestError(f"malformed query string: {exc}") from None
    for name, values in parsed.items():
        if name not in allowed:
            known = ", ".join(allowed) if allowed else "none"
            raise BadRequestError(f"unknown parameter {name!r} (allowed: {known})")
        if len(values) > 1:
            raise BadRequestError(f"{name}: given {len(values)} times, expected once")
    return {name: values[0] for name, values in parsed.items()}


def _list_params(query_string: str) -> Tuple[str, int, int]:
    """``q`` (search text), ``page`` and ``per_page`` of the sessions list, checked."""
    params = _params(query_string, ("q", "page", "per_page"))
    query = params.get("q", "").strip()
    if len(query) > MAX_QUERY_CHARS or not query.isprintable():
        raise BadRequestError(f"q: at most {MAX_QUERY_CHARS} printable characters")
    page = _int_param(params, "page", 1, 1, 10**9)
    per_page = _int_param(params, "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
    return query, page, per_page


def _int_param(params: Dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    if not _DIGITS.match(text) or not low <= int(text) <= high:
        raise BadRequestError(f"{name}: expected a whole number from {low} to {high}, got {text!r}")
    return int(text)
