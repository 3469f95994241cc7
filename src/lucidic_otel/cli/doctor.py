"""What ``lucidic-otel doctor`` finds out: the facts behind "why are my sessions missing?".

Almost every support question about a distro comes down to one of a few facts the user cannot
see: which distro and configurator the launcher actually picked (it takes the first one found,
in an arbitrary order, unless ``OTEL_PYTHON_DISTRO``/``OTEL_PYTHON_CONFIGURATOR`` say otherwise),
which exporters that leaves in effect, whether baggage propagation is on, whether an
instrumentation is installed twice, and whether data is piling up undelivered. This module
gathers those facts into one plain dict (:func:`diagnose`) so the text view
(:mod:`lucidic_otel.cli.doctor_view`), the ``--json`` view and the tests all read the same
thing. Nothing here configures the SDK, instruments anything or changes what the store holds.

The checks live beside it: :mod:`.doctor_launcher` mirrors the launcher's choices,
:mod:`.doctor_plugins` resolves exporters, propagators and instrumentors by name, and the
store is looked at read-only through :mod:`.store_access` (whose ``StoreUnreadableError`` and
``probe_store`` are importable from here too, as before).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from lucidic_otel.cli.doctor_launcher import launcher_facts, live_pipeline, predicted_pipeline
from lucidic_otel.cli.doctor_plugins import (
    exporter_facts,
    instrumentor_facts,
    propagator_facts,
    self_tracing_facts,
)
from lucidic_otel.cli.store_access import (
    STORE_LOGGER,
    StoreUnreadableError,
    check_integrity,
    check_store_usable,
    probe_store,
    quiet_logger,
    store_path_for,
    store_size,
)
from lucidic_otel.config import Settings, load_settings
from lucidic_otel.launcher.origin import CONFIGURATOR_VARIABLE, EXPORTER_VARIABLE
from lucidic_otel.outbox.store import PATH_VARIABLE, Store, store_path_problem
from lucidic_otel.sdk.egress import OutboundPolicy
from lucidic_otel.version import __version__

logger = logging.getLogger(__name__)

__all__ = ["StoreUnreadableError", "diagnose", "probe_store"]

FAILED_ITEMS_SHOWN = 10
# What a program whose store cannot be used does instead (see lucidic_otel.outbox.store).
_IN_MEMORY = (
    "programs recording here keep their telemetry in memory only (lost at exit, and "
    "`lucidic-otel sessions` cannot show it)"
)


# ---------------------------------------------------------------------------- the store


def _unreadable_problem(exc: StoreUnreadableError, path: Path) -> str:
    """The problem line for an unreadable store: what recording programs do, and the fix."""
    if exc.kind not in ("not-sqlite", "damaged"):
        return str(exc)
    return (
        f"{exc}; {_IN_MEMORY}. To fix: move it aside (mv '{path}' '{path}.bad') or point "
        f"{PATH_VARIABLE} at another file"
    )


def _read_store(data: Dict[str, Any], settings: Settings, path: Path) -> None:
    """Fill in what the readable store at ``path`` holds."""
    with quiet_logger(STORE_LOGGER) as messages:
        store = Store(path, max_bytes=settings.store_max_bytes)
        try:
            counts = store.outbox_counts()
            failed = store.failed_items(limit=FAILED_ITEMS_SHOWN)
            setups = store.recent_setups()
            check_store_usable(store, messages)
        finally:
            store.close()
    data["outbox"] = counts
    data["recorded_setups"] = setups
    data["failed_items"] = [
        {
            "seq": item.seq,
            "kind": item.kind,
            "session_id": item.session_id,
            "attempts": item.attempts,
            "reason": item.last_error,
        }
        for item in failed
    ]


def _data(settings: Settings, path: Path, source: str) -> Dict[str, Any]:
    """The store and delivery facts; ``store_problem`` is the problem line, if any."""
    data: Dict[str, Any] = {
        "store_path": str(path),
        "store_source": source,
        "store_exists": False,
        "store_bytes": None,
        "store_error": None,
        "store_problem": None,
        "outbox": None,
        "failed_items": [],
        "recorded_setups": [],
        "backend_url": settings.base_url,
        "delivery_enabled": settings.delivery_enabled,
        "delivery": settings.delivery,
        "api_key_set": bool(settings.api_key),
        "agent_id": settings.agent_id,
    }
    unusable = store_path_problem(path)
    if unusable is not None:
        data["store_error"] = f"the store path {path} cannot be used: {unusable.reason}"
        data["store_problem"] = f"{data['store_error']}; {_IN_MEMORY}. To fix: {unusable.remedy}"
        return data
    try:
        has_tables = probe_store(path)
        if has_tables:
            check_integrity(path)
            _read_store(data, settings, path)
    except StoreUnreadableError as exc:
        data["store_error"] = str(exc)
        data["store_problem"] = _unreadable_problem(exc, path)
        return data
    data["store_exists"] = path.exists()
    data["store_bytes"] = store_size(path) if data["store_exists"] else None
    if not has_tables:
        data["outbox"] = {"pending": 0, "delivered": 0, "failed": 0}
    return data


# -------------------------------------------------------------------------- diagnose


def _settings_view(settings: Settings) -> Dict[str, Any]:
    return {
        "repr": repr(settings),
        "api_key_set": bool(settings.api_key),
        "agent_id": settings.agent_id,
        "baggage_secret_set": settings.baggage_secret is not None,
        "baggage_trust": settings.baggage_trust,
        "propagate": settings.propagate,
        "capture_content": settings.capture_content,
        "strict": settings.strict,
        "session_id": settings.session_id,
        "session_name": settings.session_name,
        "store_path": None if settings.store_path is None else str(settings.store_path),
        "store_max_bytes": settings.store_max_bytes,
        "base_url": settings.base_url,
        "delivery": settings.delivery,
        "exit_deadline_s": settings.exit_deadline_s,
    }


def _delivery_credentials(settings: Settings, problems: List[str], notes: List[str]) -> None:
    """Delivery needs both the key and the agent id. Neither set is the local-only mode; one
    of them alone is a half-done set-up that silently delivers nothing, so it is a problem."""
    if settings.delivery_enabled:
        return
    given = [name for name, value in (("LUCIDIC_API_KEY", settings.api_key),
                                      ("LUCIDIC_AGENT_ID", settings.agent_id)) if value]
    if not given:
        notes.append(
            "delivery to Lucidic is off (LUCIDIC_API_KEY and LUCIDIC_AGENT_ID unset): data "
            "stays in the local store; `lucidic-otel sessions` shows it"
        )
        return
    missing = "LUCIDIC_AGENT_ID" if given == ["LUCIDIC_API_KEY"] else "LUCIDIC_API_KEY"
    argument = "agent_id" if missing == "LUCIDIC_AGENT_ID" else "api_key"
    problems.append(
        f"{given[0]} is set but {missing} is not: nothing is delivered to Lucidic (delivery "
        f"needs both; data stays in the local store) unless the program passes {argument} to "
        f"lucidic_otel.init(); set {missing}"
    )


def diagnose(store: Optional[os.PathLike[str] | str] = None) -> Dict[str, Any]:
    """Everything ``doctor`` reports, for this process's environment, as plain JSON data.

    Never contains the API key or the baggage secret, only whether they are set. ``problems``
    lists what will not work as the user probably expects, each with its fix.
    """
    with quiet_logger("lucidic_otel"):
        settings = load_settings()
        problems: List[str] = list(settings.problems)
        notes: List[str] = []
        if settings.strict and settings.problems:
            problems.append(
                "LUCIDIC_STRICT is on and the settings above have problems: under the launcher "
                "the program is not started (exit status 2), and init() raises ConfigError"
            )
        env = dict(os.environ)
        launcher = launcher_facts(env, problems, notes)
        configurator = launcher.pop("_configurator_ep")
        exporters = exporter_facts(env, configurator, problems)
        propagators = propagator_facts(os.environ, problems)
        propagators["outbound"] = OutboundPolicy(settings).describe()
        instrumentors = instrumentor_facts(os.environ, problems)
        instrumentors["self_tracing"] = self_tracing_facts(os.environ, instrumentors, notes)
        path = store_path_for(settings, store)
        source = "--store" if store is not None else (
            PATH_VARIABLE if settings.store_path is not None else "default")
        data = _data(settings, path, source)
        pipeline = live_pipeline() or predicted_pipeline(launcher, env)
    if configurator is not None and not pipeline["attached"]:
        problems.append(
            f"the lucidic pipeline is not attached ({pipeline['rule']}): spans do not reach the "
            f"local store or Lucidic; use {EXPORTER_VARIABLE}=lucidic (or lucidic,otlp)"
        )
    if data["store_problem"]:
        problems.append(data["store_problem"])
    if data["failed_items"]:
        problems.append(
            f"{data['outbox']['failed']} outbox items failed for good and will not be delivered "
            "(see failed_items)"
        )
    _delivery_credentials(settings, problems, notes)
    return {
        "version": __version__,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        # The store examined, which --store may have chosen, not only LUCIDIC_STORE_PATH.
        "settings": _settings_view(dataclasses.replace(settings, store_path=path)),
        "launcher": launcher,
        "effective_env": {
            name: env.get(name)
            for name in (CONFIGURATOR_VARIABLE, EXPORTER_VARIABLE, "OTEL_METRICS_EXPORTER",
                         "OTEL_LOGS_EXPORTER",
                         "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
        },
        "propagators": propagators,
        "exporters": exporters,
        "pipeline": pipeline,
        "instrumentors": instrumentors,
        "data": data,
        "problems": problems,
        "notes": notes,
    }
