"""``doctor`` says when a library traces itself while an instrumentation wraps it too."""

from __future__ import annotations

import pytest

from lucidic_otel.cli.doctor import diagnose
from lucidic_otel.cli.doctor_view import print_doctor

pytest.importorskip("anthropic._tracing")
pytest.importorskip("opentelemetry.instrumentation.genai.anthropic")


def _anthropic(report):
    return [e for e in report["instrumentors"]["self_tracing"] if e["library"] == "anthropic"]


def test_both_anthropic_layers_are_noted(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)
    monkeypatch.delenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", raising=False)
    report = diagnose(store=tmp_path / "store.db")
    (entry,) = _anthropic(report)
    assert entry["enabled"] is True and entry["variable"] == "ANTHROPIC_OPEN_TELEMETRY"
    assert "opentelemetry-instrumentation-genai-anthropic" in entry["instrumented_by"]
    (note,) = [n for n in report["notes"] if "traces its own calls" in n]
    assert "ANTHROPIC_OPEN_TELEMETRY=false" in note and "one llm_generation event" in note
    print_doctor(report)
    assert "anthropic.messages.create" in capsys.readouterr().out


def test_no_note_when_the_client_tracing_is_off(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "False")
    report = diagnose(store=tmp_path / "store.db")
    (entry,) = _anthropic(report)
    assert entry["enabled"] is False
    assert not [n for n in report["notes"] if "traces its own calls" in n]


def test_no_note_when_the_instrumentation_is_disabled(monkeypatch, tmp_path):
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "anthropic")
    report = diagnose(store=tmp_path / "store.db")
    assert _anthropic(report) == []
