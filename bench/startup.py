"""Start-up cost of lucidic-otel under the launcher, against the stock SDK configurator.

Two launcher configurations run ``opentelemetry-instrument python -c pass``, interleaved:

  lucidic: OTEL_PYTHON_DISTRO=lucidic OTEL_PYTHON_CONFIGURATOR=lucidic, the default
           ``lucidic`` trace exporter, LUCIDIC_STORE_PATH in a temporary directory;
  stock:   OTEL_PYTHON_DISTRO=distro OTEL_PYTHON_CONFIGURATOR=configurator (from
           opentelemetry-distro), OTEL_TRACES_EXPORTER=console, metrics and logs none.

Both load every installed instrumentor, and our post-instrument hook runs in both (it is an
entry point, as in any real install). Each run is timed (wall clock), and its CPU time and
peak RSS are read from that child's own rusage (``os.wait4``). Then the import of
``lucidic_otel`` alone is compared with ``opentelemetry.sdk.trace`` (``python -X importtime``,
cumulative, and the wall time of the subprocess).

    python bench/startup.py            # 20 runs of each, interleaved
    python bench/startup.py --quick    # 2 runs of each, for CI

Target: lucidic/stock wall-time ratio <= 1.15. No timing ever changes the exit status.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from _machine import machine_lines as _machine_lines  # noqa: E402

BIN = Path(sys.executable).parent
INSTRUMENT = BIN / "opentelemetry-instrument"
TARGET_RATIO = 1.15


def machine_lines() -> List[str]:
    """The machine and the versions, for the header of this bench."""
    return _machine_lines("opentelemetry-instrumentation", "opentelemetry-distro")


def clean_env(**overrides: str) -> Dict[str, str]:
    """This environment without OTEL_*/LUCIDIC_* (a developer's shell must not leak in).

    PYTHONDONTWRITEBYTECODE is dropped too: an installed package has its bytecode compiled,
    and a module recompiled on every start would be measured as import time.
    """
    dropped = ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "LUCIDIC_")) and k not in dropped
    }
    env.update(overrides)
    return env


def run_child(cmd: Sequence[str], env: Dict[str, str]) -> Tuple[float, float, int, str]:
    """(wall s, CPU s, peak RSS KiB, stderr) of one child (its own rusage); raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    err = proc.stderr.read()  # the child's stderr is small; read it before reaping
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, int(usage.ru_maxrss), err  # ru_maxrss is in KiB on Linux


_IMPORTTIME = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)\s*$")


def import_cumulative_us(stderr: str, module: str) -> Optional[int]:
    """The cumulative µs ``-X importtime`` reports for the top-level import of ``module``."""
    for line in stderr.splitlines():
        m = _IMPORTTIME.match(line)
        if m and m.group(4) == module and len(m.group(3)) == 1:
            return int(m.group(2))
    return None


PROBE = """
from opentelemetry import trace
from lucidic_otel.launcher import bootstrap
provider = trace.get_tracer_provider()
names = [type(p).__name__ for p in provider._active_span_processor._span_processors]
exporters = [type(getattr(p, "_batch_processor", p)._exporter).__name__
             for p in provider._active_span_processor._span_processors
             if hasattr(getattr(p, "_batch_processor", p), "_exporter")]
print(type(provider).__name__, ",".join(names), ",".join(exporters))
"""

_EXPECTED = {
    "lucidic": ("TracerProvider", "LucidicSpanProcessor", "LucidicSpanExporter"),
    "stock": ("TracerProvider", "LucidicSpanProcessor", "ConsoleSpanExporter"),
}


def check_probe(name: str, probe: Sequence[str], env: Dict[str, str]) -> Optional[str]:
    """None if the launcher set up the SDK, our processor and the expected exporter."""
    result = subprocess.run(list(probe), env=env, capture_output=True, text=True, timeout=120)
    words = result.stdout.split()
    provider, processors, exporters = (words + ["", "", ""])[:3]
    want_provider, want_processor, want_exporter = _EXPECTED[name]
    if (
        result.returncode != 0
        or provider != want_provider
        or want_processor not in processors.split(",")
        or want_exporter not in exporters.split(",")
    ):
        return f"exit {result.returncode}, saw {result.stdout.strip()!r} {result.stderr[-500:]!r}"
    return None


