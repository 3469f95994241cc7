"""Who set OpenTelemetry up in this process, and what the user asked for before anyone did.

The launcher runs the first distro and the first configurator it finds unless
``OTEL_PYTHON_DISTRO``/``OTEL_PYTHON_CONFIGURATOR`` name one, in an order decided by
``sys.path`` and directory listings. When another distro wins, its ``setdefault`` calls have
already changed ``os.environ`` by the time our hooks run (``opentelemetry-distro`` sets
``OTEL_TRACES_EXPORTER=otlp``), so an explicit user choice and another distro's default look
the same there. This module tells them apart by reading the environment the process was
started with (``/proc/self/environ``, which ``os.environ`` writes never change) and records
which of our plug-ins ran, so the post-instrument hook can make the outcome the same whoever
won, while still respecting what the user chose.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Optional

from opentelemetry.util._importlib_metadata import entry_points

logger = logging.getLogger(__name__)

LUCIDIC = "lucidic"
DISTRO_VARIABLE = "OTEL_PYTHON_DISTRO"
CONFIGURATOR_VARIABLE = "OTEL_PYTHON_CONFIGURATOR"
EXPORTER_VARIABLE = "OTEL_TRACES_EXPORTER"

# Known setdefault values of opentelemetry-distro's OpenTelemetryDistro: the fallback where the
# starting environment cannot be read (no /proc).
_KNOWN_DISTRO_DEFAULTS = {"distro": {EXPORTER_VARIABLE: "otlp"}}


@dataclass
class _Ran:
    """Which of our launcher plug-ins ran in this process (set by the plug-ins themselves)."""

    distro: bool = False
    configurator: bool = False
    #: ``init()`` configured the SDK itself (a plain ``python app.py``).
    by_init: bool = False
    #: OTEL_TRACES_EXPORTER as our distro found it, before its own setdefault.
    exporters_before_distro: Optional[str] = None


RAN = _Ran()
_UNREAD = object()
_initial: object = _UNREAD


def initial_environment() -> Optional[Dict[str, str]]:
    """The environment this process was started with, or None where it cannot be read."""
    global _initial
    if _initial is _UNREAD:
        try:
            with open(f"/proc/{os.getpid()}/environ", "rb") as f:
                raw = f.read()
            env: Dict[str, str] = {}
            for item in raw.split(b"\0"):
                name, sep, value = item.partition(b"=")
                if sep:
                    env[os.fsdecode(name)] = os.fsdecode(value)
            _initial = env
        except OSError:
            _initial = None
    return _initial  # type: ignore[return-value]


def _first(group: str, base: Optional[type] = None) -> Optional[str]:
    """The name of the entry point the launcher takes first in ``group``."""
    for ep in entry_points(group=group):
        if base is None:
            return ep.name
        try:
            loaded = ep.load()
        except Exception:  # the launcher would have failed on it: not the winner
            continue
        if isinstance(loaded, type) and issubclass(loaded, base):
            return ep.name
    return None


@dataclass(frozen=True)
class Selection:
    """One plug-in the launcher ran: its entry-point name and how it came to be picked."""

    name: Optional[str]
    how: str  # "chosen" (the user named it), "raced" (first found), "by-distro", "none"

    @property
    def ours(self) -> bool:
        return self.name == LUCIDIC


def _user_value(name: str) -> Optional[str]:
    initial = initial_environment()
    if initial is not None:
        return initial.get(name)
    return os.environ.get(name)


def distro() -> Selection:
    """The distro the launcher ran in this process."""
    if RAN.distro:
        return Selection(LUCIDIC, "chosen" if _user_value(DISTRO_VARIABLE) else "raced")
    wanted = os.environ.get(DISTRO_VARIABLE)
    if wanted:
        return Selection(wanted, "chosen")
    from opentelemetry.instrumentation.distro import BaseDistro

    name = _first("opentelemetry_distro", BaseDistro)
    return Selection(name, "raced" if name else "none")


def configurator() -> Selection:
    """The configurator the launcher ran (it runs exactly one, or none)."""
    wanted = os.environ.get(CONFIGURATOR_VARIABLE)
    if RAN.configurator:
        wanted = LUCIDIC
    if wanted:
        if _user_value(CONFIGURATOR_VARIABLE):
            return Selection(wanted, "chosen")
        return Selection(wanted, "by-distro" if wanted == LUCIDIC and RAN.distro else "raced")
    name = _first("opentelemetry_configurator")
    return Selection(name, "raced" if name else "none")


def user_exporters(winner: Selection) -> tuple[Optional[str], str]:
    """``OTEL_TRACES_EXPORTER`` as the user set it, and where that answer comes from.

    Our distro records the value before its own default; another distro's defaults are
    recognised through the starting environment (or, without one, its known defaults).
    """
    if RAN.distro:
        return RAN.exporters_before_distro, "the environment"
    current = os.environ.get(EXPORTER_VARIABLE)
    if winner.name is None:
        return current, "the environment"
    if winner.how == "chosen":  # a distro the user chose: its defaults are their choice too
        return current, f"the environment or distro {winner.name!r}, chosen by {DISTRO_VARIABLE}"
    initial = initial_environment()
    if initial is not None:
        return initial.get(EXPORTER_VARIABLE), "the environment"
    if current == _KNOWN_DISTRO_DEFAULTS.get(winner.name, {}).get(EXPORTER_VARIABLE):
        return None, f"the environment (the {current!r} is distro {winner.name!r}'s default)"
    return current, "the environment (or the distro; the starting environment is unreadable)"
