"""The host's modules import in one direction: no module-level import cycle in ``workbench``."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """``workbench.*`` modules imported at module level (not under ``if TYPE_CHECKING`` nor inside functions)."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workbench"):
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names if alias.name.startswith("workbench"))
    return imported


def test_workbench_modules_form_no_import_cycle():
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in top_level_imports(path):
            if target in modules and target != name:
                graph.add_edge(name, target)
    assert list(nx.simple_cycles(graph)) == []
    assert graph.has_edge("workbench.model_store", "workbench.model_cache")
    assert not graph.has_edge("workbench.model_cache", "workbench.model_store")