def spread(values: Sequence[float], fmt: str) -> str:
    return " ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--runs", type=int, help="runs of each configuration (default 20)")
    args = parser.parse_args(argv)
    runs = args.runs or (2 if args.quick else 20)

    if not INSTRUMENT.exists():
        print(f"{INSTRUMENT} not found: run this with the project's venv python", file=sys.stderr)
        return 2
    from opentelemetry.util._importlib_metadata import entry_points

    stock = {ep.name for ep in entry_points(group="opentelemetry_configurator")}
    if "configurator" not in stock:
        print(
            "the stock configurator (entry point 'configurator') is missing: pip install "
            "opentelemetry-distro==0.66b1",
            file=sys.stderr,
        )
        return 2

    tmp = tempfile.TemporaryDirectory(prefix="lucidic-bench-startup-")
    common = {"OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    launcher: Dict[str, Dict[str, str]] = {
        "lucidic": clean_env(
            OTEL_PYTHON_DISTRO="lucidic",
            OTEL_PYTHON_CONFIGURATOR="lucidic",
            LUCIDIC_STORE_PATH=str(Path(tmp.name) / "store.db"),
            **common,
        ),
        "stock": clean_env(
            OTEL_PYTHON_DISTRO="distro",
            OTEL_PYTHON_CONFIGURATOR="configurator",
            OTEL_TRACES_EXPORTER="console",
            **common,
        ),
    }
    instrumented = [str(INSTRUMENT), sys.executable, "-c", "pass"]
    # The warm-up run of each configuration also proves it configured what it claims to.
    probe = [str(INSTRUMENT), sys.executable, "-c", PROBE]
    imports = {
        "python -c pass": ([sys.executable, "-c", "pass"], None),
        "import opentelemetry.sdk.trace": (
            [sys.executable, "-X", "importtime", "-c", "import opentelemetry.sdk.trace"],
            "opentelemetry.sdk.trace",
        ),
        "import lucidic_otel": (
            [sys.executable, "-X", "importtime", "-c", "import lucidic_otel"],
            "lucidic_otel",
        ),
    }

    print("== startup ==")
    for line in machine_lines():
        print(line)
    print(
        f"{runs} runs of each configuration, interleaved (order alternating), after 1 warm-up "
        "run of each that checks the provider, processor and exporter it set up"
    )

    wall: Dict[str, List[float]] = {k: [] for k in launcher}
    cpu: Dict[str, List[float]] = {k: [] for k in launcher}
    rss: Dict[str, List[int]] = {k: [] for k in launcher}
    iwall: Dict[str, List[float]] = {k: [] for k in imports}
    icum: Dict[str, List[int]] = {k: [] for k in imports}
    try:
        for rep in range(runs + 1):
            order = list(launcher) if rep % 2 else list(launcher)[::-1]
            for name in order:
                if rep == 0:
                    problem = check_probe(name, probe, launcher[name])
                    if problem:
                        print(f"configuration {name!r} is not what it should be: {problem}")
                        return 1
                    continue
                w, c, m, _ = run_child(instrumented, launcher[name])
                wall[name].append(w)
                cpu[name].append(c)
                rss[name].append(m)
            names = list(imports) if rep % 2 else list(imports)[::-1]
            for name in names:
                cmd, module = imports[name]
                w, _, _, err = run_child(cmd, clean_env())
                if rep:
                    iwall[name].append(w)
                    if module is not None:
                        us = import_cumulative_us(err, module)
                        if us is not None:
                            icum[name].append(us)
    finally:
        tmp.cleanup()

    def paired(values: Dict[str, List[float]]) -> List[float]:
        return [a / b for a, b in zip(values["lucidic"], values["stock"], strict=True)]

    ratios = paired(wall)
    cpu_ratios = paired(cpu)
    mem_ratios = paired({k: [float(v) for v in vs] for k, vs in rss.items()})
    print()
    print("opentelemetry-instrument python -c pass (min / median / max; ratio = lucidic/stock)")
    header = (
        f"{'configuration':<14} {'wall ms min med max':>24}  {'CPU ms min med max':>24}  "
        f"{'peak RSS MiB min med max':>26}"
    )
    print(header)
    print("-" * len(header))
    for name in launcher:
        ms = [w * 1000 for w in wall[name]]
        cpu_ms = [c * 1000 for c in cpu[name]]
        mib = [k / 1024 for k in rss[name]]
        print(
            f"{name:<14} {spread(ms, '7.1f'):>24}  {spread(cpu_ms, '7.1f'):>24}  "
            f"{spread(mib, '8.1f'):>26}"
        )
    print(
        f"{'ratio':<14} {spread(ratios, '7.3f'):>24}  {spread(cpu_ratios, '7.3f'):>24}  "
        f"{spread(mem_ratios, '8.3f'):>26}"
    )

    print()
    print("import time (min / median / max)")
    header = f"{'command':<32} {'wall ms min med max':>24}  {'-X importtime ms min med max':>28}"
    print(header)
    print("-" * len(header))
    for name in imports:
        ms = [w * 1000 for w in iwall[name]]
        cum = [u / 1000 for u in icum[name]]
        cum_text = spread(cum, "7.1f") if cum else "-"
        print(f"{name:<32} {spread(ms, '7.1f'):>24}  {cum_text:>28}")

    r = statistics.median(ratios)
    print()
    print(
        "checks: ok (lucidic: LucidicSpanProcessor + LucidicSpanExporter; stock: "
        "ConsoleSpanExporter, and our processor through the post-instrument hook)"
    )
    print()
    print("targets (median ratios)")
    print(
        f"  launcher wall time lucidic/stock {r:.3f}x <= {TARGET_RATIO:.2f}x: "
        f"{'met' if r <= TARGET_RATIO else 'MISSED'}"
    )
    print(f"  launcher CPU time lucidic/stock {statistics.median(cpu_ratios):.3f}x (same target)")
    print(f"  launcher peak RSS lucidic/stock {statistics.median(mem_ratios):.3f}x (no target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
