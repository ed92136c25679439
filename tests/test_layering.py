"""The layering the design asks for, checked on the source: who may import whom."""

import ast

import pytest

from tests.factories import ROOT


def imports(package: str) -> dict[str, set[str]]:
    """module path -> top-level names of everything it imports (relative imports resolved)."""
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts[:len(parts) - node.level]
                    names.add(".".join(base + ((node.module,) if node.module else ())))
                else:
                    names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{mod} imports {name}" for mod, names in imports(package).items()
                  for name in names if name.split(".")[0] in forbidden or name.startswith(forbidden))


@pytest.mark.parametrize("package,forbidden", [
    ("web", ("workers",)),
    ("workers", ("web", "flask")),
    ("services", ("web", "workers", "flask")),
    ("services/diagnosis", ("sqlalchemy", "celery", "flask", "services.modelling", "services.bench",
                            "captum", "tqdm")),
])
def test_no_import_crosses_a_layer(package, forbidden):
    assert offenders(package, forbidden) == []


def test_the_check_sees_imports():
    assert any("services.runtime" in names for names in imports("web").values())


def module_graph(package: str = "services") -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports, at the top or inside a function (a
    circle through a function-level import is still a circle for a reader)."""
    files = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in files.items():
        parts = tuple(module.split("."))
        here = parts if path.name == "__init__.py" else parts[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (".".join(here[:len(here) - node.level + 1] + ((node.module,) if node.module else ()))
                        if node.level else node.module)
                candidates = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in candidates:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                # A package's own __init__ is loaded before its modules: not a circle.
                if name and name != module and not module.startswith(name + "."):
                    deps.add(name)
        graph[module] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_in_services():
    assert circles(module_graph()) == []


def test_the_circle_check_sees_function_level_imports_and_circles():
    graph = module_graph()
    assert "services.reviews" in graph["services.cases"]
    assert "services.modelling.readouts" in graph["services.modelling.image_finetune"]
    assert "services.modelling.synthetic" in graph["services.modelling.features"]   # inside a function
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
