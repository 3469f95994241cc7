"""Soak: the ``with multiprocessing.Pool() as pool: pool.map(...)`` idiom, under the launcher
and in a plain ``python`` that called ``init()``.

``Pool.__exit__`` calls ``terminate()``, which SIGTERMs workers that may hold the pool's shared
queue lock; telemetry must never turn that into a hang. Each run is one launched program that
opens five pools of four workers in a row, 16 small tasks each (one span per task, in the
session of its pool), for each start method and set-up asked for. In plain ``python`` the
spawn and forkserver workers have no telemetry until the first ``carry_context`` call sets it
up, as the parent had it. A run is bounded (``--timeout``): one
that does not exit by itself is a hang, gets a stack dump (faulthandler on SIGUSR1) and is
killed with its whole process session. After every run the process session is checked for
survivors (orphaned workers) and the store for every task span, each in its pool's session.

Prints one row per start method and exits 1 when any run hung, left a process behind or
lost or misattributed a span.

    python bench/pool_soak.py                 # 200 runs of each start method and set-up
    python bench/pool_soak.py --quick         # 3 runs of each (CI)
    python bench/pool_soak.py --methods fork --setups launcher --runs 50
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_lines  # noqa: E402

BIN = Path(sys.executable).parent
POOLS, WORKERS, TASKS = 5, 4, 16

APP = f"""
    import faulthandler, multiprocessing as mp, signal, sys
    import lucidic_otel
    from opentelemetry import trace

    faulthandler.register(signal.SIGUSR1, all_threads=True)

    def work(i):
        with trace.get_tracer("soak").start_as_current_span(f"task-{{i}}"):
            return i * i

    if __name__ == "__main__":
        mp.set_start_method(sys.argv[1])
        if sys.argv[2] == "init":
            lucidic_otel.init()
        for r in range({POOLS}):
            with lucidic_otel.session(f"pool-{{r}}"):
                with mp.Pool({WORKERS}) as pool:
                    assert pool.map(lucidic_otel.carry_context(work), range({TASKS})) == [
                        i * i for i in range({TASKS})]
        print("DONE", flush=True)
