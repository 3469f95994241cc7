"""``lucidic-otel sessions`` and ``show``: the recorded sessions as text or JSON.

The text views are for a terminal (one row per session, one session's spans as a tree across
services and processes, with the LLM call and error details under the spans that have them);
``--json`` gives the same facts to scripts. Everything shown comes from the store as it was
recorded by any program, so every value goes through :mod:`lucidic_otel.cli.text` (one line,
escaped, cut) and a damaged row shows what it can instead of failing the command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from lucidic_otel.cli import text as fmt
from lucidic_otel.cli.doctor import diagnose
from lucidic_otel.cli.store_access import (
    CommandError,
    count_sessions,
    reader_for,
    session_ids_with_prefix,
)
from lucidic_otel.cli.stored_event import event_from_stored
from lucidic_otel.convert.payloads import tool_calls_text
from lucidic_otel.environment_variables import LUCIDIC_STORE_PATH
from lucidic_otel.outbox.store import OutboxItem, SpanRecord, Store, status_text

logger = logging.getLogger(__name__)

MESSAGE_CHARS = 80
_NAME_CHARS = 32
_PREFIX_MATCHES_SHOWN = 5


# ----------------------------------------------------------------------------- sessions


def _session_json(session: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "session_id": session["session_id"],
        "name": session.get("name"),
        "started_at": fmt.iso_utc(session.get("started_ns")),
        "duration_s": session.get("duration_s"),
        "services": list(session.get("services") or []),
        "spans": session.get("span_count", 0),
        "llm_calls": session.get("llm_calls", 0),
        "input_tokens": session.get("input_tokens", 0),
        "output_tokens": session.get("output_tokens", 0),
        "cost": session.get("cost", 0.0),
        "status": session.get("status"),
        "status_text": status_text(session),
    }


def cmd_sessions(args: argparse.Namespace) -> int:
    """List sessions newest first, as a table or as JSON."""
    sessions = reader_for(args).read(lambda store: store.list_sessions(limit=args.limit), [])
    if args.json:
        fmt.print_json([_session_json(s) for s in sessions])
        return 0
    if not sessions:
        print(_empty_store_hint(args.store_option))
        return 0
    rows = [
        (
            fmt.one_line(s["session_id"]),  # text even in a damaged row
            fmt.one_line(s.get("name") or "-", _NAME_CHARS),
            fmt.local_time(s.get("started_ns")),
            fmt.duration(s.get("duration_s")),
            ",".join(s.get("services") or []) or "-",
            str(s.get("span_count", 0)),
            str(s.get("llm_calls", 0)),
            fmt.tokens(s.get("input_tokens"), s.get("output_tokens")),
            fmt.cost(s.get("cost")),
            status_text(s),
        )
        for s in sessions
    ]
    headers = ("ID", "NAME", "START", "DURATION", "SERVICES", "SPANS", "LLM CALLS",
               "TOKENS IN/OUT", "COST USD", "STATUS")
    fmt.table(headers, rows, right=(3, 5, 6, 7, 8))
    _say_what_was_left_out(args, len(sessions))
    return 0


def _say_what_was_left_out(args: argparse.Namespace, shown: int) -> None:
    """A table cut by ``--limit`` looks like the whole store: say how much it left out (on
    stderr, so the table itself stays the same for a script that reads it)."""
    if shown < args.limit:
        return
    total = count_sessions(args.store)
    if total is not None and total > shown:
        print(f"showing the newest {shown} of {total} sessions; use --limit {total} to see all",
              file=sys.stderr)


def _empty_store_hint(store: Optional[str]) -> str:
    """Why this store may be empty: the likeliest cause first, from what ``doctor`` sees."""
    report = diagnose(store)
    path = report["data"]["store_path"]
    pipeline = report["pipeline"]
    lines = [f"No sessions recorded in {path} yet."]
    if report["data"]["store_problem"]:
        lines.append(f"Nothing can be recorded there: {report['data']['store_problem']}.")
    elif not pipeline["attached"]:
        lines.append(
            f"A launched program here would not record any: {pipeline['rule']}. Put lucidic in "
            "OTEL_TRACES_EXPORTER (e.g. OTEL_TRACES_EXPORTER=otlp,lucidic)."
        )
    elif store is None and os.environ.get(LUCIDIC_STORE_PATH) is None:
        lines.append(
            "Programs record here when run with `opentelemetry-instrument python app.py` (or "
            "`lucidic_otel.init()`) in this environment and with no other LUCIDIC_STORE_PATH; "
            "one run with another LUCIDIC_STORE_PATH or HOME records there instead: pass --store."
        )
    else:
        lines.append(
            "Run a program with `opentelemetry-instrument python app.py` and the same "
            "LUCIDIC_STORE_PATH to record some."
        )
    lines.append(
        "`lucidic-otel demo` records into a temporary store it deletes afterwards: run it with "
        "--keep to keep that store, or --store PATH to record into PATH."
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------- show


def _full_session_id(path: Path, given: str) -> str:
    """The id ``given`` stands for: itself if a session has exactly that id, else the one id
    that starts with it (ids are 36-character UUIDs; a few characters are what people type).
    An id nothing starts with is returned as it is, for the caller's "no session" answer."""
    # Sorted, so an exact match (the shortest id with this prefix) comes first.
    matches = session_ids_with_prefix(path, given, _PREFIX_MATCHES_SHOWN + 1)
    if not matches or matches[0] == given:
        return given
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(matches[:_PREFIX_MATCHES_SHOWN])
    more = ", ..." if len(matches) > _PREFIX_MATCHES_SHOWN else ""
    raise CommandError(
        f"'{fmt.one_line(given, 200)}' is the start of more than one session id ({shown}{more}); "
        "give more of the id"
    )


