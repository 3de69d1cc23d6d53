"""The package's folders tell its architecture, and the README's map matches the tree.

* Dependencies point one way: web -> frames -> models -> server primitives
  (and `errors`, `config`, `extensions`); `app.py` wires them and nothing
  inside imports it.
* Every module of models/, frames/, web/ and server/ is named in README's
  "How it is built", and every file that section names exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from serverproc import ROOT

pytestmark = pytest.mark.quick

PACKAGE = ROOT / "webapp"
#: What each layer may import from the package, besides itself and the shared modules.
MAY_IMPORT = {
    "server": set(),
    "models": {"server"},
    "frames": {"models", "server"},
    "web": {"frames", "models", "server"},
}
SHARED = {"errors", "config", "extensions"}


def imported_layers(path: Path) -> set[str]:
    """The top-level parts of `webapp` a module imports (relative or absolute)."""
    module = path.relative_to(ROOT).with_suffix("").parts
    package = module[:-1] if module[-1] != "__init__" else module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = list(base) + (node.module.split(".") if node.module else [])
                names = [target + [alias.name] for alias in node.names] if not node.module else [target]
            else:
                names = [node.module.split(".")] if node.module else []
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        for target in names:
            if len(target) >= 2 and target[0] == "webapp":
                found.add(target[1])
    return found


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_dependencies_point_one_way(layer):
    wrong = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        bad = imported_layers(path) - {layer} - SHARED - MAY_IMPORT[layer]
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert wrong == {}, f"{layer}/ imports what it may not: {wrong}"


def test_nothing_inside_the_package_imports_the_app_factory():
    importers = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                 if p.name != "__init__.py" and p.parent.name != "cli" and "app" in imported_layers(p)]
    assert importers == []


def readme_map() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    return section


def test_the_readme_map_names_every_module_and_only_existing_ones():
    section = readme_map()
    named = set(re.findall(r"\b([a-z_]+\.py)\b", section))
    folders = set(re.findall(r"\b([a-z_]+)/", section))
    modules = {p.name for layer in MAY_IMPORT for p in (PACKAGE / layer).glob("*.py") if p.name != "__init__.py"}
    unnamed = sorted(modules - named)
    assert unnamed == [], f"modules missing from README's 'How it is built': {unnamed}"
    # The project's own files (walking .venv would take seconds).
    everything = {p.name for top in ("webapp", "tests", "clients") for p in (ROOT / top).rglob("*.py")}
    assert sorted(named - everything) == [], "the map names files that do not exist"
    dirs = {p.name for top in ("webapp", "tests", "clients") for p in (ROOT / top).rglob("*") if p.is_dir()}
    dirs |= {p.name for p in ROOT.iterdir() if p.is_dir()}
    missing_folders = sorted(f for f in folders if f not in dirs and f not in {"api", "http", "https"})
    assert missing_folders == []
