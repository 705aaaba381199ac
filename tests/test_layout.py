"""The package's layout: imports go one way (ARCHITECTURE.md's layers), no cycles, and names that moved still
import from their old places for one release, with a DeprecationWarning."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "prunelab"

# ARCHITECTURE.md's layers, lowest first: a module may import from its own layer and the layers below, never above.
LAYERS = [
    ["errors", "_moved", "logs"],
    ["io", "targets", "schedules", "scores", "select", "sparsity", "masks_io", "codec", "optimizer_state", "data"],
    ["config", "pruner", "movement_scores", "methods"],
    ["artifact", "oneshot", "integrations"],
    ["deploy", "analysis"],
    ["pipelines"],
    ["study"],
    ["cli", "__main__"],
]
# Deprecated forwarders of moved names (they import nothing at import time).
SHIMS = {"compressed", "execution", "speed", "integrations.onnx"}


def unit(module: str) -> str:
    """The layer unit of a dotted module name inside the package (its top-level file or folder)."""
    return module.split(".")[0]


def layer_of(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if unit(module) in names:
            return i
    raise AssertionError(f"prunelab.{module} is in no layer of ARCHITECTURE.md; add it there and to LAYERS")


def imports(path: Path) -> list[tuple[str, int]]:
    """The package-internal modules `path` imports (anywhere in it, lazily too), with line numbers."""
    module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
    package = module.split(".")[:-1] if not path.name == "__init__.py" else module.split(".")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}".strip(".") for a in node.names
                                                      if target or (PACKAGE / a.name).exists() or (PACKAGE / f"{a.name}.py").exists()]
                found += [(n, node.lineno) for n in names]
            elif node.module and node.module.startswith("prunelab."):
                found.append((node.module.removeprefix("prunelab."), node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name.removeprefix("prunelab."), node.lineno) for a in node.names if a.name.startswith("prunelab.")]
    return [(name, line) for name, line in found if name and name != "prunelab"]


def modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if ".".join(p.relative_to(PACKAGE).with_suffix("").parts) not in SHIMS]


def test_imports_go_down_the_layers():
    wrong = []
    for path in modules():
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if name == "__init__":
            continue  # the public API: lazy imports of every layer
        for target, line in imports(path):
            if layer_of(target) > layer_of(name):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {target} (layer {layer_of(target)} over {layer_of(name)})")
    assert not wrong, "imports against ARCHITECTURE.md's direction:\n" + "\n".join(wrong)


def test_no_import_cycles_between_files():
    graph = {}
    for path in modules():
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {t for t, _ in imports(path)}
    files = set(graph)

    def resolve(target: str) -> str | None:  # `from .x import name` names a module or a name in one
        while target and target not in files:
            target = target.rpartition(".")[0]
        return target or None

    edges = {a: {r for t in ts if (r := resolve(t)) and r != a and not a.startswith(r + ".") and r != "__init__"}
             for a, ts in graph.items()}
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        stack.pop()

    for node in sorted(edges):
        visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("old, name, new", [
    ("prunelab.compressed", "compress", "prunelab.deploy.compressed"),
    ("prunelab.compressed", "read_compressed", "prunelab.codec"),
    ("prunelab.compressed", "COMPRESSED_FILE", "prunelab.artifact"),
    ("prunelab.execution", "sparse_execution", "prunelab.deploy.execution"),
    ("prunelab.speed", "measure_speed", "prunelab.deploy.speed"),
    ("prunelab.integrations.onnx", "export_onnx", "prunelab.deploy.onnx"),
    ("prunelab.artifact", "prune", "prunelab.oneshot"),
    ("prunelab.artifact", "inspect", "prunelab.oneshot"),
    ("prunelab.artifact", "model_card", "prunelab.deploy.compressed"),
])
def test_a_moved_name_still_imports_from_its_old_place_with_a_warning(old, name, new):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moved = getattr(importlib.import_module(old), name)
    assert moved is getattr(importlib.import_module(new), name)
    assert any(w.category is DeprecationWarning and new in str(w.message) for w in caught)
