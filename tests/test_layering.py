"""The dependency rule (ARCHITECTURE §2), checked on every import statement, lazy ones included:
drivers import nothing of ours; sync imports neither station nor cloud (nor drivers); station and
cloud never import each other; only the thin ``packline`` command may tie them together."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"drivers", "sync", "station", "cloud", "packline", "tests", "bench"}
ALLOWED = {
    "drivers": set(),
    "sync": set(),
    "station": {"drivers", "sync"},
    "cloud": {"sync"},
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return {(name, line) for name, line in found if name in OURS}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_layering_allows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    bad = [
        f"{f.relative_to(ROOT)}:{line} imports {name}"
        for f in files
        for name, line in sorted(imported_packages(f))
        if name != package and name not in ALLOWED[package]
    ]
    assert bad == []


def test_the_checker_sees_lazy_and_dotted_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\nimport cloud.models as m\n\ndef f():\n    from station.replica import Replica\n",
                   "utf-8")
    assert imported_packages(src) == {("cloud", 2), ("station", 5)}
