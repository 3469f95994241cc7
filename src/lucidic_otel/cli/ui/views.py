"""What the pages show, computed from stored rows: the waterfall and the selected span.

The waterfall is the tree ``lucidic-otel show`` prints (traces by first start, children by
start, a span whose parent is not stored here is a root), flattened depth first with a depth
per row, so the browser only draws bars. Two marks answer "how did the work get here": the
*entry* span (the first root of each trace here, and any server or consumer span that is a
root here: where the request entered the session) and *via baggage* (a span whose parent is
a span of another service: that service's call carried the session to it as W3C baggage).

The LLM and tool details come from the Lucidic event the exporter derived from the span (the
outbox body), else are rebuilt from the stored attributes by the exporter's own conversion.
Both are made from what was stored, so with content capture off there is no content to show.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple

from lucidic_otel.cli.stored_event import event_from_stored

logger = logging.getLogger(__name__)

_ENTRY_KINDS = ("SERVER", "CONSUMER")


# One waterfall row is a list in this column order (a 5,000-span session is 5,000 rows: as
# lists they encode to a third of the bytes, and in a third of the time, of as many dicts).
COLUMNS = (
    "span_id", "trace", "parent_row", "depth", "name", "kind", "service", "pid", "offset_us",
    "duration_us", "status", "flags", "model", "input_tokens", "output_tokens", "cost",
    "remote_parent", "via_service",
)
FLAG_ERROR, FLAG_LLM, FLAG_TOOL, FLAG_ENTRY = 1, 2, 4, 8
# The positions of the fields of queries.LIGHT_FIELDS, for reading rows without dicts.
(_TRACE, _SPAN, _PARENT, _NAME, _KIND, _SERVICE, _PID, _START, _END, _STATUS, _EVENT_TYPE,
 _MODEL, _IN, _OUT, _COST, _EXCEPTION) = range(16)


def _tree(spans: List[tuple]) -> Tuple[Dict[Tuple[str, str], tuple],
                                      Dict[Tuple[str, str], List[tuple]],
                                      Dict[str, List[tuple]]]:
    """The spans by key, the children of each stored span, and the roots of each trace (a
    span whose parent is not stored here is a root)."""
    by_key = {(s[_TRACE], s[_SPAN]): s for s in spans}
    children: Dict[Tuple[str, str], List[tuple]] = {}
    roots: Dict[str, List[tuple]] = {}
    for span in spans:  # already ordered by start
        parent = (span[_TRACE], span[_PARENT])
        if span[_PARENT] is not None and parent in by_key:
            children.setdefault(parent, []).append(span)
        else:
            roots.setdefault(span[_TRACE], []).append(span)
    return by_key, children, roots


def _time_axis(spans: List[tuple]) -> Tuple[int, int]:
    """The first start and the last end of the session's spans, in epoch nanoseconds."""
    starts = [s[_START] for s in spans if s[_START]]
    ends = [s[_END] for s in spans if s[_END]]
    origin = min(starts) if starts else 0
    finish = max(ends) if ends else origin
    return origin, finish


