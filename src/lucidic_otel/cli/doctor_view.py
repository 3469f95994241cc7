"""The text view of ``lucidic-otel doctor``: the report of
:func:`~lucidic_otel.cli.doctor.diagnose`, one section per stage a span passes (settings,
launcher, propagation, exporters, instrumentors, the store and delivery), then the problems,
each with its fix.

Why separate from the checks: ``--json`` prints the same report unrendered and the tests read
it as data, so the checks must not know how it is printed; this module only reads the dict.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Dict, Optional

from lucidic_otel.cli import text as fmt
from lucidic_otel.cli.doctor import diagnose

logger = logging.getLogger(__name__)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _dist(entry: Optional[Dict[str, Any]]) -> str:
    if not entry:
        return "-"
    return f"{entry['name']} ({entry.get('distribution') or '?'} {entry.get('version') or ''})"


def _print_configuration(report: Dict[str, Any]) -> None:
    settings = report["settings"]
    print(f"lucidic-otel {report['version']}  (python {report['python']}, "
          f"{report['executable']})")

    print("\nConfiguration")
    print(f"  {settings['repr']}")
    print(f"  api key set: {_yes(settings['api_key_set'])}   agent id: "
          f"{settings['agent_id'] or '-'}   baggage secret set: "
          f"{_yes(settings['baggage_secret_set'])}")


def _print_launcher(report: Dict[str, Any]) -> None:
    launcher = report["launcher"]
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


def _print_propagation(report: Dict[str, Any]) -> None:
    propagators = report["propagators"]
    print("\nPropagation")
    print(f"  OTEL_PROPAGATORS={propagators['value'] or '(unset: tracecontext,baggage)'}  ->  "
          f"{', '.join(propagators['names']) or 'none'};  baggage: "
          f"{'on' if propagators['baggage'] else 'OFF'}")
    print("  outbound session baggage: " + _outbound_line(propagators["outbound"]))


def _print_exporters(report: Dict[str, Any]) -> None:
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


def _print_instrumentors(report: Dict[str, Any]) -> None:
    instrumentors = report["instrumentors"]
    rows = instrumentors["installed"]
    print(f"\nInstrumentors ({len(rows)})")
    width = max((len(r["name"]) for r in rows), default=0)
    doubled = {d for dists in instrumentors.get("library_instrumented_twice", {}).values()
               for d in dists}
    for row in rows:
        flags = []
        if row["instrumented_twice"]:
            flags.append("INSTRUMENTED TWICE")
        elif row["distribution"] in doubled and set(row.get("instruments", ())) & set(
            instrumentors["library_instrumented_twice"]
        ):
            flags.append("LIBRARY INSTRUMENTED TWICE: " + ", ".join(row["instruments"]))
        if row["disabled"]:
            flags.append("disabled")
        if row["skipped"]:
            flags.append("skipped: " + fmt.one_line(row["skipped"], 100))
        print(f"  {row['name'].ljust(width)}  {row['distribution'] or '?'} "
              f"{row['version'] or ''}" + (f"  [{'; '.join(flags)}]" if flags else ""))


def _print_data(report: Dict[str, Any]) -> None:
    data = report["data"]
    print("\nData")
    if data["store_error"]:
        state = "cannot be used, see Problems"
    elif not data["store_exists"]:
        state = "not created yet"
    else:
        state = fmt.size(data["store_bytes"])
    print(f"  store: {data['store_path']}  ({state}; from {data['store_source']})")
    if data["outbox"] is not None:
        counts = data["outbox"]
        print(f"  outbox: {counts['pending']} pending, {counts['delivered']} delivered, "
              f"{counts['failed']} failed")
    for item in data["failed_items"]:
        print(f"    failed #{item['seq']} {item['kind']} session {item['session_id']} after "
              f"{item['attempts']} attempts: {fmt.one_line(item['reason'] or '?', 120)}")
    where = "a helper process" if data["delivery"] == "process" else "threads in the application"
    print(f"  backend: {data['backend_url']}  delivery: "
          f"{f'enabled, from {where}' if data['delivery_enabled'] else 'disabled'}")


def _print_setups_notes_problems(report: Dict[str, Any]) -> None:
    data = report["data"]
    for setup in data.get("recorded_setups", [])[:3]:
        print(f"  recorded by pid {setup.get('pid')} ({setup.get('service') or '?'}) at "
              f"{fmt.iso_utc(int(setup['recorded_at'] * 1e9))}: {_setup_line(setup)}")
    for note in report["notes"]:
        print(f"  note: {note}")
    problems = report["problems"]
    if problems:
        print(f"\nProblems ({len(problems)})")
        for problem in problems:
            print(f"  - {problem}")
    else:
        print("\nNo problems found.")


def print_doctor(report: Dict[str, Any]) -> None:
    """Print ``report`` (from :func:`~lucidic_otel.cli.doctor.diagnose`) for a terminal."""
    _print_configuration(report)
    _print_launcher(report)
    _print_propagation(report)
    _print_exporters(report)
    _print_instrumentors(report)
    _print_data(report)
    _print_setups_notes_problems(report)


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


def cmd_doctor(args: argparse.Namespace) -> int:
    """Report the effective set-up; exit 1 when it lists problems, 0 otherwise, so a CI step
    or a deployment check can run ``lucidic-otel doctor`` and fail on what it finds."""
    report = diagnose(args.store_option)
    if args.json:
        fmt.print_json(report)
    else:
        print_doctor(report)
    return 1 if report["problems"] else 0
