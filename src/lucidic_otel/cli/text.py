"""The small formatting rules every command's output shares: one line, times, sizes, tables.

Why shared: stored values come from any program, so a name can hold newlines or control
characters and a timestamp can be damaged; each view must show them the same safe way (one
line, escaped, cut; "-" for what cannot be shown) instead of each guarding on its own.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any, List, Optional, Sequence

logger = logging.getLogger(__name__)


def one_line(text: Any, limit: Optional[int] = None) -> str:
    """``text`` on one line: whitespace runs collapsed, control characters escaped, cut."""
    flat = " ".join(str(text).split())
    flat = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in flat)
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat


def iso_utc(ns: Optional[int]) -> Optional[str]:
    """An epoch-nanoseconds time as ISO 8601 in UTC, or None for none or a damaged one."""
    try:
        moment = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc) if ns else None
    except (OverflowError, OSError, ValueError):  # a damaged timestamp: show none
        return None
    return moment.isoformat(timespec="microseconds") if moment else None


def local_time(ns: Optional[int]) -> str:
    """An epoch-nanoseconds time in local time to the second, or "-"."""
    try:
        return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%dT%H:%M:%S") if ns else "-"
    except (OverflowError, OSError, ValueError):
        return "-"


def duration(seconds: Optional[float]) -> str:
    """A duration in the unit that reads best (ms, s, m, h), or "-"."""
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


def cost(value: Optional[float]) -> str:
    """USD with four decimals; a cost too small to show is not shown as zero."""
    if value is None:
        return "-"
    if 0 < value < 0.00005:
        return "<0.0001"
    return f"{value:.4f}"


def count(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless one."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def tokens(inp: Optional[int], out: Optional[int]) -> str:
    """Input/output tokens, "-" for an unknown side."""
    return f"{inp if inp is not None else '-'}/{out if out is not None else '-'}"


def size(nbytes: Optional[int]) -> str:
    """A file size in KB or MB, or "-"."""
    if nbytes is None:
        return "-"
    if nbytes >= 1024 * 1024:
        return f"{nbytes / 1048576:.1f} MB"
    return f"{nbytes / 1024:.1f} KB"


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout; what JSON cannot hold is shown as text."""
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def table(headers: Sequence[str], rows: List[Sequence[str]], right: Sequence[int]) -> None:
    """Print aligned columns; the columns at the indexes in ``right`` are right-aligned."""
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
