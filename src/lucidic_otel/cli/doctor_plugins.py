"""The plug-ins the SDK and the launcher load by name: trace exporters, propagators and
instrumentors, as ``doctor`` predicts them from the environment.

Why predicted by name: a name in ``OTEL_TRACES_EXPORTER`` or ``OTEL_PROPAGATORS`` that no
package registers makes the SDK raise at start-up (the launcher then skips all
instrumentation), and an instrumentation registered by two packages wraps a library twice;
neither shows until spans go missing or double. The names are resolved here as the SDK
resolves them (``opentelemetry.sdk._configuration``, 1.45), without loading any plug-in.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from opentelemetry.util._importlib_metadata import EntryPoint

from lucidic_otel.cli.doctor_launcher import distribution, entry, group
from lucidic_otel.launcher.origin import EXPORTER_VARIABLE, LUCIDIC

logger = logging.getLogger(__name__)

PROPAGATORS_VARIABLE = "OTEL_PROPAGATORS"
DISABLED_VARIABLE = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
DEFAULT_PROPAGATORS = "tracecontext,baggage"
# The SDK's rewrite of "otlp" by protocol (opentelemetry.sdk._configuration, 1.45).
_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_OTLP_NAMES = ("otlp", "otlp_proto_grpc", "otlp_proto_http")
_OTLP_DEFAULT_ENDPOINTS = {
    "otlp_proto_grpc": "http://localhost:4317",
    "otlp_proto_http": "http://localhost:4318/v1/traces",
}


# -------------------------------------------------------------------------- exporters


def _exporter_source(value: Optional[str]) -> str:
    """Where ``OTEL_TRACES_EXPORTER`` came from: the user, the distro's default, nowhere."""
    if value is not None and os.environ.get(EXPORTER_VARIABLE) == value:
        return "environment"
    if value is not None:
        return "distro default"
    return "unset"


def _drop_unknown(
    env: Dict[str, str], registered: Dict[str, EntryPoint], problems: List[str]
) -> List[str]:
    """What the lucidic configurator removes from the exporter list before the SDK sees it."""
    from lucidic_otel.launcher.distro import drop_unknown_exporters

    dropped = drop_unknown_exporters(env)  # logs; the caller collects the log
    if dropped:
        problems.append(
            f"{EXPORTER_VARIABLE} names unregistered exporters ({', '.join(dropped)}): the "
            f"lucidic configurator drops them (registered: {', '.join(sorted(registered))})"
        )
    return dropped


def _otlp_target(name: str, env: Mapping[str, str], target: Dict[str, Any],
                 problems: List[str]) -> None:
    """An OTLP exporter's entry point (``otlp`` is rewritten by protocol) and endpoint."""
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
        target["entry_point"] = _OTLP_BY_PROTOCOL.get(protocol or "grpc", name)
    target["endpoint"] = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or _OTLP_DEFAULT_ENDPOINTS.get(target["entry_point"])
    )


def _exporter_entry(name: str, env: Mapping[str, str], registered: Dict[str, EntryPoint],
                    problems: List[str]) -> Dict[str, Any]:
    """One name of the exporter list: the entry point it resolves to, and whether any
    package registers it."""
    target: Dict[str, Any] = {"name": name, "entry_point": name, "registered": False,
                              "distribution": None, "endpoint": None}
    if name in _OTLP_NAMES:
        _otlp_target(name, env, target, problems)
    ep = registered.get(target["entry_point"])
    if ep is not None:
        target["registered"] = True
        target["distribution"] = distribution(ep)["distribution"]
    else:
        problems.append(
            f"{EXPORTER_VARIABLE} names {name!r}, which is no registered trace exporter "
            f"(registered: {', '.join(sorted(registered))}): the SDK raises and the "
            "launcher skips ALL instrumentation"
        )
    return target


