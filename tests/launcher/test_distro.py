"""The launcher plug-ins as the launcher runs them: messages that say what really happens.

Each case runs a real program under the real ``opentelemetry-instrument`` (with
``opentelemetry-distro`` installed next to ours) and checks the text on stderr, the exit
status and what the store holds afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.launcher import clean_env, run_instrumented, write_script

from lucidic_otel.outbox.store import Store

PROGRAM = """
    from opentelemetry import trace
    with trace.get_tracer("t").start_as_current_span("work"):
        pass
    print("PROGRAM RAN", flush=True)
"""


def _run(tmp_path: Path, **env: str | None):
    script = write_script(tmp_path, "app.py", PROGRAM)
    store = tmp_path / "store.db"
    result = run_instrumented([script], clean_env(LUCIDIC_STORE_PATH=str(store), **env))
    return result, store


def _stored_names(store: Path) -> list:
    if not store.exists():
        return []
    with Store(store) as opened:
        return [span.name for span in opened.session_spans(None)]


@pytest.mark.parametrize("distro", ["lucidic", "distro"], ids=["our-distro", "raced-winner"])
def test_strict_mode_under_the_launcher_stops_the_program(tmp_path: Path, distro: str) -> None:
    """The launcher catches a distro's exception and runs the program uninstrumented with
    status 0; strict mode must instead stop it, non-zero, in one line that says so."""
    result, store = _run(tmp_path, LUCIDIC_STRICT="true", LUCIDIC_DELIVERY="bogus",
                         OTEL_PYTHON_DISTRO=distro,
                         OTEL_PYTHON_CONFIGURATOR=None if distro == "distro" else "lucidic")
    assert result.returncode == 2, result.stderr
    assert "PROGRAM RAN" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("lucidic-otel")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "lucidic-otel: LUCIDIC_STRICT=true and the configuration is invalid: "
        "LUCIDIC_DELIVERY='bogus' is not valid: expected one of process, thread"
    )
    assert "the program was not started (exit status 2)" in lines[0]
    assert "using the default" not in result.stderr


def test_without_strict_mode_a_bad_value_says_which_default_is_used(tmp_path: Path) -> None:
    result, store = _run(tmp_path, LUCIDIC_DELIVERY="bogus")
    assert result.returncode == 0, result.stderr
    assert "PROGRAM RAN" in result.stdout
    assert ("LUCIDIC_DELIVERY='bogus' is not valid: expected one of process, thread; using "
            "the default 'process'") in result.stderr
    assert _stored_names(store) == ["work"]  # and that is what happened


def test_an_exporter_list_with_no_valid_name_records_into_the_store(tmp_path: Path) -> None:
    """``OTEL_TRACES_EXPORTER=nosuch``: the SDK would fail and the launcher would skip all
    instrumentation; instead the message says spans go to the local store, and they do."""
    result, store = _run(tmp_path, OTEL_TRACES_EXPORTER="nosuch")
    assert result.returncode == 0, result.stderr
    assert "OTEL_TRACES_EXPORTER='nosuch' names no registered trace exporter: nosuch" in (
        result.stderr)
    assert "no valid name is left, so spans go to lucidic (the local store) instead" in (
        result.stderr)
    assert "continuing without" not in result.stderr
    assert _stored_names(store) == ["work"]


def test_an_exporter_list_keeps_its_valid_names(tmp_path: Path) -> None:
    result, store = _run(tmp_path, OTEL_TRACES_EXPORTER="lucidic,nosuch")
    assert result.returncode == 0, result.stderr
    assert "exporting with lucidic only" in result.stderr
    assert _stored_names(store) == ["work"]


def test_our_default_configurator_choice_prints_nothing(tmp_path: Path) -> None:
    """With ``opentelemetry-distro`` installed the launcher warned at every start that it
    skipped its configurator because ours was chosen, a default the user never set."""
    result, store = _run(tmp_path, OTEL_PYTHON_CONFIGURATOR=None)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert _stored_names(store) == ["work"]
    # A choice the user made themselves is theirs to hear about.
    chosen, _ = _run(tmp_path, OTEL_PYTHON_CONFIGURATOR="lucidic")
    assert "Configuration of configurator not loaded because lucidic is set" in chosen.stderr
