"""Other vendors' instrumentation packages (OpenInference, OpenLLMetry), installed aside.

Each of them registers an ``opentelemetry_instrumentor`` entry point named ``openai`` (or
``anthropic``, ``langchain``), the names of the official GenAI instrumentations this test
environment has, so installing them into the venv would instrument every other launcher test's
client twice. Instead each family gets its own directory, made by ``pip install --no-deps
--target`` from the requirements of the project's own extra (``[openinference]``,
``[openllmetry]`` in pyproject.toml, so the extra is what is tested), and a subprocess that
should have them gets the directory on ``PYTHONPATH``. The directories are cached under
``.peers/`` in the repository (gitignored), keyed by a hash of the requirement list, so a
re-run does not install again; a failed install raises with pip's output (no skip: CI has the
package registries).

:func:`hidden` is the other half of running "as the user does", with one instrumentation per
library: copies of the official distributions' metadata with an empty ``entry_points.txt``,
to put first on ``PYTHONPATH``. ``importlib.metadata`` keeps the first distribution of each
name along ``sys.path``, so the launcher does not see the official instrumentors at all.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, List

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (the [test] extra)
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".peers"
FAMILIES = ("openinference", "openllmetry")

# The official instrumentations a peer family replaces, per library.
OFFICIAL = {
    "openai": "opentelemetry-instrumentation-genai-openai",
    "anthropic": "opentelemetry-instrumentation-genai-anthropic",
    "langchain": "opentelemetry-instrumentation-genai-langchain",
}

_PIP_TIMEOUT_SECONDS = 600


def requirements(family: str) -> List[str]:
    """The requirements of the project's ``[family]`` extra, as pyproject.toml lists them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    return list(project["optional-dependencies"][family])


def install_dir(family: str) -> Path:
    """The directory holding ``family``'s packages (installed now unless cached)."""
    wanted = requirements(family)
    key = hashlib.sha256("\n".join([sys.version, *sorted(wanted)]).encode()).hexdigest()[:16]
    target = CACHE / f"{family}-{key}"
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(exist_ok=True)
    building = CACHE / f".{family}-{key}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
         "--no-input", "--target", str(building), *wanted],
        capture_output=True, text=True, timeout=_PIP_TIMEOUT_SECONDS, check=False,
    )
    if proc.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise RuntimeError(
            f"pip could not install the [{family}] extra {wanted}:\n{proc.stdout}\n{proc.stderr}")
    check_resolved(building)
    (building / ".complete").write_text("\n".join(wanted) + "\n", "utf-8")
    try:
        building.rename(target)
    except OSError:  # another session finished the same install first
        shutil.rmtree(building, ignore_errors=True)
    return target


def check_resolved(target: Path) -> None:
    """Raise unless every requirement of every distribution in ``target`` is met by ``target``
    itself or by this venv: ``--no-deps`` skips pip's resolver, so this is the check that the
    extra's pins fit the project's pinned OpenTelemetry set (and that the extra lists all of
    what its packages need beyond that set)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def installed(paths: List[str]) -> dict:
        return {canonicalize_name(d.metadata["Name"]): d.version
                for d in importlib.metadata.distributions(path=paths)}

    here = installed([str(target)])
    versions = {**installed(sys.path), **here}
    environment = {**default_environment(), "extra": ""}
    problems = []
    for dist in importlib.metadata.distributions(path=[str(target)]):
        for line in dist.requires or ():
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue  # an optional extra of that package, or another platform's
            have = versions.get(canonicalize_name(requirement.name))
            if have is None or not requirement.specifier.contains(have, prereleases=True):
                problems.append(f"{dist.metadata['Name']} needs {line}; installed: {have}")
    if problems:
        raise RuntimeError("the extra does not fit this environment:\n" + "\n".join(problems))


def hidden(tmp: Path, libraries: Iterable[str] = tuple(OFFICIAL)) -> Path:
    """A directory of the official instrumentations' metadata for ``libraries``, each with an
    empty ``entry_points.txt``: first on ``PYTHONPATH``, it hides them from the launcher."""
    target = tmp / "hidden-official"
    target.mkdir(exist_ok=True)
    for library in libraries:
        try:
            dist = importlib.metadata.distribution(OFFICIAL[library])
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: nothing to hide
        source = Path(str(dist._path))  # type: ignore[attr-defined]
        copy = target / source.name
        if not copy.exists():
            shutil.copytree(source, copy)
        (copy / "entry_points.txt").write_text("", "utf-8")
    return target


def pythonpath(*dirs: Path) -> str:
    """``dirs`` joined as a ``PYTHONPATH`` value, in order."""
    return os.pathsep.join(str(d) for d in dirs)
