"""Lower layers never import higher ones (DESIGN: engine < registry < container < messaging <
pipeline < node < fleet < toolchain < api < cli). Foundation modules (backoff, errors, message,
sensors, sqlite, supervise, breaker) import no layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "iotwasm"
ORDER = ["engine", "registry", "container", "messaging", "pipeline", "node", "fleet", "toolchain", "api",
         "cli"]
FOUNDATION = {"backoff", "breaker", "errors", "message", "sensors", "sqlite", "supervise"}


def imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.level:
                rel = path.relative_to(SRC).parts
                base = list(rel[:-1])[: len(rel) - node.level]
                parts = base + node.module.split(".")
            elif node.module.startswith("iotwasm."):
                parts = node.module.split(".")[1:]
            else:
                continue
            if parts:
                found.add(parts[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("iotwasm."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("layer", ORDER)
def test_no_upward_imports(layer):
    higher = set(ORDER[ORDER.index(layer) + 1:])
    for path in (SRC / layer).rglob("*.py"):
        bad = imported_layers(path) & higher
        assert not bad, f"{path.relative_to(SRC)} imports higher layer(s) {sorted(bad)}"


@pytest.mark.parametrize("name", sorted(FOUNDATION))
def test_foundation_imports_no_layer(name):
    bad = imported_layers(SRC / f"{name}.py") & set(ORDER)
    assert not bad, f"{name}.py imports {sorted(bad)}"
