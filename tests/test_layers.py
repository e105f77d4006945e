"""The shape of the package, checked: lower layers never import higher ones (DESIGN: engine <
registry < container < messaging < pipeline < node < fleet < toolchain < api < cli);
foundation modules (backoff, breaker, errors, extensions, message, sensors, sqlite, supervise) import no layer; every
module of the package belongs to a layer or the foundation; no module imports another's private
names; and no modules import each other in a circle when loaded (an import inside a function is the deliberate way out of one and does not
count; neither do imports under `if TYPE_CHECKING:`). docs/architecture.md explains the layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "iotwasm"
ORDER = ["engine", "registry", "container", "messaging", "pipeline", "node", "fleet", "toolchain", "api",
         "cli"]
FOUNDATION = {"backoff", "breaker", "errors", "extensions", "message", "sensors", "sqlite", "supervise"}
#: entries of the package that are neither: the package itself and its marker
OUTSIDE = {"__init__", "__main__", "py.typed"}


def module_name(path: Path) -> str:
    """`iotwasm.a.b` for src/iotwasm/a/b.py, `iotwasm.a` for src/iotwasm/a/__init__.py."""
    parts = ("iotwasm", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _known(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _imports(path: Path, top_level_only: bool) -> set[str]:
    return imports_of(path.read_text(), module_name(path), _is_package(path), top_level_only)


def imports_of(source: str, name: str, is_package: bool, top_level_only: bool) -> set[str]:
    """Modules of the package that module `name` imports (each `from X import y` counts as X.y
    when that is a module, else X). With `top_level_only`, only imports run when it loads."""
    tree = ast.parse(source)
    here = name.split(".")
    package = here if is_package else here[:-1]
    if top_level_only:
        nodes: list[ast.stmt] = []
        todo = list(tree.body)
        while todo:
            stmt = todo.pop()
            if isinstance(stmt, ast.If):
                test = stmt.test
                if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                    todo.extend(stmt.orelse)
                    continue
                todo.extend(stmt.body + stmt.orelse)
            elif isinstance(stmt, ast.Try):
                todo.extend(stmt.body + stmt.orelse + stmt.finalbody
                            + [s for h in stmt.handlers for s in h.body])
            else:
                nodes.append(stmt)
    else:
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "iotwasm":
                target = node.module.split(".")
            else:
                continue
            for alias in node.names:
                sub = ".".join(target + [alias.name])
                found.add(sub if _known(sub) else ".".join(target))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "iotwasm")
    return found


def layers_of(modules: set[str]) -> set[str]:
    return {m.split(".")[1] for m in modules if m.count(".") >= 1}


def imported_layers(path: Path) -> set[str]:
    return layers_of(_imports(path, top_level_only=False))


def all_modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "templates" not in p.relative_to(SRC).parts)


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


def test_every_module_has_a_place():
    placed = set(ORDER) | FOUNDATION | OUTSIDE
    stray = sorted(p.name for p in SRC.iterdir()
                   if p.name != "__pycache__" and p.name.removesuffix(".py") not in placed)
    assert not stray, (f"{stray}: add each to a layer (ORDER) or the foundation in tests/test_layers.py "
                       "and docs/architecture.md")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph`, as the path of modules that closes it, or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    graph = {module_name(p): _imports(p, top_level_only=True) for p in all_modules()}
    # a module importing its own package's __init__ (or the reverse, to re-export) is how
    # packages are built, not a circle between peers
    for m, deps in graph.items():
        graph[m] = {d for d in deps if d != m and not m.startswith(d + ".")}
    cycle = _cycle(graph)
    assert cycle is None, "modules import each other in a circle when loaded: " + " -> ".join(cycle or [])


def test_the_checks_see_relative_and_package_imports():
    """`from . import x` and `from .. import layer` are imports too; lazy ones count for layers."""
    source = "from .. import api\nfrom . import limits\ndef f():\n    from ..node import node\n"
    loaded = imports_of(source, "iotwasm.engine.probe", False, top_level_only=True)
    assert loaded == {"iotwasm.api", "iotwasm.engine.limits"}
    every = imports_of(source, "iotwasm.engine.probe", False, top_level_only=False)
    assert layers_of(every) == {"api", "engine", "node"}
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_another_s_private_names():
    """A name another module needs is part of its module's surface and is named so: an
    underscore says "only here", and a reader changing such a helper must be able to trust it."""
    found = []
    for path in all_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("iotwasm")):
                found += [f"{path.relative_to(SRC)}: {a.name} from {'.' * node.level}{node.module or ''}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "private names imported across modules:\n" + "\n".join(found)
