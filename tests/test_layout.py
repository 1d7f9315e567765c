"""The layout rules of docs/architecture.md, checked on the source (nothing is imported).

Dependencies point one way (bot/ and ingest/ use core/, core/ uses neither; the front ends know
nothing of torch or DeepLake), no package imports itself round in a circle, tests never import
benchmarks, and no folder of the product holds a family of files named with one prefix (such a
family is a package that wants to exist).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("bot", "core", "ingest")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (lazy imports in functions too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_graph(tops: tuple[str, ...]) -> dict[str, set[str]]:
    modules = {module_name(p): p for top in tops for p in (ROOT / top).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in imports_of(path) if m in modules and m != name}
    return graph


def test_dependencies_point_one_way():
    wrong = []
    for top in PRODUCT:
        for path in (ROOT / top).rglob("*.py"):
            for imported in imports_of(path):
                first = imported.split(".")[0]
                if top == "core" and first in ("bot", "ingest", "tests", "benchmarks"):
                    wrong.append(f"{module_name(path)} imports {imported}")
                if top == "bot" and first in ("torch", "deeplake", "tests", "benchmarks"):
                    wrong.append(f"{module_name(path)} imports {imported}")
                if top == "ingest" and first in ("bot", "tests", "benchmarks"):
                    wrong.append(f"{module_name(path)} imports {imported}")
    assert not wrong


def test_tests_never_import_benchmarks():
    wrong = [
        f"{module_name(path)} imports {imported}"
        for path in (ROOT / "tests").rglob("*.py")
        for imported in imports_of(path)
        if imported.split(".")[0] == "benchmarks"
    ]
    assert not wrong


def test_no_import_cycles():
    graph = project_graph(PRODUCT)
    # A module imports its own package's __init__ implicitly; only edges between modules count.
    cycles = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles


@pytest.mark.parametrize("top", PRODUCT)
def test_no_family_of_prefixed_files(top):
    families = []
    for folder in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        by_prefix = defaultdict(list)
        for path in folder.glob("*.py"):
            if not path.stem.startswith("_"):
                by_prefix[path.stem.split("_", 1)[0]].append(path.stem)
        families += [sorted(stems) for stems in by_prefix.values()
                     if len(stems) > 1 and any("_" in stem for stem in stems)]
    assert not families
