"""The product's shape, checked from its source: no import cycle (imports inside functions
included), layers that import only downwards, no module reaching into another's private names,
no function over 60 lines, no module over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import loyalty_moengage

PACKAGE = Path(loyalty_moengage.__file__).parent
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 500

# The product's layers, lowest first (ARCHITECTURE.md): a module imports its own layer's modules
# and lower layers' only. Within sync/ the order is the data path's, except that the ledger
# (report/) sits below the send steps that count into it.
LAYERS = (
    ("loyalty_moengage.paths", "loyalty_moengage.night", "loyalty_moengage.progress",
     "loyalty_moengage.embedded", "loyalty_moengage.db", "loyalty_moengage.config"),
    ("loyalty_moengage.moengage",),
    ("loyalty_moengage.sync.outbox",),
    ("loyalty_moengage.sync.chunk",),
    ("loyalty_moengage.sync.report",),
    ("loyalty_moengage.sync.send",),
    ("loyalty_moengage.sync.sinks",),
    ("loyalty_moengage.sync.live",),
    ("loyalty_moengage.sync.ops",),
    ("loyalty_moengage.sync.tasks",),
    ("loyalty_moengage.api", "loyalty_moengage.ui", "loyalty_moengage.by_hand"),
    ("loyalty_moengage.cli",),
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("loyalty_moengage",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The product module an import names (a package's module for ``from pkg import name``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every import in the file, at any depth."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full, None, node.lineno) if full in MODULES else (base, a.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m.startswith("loyalty_moengage")]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _name, _line in _imports(module, path):
            resolved = _resolve(target)
            if resolved and resolved != module:
                graph[module].add(resolved)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert sum(len(v) for v in graph.values()) > 50   # the graph was read
    assert _cycles(graph) == []


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def _group(module: str) -> str:
    """The package (or top-level module) that is one unit of its layer."""
    return next(p for prefixes in LAYERS for p in prefixes if module == p or module.startswith(p + "."))


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        own = _layer(module)
        for target in targets:
            there = _layer(target)
            if own is None or there is None:
                continue
            if there > own or (there == own and _group(target) != _group(module) and own > 0):
                found.append(f"{module} -> {target}")
    return sorted(found)


def test_every_product_module_has_a_layer():
    unplaced = [m for m in MODULES if m not in {"loyalty_moengage", "loyalty_moengage.sync"} and _layer(m) is None]
    assert unplaced == []


def test_layers_import_only_downwards():
    graph = _graph()
    assert _upward_imports(graph) == []
    assert not any(t.startswith("loyalty_moengage.sync") for m in MODULES if m.startswith("loyalty_moengage.moengage")
                   for t in graph[m])


def test_the_layer_check_finds_an_upward_import():
    assert _upward_imports({"loyalty_moengage.moengage.hook": {"loyalty_moengage.sync.chunk.contract"},
                            "loyalty_moengage.sync.chunk.gate": {"loyalty_moengage.sync.send.load"},
                            "loyalty_moengage.api.app": {"loyalty_moengage.ui.data"},
                            "loyalty_moengage.sync.send.load": {"loyalty_moengage.sync.outbox.delivery"}}) == [
        "loyalty_moengage.api.app -> loyalty_moengage.ui.data",
        "loyalty_moengage.moengage.hook -> loyalty_moengage.sync.chunk.contract",
        "loyalty_moengage.sync.chunk.gate -> loyalty_moengage.sync.send.load",
    ]


def test_no_product_module_is_over_500_lines():
    long = {m: n for m, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _private_uses(module: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = [f"{path.name}:{line} imports {name} from {target}" for target, name, line in _imports(module, path)
             if name and name.startswith("_") and not name.startswith("__") and _resolve(target) != module]
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                full = a.name if isinstance(node, ast.Import) else f"{node.module}.{a.name}"
                if full in MODULES and full != module:
                    aliases[a.asname or a.name.rpartition(".")[2]] = full
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    assert [use for module, path in MODULES.items() for use in _private_uses(module, path)] == []


def test_no_product_function_is_over_60_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []


def test_every_import_of_the_product_resolves():
    """The development tools, the tests, the DAGs and the images' scripts name product modules and
    names that exist (a redesign that moved one leaves no import behind to fail at run time)."""
    import importlib

    root = PACKAGE.parents[1]
    files = [p for folder in ("devtools", "tests", "dags", "docker") for p in (root / folder).rglob("*.py")]
    missing = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loyalty_moengage."):
                module = importlib.import_module(node.module)
                missing += [f"{path.relative_to(root)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and f"{node.module}.{a.name}" not in MODULES]
            elif isinstance(node, ast.Import):
                missing += [f"{path.relative_to(root)}:{node.lineno} {a.name}" for a in node.names
                            if a.name.startswith("loyalty_moengage.") and a.name not in MODULES]
    assert len(files) > 50 and missing == []


def _messages(tree: ast.AST) -> list[str]:
    """String constants that are not docstrings (f-strings: their literal parts joined)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            out.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            out.append("".join(v.value for v in node.values if isinstance(v, ast.Constant)))
    return out


def test_no_message_names_a_setting_that_does_not_exist():
    """"set retry_uncertain=True" once told operators of a setting nobody could set."""
    import re

    from loyalty_moengage.config.programs import Program

    named = re.compile(r"\b([a-z]+(?:_[a-z]+)+)(?:: (?:true|false|hold|resend)\b|=True\b|=False\b)"
                       r"|\bset `?([a-z]+(?:_[a-z]+)+)`?")
    settings = set(Program.model_fields)
    wrong = [(str(path.relative_to(PACKAGE)), name) for path in PACKAGE.rglob("*.py")
             for text in _messages(ast.parse(path.read_text()))
             for m in named.finditer(text) for name in m.groups() if name and name not in settings]
    assert wrong == []
    assert "receipts" in settings and "verify_customers" in settings
