"""The package's folders are its layers, and each layer imports only the layers below it.

A newcomer can read the rules here, in one table, and the test checks every import statement of
the package (function-local ones included) against it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reactor"

# layer -> the other layers it may import. A layer may always import itself.
MAY_IMPORT: dict[str, set[str]] = {
    "domain": set(),
    "contract": {"domain"},
    "store": {"domain"},
    "obs": {"domain"},
    "broker": {"domain", "contract", "config"},
    "config": {"domain"},
    "engine": {"domain", "contract", "store", "config"},
    "app": {"domain", "config", "engine", "store", "obs"},
    "consume": {"domain", "contract", "engine", "broker", "obs", "config"},
    "ingress": {"domain", "contract", "engine", "broker", "obs", "store", "config", "app"},
    "ops": {"domain", "contract", "engine", "broker", "obs", "store", "config"},
    "docgen": {"domain", "contract", "config"},
    "cli": {"domain", "contract", "engine", "broker", "consume", "ingress", "ops", "obs",
            "store", "config", "app", "docgen"},
    "__init__": set(),
}


def layer_of(path: Path) -> str:
    """The layer of a module: its folder under reactor/, or the root module's own name."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_layers(path: Path) -> list[tuple[int, str]]:
    """(line, layer) for every import of our own package in one module."""
    here = path.relative_to(PACKAGE).parent.parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "reactor":
                parts = node.module.split(".")[1:]
            else:
                continue
            if parts:
                found.append((node.lineno, parts[0]))
            else:  # from . import x / from reactor import x, at the package root
                found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "reactor" and len(parts) > 1:
                    found.append((node.lineno, parts[1]))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)

def test_every_folder_and_root_module_is_a_known_layer():
    assert {layer_of(p) for p in MODULES} == set(MAY_IMPORT)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_the_layers_below_its_own(path):
    layer = layer_of(path)
    allowed = MAY_IMPORT[layer] | {layer}
    wrong = [f"line {line}: imports {target}" for line, target in imported_layers(path)
             if target not in allowed and target != "__init__"]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) may import only {sorted(allowed)}: {wrong}"


def test_the_rules_have_no_cycle():
    seen: set[str] = set()

    def visit(layer: str, trail: tuple[str, ...]) -> None:
        assert layer not in trail, f"cycle: {' -> '.join(trail + (layer,))}"
        if layer in seen:
            return
        for lower in MAY_IMPORT[layer]:
            visit(lower, trail + (layer,))
        seen.add(layer)

    for layer in MAY_IMPORT:
        visit(layer, ())