"""


@dataclass
class Outcome:
    runs: int = 0
    hung: int = 0
    failed: int = 0
    orphans: int = 0
    spans_expected: int = 0
    spans_recorded: int = 0
    misattributed: int = 0
    seconds: List[float] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _session_members(sid: int) -> List[int]:
    """Processes still alive in process session ``sid`` (a run's workers, helpers...)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            members.append(int(entry))
    return members


def _status(path: str, keys: tuple[str, ...]) -> Optional[str]:
    """Chosen fields of a /proc status file, as ``key=value`` words (None if it is gone)."""
    try:
        with open(path, encoding="utf-8") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    return " ".join(f"{k}={fields.get(k, '?').strip()}" for k in keys)


def _describe(pids: List[int]) -> str:
    """Parent and signal masks of each process still alive at a hang, and of its threads."""
    lines = []
    for pid in pids:
        line = _status(f"/proc/{pid}/status", ("PPid", "SigPnd", "ShdPnd", "SigBlk", "SigCgt"))
        if line is None:
            continue
        lines.append(f"alive at the hang: pid {pid} {line}")
        try:
            tasks = sorted(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            tasks = []
        for tid in tasks:
            line = _status(f"/proc/{pid}/task/{tid}/status", ("Name", "SigPnd", "SigBlk"))
            if line is not None:
                lines.append(f"  thread {tid} {line}")
    return "\n".join(lines)


def _kill_session(sid: int) -> None:
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _count(store: Path) -> tuple[int, int]:
    """(task spans recorded, task spans in the wrong session)."""
    if not store.exists():
        return 0, 0
    conn = sqlite3.connect(store)
    try:
        rows = conn.execute(
            "SELECT s.session_id, COUNT(*) FROM spans p LEFT JOIN sessions s"
            " ON s.no = p.session_no WHERE p.name LIKE 'task-%' GROUP BY s.session_id"
        ).fetchall()
    finally:
        conn.close()
    recorded = sum(n for _, n in rows)
    wrong = sum(n for sid, n in rows if sid not in {f"pool-{r}" for r in range(POOLS)})
    wrong += sum(max(0, n - TASKS) for sid, n in rows if sid is not None)
    return recorded, wrong


def one_run(method: str, setup: str, workdir: Path, timeout: float, env: dict) -> dict:
    store = workdir / "store.db"
    app = workdir / "app.py"
    app.write_text(textwrap.dedent(APP), encoding="utf-8")
    command = [str(BIN / "python"), str(app), method, setup]
    if setup == "launcher":
        command.insert(0, str(BIN / "opentelemetry-instrument"))
    run_env = {**env, "LUCIDIC_STORE_PATH": str(store)}
    started = time.monotonic()
    proc = subprocess.Popen(command, env=run_env, cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    hung = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
        stuck = _describe(_session_members(proc.pid))
        for pid in _session_members(proc.pid):
            try:
                os.kill(pid, signal.SIGUSR1)  # every process of the run dumps its stacks
            except OSError:
                pass
        time.sleep(1.0)
        _kill_session(proc.pid)
        output, _ = proc.communicate(timeout=10)
        output += "\n" + stuck
    elapsed = time.monotonic() - started
    time.sleep(0.2)  # a helper process ends on its own once the app's pipe closes
    survivors = _session_members(proc.pid)
    deadline = time.monotonic() + 10
    while survivors and time.monotonic() < deadline:  # the delivery helper may still drain
        time.sleep(0.2)
        survivors = _session_members(proc.pid)
    _kill_session(proc.pid)
    recorded, wrong = _count(store)
    return {
        "hung": hung,
        "failed": not hung and (proc.returncode != 0 or "DONE" not in output),
        "orphans": len(survivors),
        "recorded": recorded,
        "wrong": wrong,
        "seconds": elapsed,
        "output": output,
    }


def soak(method: str, setup: str, runs: int, jobs: int, timeout: float, env: dict) -> Outcome:
    outcome = Outcome()
    with tempfile.TemporaryDirectory(prefix=f"pool-soak-{method}-{setup}-") as tmp:
        dirs = [Path(tmp) / str(i) for i in range(runs)]
        for d in dirs:
            d.mkdir()
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(lambda d: one_run(method, setup, d, timeout, env), dirs))
    for r in results:
        outcome.runs += 1
        outcome.hung += r["hung"]
        outcome.failed += r["failed"]
        outcome.orphans += r["orphans"]
        outcome.spans_expected += POOLS * TASKS
        outcome.spans_recorded += r["recorded"]
        outcome.misattributed += r["wrong"]
        outcome.seconds.append(r["seconds"])
        if (r["hung"] or r["failed"] or r["orphans"]) and len(outcome.notes) < 2:
            outcome.notes.append(r["output"][-4000:])
    return outcome


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per start method and set-up")
    parser.add_argument("--quick", action="store_true", help="3 runs of each (CI)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds before a hang (a launched spawn run starts 20 launched "
                             "interpreters, ~2.5 s of CPU each)")
    parser.add_argument("--methods", default="fork,forkserver,spawn")
    parser.add_argument("--setups", default="launcher,init",
                        help="launcher (opentelemetry-instrument) and/or init (plain python)")
    parser.add_argument("--no-telemetry", action="store_true",
                        help="the control: the same runs with OTEL_SDK_DISABLED=true")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else args.runs
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LUCIDIC_"))}
    env.update({"OTEL_PYTHON_DISTRO": "lucidic", "PYTHONUNBUFFERED": "1"})
    if args.no_telemetry:
        env["OTEL_SDK_DISABLED"] = "true"
    for line in machine_lines("opentelemetry-instrumentation"):
        print(line)
    print(f"{POOLS} pools x {WORKERS} workers x {TASKS} tasks per run; {runs} runs per start "
          f"method and set-up, {args.jobs} at once, {args.timeout:g} s before a run counts as hung")
    print(f"{'method':<11} {'setup':<9} {'runs':>5} {'hung':>5} {'failed':>6} {'orphans':>7} "
          f"{'spans':>13} {'misattr':>7} {'p50 s':>6} {'max s':>6}")
    bad = False
    for method, setup in [(m, s) for s in args.setups.split(",") for m in args.methods.split(",")]:
        o = soak(method, setup, runs, args.jobs, args.timeout, env)
        times = sorted(o.seconds)
        p50 = times[len(times) // 2] if times else 0.0
        expected = 0 if args.no_telemetry else o.spans_expected
        print(f"{method:<11} {setup:<9} {o.runs:>5} {o.hung:>5} {o.failed:>6} {o.orphans:>7} "
              f"{o.spans_recorded:>6}/{expected:<6} {o.misattributed:>7} {p50:>6.2f} "
              f"{(times[-1] if times else 0):>6.2f}")
        lost = o.spans_recorded != expected
        if o.hung or o.failed or o.orphans or o.misattributed or lost:
            bad = True
            for note in o.notes:
                print(f"--- output of a bad {method} {setup} run ---\n{note}")
    print("target: 0 hung, 0 failed, 0 orphans, every span recorded, 0 misattributed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
