"""The peer-install helper's own checks (tests/support/peers.py), without a network."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import peers


def _dist(target: Path, name: str, *requires: str) -> None:
    info = target / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n", "utf-8")


def test_requirements_met_by_the_venv_or_the_directory_pass(tmp_path: Path) -> None:
    _dist(tmp_path, "peer-a", "opentelemetry-api>=1.0", "peer-b==1.0",
          "some-client; extra == 'instruments'", "win-only; sys_platform == 'nonexistent'")
    _dist(tmp_path, "peer-b")
    peers.check_resolved(tmp_path)


@pytest.mark.parametrize("requirement", ["opentelemetry-api==0.0.1", "not-installed-anywhere"])
def test_an_unmet_requirement_names_the_package_and_what_is_installed(
        tmp_path: Path, requirement: str) -> None:
    _dist(tmp_path, "peer-a", requirement)
    with pytest.raises(RuntimeError, match=f"peer-a needs {requirement}; installed: "):
        peers.check_resolved(tmp_path)


def test_hiding_an_official_instrumentation_that_is_not_installed_is_a_no_op(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(peers.OFFICIAL, "nothing", "no-such-distribution-here")
    assert list(peers.hidden(tmp_path, ["nothing"]).iterdir()) == []