def waterfall(spans: List[tuple]) -> Dict[str, Any]:
    """Rows for the waterfall (depth first, with depth and marks; see ``COLUMNS``), the
    traces and services they point into by index, and the time axis."""
    by_key, children, roots = _tree(spans)
    origin, finish = _time_axis(spans)
    services = sorted({s[_SERVICE] or "?" for s in spans})
    service_index = {name: i for i, name in enumerate(services)}
    traces = sorted(roots.items(), key=lambda item: min(s[_START] or 0 for s in item[1]))
    rows: List[list] = []
    seen: set = set()
    for trace_no, (_trace_id, trace_roots) in enumerate(traces):
        stack = [(root, 0, None) for root in reversed(trace_roots)]
        while stack:  # no recursion: traces can be deep
            span, depth, parent_row = stack.pop()
            key = (span[_TRACE], span[_SPAN])
            if key in seen:  # a parent loop in damaged data
                continue
            seen.add(key)
            first_root = depth == 0 and span is trace_roots[0]
            rows.append(_row(span, depth, parent_row, by_key, origin, trace_no, first_root,
                             service_index))
            index = len(rows) - 1
            for kid in reversed(children.get(key, ())):
                stack.append((kid, depth + 1, index))
    trace_ids = [trace_id for trace_id, _ in traces]
    for span in spans:  # only spans caught in parent loops are left
        if (span[_TRACE], span[_SPAN]) not in seen:
            trace_ids.append(span[_TRACE])
            rows.append(_row(span, 0, None, by_key, origin, len(trace_ids) - 1, False,
                             service_index))
    return {
        "origin_ns": origin,
        "total_us": max(0, (finish - origin) // 1000),
        "services": services,
        "traces": trace_ids,
        "columns": COLUMNS,
        "rows": rows,
    }


def _flags(span: tuple, parent: Optional[tuple], first_root: bool, kind: str) -> int:
    """The row's marks: error, LLM call or tool call, and entry into the session."""
    flags = 0
    if span[_STATUS] == "ERROR" or span[_EXCEPTION]:
        flags |= FLAG_ERROR
    if span[_EVENT_TYPE] == "llm_generation" or span[_MODEL] is not None:
        flags |= FLAG_LLM
    elif span[_EVENT_TYPE] == "function_call":
        flags |= FLAG_TOOL
    if parent is None and (first_root or kind in _ENTRY_KINDS):
        flags |= FLAG_ENTRY
    return flags


def _row(
    span: tuple,
    depth: int,
    parent_row: Optional[int],
    by_key: Dict[Tuple[str, str], tuple],
    origin: int,
    trace_no: int,
    first_root: bool,
    service_index: Dict[str, int],
) -> list:
    parent_id = span[_PARENT]
    parent = by_key.get((span[_TRACE], parent_id)) if parent_id else None
    start, end = span[_START] or 0, span[_END] or 0
    service = span[_SERVICE] or "?"
    via = None
    if parent is not None and (parent[_SERVICE] or "?") != service:
        via = service_index[parent[_SERVICE] or "?"]
    kind = span[_KIND] or "INTERNAL"
    return [
        span[_SPAN], trace_no, parent_row, depth, span[_NAME], kind, service_index[service],
        span[_PID], max(0, (start - origin) // 1000) if start else 0,
        max(0, (end - start) // 1000) if start and end else 0, span[_STATUS] or "UNSET",
        _flags(span, parent, first_root, kind),
        span[_MODEL], span[_IN], span[_OUT], span[_COST],
        parent_id if parent_id and parent is None else None, via,
    ]


def _is_llm(span: Dict[str, Any]) -> bool:
    return span["event_type"] == "llm_generation" or span["model"] is not None


def _llm_view(span: Dict[str, Any], payload: Dict[str, Any]) -> Dict[str, Any]:
    request = payload.get("request") or {}
    response = payload.get("response") or {}
    usage = payload.get("usage") or {}
    return {
        "provider": request.get("provider"),
        "model": span["model"] or request.get("model"),
        "messages": request.get("messages") or [],
        "output": response.get("output"),
        "tool_calls": response.get("tool_calls") or [],
        "input_tokens": _first(span["input_tokens"], usage.get("input_tokens")),
        "output_tokens": _first(span["output_tokens"], usage.get("output_tokens")),
        "cost": _first(span["cost"], usage.get("cost")),
        "params": request.get("params") or {},
    }


def _exceptions(span: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The exceptions recorded on the span: type, message, traceback."""
    if not isinstance(span["events"], list):
        return []
    return [
        {
            "type": (e.get("attributes") or {}).get("exception.type"),
            "message": (e.get("attributes") or {}).get("exception.message"),
            "traceback": (e.get("attributes") or {}).get("exception.stacktrace"),
        }
        for e in span["events"] if isinstance(e, dict) and e.get("name") == "exception"
    ]


def span_detail(span: Dict[str, Any], event: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Everything the detail pane shows for one span: the stored span, and for LLM and tool
    spans the structured view (messages, output, tool calls, model, tokens, cost; arguments
    and result), and the exceptions recorded on it (type, message, traceback)."""
    if event is None and (span["event_type"] or span["model"] is not None):
        event = _event_from_attributes(span)
    payload = (event or {}).get("payload") or {}
    detail: Dict[str, Any] = {"span": span, "event_type": (event or {}).get("type"),
                              "llm": None, "tool": None}
    if _is_llm(span):
        detail["llm"] = _llm_view(span, payload)
    elif span["event_type"] == "function_call":
        detail["tool"] = {
            "name": payload.get("function_name"),
            "arguments": payload.get("arguments"),
            "result": payload.get("return_value"),
        }
    detail["exceptions"] = _exceptions(span)
    return detail


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _event_from_attributes(span: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The Lucidic event rebuilt from the stored attributes (when the outbox no longer holds
    it), by the exporter's conversion, so every GenAI attribute shape is understood."""
    try:
        fields = {name: span[name] for name in (
            "name", "trace_id", "span_id", "attributes", "events", "status_code",
            "status_message", "start_ns", "end_ns")}
    except (KeyError, TypeError):  # a row without these fields: nothing to rebuild
        return None
    return event_from_stored(**fields)
