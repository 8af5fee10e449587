"""The shape of the code, as docs/architecture.md states it: import layers, no import circles, the import
bans (models/ without distribution, data and masking without the model, config without giant,
library modules without argparse or the commands), and the size limits. Imports are read with
`ast` from the source, function-level ones included, so nothing is imported to check them."""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

GIANT = Path(__file__).resolve().parents[1] / "giant"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 70

# docs/architecture.md, top to bottom: "commands/cli → stages → interop → engine → data, flops → masking,
# models → artifact, config → errors, console". An import may go sideways or down, never up.
# Modules docs/architecture.md does not name sit where their own imports and users put them: memory (the
# planner) beside stages (it reads the DeepSpeed JSON the engine merges; only commands and the
# pipeline plan use it), safety (the deletion rule) beside config.
LAYERS = (
    ("giant.commands", "giant.cli"),
    ("giant.stages", "giant.memory"),
    ("giant.interop",),
    ("giant.engine",),
    ("giant.data", "giant.flops"),
    ("giant.masking", "giant.models"),
    ("giant.artifact", "giant.config", "giant.safety"),
    ("giant.errors", "giant.console", "giant"),
)
COMMANDS = ("giant.commands", "giant.cli")  # the only modules that may parse arguments


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _layer(module: str) -> int:
    """Index into LAYERS (0 = top); the longest matching prefix decides (`giant` is the root)."""
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if _within(module, prefix) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    if best is None or (best[1] == "giant" and module != "giant"):
        raise AssertionError(f"{module}: no layer: add it to LAYERS here and to docs/architecture.md")
    return best[0]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(GIANT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(GIANT.rglob("*.py"))}


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _absolute(node: ast.ImportFrom, module: str, path: Path) -> str:
    """The absolute name `from ... import` refers to (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, int]]:
    return _read_imports(_tree(_modules()[module]), module, _modules()[module], _modules())


def _read_imports(tree: ast.Module, module: str, path: Path, known) -> list[tuple[str, int]]:
    """(imported name, line) for every import statement anywhere in `tree`. For
    `from pkg import name` the name counts as a module when it is one (a submodule), else the
    import names `pkg` itself."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, node.lineno))
    return list(dict.fromkeys(found))  # `from m import a, b` is one import of m


def _giant_edges() -> dict[str, set[str]]:
    """module → the giant modules it imports (names resolved to the nearest existing module)."""
    known = _modules()
    edges = {}
    for module in known:
        targets = set()
        for name, _line in _imports(module):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if _within(name, "giant") and name != module:
                targets.add(name)
        edges[module] = targets
    return edges


def _rel(module: str) -> str:
    return str(_modules()[module].relative_to(GIANT.parent))


def test_no_import_goes_up_a_layer():
    edges, up = _giant_edges(), []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if _layer(target) < _layer(module):
                lines = sorted({line for name, line in _imports(module) if _within(name, target)
                                or _within(target, name)})
                up.append(f"{_rel(module)}:{','.join(map(str, lines))} imports {target} (a higher layer)")
    assert not up, "\n".join(up)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def test_cycle_finder_finds_a_known_circle():
    """The finder itself, on a hand-made graph: a ↔ b and c → d → e → c, f alone."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_cycles(graph)) == [["a", "b"], ["c", "d", "e"]]


def test_no_import_circle():
    edges = _giant_edges()
    found = []
    for component in _cycles(edges):
        inside = [f"{a} → {b}" for a in component for b in sorted(edges[a]) if b in component]
        found.append("circle: " + "; ".join(inside))
    assert not found, "\n".join(found)


def _distributed_uses(module: str) -> list[str]:
    """deepspeed or torch.distributed, imported or reached as an attribute (`torch.distributed.x`)."""
    bad = [f"{_rel(module)}:{line} imports {name}" for name, line in _imports(module)
           if _within(name, "deepspeed") or _within(name, "torch.distributed")]
    for node in ast.walk(_tree(_modules()[module])):
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            bad += [f"{_rel(module)}:{node.lineno} imports torch.{a.name}" for a in node.names
                    if a.name == "distributed"]
        if (isinstance(node, ast.Attribute) and node.attr == "distributed"
                and isinstance(node.value, ast.Name) and node.value.id == "torch"):
            bad.append(f"{_rel(module)}:{node.lineno} uses torch.distributed")
    return bad


def test_import_bans():
    bad = []
    for module in sorted(_modules()):
        giant_imports = [(n, line) for n, line in _imports(module) if _within(n, "giant")]
        if _within(module, "giant.models"):
            bad += _distributed_uses(module)
        if _within(module, "giant.data") or _within(module, "giant.masking"):
            bad += [f"{_rel(module)}:{line} imports {n} (data and masking never import the model)"
                    for n, line in giant_imports if _within(n, "giant.models")]
        if _within(module, "giant.config"):  # the package's modules import each other and errors only
            bad += [f"{_rel(module)}:{line} imports {n} (config imports nothing of giant but errors)"
                    for n, line in giant_imports if not (_within(n, "giant.errors") or _within(n, "giant.config"))]
        if not any(_within(module, c) for c in COMMANDS):
            bad += [f"{_rel(module)}:{line} imports {n} (argparse and commands belong in giant/commands/)"
                    for n, line in _imports(module)
                    if n == "argparse"
                    or any(_within(n, c) for c in COMMANDS)]
    assert not bad, "\n".join(bad)


def test_import_reader_sees_function_level_and_relative_imports():
    """The reader on a hand-made module: imports inside functions and relative ones count."""
    src = ("import os\n"
           "def f():\n    import argparse\n    from ..models import vit, MODEL_SIZES\n"
           "class C:\n    def g(self):\n        from . import loop\n")
    known = {"giant.models", "giant.models.vit", "giant.engine.loop"}
    got = _read_imports(ast.parse(src), "giant.engine.checkpoint",
                        GIANT / "engine" / "checkpoint.py", known)
    assert got == [("os", 1), ("argparse", 3), ("giant.models.vit", 4), ("giant.models", 4),
                   ("giant.engine.loop", 7)]


def test_no_long_files_or_functions():
    long = []
    for module, path in sorted(_modules().items()):
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            long.append(f"{_rel(module)}: {lines} lines (limit {MAX_FILE_LINES})")
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = node.end_lineno - node.lineno + 1
                if span > MAX_FUNCTION_LINES:
                    long.append(f"{_rel(module)}:{node.name}:{node.lineno}: {span} lines "
                                f"(limit {MAX_FUNCTION_LINES})")
    assert not long, "\n".join(long)
