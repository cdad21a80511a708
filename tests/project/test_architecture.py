"""Package structure: no import cycle anywhere in demucs_rr, and the networks never import the
model-file package."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "demucs_rr"


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> demucs_rr modules it imports, function-local and TYPE_CHECKING imports too."""
    modules: dict[str, set[str]] = {}
    for file in root.rglob("*.py"):
        parts = file.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                deps |= {base} | {f"{base}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names}
        modules[name] = deps
    return {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (first module repeated at the end), or None."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in stack:
            return stack[stack.index(module) :] + [module]
        if module in done:
            return None
        stack.append(module)
        for dep in sorted(graph[module]):
            cycle = visit(dep)
            if cycle:
                return cycle
        stack.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_sees_function_local_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "demucs_rr"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from demucs_rr import b\n")
    (pkg / "b.py").write_text("def f():\n    from demucs_rr.a import x\n")
    assert find_cycle(import_graph(pkg)) == ["demucs_rr.a", "demucs_rr.b", "demucs_rr.a"]


def test_networks_do_not_import_model_files() -> None:
    graph = import_graph()
    offenders = {
        module: sorted(d for d in deps if d.startswith("demucs_rr.hub"))
        for module, deps in graph.items()
        if module.startswith("demucs_rr.models")
    }
    assert not {m: d for m, d in offenders.items() if d}
