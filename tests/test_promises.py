"""tests/README.md maps every promise of README.md to the tests that keep it;
this checks that each test it names exists, and that no row names none."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.quick

TESTS = Path(__file__).resolve().parent
#: `tests/test_x.py::test_name`, `tests/web/test_x.py::TestClass::test_name`, optionally `[param-id]`.
REFERENCE = re.compile(r"tests/((?:\w+/)*test_\w+\.py)((?:::\w+)+)(?:\[[^\]]*\])?")
GAPS_HEADING = "## Promises without a test yet"


def defined_tests(path: Path) -> set[str]:
    """Test names a file defines, as pytest would address them: `test_x` and
    `TestClass::test_x` (a parametrized test is listed by its function name)."""
    names = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                    names.add(f"{node.name}::{item.name}")
    return names


def promise_rows(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(promise, [(file, test)]) for every table row before the gaps section."""
    rows = []
    for line in text.split(GAPS_HEADING)[0].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or set(cells[0]) <= set("-: ") or cells[0] == "promise":
            continue
        refs = [(m.group(1), m.group(2)[2:]) for m in REFERENCE.finditer(cells[-1])]
        rows.append((cells[0], refs))
    return rows


def test_every_listed_test_exists():
    rows = promise_rows((TESTS / "README.md").read_text())
    assert len(rows) >= 50, "tests/README.md lost its promise table"
    without = [promise for promise, refs in rows if not refs]
    assert without == [], f"rows that name no test (list them under '{GAPS_HEADING}' instead): {without}"
    known: dict[str, set[str]] = {}
    missing = []
    for promise, refs in rows:
        for filename, name in refs:
            if filename not in known:
                path = TESTS / filename
                known[filename] = defined_tests(path) if path.is_file() else set()
            if name not in known[filename]:
                missing.append(f"tests/{filename}::{name} ({promise[:60]})")
    assert missing == [], "tests/README.md names tests that do not exist:\n" + "\n".join(missing)


def test_the_checker_reads_references_the_way_pytest_names_tests(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text("import pytest\n\n@pytest.mark.parametrize('x', [1])\ndef test_a(x):\n    pass\n\n"
                      "class TestB:\n    def test_c(self):\n        pass\n\ndef helper():\n    pass\n")
    assert defined_tests(sample) == {"test_a", "TestB::test_c"}
    table = ("| promise | test |\n|---|---|\n| p1 | tests/test_s.py::test_a[1], tests/test_s.py::TestB::test_c |\n"
             "| p2 | none yet |\n" + GAPS_HEADING + "\n| p3 | |\n")
    assert promise_rows(table) == [("p1", [("test_s.py", "test_a"), ("test_s.py", "TestB::test_c")]), ("p2", [])]
