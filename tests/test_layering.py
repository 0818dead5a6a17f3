"""The floors of docs/architecture.md, checked by parsing every import of the project's packages.

toolkit -> schemas -> pose -> trainer | components -> pipeline: a package may import the floors below it
(and itself), never one above, and trainer and components (one floor, two rooms) never import each
other. Imports inside functions count as much as top-level ones. No two modules may import each other,
directly or around a longer circle.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALLOWED = {
    "toolkit": set(),
    "schemas": {"toolkit"},
    "pose": {"toolkit", "schemas"},
    "trainer": {"toolkit", "schemas", "pose"},
    "components": {"toolkit", "schemas", "pose"},
    "pipeline": {"toolkit", "schemas", "pose", "trainer", "components"},
}
"""Package -> the project packages it may import besides itself (docs/architecture.md)."""


def _modules():
    """``{dotted module name: path}`` of every .py file in the layered packages."""
    found = {}
    for package in ALLOWED:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    found[".".join(parts)] = path
    return found


def _imports(module, path, modules):
    """``[(line, imported project module)]`` of one file: absolute and relative imports, at any depth."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import name": name is a submodule when one exists, else an attribute of pkg.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            if name.split(".")[0] in ALLOWED:
                while name not in modules and "." in name:
                    name = name.rpartition(".")[0]
                out.append((node.lineno, name))
    return out


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}, modules


def test_no_import_goes_up_a_floor(graph):
    edges, modules = graph
    wrong = []
    for module, imports in edges.items():
        package = module.split(".")[0]
        for line, target in imports:
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                wrong.append(f"{os.path.relpath(modules[module], ROOT)}:{line} imports {target} "
                             f"({package} may import only {sorted(ALLOWED[package]) or 'nothing of the project'})")
    assert not wrong, "imports against the floors of docs/architecture.md:\n" + "\n".join(wrong)


def test_no_import_circles(graph):
    edges, _ = graph
    adjacency = {module: sorted({target for _, target in imports if target != module and target in edges})
                 for module, imports in edges.items()}
    # Tarjan's strongly connected components: any component of two or more modules is a circle.
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in adjacency[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(adjacency):
        if node not in index:
            visit(node)
    assert not circles, "modules that import each other (directly or around a circle): " + "; ".join(
        " <-> ".join(circle) for circle in circles)


def test_the_checks_see_a_violation(tmp_path):
    """The parser reads function-level and relative imports (so the two tests above can fail)."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from pipeline import gate\n    from . import sibling\n")
    modules = {"schemas.mod": str(source), "schemas.sibling": "", "pipeline.gate": ""}
    assert [name for _, name in _imports("schemas.mod", str(source), modules)] == ["pipeline.gate", "schemas.sibling"]


def test_every_package_is_placed():
    """A new top-level package gets a floor here (and in docs/architecture.md) before it is used."""
    packages = {name for name in os.listdir(ROOT)
                if os.path.isfile(os.path.join(ROOT, name, "__init__.py")) and name not in ("tests", "bench")}
    assert packages == set(ALLOWED), f"packages without a floor: {sorted(packages - set(ALLOWED))}"
