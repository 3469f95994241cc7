"""Reliability: every scenario of the reliability issue, with spans counted end to end.

One row per scenario: spans created (seen by a witness processor inside the programs),
stamped correctly, exported (found in the store), lost and misattributed (stored with another
session than the program said they belong to). For the store-fault rows the unit is the
Lucidic event (a tool span), because that is what reaches the backend when the store cannot
be used: exported there means delivered to the loopback backend or still in the recovered
outbox. The scenarios themselves live in tests/support/scenarios.py and are the same ones the
tests run:

  servers    uvicorn (plain, --workers 2), gunicorn (sync, with and without --preload) under
             the launcher, SIGTERM while requests are in flight; the exit column shows the
             status with the launcher and, in brackets, without it
  workers    multiprocessing fork / forkserver / spawn: Process, Pool, ProcessPoolExecutor
             children, work wrapped in lucidic_otel.carry_context, no flush by the program
  isolation  concurrent requests, each in its own session carried only by baggage, each
             calling a loopback LLM through the real openai client
  trust      signed baggage between two services plus an attacker's forged/replayed values
  store      corrupt file, read-only location, full disk, file-size limit

Target: 0 lost and 0 misattributed everywhere; anything else makes the exit status 1.
Timings are not measured here.

    python bench/reliability.py            # more requests, tasks and units
    python bench/reliability.py --quick    # the CI size (about a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from _machine import machine_lines as _machine_lines  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _name in [n for n in os.environ if n.startswith(("LUCIDIC_", "OTEL_"))]:
    del os.environ[_name]

from tests.support import scenarios  # noqa: E402
from tests.support.scenarios import Outcome  # noqa: E402

COLUMNS = ("created", "stamped", "exported", "lost", "misattributed")
NAME_WIDTH = 44


def machine_lines() -> List[str]:
    """The machine and the versions, for the header of this bench."""
    return _machine_lines("uvicorn", "gunicorn")


class Table:
    def __init__(self) -> None:
        self.failures: List[str] = []
        header = f"{'scenario':<{NAME_WIDTH}}" + "".join(f"{c:>15}" for c in COLUMNS)
        print(header + f"{'exit':>12}")

    def row(self, outcome: Outcome, exit_text: str = "") -> None:
        values = [
            outcome.created,
            outcome.stamped,
            outcome.exported,
            outcome.lost,
            outcome.misattributed,
        ]
        print(
            f"{outcome.scenario[:NAME_WIDTH]:<{NAME_WIDTH}}"
            + "".join(f"{v:>15}" for v in values)
            + f"{exit_text:>12}",
            flush=True,
        )
        if not outcome.ok:
            self.failures.append(outcome.problems())

    def skipped(self, name: str, why: str) -> None:
        print(f"{name[:NAME_WIDTH]:<{NAME_WIDTH}}  skipped: {why}", flush=True)

    def failed(self, name: str, error: BaseException) -> None:
        print(
            f"{name[:NAME_WIDTH]:<{NAME_WIDTH}}  FAILED: {type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''}",
            flush=True,
        )
        self.failures.append(f"{name}: {error!r}"[:2000])


def _guarded(table: Table, name: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - one broken scenario must not hide the others
        table.failed(name, error)


def run(quick: bool, workdir: Path) -> int:
    table = Table()
    requests = None if quick else 16
    tasks = 4 if quick else 12
    concurrent = 200 if quick else 400
    units = 30 if quick else 120

    for kind in scenarios.SERVER_KINDS:

        def server(kind: str = kind) -> None:
            missing = scenarios.missing_modules(scenarios.SERVER_KINDS[kind].requires)
            if missing:
                table.skipped(f"{kind} SIGTERM", f"not installed: {', '.join(missing)}")
                return
            tag = kind.replace(" ", "_")
            base = scenarios.run_server(
                kind, workdir / f"{tag}-base", instrumented=False, requests=requests
            )
            run = scenarios.run_server(kind, workdir / tag, requests=requests)
            if run.returncode != base.returncode:
                table.failures.append(
                    f"{kind}: exit {run.returncode}, without us {base.returncode}"
                )
            table.row(run.outcome, f"{run.returncode} ({base.returncode})")

        _guarded(table, f"{kind} SIGTERM", server)

    for method in ("fork", "forkserver", "spawn"):

        def workers(method: str = method) -> None:
            result = scenarios.run_workers(method, workdir / f"workers-{method}", tasks=tasks)
            table.row(result.outcome, str(result.returncode))
            if result.returncode != 0:
                table.failures.append(f"workers {method}: exit {result.returncode}")

        _guarded(table, f"multiprocessing {method}", workers)

    def isolation() -> None:
        result = scenarios.run_isolation(workdir / "isolation", concurrent)
        table.row(result.outcome, str(result.returncode))
        if "FAILURES 0 " not in result.stdout:
            table.failures.append(f"isolation: {result.stdout.strip()[:300]}")

    _guarded(table, "isolation", isolation)

    def trust() -> None:
        result = scenarios.run_trust(workdir / "trust")
        table.row(result.outcome, str(result.returncodes.get("gateway")))

    _guarded(table, "signed trust", trust)

    for number, fault in enumerate(scenarios.DATA_FAULTS):

        def data(fault: str = fault, number: int = number) -> None:
            result = scenarios.run_data_fault(fault, workdir / f"data-{number}", units=units)
            if not result.available:
                table.skipped(f"store fault: {fault}", "cannot mount file systems here")
                return
            table.row(result.outcome, str(result.returncode))
            if result.returncode != 0 or not result.whole_units:
                table.failures.append(
                    f"{fault}: exit {result.returncode}, whole batches {result.whole_units}"
                )

        _guarded(table, f"store fault: {fault}", data)

    print()
    print("targets: 0 lost and 0 misattributed in every scenario; exit status as without us")
    for failure in table.failures:
        print("  " + failure)
    print("checks: " + ("ok" if not table.failures else "FAILED"))
    return 0 if not table.failures else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI size")
    args = parser.parse_args(argv)
    print("== reliability ==")
    for line in machine_lines():
        print(line)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lucidic-bench-reliability-") as tmp:
        status = run(args.quick, Path(tmp))
    print(f"wall time: {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
