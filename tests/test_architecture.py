"""The package's shape (docs/architecture.md): floors named by folders, imports without cycles
(in functions too), short modules. The layer order itself is lint-imports' contract
(pyproject.toml), which scripts/test.sh runs."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "camseg"


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle among camseg's modules (every import statement, at module level or
    inside a function), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return [*path[path.index(imported) :], imported]
            if imported not in state and (found := visit(imported)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph.modules):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_camseg_has_no_import_cycle():
    graph = grimp.build_graph("camseg", include_external_packages=False)
    assert len(graph.modules) > 50
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    assert _cycle(graph) is None
    graph.add_import(importer="a.z", imported="a.x")
    assert _cycle(graph) == ["a.x", "a.y", "a.z", "a.x"]


def test_the_package_is_a_handful_of_floors():
    tracked = subprocess.run(
        ["git", "ls-files", "camseg"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    entries = {Path(p).parts[1] for p in tracked}
    assert len(entries) <= 12, sorted(entries)
    assert {"config", "core", "data", "model", "report", "train", "infer", "cli"} <= entries


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long


def test_no_test_module_imports_another():
    """Shared helpers live in tests/helpers.py and fixtures in conftest.py."""
    tests = REPO / "tests"
    names = {p.stem for p in tests.glob("test_*.py")} | {"conftest"}
    found = []
    for path in tests.glob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            words = line.split()
            if words[:1] in (["from"], ["import"]) and len(words) > 1 and words[1] in names:
                found.append(f"{path.name}: {line.strip()}")
    assert not found


# Only these see the whole config; everything else takes the section or the values it uses.
CONFIG_READERS = ("camseg/config/", "camseg/cli/", "camseg/train/entry.py", "camseg/train/plan.py")


def test_only_the_top_sees_the_whole_config():
    holders = []
    for path in PACKAGE.rglob("*.py"):
        name = str(path.relative_to(REPO))
        if name.startswith(CONFIG_READERS):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and any(a.name == "Config" for a in node.names):
                holders.append(name)
    assert not holders
