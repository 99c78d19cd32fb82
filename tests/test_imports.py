"""The package's import graph: no cycles among module-level imports, and the engine below every trainable.

Read from the source with ``ast`` (no interpreter per module): an edge is a
module-level ``import contrastkit.x`` / ``from contrastkit(.x) import y``;
imports inside functions run later and are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import contrastkit

PACKAGE = Path(contrastkit.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _top_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports when it is imported."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # module level only, not inside functions or classes
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("contrastkit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("contrastkit") and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _top_level_imports(path, modules) for name, path in modules.items()}
    # A package's __init__ gathering its own submodules is not a cycle (they import it first by design).
    return {name: {d for d in deps if not d.startswith(name + ".")} for name, deps in graph.items()}


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_no_module_imports_itself_through_others():
    graph = _graph()
    cycles = [name for name in graph if name in _closure(graph, name)]
    assert not cycles, {name: sorted(graph[name]) for name in cycles}


def test_the_engine_knows_nothing_of_images_or_methods():
    below = _closure(_graph(), "contrastkit.engine")
    for upper in ("contrastkit.train", "contrastkit.methods", "contrastkit.losses", "contrastkit.augment",
                  "contrastkit.models", "contrastkit.data", "contrastkit.checkpoint", "contrastkit.config"):
        assert upper not in below, f"contrastkit.engine imports {upper}"
    assert "contrastkit.engine" in _graph()["contrastkit.train"]
