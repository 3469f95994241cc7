"""What lucidic-otel put on each SDK tracer provider, and the set-up report of this process.

Why a registry of our own: the SDK has no public way to list a provider's span processors, and
reading its private list made set-up depend on a layout the SDK may change. We know what we
add, and when the SDK adds something of ours for us (the configurator's ``span_processors=``,
an exporter named in ``OTEL_TRACES_EXPORTER``), so we write it down here as it happens. The
set-up reads it to add each piece exactly once, whoever set OpenTelemetry up.

Limit: a processor or exporter of ours that the application added to its own provider by hand
is not known here (the SDK does not tell us); ``init()`` then adds its own next to it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Dict, Mapping, Set

logger = logging.getLogger(__name__)

#: The roles a provider can have from us.
SESSION_PROCESSOR = "session processor"
PIPELINE = "lucidic pipeline"


class Attachments:
    """Provider -> the roles of ours on it; providers are held weakly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roles: weakref.WeakKeyDictionary[object, Set[str]] = weakref.WeakKeyDictionary()

    def add(self, provider: object, role: str) -> None:
        """Record that ``provider`` has ``role`` (:data:`SESSION_PROCESSOR`, :data:`PIPELINE`)."""
        with self._lock:
            self._roles.setdefault(provider, set()).add(role)

    def has(self, provider: object, role: str) -> bool:
        """True when ``role`` was recorded for ``provider``."""
        with self._lock:
            return role in self._roles.get(provider, ())


#: The one registry of this process.
ATTACHED = Attachments()


_report: Dict[str, Any] = {}


def record_setup(report: Mapping[str, Any]) -> None:
    """Keep what the set-up of this process found and did (the launcher's bootstrap calls it);
    the exporter writes it into the store for ``doctor``."""
    _report.update(report)


def setup_report() -> Dict[str, Any]:
    """A copy of what the set-up of this process found and did (empty before it ran)."""
    return dict(_report)
