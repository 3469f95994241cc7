"""The ``lucidic-otel`` command: look at what was recorded locally, and at the set-up.

Local-first (DESIGN 2.3) means the store holds every span even with no API key, so the first
thing a new user can do after ``opentelemetry-instrument python app.py`` is
``lucidic-otel sessions``. The commands only read: they open the store read-only first and
refuse, in one line, a path that is not a readable store (the :class:`Store` class itself
silently falls back to memory, which would show an empty list for a broken file).

Every failure is one line on stderr and a non-zero exit status: 1 for errors, 2 for usage
errors and for commands that are not part of this installation. Never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from lucidic_otel.cli.doctor import (
    StoreUnreadableError,
    check_store_usable,
    count_sessions,
    diagnose,
    probe_store,
    quiet_logger,
    session_ids_with_prefix,
    store_path_for,
)
from lucidic_otel.config import DEFAULT_UPLOAD_DEADLINE_S, load_settings
from lucidic_otel.outbox.store import OutboxItem, SpanRecord, Store, status_text
from lucidic_otel.version import __version__

PROG = "lucidic-otel"
DEFAULT_LIMIT = 50
MESSAGE_CHARS = 80
_NAME_CHARS = 32
_PREFIX_MATCHES_SHOWN = 5


class CommandError(Exception):
    """A failure to report as one line on stderr, with the exit status to return."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------ helpers


def _one_line(text: Any, limit: Optional[int] = None) -> str:
    """``text`` on one line: whitespace runs collapsed, control characters escaped, cut."""
    flat = " ".join(str(text).split())
    flat = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in flat)
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat


def _iso_utc(ns: Optional[int]) -> Optional[str]:
    try:
        moment = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc) if ns else None
    except (OverflowError, OSError, ValueError):  # a damaged timestamp: show none
        return None
    return moment.isoformat(timespec="microseconds") if moment else None


def _local_time(ns: Optional[int]) -> str:
    try:
        return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%dT%H:%M:%S") if ns else "-"
    except (OverflowError, OSError, ValueError):
        return "-"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms" if seconds >= 0.001 else f"{seconds * 1000:.2f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _cost(value: Optional[float]) -> str:
    """USD with four decimals; a cost too small to show is not shown as zero."""
    if value is None:
        return "-"
    if 0 < value < 0.00005:
        return "<0.0001"
    return f"{value:.4f}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _tokens(inp: Optional[int], out: Optional[int]) -> str:
    return f"{inp if inp is not None else '-'}/{out if out is not None else '-'}"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _table(headers: Sequence[str], rows: List[Sequence[str]], right: Sequence[int]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))


