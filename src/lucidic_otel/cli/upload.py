"""``lucidic-otel upload``: deliver everything waiting in the local outbox, now.

For records a process could not deliver before it exited (the backend was down, the key was
wrong, the exit deadline was short): the same sender as in-process delivery, run in the
foreground with a deadline. The result (what was sent, what failed and why) goes to stdout;
progress goes to stderr, and only once there is some to show: a "delivered 0/N" line before
the result would read as if nothing had been sent. Retry schedules left by earlier processes
are ignored (the user asked to send now); leases held by live processes are respected.

Exit status: 0 when nothing is left pending and nothing was rejected in this run, 1 otherwise,
2 when delivery is not configured (``LUCIDIC_API_KEY`` and ``LUCIDIC_AGENT_ID`` are needed).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, TextIO

from lucidic_otel.cli.store_access import store_path_for
from lucidic_otel.config import DEFAULT_UPLOAD_DEADLINE_S, load_settings
from lucidic_otel.delivery.sender import DeliveryStats, Sender
from lucidic_otel.outbox.store import (
    KIND_EVENT,
    KIND_SESSION_END,
    KIND_SESSION_INIT,
    STATE_PENDING,
    Store,
)

logger = logging.getLogger(__name__)

_KIND_NAMES = {
    KIND_SESSION_INIT: "session starts",
    KIND_EVENT: "events",
    KIND_SESSION_END: "session ends",
}
_SHOWN_FAILURES = 10


def run(args: Any) -> int:
    """Upload the outbox of ``args.store`` (or the configured store) within ``args.deadline``.

    ``args`` needs ``store`` (a path or None), ``deadline`` (seconds) and ``json`` (print a
    JSON summary on stdout instead of text); missing attributes take their defaults.
    """
    err: TextIO = sys.stderr
    out: TextIO = sys.stdout
    settings = load_settings()
    if not settings.delivery_enabled:
        print(
            "lucidic-otel upload: LUCIDIC_API_KEY and LUCIDIC_AGENT_ID are needed to upload; "
            "set both and run it again.",
            file=err,
        )
        return 2
    store_arg = getattr(args, "store", None)
    path = store_path_for(settings, store_arg or None)
    deadline = getattr(args, "deadline", None)
    deadline = DEFAULT_UPLOAD_DEADLINE_S if deadline is None else max(0.0, float(deadline))
    as_json = bool(getattr(args, "json", False))

    if not path.exists():
        summary = _summary(path, 0, DeliveryStats(), 0)
        summary["note"] = "no local store at this path: nothing to upload"
        _report(summary, as_json, out)
        return 0

    store = Store(path, max_bytes=settings.store_max_bytes)
    try:
        total = store.outbox_counts()[STATE_PENDING]
        store.make_due()
        sender = Sender(store, settings)
        progress = _Progress(err, total)
        started = time.monotonic()
        try:
            sender.drain(deadline, progress=progress.show)
        finally:
            sender.stop(timeout_s=1.0)
            progress.done()
        stats = sender.stats
        after = store.outbox_counts()
        summary = _summary(path, total, stats, after[STATE_PENDING])
        summary["seconds"] = round(time.monotonic() - started, 2)
        _report(summary, as_json, out)
        ok = after[STATE_PENDING] == 0 and stats.failed == 0 and stats.halted is None
        return 0 if ok else 1
    finally:
        store.close()


class _Progress:
    """One updating line on a terminal (``\\r``); on a pipe (a log), a line every few
    seconds, the first after a few seconds, so a quick upload logs only its result. Nothing
    before the first record is settled: "delivered 0/N" says nothing about the outcome."""

    def __init__(self, out: TextIO, total: int) -> None:
        self._out = out
        self._total = total
        self._tty = bool(getattr(out, "isatty", lambda: False)())
        self._last_line = ""
        self._last_print = time.monotonic()

    def show(self, stats: DeliveryStats) -> None:
        done = stats.delivered_total
        if done == 0 and stats.failed == 0:
            return
        total = max(self._total, done + stats.failed)
        line = f"delivered {done}/{total}, failed {stats.failed}"
        if stats.retried:
            line += f", retried {stats.retried}"
        if line == self._last_line:
            return
        now = time.monotonic()
        if self._tty:
            self._out.write("\r" + line + "\x1b[K")
            self._out.flush()
        elif now - self._last_print >= 5.0:
            self._out.write(line + "\n")
            self._last_print = now
        self._last_line = line

    def done(self) -> None:
        if self._tty and self._last_line:
            self._out.write("\n")
            self._out.flush()


def _summary(path: Path, total: int, stats: DeliveryStats, remaining: int) -> Dict[str, Any]:
    return {
        "store": str(path),
        "pending_before": total,
        "delivered": stats.delivered_total,
        "delivered_by_kind": {
            _KIND_NAMES.get(kind, kind): count for kind, count in sorted(stats.delivered.items())
        },
        "blobs_uploaded": stats.blobs,
        "failed": stats.failed,
        "failures": stats.rejected[:_SHOWN_FAILURES],
        "remaining": remaining,
        "stopped": stats.halted,
        "last_error": stats.last_error,
    }


def _report(summary: Dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True), file=out)
        return
    lines = [f"store: {summary['store']}"]
    if summary.get("note"):
        lines.append(summary["note"])
        print("\n".join(lines), file=out)
        return
    kinds = ", ".join(f"{count} {name}" for name, count in summary["delivered_by_kind"].items())
    lines.append(
        f"sent {summary['delivered']} of {summary['pending_before']} pending records"
        + (f" ({kinds})" if kinds else "")
        + (
            f"; {summary['blobs_uploaded']} large payloads uploaded"
            if summary["blobs_uploaded"]
            else ""
        )
    )
    if summary["failed"]:
        lines.append(f"rejected by the backend and kept aside: {summary['failed']}")
        for failure in summary["failures"]:
            lines.append(
                f"  {failure['kind']} {failure['key']} (session {failure['session_id']}): "
                f"{failure['reason']}"
            )
        if summary["failed"] > len(summary["failures"]):
            lines.append(f"  ... and {summary['failed'] - len(summary['failures'])} more")
    if summary["remaining"]:
        why = summary["stopped"] or summary["last_error"] or "the deadline was reached"
        lines.append(f"still pending: {summary['remaining']} ({why}); run it again later")
    elif not summary["failed"]:
        lines.append("everything pending was delivered")
    print("\n".join(lines), file=out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lucidic_otel.cli.upload``: exactly ``lucidic-otel upload`` (one parser)."""
    from lucidic_otel.cli.main import main as cli_main

    return cli_main(["upload", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
