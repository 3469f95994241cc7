"""What a launched program left in its store, read the way the event-tree tests compare it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from lucidic_otel.outbox.store import Store

#: One session's (events, spans, {event id: nearest event ancestor's id, or None}).
Run = Tuple[List[Dict[str, Any]], List[Any], Dict[str, Optional[str]]]


def session_trees(store_path: Path, prefix: str, runs: Iterable[str]) -> Dict[str, Run]:
    """For each run: the events of session ``prefix + run``, its spans, and each event's
    resolved parent event (the nearest ancestor span that is an event, across traces too)."""
    found: Dict[str, Run] = {}
    with Store(store_path) as store:
        for run in runs:
            events = [i.body for i in store.session_events(prefix + run) if i.kind == "event"]
            spans = store.session_spans(prefix + run)
            starts = [(e["metadata"]["trace_id"], e["metadata"].get("parent_span_id"))
                      for e in events]
            parents = dict(zip([e["client_event_id"] for e in events],
                               store.nearest_event_ancestors(starts), strict=True))
            found[run] = (events, spans, parents)
    return found
