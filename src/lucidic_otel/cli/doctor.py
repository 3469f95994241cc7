"""What ``lucidic-otel doctor`` finds out: the facts behind "why are my sessions missing?".

Almost every support question about a distro comes down to one of a few facts the user cannot
see: which distro and configurator the launcher actually picked (it takes the first one found,
in an arbitrary order, unless ``OTEL_PYTHON_DISTRO``/``OTEL_PYTHON_CONFIGURATOR`` say otherwise),
which exporters that leaves in effect, whether baggage propagation is on, whether an
instrumentation is installed twice, and whether data is piling up undelivered. This module
gathers those facts into one plain dict (:func:`diagnose`) so the text view, the ``--json``
view and the tests all read the same thing.

The launcher is mirrored, not run: entry points are read in the launcher's own discovery order
(``opentelemetry.util._importlib_metadata``) and selected with the same rules as
``opentelemetry-instrumentation`` 0.66b1 (``auto_instrumentation/_load.py``). Nothing here
configures the SDK, instruments anything or changes what the store holds.

It also holds the read-only look at the store file the CLI's other commands share: is there a
readable store at this path (:func:`probe_store`), and which session ids start with a given
prefix (:func:`session_ids_with_prefix`), answered without ever creating or changing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional
from urllib.parse import quote

from opentelemetry.util._importlib_metadata import EntryPoint, entry_points

from lucidic_otel.config import Settings, load_settings
from lucidic_otel.launcher.origin import (  # noqa: E402 - one definition of the launcher's names
    CONFIGURATOR_VARIABLE,
    DISTRO_VARIABLE,
    EXPORTER_VARIABLE,
    LUCIDIC,
)
from lucidic_otel.outbox.store import (
    PATH_VARIABLE,
    SCHEMA_VERSION,
    Store,
    default_store_path,
    store_path_problem,
)
from lucidic_otel.sdk.egress import OutboundPolicy
from lucidic_otel.version import __version__

PROPAGATORS_VARIABLE = "OTEL_PROPAGATORS"
DISABLED_VARIABLE = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
DEFAULT_PROPAGATORS = "tracecontext,baggage"
FAILED_ITEMS_SHOWN = 10
_SQLITE_HEADER = b"SQLite format 3\x00"
# What a program whose store cannot be used does instead (see lucidic_otel.outbox.store).
_IN_MEMORY = (
    "programs recording here keep their telemetry in memory only (lost at exit, and "
    "`lucidic-otel sessions` cannot show it)"
)

# The defaults opentelemetry-distro's OpenTelemetryDistro sets (setdefault). It cannot be run on
# a copy of the environment, as ours can, because it writes os.environ directly.
_OTEL_DISTRO = "opentelemetry.distro:OpenTelemetryDistro"
_OTEL_DISTRO_DEFAULTS = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_METRICS_EXPORTER": "otlp",
    "OTEL_LOGS_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
}
# The SDK's rewrite of "otlp" by protocol (opentelemetry.sdk._configuration, 1.45).
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_OTLP_NAMES = ("otlp", "otlp_proto_grpc", "otlp_proto_http")
_OTLP_DEFAULT_ENDPOINTS = {
    "otlp_proto_grpc": "http://localhost:4317",
    "otlp_proto_http": "http://localhost:4318/v1/traces",
}


class StoreUnreadableError(Exception):
    """The store path holds something that is not a readable lucidic-otel store.

    ``kind`` says what, for advice: ``not-sqlite`` and ``damaged`` files make recording
    programs fall back to memory too; other kinds (``unreadable``) only stop the reader.
    """

    def __init__(self, message: str, kind: str = "unreadable") -> None:
        super().__init__(message)
        self.kind = kind


# ---------------------------------------------------------------------------- the store


def store_path_for(settings: Settings, override: Optional[os.PathLike[str] | str] = None) -> Path:
    """The store a command reads: ``--store``, else the path the exporter would write."""
    if override is not None:
        return Path(override).expanduser()
    return settings.store_path or default_store_path(os.environ)


def probe_store(path: Path) -> bool:
    """True when ``path`` is a store with tables, False when nothing was recorded there yet.

    Opens the file read-only, so a command that only reads never creates or changes it (the
    :class:`Store` class creates missing files and degrades to memory on bad ones, which is
    right for an exporter and wrong for a reader). Raises :class:`StoreUnreadableError` with
    a one-line reason for a directory, an unreadable file, a file that is not SQLite, another
    program's database, or a store written by a newer lucidic-otel.
    """
    try:
        if not path.exists():
            return False
        if path.is_dir():
            raise StoreUnreadableError(f"cannot read the store {path}: it is a directory")
        if not path.is_file():
            raise StoreUnreadableError(f"cannot read the store {path}: it is not a regular file")
        if path.stat().st_size == 0:
            return False
    except OSError as exc:
        raise StoreUnreadableError(f"cannot read the store {path}: {exc.strerror or exc}") from exc
    try:
        with _read_only(path) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )}
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from exc
    if version > SCHEMA_VERSION:
        raise StoreUnreadableError(
            f"cannot read the store {path}: it was written by a newer lucidic-otel (schema "
            f"{version}, this one reads {SCHEMA_VERSION}); upgrade lucidic-otel"
        )
    if not tables:
        return False
    if version != SCHEMA_VERSION or not {"sessions", "spans", "outbox"} <= tables:
        raise StoreUnreadableError(
            f"cannot read the store {path}: it is an SQLite database but not a lucidic-otel store"
        )
    return True


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that can neither create ``path`` nor change it."""
    uri = "file:" + quote(str(path.resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=2.0)
    try:
        yield conn
    finally:
        conn.close()


def _unreadable(path: Path, exc: sqlite3.Error) -> StoreUnreadableError:
    """A file that is not SQLite at all and a damaged SQLite file need different care (the
    second may be a store worth recovering), so the reason says which it is."""
    try:
        with path.open("rb") as file:
            is_sqlite = file.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError as error:
        return StoreUnreadableError(f"cannot read the store {path}: {error.strerror or error}")
    if not is_sqlite:
        return StoreUnreadableError(
            f"cannot read the store {path}: it is not an SQLite database ({exc})", "not-sqlite"
        )
    return StoreUnreadableError(
        f"cannot read the store {path}: it is a damaged SQLite database ({exc})", "damaged"
    )


def session_ids_with_prefix(path: Path, prefix: str, limit: int) -> List[str]:
    """Up to ``limit`` session ids of the store at ``path`` that start with ``prefix``, sorted.

    Read-only, like :func:`probe_store` (call that first). Raises
    :class:`StoreUnreadableError` when the file cannot be read.
    """
    try:
        with _read_only(path) as conn:
            rows = conn.execute(
                "SELECT session_id FROM sessions WHERE substr(session_id, 1, length(?1)) = ?1"
                " ORDER BY session_id LIMIT ?2",
                (prefix, limit),
            ).fetchall()
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from exc
    return [str(row[0]) for row in rows]


def count_sessions(path: Path) -> Optional[int]:
    """How many sessions the store at ``path`` holds, or None if it cannot be read."""
    try:
        with _read_only(path) as conn:
            return int(conn.execute("SELECT count(*) FROM sessions").fetchone()[0])
    except (sqlite3.Error, OSError):
        return None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[List[str]]:
    """Collect what ``name`` logs instead of printing it; yields the list of messages.

    The store and the settings log their problems for programs under instrumentation; the CLI
    reports them itself, in one line, so the log lines (and any traceback) must not reach the
    terminal.
    """
    logger = logging.getLogger(name)
    handler = _Collect()
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved


def check_store_usable(store: Store, messages: List[str]) -> None:
    """Raise :class:`StoreUnreadableError` if reads from ``store`` silently returned nothing.

    ``Store`` never raises: an unusable file makes it switch to an empty in-memory database,
    and a failed read returns an empty answer. A reader must tell that apart from "no data".
    """
    stats = store.stats()
    if stats.get("mode") != "file" or stats.get("errors"):
        reason = messages[0] if messages else "the file could not be used"
        raise StoreUnreadableError(f"cannot read the store {store.path}: {reason}")


def _store_size(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.stat(str(path) + suffix).st_size
    return total


def _check_integrity(path: Path) -> None:
    """Raise :class:`StoreUnreadableError` for a store with damaged pages.

    Opening a damaged file often works and the damage only shows in the rows a query reaches,
    so ``doctor`` (run to find problems) reads every page once; the other commands do not.
    """
    try:
        with _read_only(path) as conn:
            verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.Error as exc:
        raise _unreadable(path, exc) from exc
    if verdict != "ok":
        raise StoreUnreadableError(
            f"cannot read the store {path}: it is a damaged SQLite database "
            f"({' '.join(str(verdict).split())})",
            "damaged",
        )


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
    with quiet_logger("lucidic_otel.outbox.store") as messages:
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
            _check_integrity(path)
            _read_store(data, settings, path)
    except StoreUnreadableError as exc:
        data["store_error"] = str(exc)
        data["store_problem"] = _unreadable_problem(exc, path)
        return data
    data["store_exists"] = path.exists()
    data["store_bytes"] = _store_size(path) if data["store_exists"] else None
    if not has_tables:
        data["outbox"] = {"pending": 0, "delivered": 0, "failed": 0}
    return data


# ------------------------------------------------------------------------ the launcher


def _distribution(ep: EntryPoint) -> Dict[str, Optional[str]]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return {"distribution": None, "version": None}
    name = getattr(dist, "name", None) or dist.metadata.get("Name")
    return {"distribution": name, "version": dist.version}


def _entry(ep: EntryPoint) -> Dict[str, Any]:
    return {"name": ep.name, "value": ep.value, **_distribution(ep)}


def _group(group: str) -> List[EntryPoint]:
    return list(entry_points(group=group))


def _pick_distro(candidates: List[EntryPoint], wanted: Optional[str]) -> Dict[str, Any]:
    """``_load_distro``: the first entry point (or the one named) whose class is a distro."""
    from opentelemetry.instrumentation.distro import BaseDistro

    skipped = []
    for ep in candidates:
        if wanted is not None and wanted != ep.name:
            continue
        try:
            loaded = ep.load()
        except Exception as exc:  # noqa: BLE001 - the launcher re-raises: report, not crash
            return {"picked": _entry(ep), "error": f"{type(exc).__name__}: {exc}",
                    "skipped": skipped}
        if not (isinstance(loaded, type) and issubclass(loaded, BaseDistro)):
            skipped.append(ep.name)
            continue
        return {"picked": _entry(ep), "error": None, "skipped": skipped}
    return {"picked": None, "error": None, "skipped": skipped}


def _pick_configurator(candidates: List[EntryPoint], wanted: Optional[str]) -> Optional[EntryPoint]:
    """``_load_configurators``: the first entry point, or the one named; never more than one."""
    for ep in candidates:
        if wanted is None or wanted == ep.name:
            return ep
    return None


def _distro_defaults(
    picked: Optional[Dict[str, Any]], env: Dict[str, str], problems: List[str], notes: List[str]
) -> None:
    """Apply the picked distro's ``setdefault``s to ``env``, as its ``_configure`` would."""
    if picked is None:
        return
    if picked["name"] == LUCIDIC and picked["value"].startswith("lucidic_otel."):
        from lucidic_otel.config import ConfigError
        from lucidic_otel.launcher.distro import apply_defaults

        try:
            apply_defaults(env)
        except ConfigError:
            pass  # strict mode with bad settings: reported once, by diagnose()
        except Exception as exc:  # noqa: BLE001 - the distro logs and carries on: so do we
            problems.append(
                f"the lucidic distro cannot apply its defaults ({type(exc).__name__}: {exc})"
            )
        return
    if picked["value"] == _OTEL_DISTRO:
        for name, value in _OTEL_DISTRO_DEFAULTS.items():
            env.setdefault(name, value)
        return
    notes.append(
        f"the defaults of distro {picked['name']!r} ({picked['value']}) are not known here; "
        "the exporters shown assume it sets none"
    )


def _exporters(
    env: Dict[str, str], configurator: Optional[EntryPoint], problems: List[str]
) -> Dict[str, Any]:
    """The trace exporters the configurator would create, as the SDK resolves their names."""
    registered = {ep.name: ep for ep in _group("opentelemetry_traces_exporter")}
    value = env.get(EXPORTER_VARIABLE)
    if value is not None and os.environ.get(EXPORTER_VARIABLE) == value:
        source = "environment"
    elif value is not None:
        source = "distro default"
    else:
        source = "unset"
    dropped: List[str] = []
    if configurator is not None and configurator.name == LUCIDIC and value:
        from lucidic_otel.launcher.distro import drop_unknown_exporters

        dropped = drop_unknown_exporters(env)  # logs; the caller collects the log
        value = env.get(EXPORTER_VARIABLE)
        if dropped:
            problems.append(
                f"{EXPORTER_VARIABLE} names unregistered exporters ({', '.join(dropped)}): the "
                f"lucidic configurator drops them (registered: {', '.join(sorted(registered))})"
            )
    result: Dict[str, Any] = {"value": value, "source": source, "dropped": dropped, "names": []}
    if configurator is None:
        return result
    if not value or value.strip().lower() == "none":
        return result
    for raw in value.split(","):
        name = raw.strip()
        entry: Dict[str, Any] = {"name": name, "entry_point": name, "registered": False,
                                 "distribution": None, "endpoint": None}
        if name in _OTLP_NAMES:
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or ""
            ).strip()
            if name == "otlp":
                if protocol and protocol not in _OTLP_BY_PROTOCOL:
                    problems.append(
                        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported (grpc or "
                        "http/protobuf): the SDK raises and the launcher skips ALL "
                        "instrumentation"
                    )
                entry["entry_point"] = _OTLP_BY_PROTOCOL.get(protocol or "grpc", name)
            entry["endpoint"] = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or _OTLP_DEFAULT_ENDPOINTS.get(entry["entry_point"])
            )
        ep = registered.get(entry["entry_point"])
        if ep is not None:
            entry["registered"] = True
            entry["distribution"] = _distribution(ep)["distribution"]
        else:
            problems.append(
                f"{EXPORTER_VARIABLE} names {name!r}, which is no registered trace exporter "
                f"(registered: {', '.join(sorted(registered))}): the SDK raises and the "
                "launcher skips ALL instrumentation"
            )
        result["names"].append(entry)
    return result


def _propagators(env: Mapping[str, str], problems: List[str]) -> Dict[str, Any]:
    """What ``opentelemetry.propagate`` loads at import (it reads the variable only then)."""
    value = env.get(PROPAGATORS_VARIABLE)
    names = [n.strip() for n in (value or DEFAULT_PROPAGATORS).split(",")]
    if any(n.lower() == "none" for n in names):
        names = []
    registered = {ep.name for ep in _group("opentelemetry_propagator")}
    unknown = [n for n in names if n not in registered]
    if unknown:
        problems.append(
            f"{PROPAGATORS_VARIABLE}={value!r} names unknown propagators ({', '.join(unknown)}): "
            "importing opentelemetry.propagate raises ValueError"
        )
    baggage = "baggage" in names
    if not baggage:
        problems.append(
            f"the 'baggage' propagator is off ({PROPAGATORS_VARIABLE}={value!r}): sessions will "
            f"not follow requests into other services; use {PROPAGATORS_VARIABLE}="
            f"{DEFAULT_PROPAGATORS}"
        )
    return {
        "value": value,
        "source": "environment" if value else "default",
        "names": names,
        "unknown": unknown,
        "baggage": baggage,
    }


def _instrumentors(env: Mapping[str, str], problems: List[str]) -> Dict[str, Any]:
    """Every instrumentor the launcher would try, and names more than one package claims."""
    from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts

    disabled_names = {n.strip() for n in env.get(DISABLED_VARIABLE, "").split(",") if n.strip()}
    rows = []
    for ep in _group("opentelemetry_instrumentor"):
        row = _entry(ep)
        row["disabled"] = "*" in disabled_names or ep.name in disabled_names
        row["skipped"] = None
        dist = getattr(ep, "dist", None)
        if dist is not None:
            try:
                conflict = get_dist_dependency_conflicts(dist)
            except Exception as exc:  # noqa: BLE001 - malformed metadata: say so, go on
                conflict = f"cannot read its requirements ({type(exc).__name__})"
            if conflict is not None:
                row["skipped"] = str(conflict)
        rows.append(row)
    owners: Dict[str, List[str]] = {}
    for row in rows:
        if not row["disabled"] and row["skipped"] is None:
            owners.setdefault(row["name"], [])
            if row["distribution"] not in owners[row["name"]]:
                owners[row["name"]].append(row["distribution"])
    twice = {name: dists for name, dists in owners.items() if len(dists) > 1}
    for row in rows:
        row["instrumented_twice"] = row["name"] in twice
    for name, dists in sorted(twice.items()):
        problems.append(
            f"instrumented twice: {name!r} is registered by {', '.join(map(str, dists))}; both "
            f"would wrap the same library (duplicate spans): uninstall one, or set "
            f"{DISABLED_VARIABLE}"
        )
    return {"installed": rows, "instrumented_twice": {k: twice[k] for k in sorted(twice)}}


# Libraries that trace their own API calls: (distribution, a file only such versions ship,
# the variable that turns it off, the value that does, the span it makes).
_SELF_TRACING = (
    ("anthropic", "anthropic/_tracing.py", "ANTHROPIC_OPEN_TELEMETRY", "false",
     "anthropic.messages.create"),
)


def _self_tracing(
    env: Mapping[str, str], instrumentors: Dict[str, Any], notes: List[str]
) -> List[Dict[str, Any]]:
    """Libraries that trace themselves while an instrumentation for them is active too: each
    call then has two LLM spans (lucidic-otel merges them into one event), worth knowing."""
    from importlib import metadata

    active = [r for r in instrumentors["installed"] if not r["disabled"] and not r["skipped"]]
    found = []
    for dist_name, marker, variable, off, span_name in _SELF_TRACING:
        wrapping = [r for r in active if r["name"] == dist_name]
        if not wrapping:
            continue
        try:
            dist = metadata.distribution(dist_name)
            traces_itself = Path(str(dist.locate_file(marker))).is_file()
        except Exception:  # noqa: BLE001 - not installed, or unreadable metadata
            continue
        if not traces_itself:
            continue
        enabled = env.get(variable, "").strip().lower() != off
        owners = ", ".join(str(r["distribution"]) for r in wrapping)
        found.append({"library": dist_name, "version": dist.version, "variable": variable,
                      "enabled": enabled, "instrumented_by": owners, "span": span_name})
        if enabled:
            notes.append(
                f"{dist_name} {dist.version} traces its own calls ({span_name}, on unless "
                f"{variable}={off}) and {owners} instruments it too: both layers are "
                f"recorded, and each call still becomes one llm_generation event (the layers "
                f"merged); set {variable}={off} to record only the instrumentation's span"
            )
    return found


def _launcher(env: Dict[str, str], problems: List[str], notes: List[str]) -> Dict[str, Any]:
    distros = _group("opentelemetry_distro")
    wanted_distro = env.get(DISTRO_VARIABLE)
    distro = _pick_distro(distros, wanted_distro)
    picked = distro["picked"]
    if distro["error"]:
        problems.append(
            f"loading distro {picked['name']!r} fails ({distro['error']}): the launcher skips "
            "ALL instrumentation"
        )
    if wanted_distro is None:
        distro_reason = "first found (OTEL_PYTHON_DISTRO is unset)"
        if len(distros) > 1:
            notes.append(
                f"{len(distros)} distros are installed "
                f"({', '.join(ep.name for ep in distros)}) and {DISTRO_VARIABLE} is unset: the "
                f"launcher takes the first one found, in an order that can change; sessions are "
                f"recorded either way, but the winner's defaults (exporters) apply; set "
                f"{DISTRO_VARIABLE}=lucidic to decide it"
            )
    elif picked is not None:
        distro_reason = f"named by {DISTRO_VARIABLE}"
    else:
        distro_reason = f"{DISTRO_VARIABLE}={wanted_distro!r} names no installed distro"
        problems.append(
            f"{DISTRO_VARIABLE}={wanted_distro!r} names no installed distro (installed: "
            f"{', '.join(ep.name for ep in distros) or 'none'}): the launcher uses its "
            "do-nothing default distro"
        )
    _distro_defaults(picked, env, problems, notes)

    configurators = _group("opentelemetry_configurator")
    wanted_configurator = env.get(CONFIGURATOR_VARIABLE)
    configurator = _pick_configurator(configurators, wanted_configurator)
    if wanted_configurator is None:
        configurator_reason = "first found (OTEL_PYTHON_CONFIGURATOR is unset)"
        if configurator is None:
            configurator_reason = "none is installed"
            problems.append(
                "no configurator is installed: the SDK is never set up, so no span is exported"
            )
        elif len(configurators) > 1:
            notes.append(
                f"{len(configurators)} configurators are installed and {CONFIGURATOR_VARIABLE} "
                f"is unset: the launcher runs the first one found ({configurator.name!r} now), "
                f"in an order that can change; set {CONFIGURATOR_VARIABLE}=lucidic"
            )
    elif configurator is not None:
        set_by = "the environment" if os.environ.get(CONFIGURATOR_VARIABLE) else "the distro"
        configurator_reason = f"named by {CONFIGURATOR_VARIABLE} (set by {set_by})"
    else:
        configurator_reason = f"{CONFIGURATOR_VARIABLE}={wanted_configurator!r} names none"
        problems.append(
            f"{CONFIGURATOR_VARIABLE}={wanted_configurator!r} names no installed configurator: "
            "the SDK is never set up, so no span is exported at all"
        )
    post_hooks = [ep.name for ep in _group("opentelemetry_post_instrument")]
    if configurator is None:
        sessions_by = None
    elif configurator.name == LUCIDIC:
        sessions_by = "the lucidic configurator"
    elif LUCIDIC in post_hooks:
        sessions_by = "the lucidic post-instrument hook (another configurator runs)"
    else:
        sessions_by = None
    return {
        "distros": [_entry(ep) for ep in distros],
        "distro_variable": wanted_distro,
        "distro": picked,
        "distro_how": "chosen" if wanted_distro else ("raced" if picked else "none"),
        "distro_reason": distro_reason,
        "distros_skipped": distro["skipped"],
        "configurators": [_entry(ep) for ep in configurators],
        "configurator_variable": wanted_configurator,
        "configurator": _entry(configurator) if configurator is not None else None,
        "configurator_how": _configurator_how(configurator, wanted_configurator),
        "configurator_reason": configurator_reason,
        "sessions_stamped_by": sessions_by,
        "_configurator_ep": configurator,
    }


def _configurator_how(configurator: Optional[EntryPoint], wanted: Optional[str]) -> str:
    if configurator is None:
        return "none"
    if wanted is None:
        return "raced"
    return "chosen" if os.environ.get(CONFIGURATOR_VARIABLE) else "by-distro"


def _pipeline(launcher: Dict[str, Any], env: Mapping[str, str]) -> Dict[str, Any]:
    """Whether the lucidic export pipeline will be on the provider, by the rule the
    post-instrument hook applies (:func:`lucidic_otel.launcher.bootstrap.exporter_rule`)."""
    from lucidic_otel.launcher.bootstrap import exporter_rule

    configurator = launcher["configurator"]
    if configurator is None:
        return {"attached": False, "by": None, "source": "predicted",
                "rule": "no configurator runs, so there is no SDK provider to attach to"}
    distro = launcher["distro"]
    ours = distro is not None and distro["name"] == LUCIDIC
    if ours or launcher["distro_how"] != "chosen":
        value, source = os.environ.get(EXPORTER_VARIABLE), "the environment"
    else:
        value = env.get(EXPORTER_VARIABLE)
        source = f"the environment or distro {distro['name']!r}, chosen by {DISTRO_VARIABLE}"
    wanted, rule = exporter_rule(value, source)
    effective = [n.strip() for n in (env.get(EXPORTER_VARIABLE) or "").split(",")]
    if LUCIDIC in effective:
        by: Optional[str] = "exporter list"
    elif wanted:
        by = "lucidic-otel"
    else:
        by = None
    return {"attached": by is not None, "by": by, "rule": rule, "source": "predicted"}


def _live_pipeline() -> Optional[Dict[str, Any]]:
    """The set-up this very process went through (``opentelemetry-instrument lucidic-otel
    doctor``): the truth, where the rest of the report is a prediction."""
    from lucidic_otel.launcher.bootstrap import setup_report

    live = setup_report()
    if not live:
        return None
    return {"attached": live["pipeline_attached"], "by": live["pipeline_by"],
            "rule": live["pipeline_rule"], "source": "live", "setup": live}


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
        launcher = _launcher(env, problems, notes)
        configurator = launcher.pop("_configurator_ep")
        exporters = _exporters(env, configurator, problems)
        propagators = _propagators(os.environ, problems)
        propagators["outbound"] = OutboundPolicy(settings).describe()
        instrumentors = _instrumentors(os.environ, problems)
        instrumentors["self_tracing"] = _self_tracing(os.environ, instrumentors, notes)
        path = store_path_for(settings, store)
        source = "--store" if store is not None else (
            PATH_VARIABLE if settings.store_path is not None else "default")
        data = _data(settings, path, source)
        pipeline = _live_pipeline() or _pipeline(launcher, env)
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