def _find_session(store: Store, session_id: str) -> Optional[Dict[str, Any]]:
    """The session's summary, or None. The store lists sessions newest first only, so look
    in growing pages: a session being shown is almost always a recent one."""
    limit = 64
    while True:
        sessions = store.list_sessions(limit=limit)
        for session in sessions:
            if session["session_id"] == session_id:
                return session
        if len(sessions) < limit:
            return None
        limit *= 4


def _last_exception(span: SpanRecord) -> Optional[Dict[str, Any]]:
    found = None
    for event in span.events or []:
        if isinstance(event, dict) and event.get("name") == "exception":
            found = event.get("attributes") or {}
    return found


def _error_text(span: SpanRecord) -> Optional[str]:
    exception = _last_exception(span)
    if exception is not None:
        kind = exception.get("exception.type")
        message = exception.get("exception.message")
        text = ": ".join(str(p) for p in (kind, message) if p)
        if text:
            return text
    if span.status_code == "ERROR":
        return span.status_message or "error"
    return None


def _event_from_attributes(span: SpanRecord) -> Optional[Dict[str, Any]]:
    """The Lucidic event body rebuilt from the stored attributes (used when the outbox no
    longer holds it), by the exporter's own conversion, so every GenAI shape is understood."""
    return event_from_stored(
        name=span.name, trace_id=span.trace_id, span_id=span.span_id,
        attributes=span.attributes, events=span.events, status_code=span.status_code,
        status_message=span.status_message, start_ns=span.start_ns, end_ns=span.end_ns,
        session_id=span.session_id or "-",
    )


def _message_text(message: Any) -> Optional[str]:
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if content is None and message.get("tool_calls"):
        names = [str(c.get("name")) for c in message["tool_calls"] if isinstance(c, dict)]
        content = "tool calls: " + ", ".join(names)
    if content is None:
        return None
    return f"{message.get('role') or '?'}: {content}"


def _llm_details(span: SpanRecord, event: Optional[Dict[str, Any]]) -> List[str]:
    body = event if event is not None else _event_from_attributes(span)
    payload = (body or {}).get("payload") or {}
    request = payload.get("request") or {}
    response = payload.get("response") or {}
    usage = payload.get("usage") or {}
    model = span.model or request.get("model") or "?"
    inp = span.input_tokens if span.input_tokens is not None else usage.get("input_tokens")
    out = span.output_tokens if span.output_tokens is not None else usage.get("output_tokens")
    cost = span.cost if span.cost is not None else usage.get("cost")
    shown_cost = f"${cost:.6f}" if isinstance(cost, (int, float)) else "-"
    lines = [f"llm {model}  tokens {fmt.tokens(inp, out)}  cost {shown_cost}"]
    messages = request.get("messages") or []
    last = _message_text(messages[-1]) if messages else None
    if last:
        lines.append("in:  " + fmt.one_line(last, MESSAGE_CHARS))
    output = response.get("output")
    calls = response.get("tool_calls")
    if calls and (output is None or output == tool_calls_text(calls)):
        # the wire carries the calls as JSON text too (as the official SDK does); a terminal
        # line reads better as their names
        output = _message_text({"role": "assistant", "tool_calls": response["tool_calls"]})
    if output:
        lines.append("out: " + fmt.one_line(output, MESSAGE_CHARS))
    return lines


def _tree_glyphs() -> Tuple[str, str, str, str]:
    glyphs = ("├─ ", "└─ ", "│  ", "   ")
    try:
        "".join(glyphs).encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return ("|- ", "`- ", "|  ", "   ")
    return glyphs


def _forest(spans: List[SpanRecord]) -> List[Tuple[str, List[SpanRecord]]]:
    """Roots grouped by trace, traces by first start: a span whose parent is not stored (it
    ran in a process that does not write here, or is still running) is a root."""
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    traces: Dict[str, List[SpanRecord]] = {}
    for span in spans:
        if span.parent_span_id is None or (span.trace_id, span.parent_span_id) not in by_id:
            traces.setdefault(span.trace_id, []).append(span)
    return sorted(traces.items(), key=lambda item: min(s.start_ns or 0 for s in item[1]))


