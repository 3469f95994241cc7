"""Data safety: a store that cannot be used never costs the application or a whole record.

The application (under the launcher, delivering to the loopback contract backend) writes 60
units of work, each one trace of five spans exported as one batch, one of them a tool span
that becomes a Lucidic event. The store location is broken in five ways:

* a corrupt file (garbage where the store should be): left untouched;
* a read-only location: the store's parent is a regular file (works as root, which ignores
  file modes), and a read-only bind mount (skipped where mounting is not allowed);
* a full disk: a 512 KiB tmpfs (skipped where mounting is not allowed) that fills mid-run;
* a file-size limit (``RLIMIT_FSIZE``, ``ulimit -f``): writes past it fail mid-run.

Each must lead to one clear warning naming the path and the fix, and to an application that
finishes its own work and exits 0. Afterwards the store is recovered (copied out of the broken
place) and ``lucidic-otel upload`` sends what the file still holds. Then: the file passes
SQLite's integrity check and holds only whole batches, no event was lost (each was delivered
or is still in the recovered outbox), and the backend, which checks every body against the
wire contract, saw no partial or malformed record and no duplicate beyond the few items in
flight when the file failed (same id and body, which the contract allows).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.scenarios import DATA_FAULTS, run_data_fault

UNITS = 60

@pytest.mark.parametrize("fault", DATA_FAULTS)
def test_store_fault_warns_once_and_loses_nothing(tmp_path: Path, fault: str) -> None:
    run = run_data_fault(fault, tmp_path, units=UNITS)
    if not run.available:
        pytest.skip(f"{fault}: cannot mount file systems here")

    # The application is unaffected.
    assert run.returncode == 0, run.stderr
    assert f"APP DONE {UNITS}" in run.stdout
    assert "Traceback" not in run.stderr, run.stderr

    # One warning, on one line, that says where, what, and how to fix it.
    assert len(run.warnings) == 1, run.stderr
    (warning,) = run.warnings
    assert "cannot use the local store" in warning and "To fix:" in warning, warning
    assert "LUCIDIC_STORE_PATH" in warning or "free disk space" in warning, warning

    # Nothing lost, nothing broken, nothing sent twice or malformed.
    outcome = run.outcome
    assert outcome.created == UNITS, outcome.problems()
    assert outcome.ok, outcome.problems()
    assert run.backend["violations"] == [], run.backend
    # A file that fails mid-run is left for memory, carrying what it still owed. Such an item
    # may be sent up to twice more, always with the same id and body (the server checks): from
    # memory, when the sender that had sent it could not mark it in the failing file, and by
    # the upload, when the memory copy's delivery could not be marked there either. Nothing
    # that was not carried over is ever sent twice.
    carried = re.search(r"(\d+) undelivered items and \d+ open sessions were carried", warning)
    most = 2 * int(carried.group(1)) if carried else 0
    assert run.backend["events_duplicates"] <= most, (most, run.backend)
    assert run.whole_units, "a batch was stored in part"
    if fault == "corrupt file":
        assert run.file_intact, "the user's damaged file was modified"
    if fault in ("disk full (tmpfs)", "file size limit"):
        assert run.integrity == "ok"
        assert 0 < len(run.file_spans) < 5 * UNITS, len(run.file_spans)  # filled mid-run
        assert len(run.file_spans) % 5 == 0
