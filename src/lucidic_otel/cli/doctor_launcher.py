"""The launcher mirrored, not run: which distro and configurator ``opentelemetry-instrument``
would pick here, and whether the lucidic pipeline ends up on the provider.

Why mirrored: the launcher takes the first distro and configurator found, in an arbitrary
order, unless ``OTEL_PYTHON_DISTRO``/``OTEL_PYTHON_CONFIGURATOR`` say otherwise, and that
choice decides whether sessions are recorded at all; running it would configure the SDK of the
``doctor`` process itself. So entry points are read in the launcher's own discovery order
(``opentelemetry.util._importlib_metadata``) and selected with the same rules as
``opentelemetry-instrumentation`` 0.66b1 (``auto_instrumentation/_load.py``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from opentelemetry.util._importlib_metadata import EntryPoint, entry_points

from lucidic_otel.launcher.origin import (  # one definition of the launcher's names
    CONFIGURATOR_VARIABLE,
    DISTRO_VARIABLE,
    EXPORTER_VARIABLE,
    LUCIDIC,
)

logger = logging.getLogger(__name__)

# The defaults opentelemetry-distro's OpenTelemetryDistro sets (setdefault). It cannot be run on
# a copy of the environment, as ours can, because it writes os.environ directly.
_OTEL_DISTRO = "opentelemetry.distro:OpenTelemetryDistro"
_OTEL_DISTRO_DEFAULTS = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_METRICS_EXPORTER": "otlp",
    "OTEL_LOGS_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
}


# --------------------------------------------------------------------- entry points


def distribution(ep: EntryPoint) -> Dict[str, Optional[str]]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return {"distribution": None, "version": None}
    name = getattr(dist, "name", None) or dist.metadata.get("Name")
    return {"distribution": name, "version": dist.version}


def entry(ep: EntryPoint) -> Dict[str, Any]:
    return {"name": ep.name, "value": ep.value, **distribution(ep)}


def group(group: str) -> List[EntryPoint]:
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
            return {"picked": entry(ep), "error": f"{type(exc).__name__}: {exc}",
                    "skipped": skipped}
        if not (isinstance(loaded, type) and issubclass(loaded, BaseDistro)):
            skipped.append(ep.name)
            continue
        return {"picked": entry(ep), "error": None, "skipped": skipped}
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


# ------------------------------------------------------------------------ the choice


def _distro_choice(
    env: Dict[str, str], problems: List[str], notes: List[str]
) -> Tuple[List[EntryPoint], Optional[str], Dict[str, Any], str]:
    """The distro the launcher loads: (installed, ``OTEL_PYTHON_DISTRO``, the pick, why)."""
    distros = group("opentelemetry_distro")
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
    return distros, wanted_distro, distro, distro_reason


def _configurator_choice(
    env: Dict[str, str], problems: List[str], notes: List[str]
) -> Tuple[List[EntryPoint], Optional[str], Optional[EntryPoint], str]:
    """The configurator the launcher runs: (installed, the variable, the pick, why)."""
    configurators = group("opentelemetry_configurator")
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
    return configurators, wanted_configurator, configurator, configurator_reason


def _sessions_stamped_by(configurator: Optional[EntryPoint]) -> Optional[str]:
    """What stamps session ids on spans: our configurator, our post-instrument hook, or
    nothing (no configurator, or another one with our hook not installed)."""
    post_hooks = [ep.name for ep in group("opentelemetry_post_instrument")]
    if configurator is None:
        return None
    if configurator.name == LUCIDIC:
        return "the lucidic configurator"
    if LUCIDIC in post_hooks:
        return "the lucidic post-instrument hook (another configurator runs)"
    return None


def launcher_facts(env: Dict[str, str], problems: List[str], notes: List[str]) -> Dict[str, Any]:
    """The distro and configurator the launcher would pick, and why; applies the picked
    distro's defaults to ``env``. ``_configurator_ep`` is the entry point, for the caller to
    pop (it is not JSON)."""
    distros, wanted_distro, distro, distro_reason = _distro_choice(env, problems, notes)
    picked = distro["picked"]
    _distro_defaults(picked, env, problems, notes)
    configurators, wanted_configurator, configurator, configurator_reason = (
        _configurator_choice(env, problems, notes))
    sessions_by = _sessions_stamped_by(configurator)
    return {
        "distros": [entry(ep) for ep in distros],
        "distro_variable": wanted_distro,
        "distro": picked,
        "distro_how": "chosen" if wanted_distro else ("raced" if picked else "none"),
        "distro_reason": distro_reason,
        "distros_skipped": distro["skipped"],
        "configurators": [entry(ep) for ep in configurators],
        "configurator_variable": wanted_configurator,
        "configurator": entry(configurator) if configurator is not None else None,
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


def predicted_pipeline(launcher: Dict[str, Any], env: Mapping[str, str]) -> Dict[str, Any]:
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


def live_pipeline() -> Optional[Dict[str, Any]]:
    """The set-up this very process went through (``opentelemetry-instrument lucidic-otel
    doctor``): the truth, where the rest of the report is a prediction."""
    from lucidic_otel.launcher.bootstrap import setup_report

    live = setup_report()
    if not live:
        return None
    return {"attached": live["pipeline_attached"], "by": live["pipeline_by"],
            "rule": live["pipeline_rule"], "source": "live", "setup": live}
