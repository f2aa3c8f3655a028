"""The package's layers, read from the source: every import in zoo/ that can run (function-level ones included;
`if TYPE_CHECKING:` blocks, annotations only, left out) goes to the same layer or one below, and no modules import
each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import zoo

PACKAGE = Path(zoo.__file__).resolve().parent

# Lowest first. A module may import its own layer and the layers below it; a package's name stands for all of
# its modules that are not named on their own.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("zoo.errors", "zoo.points", "zoo.procs", "zoo.compressed", "zoo.net", "zoo.precision")),
    ("coder", ("zoo._rans", "zoo.cdf", "zoo.coder")),
    ("networks", ("zoo.layers",)),
    ("entropy models", ("zoo.entropy",)),
    ("models", ("zoo.models", "zoo.registry", "zoo.untrusted")),
    ("bitstream container", ("zoo.bitstream",)),
    ("codec API", ("zoo.codec", "zoo.imageio", "zoo.refine", "zoo.ratecontrol", "zoo.export")),
    (
        "entries and hub",
        (
            "zoo",
            "zoo.entry",
            "zoo.card",
            "zoo.entry_codec",
            "zoo.manifest",
            "zoo.hub",
            "zoo.mirror",
            "zoo.publish",
            "zoo.retire",
            "zoo.resolve",
            "zoo.compressai",
        ),
    ),
    ("applications", ("zoo.cli", "zoo.handlers", "zoo.serve", "zoo.evaluation", "zoo.train")),
]

# Imports that break the layering: none (the format version lives in `zoo.compressed`).
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*"):
        if path.suffix not in (".py", ".c") or "__pycache__" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node that can run: all of them but the bodies of `if TYPE_CHECKING:` (annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the zoo modules it imports (`from zoo import _rans` is zoo._rans; `from zoo import load` is zoo)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        if path.suffix == ".py":
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    targets.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:  # relative: from . import x, from .y import z
                        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                        base = ".".join([*anchor, *([base] if base else [])])
                    for alias in node.names:
                        sub = f"{base}.{alias.name}"
                        targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _layer(module: str) -> int:
    best, index = "", -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    return index


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert [m for m in _modules() if _layer(m) < 0] == []


def test_no_module_imports_a_layer_above_its_own():
    graph = _imports(_modules())
    upward = {(m, t) for m, targets in graph.items() for t in targets if _layer(t) > _layer(m)}
    described = sorted(
        f"{m} ({LAYERS[_layer(m)][0]}) imports {t} ({LAYERS[_layer(t)][0]})" for m, t in upward - KNOWN_UPWARD
    )
    assert described == []
    assert KNOWN_UPWARD <= upward, "an exception above is gone: delete it from KNOWN_UPWARD"


def test_no_import_cycle():
    cycles = {frozenset(c) for c in _cycles(_imports(_modules()))}
    assert sorted(map(sorted, cycles - KNOWN_CYCLES)) == []
    assert KNOWN_CYCLES <= cycles, "a known cycle is gone: delete it from KNOWN_CYCLES"


def test_the_checker_sees_function_level_imports_and_circles():
    """The reader itself: an import inside a function counts, and `from zoo import _rans` is the extension."""
    graph = _imports(_modules())
    assert "zoo._rans" in graph["zoo.coder"]
    assert "zoo.resolve" in graph["zoo"]  # imported inside zoo.load's body only
    assert "zoo.codec" not in graph["zoo"]  # imported for annotations only
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
