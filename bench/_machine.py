"""The header every bench prints: the machine and the versions behind its figures.

Ratios from these scripts are only comparable between runs on the same kind of machine and
the same package set, so each run says which it was.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import List, Sequence


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(*dists: str, extras: Sequence[str] = ()) -> List[str]:
    """Two lines: CPU and OS; Python, the OTel SDK, ``dists``, ``extras`` and lucidic-otel."""
    packages = [f"opentelemetry-sdk {version('opentelemetry-sdk')}"]
    packages += [f"{d} {version(d)}" for d in dists]
    packages += list(extras)
    packages.append(f"lucidic-otel {version('lucidic-otel')}")
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        f"python: {platform.python_implementation()} {platform.python_version()}; "
        + ", ".join(packages),
    ]
