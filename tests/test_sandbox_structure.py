"""The sandbox's modules import each other without cycles: route modules never import ``app``."""

from __future__ import annotations

import ast
from pathlib import Path

import airflow_provider_faxplus.sandbox as sandbox_package

PACKAGE = "airflow_provider_faxplus.sandbox"
ROOT = Path(sandbox_package.__file__).parent


def _imports(path: Path) -> set[str]:
    """The sandbox modules a module imports (``from ... import x`` of a sandbox module counts too)."""
    names: set[str] = set()
    modules = {p.stem for p in ROOT.glob("*.py")}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                names |= {alias.name for alias in node.names if alias.name in modules}
            elif node.module.startswith(PACKAGE + "."):
                names.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith(PACKAGE + ".")}
    return names - {path.stem}


def test_no_sandbox_module_imports_app_and_the_graph_has_no_cycle():
    graph = {path.stem: _imports(path) for path in ROOT.glob("*.py")}
    assert not [name for name, deps in graph.items() if "app" in deps and name not in ("server", "cli")]

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"import cycle: {' -> '.join((*trail, name))}"
        for dep in graph.get(name, ()):
            visit(dep, (*trail, name))

    for name in graph:
        visit(name, ())
