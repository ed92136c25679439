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