def _walk(
    roots: List[SpanRecord], children: Dict[Tuple[str, str], List[SpanRecord]], seen: set
) -> Iterator[Tuple[SpanRecord, str, str, bool]]:
    """Depth first without recursion (traces can be deep): (span, line prefix, prefix for
    its children and details, has children)."""
    tee, last_tee, bar, blank = _tree_glyphs()
    stack: List[Tuple[SpanRecord, str, str]] = [(r, "", "") for r in reversed(roots)]
    while stack:
        span, prefix, child_prefix = stack.pop()
        key = (span.trace_id, span.span_id)
        if key in seen:  # a parent loop in damaged data
            continue
        seen.add(key)
        kids = [k for k in children.get(key, []) if (k.trace_id, k.span_id) not in seen]
        yield span, prefix, child_prefix, bool(kids)
        for index in range(len(kids) - 1, -1, -1):
            is_last = index == len(kids) - 1
            stack.append((
                kids[index],
                child_prefix + (last_tee if is_last else tee),
                child_prefix + (blank if is_last else bar),
            ))


def _span_line(span: SpanRecord, remote_parent: bool) -> str:
    where = f"[{span.service or '?'} pid {span.pid if span.pid is not None else '?'}]"
    millis = (span.end_ns - span.start_ns) / 1e6 if span.end_ns and span.start_ns else None
    duration = f"{millis:.1f} ms" if millis is not None else "- ms"
    line = f"{fmt.one_line(span.name, 120)}  {where}  {duration}  {span.status_code or 'UNSET'}"
    if remote_parent:
        line += f"  (parent {span.parent_span_id} not recorded here)"
    return line


def _print_tree(spans: List[SpanRecord], events: Dict[str, Dict[str, Any]]) -> None:
    children: Dict[Tuple[str, str], List[SpanRecord]] = {}
    for span in spans:
        if span.parent_span_id is not None:
            children.setdefault((span.trace_id, span.parent_span_id), []).append(span)
    for kids in children.values():
        kids.sort(key=lambda s: (s.start_ns or 0))
    bar = _tree_glyphs()[2]
    seen: set = set()
    forest = _forest(spans)
    for trace_id, roots in forest:
        roots.sort(key=lambda s: (s.start_ns or 0))
        print(f"\ntrace {trace_id}")
        for span, prefix, child_prefix, has_kids in _walk(roots, children, seen):
            remote = span.parent_span_id is not None and prefix == ""
            print(prefix + _span_line(span, remote))
            details: List[str] = []
            if span.is_llm_call:
                details.extend(_llm_details(span, events.get(span.event_id or "")))
            error = _error_text(span)
            if error:
                details.append("error " + fmt.one_line(error, 2 * MESSAGE_CHARS))
            for detail in details:
                print(child_prefix + (bar if has_kids else "   ") + detail)
    rest = [s for s in spans if (s.trace_id, s.span_id) not in seen]
    if rest:  # only in a store with parent loops
        print(f"\n{len(rest)} spans in parent loops:")
        for span in rest:
            print("  " + _span_line(span, False))


def _session_header(session: Dict[str, Any]) -> List[str]:
    name = f'  "{fmt.one_line(session["name"], 60)}"' if session.get("name") else ""
    return [
        f"session {session['session_id']}{name}  {status_text(session)}",
        f"  started {fmt.local_time(session.get('started_ns'))}  duration "
        f"{fmt.duration(session.get('duration_s'))}  services "
        f"{', '.join(session.get('services') or []) or '-'}",
        f"  {fmt.count(session.get('span_count', 0), 'span')}  "
        f"{fmt.count(session.get('llm_calls', 0), 'LLM call')}  "
        f"tokens {fmt.tokens(session.get('input_tokens'), session.get('output_tokens'))}  "
        f"cost USD {fmt.cost(session.get('cost'))}  outbox {session.get('pending', 0)} pending, "
        f"{session.get('delivered', 0)} delivered, {session.get('failed', 0)} failed",
    ]


def cmd_show(args: argparse.Namespace) -> int:
    """Print one session's spans as a tree across its services and processes; the session is
    named by its id or by a prefix of it that no other session id starts with."""

    def read(store: Store) -> Tuple[Optional[Dict[str, Any]], List[SpanRecord], List[OutboxItem]]:
        session_id = _full_session_id(args.store, args.session_id)
        session = _find_session(store, session_id)
        if session is None:
            return None, [], []
        return session, store.session_spans(session_id), store.session_events(session_id)

    session, spans, events = reader_for(args).read(read, (None, [], []))
    if session is None:
        raise CommandError(f"no session '{fmt.one_line(args.session_id, 200)}' in {args.store}")
    if args.json:
        fmt.print_json({
            "session": {**session, "started_at": fmt.iso_utc(session.get("started_ns")),
                        "status_text": status_text(session)},
            "spans": [asdict(span) for span in spans],
            "events": [asdict(item) for item in events],
        })
        return 0
    for line in _session_header(session):
        print(line)
    if not spans:
        print("\nno spans stored for this session")
        return 0
    bodies = {item.key: item.body for item in events if item.key and isinstance(item.body, dict)}
    _print_tree(spans, bodies)
    return 0
