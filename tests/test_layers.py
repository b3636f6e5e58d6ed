"""The service's layers import one way (service/bento_service.py's docstring names them).

``platform`` imports no other layer; ``inference`` only ``platform`` (and no web framework);
``transport`` only ``platform`` (it knows the application through the interface it declares);
``api`` any of them. Only ``service.bento_service`` wires them all. Read from the source with
``ast``, so an import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.server import ROOT

ALLOWED = {
    "platform": {"platform"},
    "inference": {"platform", "inference"},
    "transport": {"platform", "transport"},
    "api": {"platform", "inference", "transport", "api"},
}
WEB_FRAMEWORKS = ("starlette", "fastapi", "uvicorn", "bentoml")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = sorted((ROOT / "service").glob("*/*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_layer_imports_only_the_layers_below_it(path):
    layer = path.parent.name
    used = {
        name.split(".")[1] for name in imports_of(path) if name.startswith("service.") and name.count(".")
    }
    assert used <= ALLOWED[layer], f"service/{layer}/{path.name} imports {sorted(used - ALLOWED[layer])}"
    if layer in ("inference", "platform"):
        web = sorted(n for n in imports_of(path) if n.split(".")[0] in WEB_FRAMEWORKS)
        assert not web, f"service/{layer}/{path.name} imports {web}"


def test_every_module_of_the_service_is_in_a_layer():
    loose = sorted(p.name for p in (ROOT / "service").glob("*.py"))
    assert loose == ["__init__.py", "bento_service.py"]
    assert {p.parent.name for p in MODULES} == set(ALLOWED)
