"""The layout keeps its promises: layers, complexity, sizes (issue #12).

These are checks of the source, not timings, so they run in the suite and fail like any test:
a lower stage that starts importing an upper one, a function that grows past radon's C, or a
module that swallows a second idea shows up in review as a red test, not as drift.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lucidic_otel"

radon_complexity = pytest.importorskip("radon.complexity")

#: radon's grades: A 1-5, B 6-10, C 11-20, D 21-30. convert/ classifies spans from many
#: instrumentations, one branch per shape; D is tolerated there, C everywhere else.
WORST_ALLOWED = {"convert": 30}
WORST_DEFAULT = 20
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300
#: Modules allowed over MAX_MODULE_LINES, and why.
LONG_MODULES: Dict[str, str] = {
    "testing/fake_openai.py": "an offline OpenAI server: one handler per endpoint shape",
    "demo/run.py": "the `lucidic-otel demo` command: one narrated scenario, not library code",
}


def _sources() -> List[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_the_layers_contract_holds() -> None:
    """``.importlinter``: demo > cli > api > launcher > sdk > delivery > outbox|convert >
    sessions > base; imports inside functions count."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (it is in the [test] extra)")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _blocks() -> List[Tuple[str, str, int]]:
    found = []
    for path in _sources():
        for block in radon_complexity.cc_visit(path.read_text()):
            found.append((_rel(path), block.fullname, block.complexity))
            for inner in getattr(block, "methods", ()):
                found.append((_rel(path), inner.fullname, inner.complexity))
    return found


def test_no_block_is_worse_than_c_outside_convert() -> None:
    too_complex = [
        (module, name, score)
        for module, name, score in _blocks()
        if score > WORST_ALLOWED.get(module.split("/")[0], WORST_DEFAULT)
    ]
    assert too_complex == []


def test_modules_and_classes_stay_small() -> None:
    long_modules = []
    long_classes = []
    for path in _sources():
        text = path.read_text()
        lines = text.count("\n") + 1
        if lines > MAX_MODULE_LINES and _rel(path) not in LONG_MODULES:
            long_modules.append((_rel(path), lines))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    long_classes.append((_rel(path), node.name, size))
    assert long_modules == []
    assert long_classes == []


def test_modules_log_under_their_own_name() -> None:
    """``logging.getLogger(__name__)`` everywhere, so a user can tune one stage's logs."""
    fixed = [
        _rel(p) for p in _sources()
        if 'getLogger("lucidic_otel")' in p.read_text()
    ]
    assert fixed == []