class _StoreReader:
    """The store at a path, opened for reading only when there is something to read."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._max_bytes = max_bytes

    def read(self, reader: Callable[[Store], Any], empty: Any) -> Any:
        """``reader(store)``, or ``empty`` when no store exists yet; raises ``CommandError``."""
        try:
            if not probe_store(self.path):
                return empty
            with quiet_logger("lucidic_otel.outbox.store") as messages:
                store = Store(self.path, max_bytes=self._max_bytes)
                try:
                    result = reader(store)
                    check_store_usable(store, messages)
                finally:
                    store.close()
        except StoreUnreadableError as exc:
            raise CommandError(_one_line(exc)) from exc
        return result


def _reader(args: argparse.Namespace) -> _StoreReader:
    return _StoreReader(args.store, load_settings().store_max_bytes)


# ----------------------------------------------------------------------------- sessions


def _session_json(session: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "session_id": session["session_id"],
        "name": session.get("name"),
        "started_at": _iso_utc(session.get("started_ns")),
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
    sessions = _reader(args).read(lambda store: store.list_sessions(limit=args.limit), [])
    if args.json:
        _print_json([_session_json(s) for s in sessions])
        return 0
    if not sessions:
        print(_empty_store_hint(args.store_option))
        return 0
    rows = [
        (
            _one_line(s["session_id"]),  # text even in a damaged row
            _one_line(s.get("name") or "-", _NAME_CHARS),
            _local_time(s.get("started_ns")),
            _duration(s.get("duration_s")),
            ",".join(s.get("services") or []) or "-",
            str(s.get("span_count", 0)),
            str(s.get("llm_calls", 0)),
            _tokens(s.get("input_tokens"), s.get("output_tokens")),
            _cost(s.get("cost")),
            status_text(s),
        )
        for s in sessions
    ]
    headers = ("ID", "NAME", "START", "DURATION", "SERVICES", "SPANS", "LLM CALLS",
               "TOKENS IN/OUT", "COST USD", "STATUS")
    _table(headers, rows, right=(3, 5, 6, 7, 8))
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
    elif store is None and os.environ.get("LUCIDIC_STORE_PATH") is None:
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
        f"'{_one_line(given, 200)}' is the start of more than one session id ({shown}{more}); "
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
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import SpanContext, Status, StatusCode

    from lucidic_otel.convert.events import span_to_event

    try:
        context = SpanContext(int(span.trace_id, 16), int(span.span_id, 16), is_remote=False)
        readable = ReadableSpan(
            name=span.name,
            context=context,
            attributes=span.attributes if isinstance(span.attributes, dict) else {},
            events=[
                Event(e.get("name", ""), e.get("attributes") or {}, e.get("time_ns"))
                for e in span.events or []
                if isinstance(e, dict)
            ],
            status=Status(StatusCode[span.status_code or "UNSET"], span.status_message),
            start_time=span.start_ns,
            end_time=span.end_ns,
        )
        return span_to_event(readable, span.session_id or "-", None)
    except Exception:  # noqa: BLE001 - a view of a malformed row is best-effort
        return None


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
    lines = [f"llm {model}  tokens {_tokens(inp, out)}  cost {shown_cost}"]
    messages = request.get("messages") or []
    last = _message_text(messages[-1]) if messages else None
    if last:
        lines.append("in:  " + _one_line(last, MESSAGE_CHARS))
    output = response.get("output")
    if output is None and response.get("tool_calls"):
        output = _message_text({"role": "assistant", "tool_calls": response["tool_calls"]})
    if output:
        lines.append("out: " + _one_line(output, MESSAGE_CHARS))
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
    line = f"{_one_line(span.name, 120)}  {where}  {duration}  {span.status_code or 'UNSET'}"
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
                details.append("error " + _one_line(error, 2 * MESSAGE_CHARS))
            for detail in details:
                print(child_prefix + (bar if has_kids else "   ") + detail)
    rest = [s for s in spans if (s.trace_id, s.span_id) not in seen]
    if rest:  # only in a store with parent loops
        print(f"\n{len(rest)} spans in parent loops:")
        for span in rest:
            print("  " + _span_line(span, False))


def _session_header(session: Dict[str, Any]) -> List[str]:
    name = f'  "{_one_line(session["name"], 60)}"' if session.get("name") else ""
    return [
        f"session {session['session_id']}{name}  {status_text(session)}",
        f"  started {_local_time(session.get('started_ns'))}  duration "
        f"{_duration(session.get('duration_s'))}  services "
        f"{', '.join(session.get('services') or []) or '-'}",
        f"  {_count(session.get('span_count', 0), 'span')}  "
        f"{_count(session.get('llm_calls', 0), 'LLM call')}  "
        f"tokens {_tokens(session.get('input_tokens'), session.get('output_tokens'))}  "
        f"cost USD {_cost(session.get('cost'))}  outbox {session.get('pending', 0)} pending, "
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

    session, spans, events = _reader(args).read(read, (None, [], []))
    if session is None:
        raise CommandError(f"no session '{_one_line(args.session_id, 200)}' in {args.store}")
    if args.json:
        _print_json({
            "session": {**session, "started_at": _iso_utc(session.get("started_ns")),
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


# ------------------------------------------------------------------------------- doctor


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _dist(entry: Optional[Dict[str, Any]]) -> str:
    if not entry:
        return "-"
    return f"{entry['name']} ({entry.get('distribution') or '?'} {entry.get('version') or ''})"


def _print_doctor(report: Dict[str, Any]) -> None:
    settings = report["settings"]
    launcher = report["launcher"]
    print(f"lucidic-otel {report['version']}  (python {report['python']}, "
          f"{report['executable']})")

    print("\nConfiguration")
    print(f"  {settings['repr']}")
    print(f"  api key set: {_yes(settings['api_key_set'])}   agent id: "
          f"{settings['agent_id'] or '-'}   baggage secret set: "
          f"{_yes(settings['baggage_secret_set'])}")

    print("\nLauncher (opentelemetry-instrument)")
    print("  distros, in discovery order: "
          + (", ".join(_dist(d) for d in launcher["distros"]) or "none"))
    picked = _dist(launcher["distro"]) if launcher["distro"] else "the do-nothing default"
    print(f"  OTEL_PYTHON_DISTRO={launcher['distro_variable'] or '(unset)'}  ->  picks "
          f"{picked}: {launcher['distro_reason']}")
    print("  configurators, in discovery order: "
          + (", ".join(_dist(c) for c in launcher["configurators"]) or "none"))
    print(f"  OTEL_PYTHON_CONFIGURATOR={launcher['configurator_variable'] or '(unset)'}  ->  "
          f"picks {_dist(launcher['configurator'])}: {launcher['configurator_reason']}")
    print(f"  sessions stamped by: {launcher['sessions_stamped_by'] or 'nothing (no SDK)'}")
    pipeline = report["pipeline"]
    by = {"exporter list": "made by the configurator from OTEL_TRACES_EXPORTER",
          "lucidic-otel": "added by lucidic-otel next to the winner's exporters"}
    state = f"attached, {by.get(pipeline['by'], pipeline['by'])}" if pipeline["attached"] else (
        "NOT attached")
    print(f"  lucidic pipeline ({pipeline['source']}): {state}; rule: {pipeline['rule']}")

    propagators = report["propagators"]
    print("\nPropagation")
    print(f"  OTEL_PROPAGATORS={propagators['value'] or '(unset: tracecontext,baggage)'}  ->  "
          f"{', '.join(propagators['names']) or 'none'};  baggage: "
          f"{'on' if propagators['baggage'] else 'OFF'}")
    print("  outbound session baggage: " + _outbound_line(propagators["outbound"]))

    exporters = report["exporters"]
    print("\nTrace exporters")
    print(f"  OTEL_TRACES_EXPORTER={exporters['value'] or '(unset)'}  ({exporters['source']})")
    for entry in exporters["names"]:
        target = entry["name"]
        if entry["entry_point"] != entry["name"]:
            target += f" -> {entry['entry_point']}"
        state = (f"registered by {entry['distribution']}" if entry["registered"]
                 else "NOT REGISTERED")
        endpoint = f"  endpoint {entry['endpoint']}" if entry["endpoint"] else ""
        print(f"  {target}: {state}{endpoint}")
    if not exporters["names"]:
        print("  no trace exporter: spans are not exported")

    instrumentors = report["instrumentors"]
    rows = instrumentors["installed"]
    print(f"\nInstrumentors ({len(rows)})")
    width = max((len(r["name"]) for r in rows), default=0)
    for row in rows:
        flags = []
        if row["instrumented_twice"]:
            flags.append("INSTRUMENTED TWICE")
        if row["disabled"]:
            flags.append("disabled")
        if row["skipped"]:
            flags.append("skipped: " + _one_line(row["skipped"], 100))
        print(f"  {row['name'].ljust(width)}  {row['distribution'] or '?'} "
              f"{row['version'] or ''}" + (f"  [{'; '.join(flags)}]" if flags else ""))

    data = report["data"]
    print("\nData")
    if data["store_error"]:
        state = "cannot be used, see Problems"
    elif not data["store_exists"]:
        state = "not created yet"
    else:
        state = _size(data["store_bytes"])
    print(f"  store: {data['store_path']}  ({state}; from {data['store_source']})")
    if data["outbox"] is not None:
        counts = data["outbox"]
        print(f"  outbox: {counts['pending']} pending, {counts['delivered']} delivered, "
              f"{counts['failed']} failed")
    for item in data["failed_items"]:
        print(f"    failed #{item['seq']} {item['kind']} session {item['session_id']} after "
              f"{item['attempts']} attempts: {_one_line(item['reason'] or '?', 120)}")
    where = "a helper process" if data["delivery"] == "process" else "threads in the application"
    print(f"  backend: {data['backend_url']}  delivery: "
          f"{f'enabled, from {where}' if data['delivery_enabled'] else 'disabled'}")

    for setup in data.get("recorded_setups", [])[:3]:
        print(f"  recorded by pid {setup.get('pid')} ({setup.get('service') or '?'}) at "
              f"{_iso_utc(int(setup['recorded_at'] * 1e9))}: {_setup_line(setup)}")
    for note in report["notes"]:
        print(f"  note: {note}")
    problems = report["problems"]
    if problems:
        print(f"\nProblems ({len(problems)})")
        for problem in problems:
            print(f"  - {problem}")
    else:
        print("\nNo problems found.")


def _outbound_line(policy: Dict[str, Any]) -> str:
    """The outbound session-baggage policy in one line (rules: lucidic_otel.sdk.egress)."""
    if policy["session_baggage"] == "off":
        return "never sent (LUCIDIC_PROPAGATE=false), not even to child processes"
    parts = []
    if policy["allow"] is not None:
        parts.append("only to " + (", ".join(policy["allow"]) or "no host")
                     + " (LUCIDIC_PROPAGATE_TO)")
    else:
        backend = policy.get("withheld_backend")
        parts.append("to every host except inside LLM calls, "
                     f"{len(policy['withheld_provider_hosts'])} known LLM provider/Lucidic hosts"
                     + (f" and the backend {backend}" if backend else ""))
    if policy["deny"]:
        parts.append("never to " + ", ".join(policy["deny"]) + " (LUCIDIC_PROPAGATE_DENY)")
    return "; ".join(parts) + "; child processes: " + policy["child_processes"]


def _setup_line(setup: Dict[str, Any]) -> str:
    """One recorded set-up: who set OpenTelemetry up in that process and how."""
    if not setup.get("launcher"):
        how = "init() in plain python" if setup.get("distro", {}).get("how") == "init" else (
            f"init() on the application's provider {setup.get('provider')}")
    else:
        distro, configurator = setup.get("distro") or {}, setup.get("configurator") or {}
        how = (f"launcher, distro {distro.get('name')!r} ({distro.get('how')}), configurator "
               f"{configurator.get('name')!r} ({configurator.get('how')})")
    return f"{how}; pipeline by {setup.get('pipeline_by') or 'nobody'}"


def _size(nbytes: Optional[int]) -> str:
    if nbytes is None:
        return "-"
    if nbytes >= 1024 * 1024:
        return f"{nbytes / 1048576:.1f} MB"
    return f"{nbytes / 1024:.1f} KB"


def cmd_doctor(args: argparse.Namespace) -> int:
    """Report the effective set-up; exit 1 when it lists problems, 0 otherwise, so a CI step
    or a deployment check can run ``lucidic-otel doctor`` and fail on what it finds."""
    report = diagnose(args.store_option)
    if args.json:
        _print_json(report)
    else:
        _print_doctor(report)
    return 1 if report["problems"] else 0


# -------------------------------------------------------------------- demo and upload


def _delegate(module: str, function: str, what: str) -> Callable[[argparse.Namespace], int]:
    """A command implemented in another module, imported only when it runs (it may pull in
    heavier dependencies, and may be absent from this installation)."""

    def run(args: argparse.Namespace) -> int:
        try:
            target = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as exc:
            raise CommandError(
                f"the '{what}' command is not available in this installation ({exc})", status=2
            ) from exc
        status = target(args)
        return 0 if status is None else int(status)

    return run


# ------------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


class _CommandParser(argparse.ArgumentParser):
    """A command's parser, for which an argument it does not know is its own usage error.

    argparse hands a command's unknown arguments back to the top-level parser, whose error
    shows the top-level usage (``lucidic-otel [-h] ... COMMAND``) instead of the options of
    the command that was mistyped.
    """

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _store_option(help_text: str) -> argparse.ArgumentParser:
    option = argparse.ArgumentParser(add_help=False)
    option.add_argument("--store", metavar="PATH", default=argparse.SUPPRESS, help=help_text)
    return option


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; ``--store`` is accepted before or after the command name."""
    default = "default: $LUCIDIC_STORE_PATH or the XDG data directory"
    store_option = _store_option(f"the local store to read ({default})")
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look at the Lucidic sessions recorded on this machine, and check the set-up.",
        parents=[_store_option(f"the local store ({default}; demo: a temporary one)")],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )

    sessions = commands.add_parser(
        "sessions", parents=[store_option], help="list recorded sessions, newest first"
    )
    sessions.add_argument("--limit", type=_positive_int, default=DEFAULT_LIMIT, metavar="N",
                          help=f"show at most N sessions (default {DEFAULT_LIMIT})")
    sessions.add_argument("--json", action="store_true", help="print a JSON array")
    sessions.set_defaults(handler=cmd_sessions)

    show = commands.add_parser(
        "show", parents=[store_option], help="show one session's spans as a tree"
    )
    show.add_argument("session_id", metavar="SESSION_ID")
    show.add_argument("--json", action="store_true", help="print session, spans and events")
    show.set_defaults(handler=cmd_show)

    doctor = commands.add_parser(
        "doctor", parents=[store_option], help="check the configuration and where data goes"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(handler=cmd_doctor)

    demo = commands.add_parser(
        "demo", help="run the two-service demo offline",
        parents=[_store_option(
            "record the demo into PATH, and keep it there (default: a temporary store, "
            "deleted afterwards unless --keep)"
        )],
    )
    demo.add_argument("--keep", action="store_true", help="keep the temporary store")
    demo.set_defaults(handler=_delegate("lucidic_otel.demo.run", "main", "demo"))

    upload = commands.add_parser(
        "upload", parents=[store_option], help="deliver what the outbox still holds"
    )
    upload.add_argument(
        "--deadline", type=_positive_seconds, default=DEFAULT_UPLOAD_DEADLINE_S,
        metavar="SECONDS", help=f"give up after SECONDS (default {DEFAULT_UPLOAD_DEADLINE_S:g})",
    )
    upload.add_argument("--json", action="store_true", help="print the result as JSON")
    upload.set_defaults(handler=_delegate("lucidic_otel.cli.upload", "run", "upload"))

    ui = commands.add_parser(
        "ui", parents=[store_option], help="browse the sessions in a local, read-only web page"
    )
    ui.add_argument("--port", type=int, default=0, metavar="N",
                    help="port to listen on (default: a free one)")
    ui.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                    help="address to listen on (default 127.0.0.1; anything but loopback "
                         "needs --allow-remote)")
    ui.add_argument("--allow-remote", action="store_true",
                    help="allow a --host that is not loopback (prints a warning)")
    ui.add_argument("--no-browser", action="store_true", help="do not open a browser")
    ui.add_argument("--session", metavar="SESSION_ID", help="print and open this session's page")
    ui.set_defaults(handler=_delegate("lucidic_otel.cli.ui.server", "run", "ui"))
    return parser


def _safe_streams() -> None:
    """Never fail on a character the terminal's encoding cannot show."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass


def _fail(message: str) -> None:
    try:
        print(f"{PROG}: {_one_line(message)}", file=sys.stderr)
    except (OSError, ValueError):
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """The console script. Returns the exit status; never lets a traceback out."""
    _safe_streams()
    try:
        args = build_parser().parse_args(argv)
        store = getattr(args, "store", None)
        args.store_option = store  # what --store said: doctor reports where the path came from
        if store is not None or args.command != "demo":  # the demo uses a temporary store
            args.store = store_path_for(load_settings(), store)
        return args.handler(args)
    except SystemExit as exc:  # argparse: --help, --version, usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except CommandError as exc:
        _fail(str(exc))
        return exc.status
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`lucidic-otel sessions | head`): not an error worth a line.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except Exception as exc:  # noqa: BLE001 - the promise: one line, never a traceback
        _fail(f"error: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
