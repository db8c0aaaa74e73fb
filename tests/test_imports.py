"""The package's modules import one another without circles, and only downwards.

A circle (``a`` imports ``b``, ``b`` imports ``a``, however indirectly) means neither module can
be read, tested or replaced alone. Every import counts: at module level, inside a function,
under ``if TYPE_CHECKING:``. Relative imports are resolved against the package, and
``from . import name`` counts as importing the submodule ``name`` when there is one.

:data:`LAYERS_TEXT` names every module's layer, lowest first; a module imports its own layer and
the ones below it, never one above (and a new module must be given a layer). The emulator
stands alone: it imports nothing of the product, so a project's tests can run it under any
settings.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "msgraph_mail"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: The layers, lowest first: a layer's name, then its modules indented below it (``.`` is the
#: package's ``__init__``; a name ending in ``.*`` stands for the rest of a package's modules).
LAYERS_TEXT = """
settings and values
    . exceptions certificate conf values retry findings telemetry signals models
    migrations migrations.*
building and sending one message
    auth shared_state limits limits.* graph mime large uploads drafts json_message routes
    resolvers
what is recorded at the send
    tracking tracking.events tracking.ndr tracking.records tracking.redis_store
    tracking.store tracking.outgoing
the outbox and its workers
    outbox outbox.*
the backends
    backend
after Graph's 202
    tracking.*
the emulator
    emulator emulator.*
Django's parts and the tools
    mailers diagnose checks admin views urls apps management management.* testing demo
    __main__
"""


def parse_layers(text: str) -> list[tuple[str, list[str]]]:
    layers: list[tuple[str, list[str]]] = []
    for line in text.strip().splitlines():
        if line.startswith(" "):
            layers[-1][1].extend("" if name == "." else name for name in line.split())
        else:
            layers.append((line, []))
    return layers


LAYERS = parse_layers(LAYERS_TEXT)


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level > 1:
                base = base[: -(node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.level == 0:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & modules
            found.update(submodules)
            if node.module or len(submodules) < len(node.names):  # names from the module
                found.add(target)
    return {module for module in found if module in modules and module != name}


def graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imports(path, modules) for path in paths}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of a module: its own name first, then its package's ``.*``."""
    name = module.removeprefix(PACKAGE).removeprefix(".")
    for exact in (True, False):
        for index, (_, members) in enumerate(LAYERS):
            for member in members:
                if exact and member == name:
                    return index
                if not exact and member.endswith(".*") and name.startswith(member[:-1]):
                    return index
    return None


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Each import of a module in a higher layer, or by a module without a layer."""
    found = []
    for module, targets in sorted(edges.items()):
        here = layer_of(module)
        if here is None:
            found.append(f"{module} has no layer in LAYERS_TEXT")
            continue
        for target in sorted(targets):
            there = layer_of(target)
            if there is None or there > here:
                layer = LAYERS[there][0] if there is not None else "no layer"
                found.append(f"{module} ({LAYERS[here][0]}) imports {target} ({layer})")
    return found


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_no_import_runs_up_a_layer() -> None:
    assert upward(graph()) == []


def test_the_emulator_imports_nothing_of_the_product() -> None:
    emulator = f"{PACKAGE}.emulator"
    outside = {
        f"{module} imports {target}"
        for module, targets in graph().items()
        if module.startswith(emulator)
        for target in targets
        if not target.startswith(emulator)
    }
    assert sorted(outside) == []


def test_the_check_sees_an_import_up_a_layer() -> None:
    edges = {
        f"{PACKAGE}.conf": {f"{PACKAGE}.backend"},
        f"{PACKAGE}.backend": {f"{PACKAGE}.conf"},
        f"{PACKAGE}.tracking.tracker": {f"{PACKAGE}.tracking.store"},
        f"{PACKAGE}.tracking.store": {f"{PACKAGE}.tracking.tracker"},
        f"{PACKAGE}.newcomer": set(),
    }
    assert upward(edges) == [
        f"{PACKAGE}.conf (settings and values) imports {PACKAGE}.backend (the backends)",
        f"{PACKAGE}.newcomer has no layer in LAYERS_TEXT",
        f"{PACKAGE}.tracking.store (what is recorded at the send) imports "
        f"{PACKAGE}.tracking.tracker (after Graph's 202)",
    ]


def test_the_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":
    for group in cycles(graph()):
        print(" <-> ".join(name.removeprefix(f"{PACKAGE}.") for name in group))
    print("\n".join(upward(graph())))