def exporter_facts(
    env: Dict[str, str], configurator: Optional[EntryPoint], problems: List[str]
) -> Dict[str, Any]:
    """The trace exporters the configurator would create, as the SDK resolves their names."""
    registered = {ep.name: ep for ep in group("opentelemetry_traces_exporter")}
    value = env.get(EXPORTER_VARIABLE)
    source = _exporter_source(value)
    dropped: List[str] = []
    if configurator is not None and configurator.name == LUCIDIC and value:
        dropped = _drop_unknown(env, registered, problems)
        value = env.get(EXPORTER_VARIABLE)
    result: Dict[str, Any] = {"value": value, "source": source, "dropped": dropped, "names": []}
    if configurator is None:
        return result
    if not value or value.strip().lower() == "none":
        return result
    for raw in value.split(","):
        result["names"].append(_exporter_entry(raw.strip(), env, registered, problems))
    return result


# ----------------------------------------------------------- propagators, instrumentors


def propagator_facts(env: Mapping[str, str], problems: List[str]) -> Dict[str, Any]:
    """What ``opentelemetry.propagate`` loads at import (it reads the variable only then)."""
    value = env.get(PROPAGATORS_VARIABLE)
    names = [n.strip() for n in (value or DEFAULT_PROPAGATORS).split(",")]
    if any(n.lower() == "none" for n in names):
        names = []
    registered = {ep.name for ep in group("opentelemetry_propagator")}
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


def instrumentor_facts(env: Mapping[str, str], problems: List[str]) -> Dict[str, Any]:
    """Every instrumentor the launcher would try, and names more than one package claims."""
    from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts

    disabled_names = {n.strip() for n in env.get(DISABLED_VARIABLE, "").split(",") if n.strip()}
    rows = []
    for ep in group("opentelemetry_instrumentor"):
        row = entry(ep)
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
            row["instruments"] = _instrumented_libraries(dist)
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
    by_library = _libraries_twice(rows, twice)
    for library, dists in sorted(by_library.items()):
        problems.append(
            f"instrumented twice: the library {library!r} is instrumented by "
            f"{', '.join(map(str, dists))} (under different names); both would wrap it "
            f"(duplicate spans, and each LLM call counted twice): uninstall one, or set "
            f"{DISABLED_VARIABLE}"
        )
    return {
        "installed": rows,
        "instrumented_twice": {k: twice[k] for k in sorted(twice)},
        "library_instrumented_twice": {k: by_library[k] for k in sorted(by_library)},
    }


def _instrumented_libraries(dist: Any) -> List[str]:
    """The libraries a distribution instruments: its ``instruments`` extra, as the contrib,
    GenAI, OpenInference and OpenLLMetry instrumentation packages declare it."""
    from packaging.requirements import InvalidRequirement, Requirement

    found = []
    for text in getattr(dist, "requires", None) or ():
        if "instruments" not in text:
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        marker = str(requirement.marker or "")
        if "instruments" in marker:
            found.append(requirement.name.lower().replace("_", "-"))
    return found


def _libraries_twice(
    rows: List[Dict[str, Any]], same_name: Mapping[str, List[str]]
) -> Dict[str, List[str]]:
    """Libraries that instrumentors of two distributions both wrap, under different entry-point
    names (``openai`` from one package, ``openai_v2`` from another); the same name twice is
    reported already."""
    owners: Dict[str, List[str]] = {}
    for row in rows:
        if row["disabled"] or row["skipped"] is not None or row["name"] in same_name:
            continue
        for library in row.get("instruments", ()):
            dists = owners.setdefault(library, [])
            if row["distribution"] not in dists:
                dists.append(row["distribution"])
    return {lib: dists for lib, dists in owners.items() if len(dists) > 1}


# Libraries that trace their own API calls: (distribution, a file only such versions ship,
# the variable that turns it off, the value that does, the span it makes).
_SELF_TRACING = (
    ("anthropic", "anthropic/_tracing.py", "ANTHROPIC_OPEN_TELEMETRY", "false",
     "anthropic.messages.create"),
)


def self_tracing_facts(
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
