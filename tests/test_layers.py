"""lrl's layers (ARCHITECTURE.md): every module belongs to one layer and imports only from layers below it
or from its own subpackage, and no set of modules imports itself in a circle at module level.

Read with `ast`, nothing imported. Imports inside functions count too (a lazy import is still a
dependency); an exception needs an entry in ALLOWED with its reason."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lrl"

# subpackage -> layer (low imports nothing above it). Same layer, different subpackage: independent
# siblings, no imports between them. Top-level modules of lrl (cli, demo, doctor, __main__, __init__)
# form the application layer "app".
LAYERS: dict[str, int] = {
    "core": 0,  # io, audio, text, plots, constants: stdlib + third-party only
    "data": 1,  # vocab, prepare, cards, synth
    "augment": 2,  # waveform augmentation, SpecAugment settings, preview
    "models": 2,  # checkpoints: tiny init, loading, head transfer, shipped starts
    "decode": 2,  # CTC decoder, KenLM
    "train": 3,  # run config, batching, featcache, schedules, trainer, pretrain, start builder
    "evaluate": 3,  # inference, scoring, tuning, transcription
    "report": 4,  # the error-analysis page: reads what evaluate, tune and train wrote
    "app": 5,  # cli, demo, doctor, __main__, the package's __init__
}
APP_MODULES = {"lrl", "lrl.__main__", "lrl.cli", "lrl.demo", "lrl.doctor"}

# (importer, imported) -> why this upward or sideways import is acceptable. Keep it short and justified.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name, e.g. lrl.train.trainer
    target: str  # dotted module imported, e.g. lrl.core.io
    line: int
    module_level: bool  # False inside a function/method (lazy); TYPE_CHECKING blocks are not module level


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


def group(module: str) -> str | None:
    """The subpackage a module belongs to ("app" for lrl's top-level modules); None when unknown."""
    if module in APP_MODULES:
        return "app"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS and parts[1] != "app":
        return parts[1]
    return None


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, module_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child):
            yield from _walk(child, False)
        else:
            yield child, module_level
            yield from _walk(child, module_level)


def imports_of(path: Path, modules: dict[str, Path], root: Path = ROOT) -> list[Import]:
    """The lrl modules `path` imports (a `from pkg import name` naming a submodule targets the submodule)."""
    me = module_name(path, root)
    is_pkg = path.name == "__init__.py"
    top = root.name
    out = []
    for node, module_level in _walk(ast.parse(path.read_text(encoding="utf-8")), True):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name == top or a.name.startswith(top + ".")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod != top and not mod.startswith(top + "."):
                continue
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
            rest = [a for a in node.names if f"{mod}.{a.name}" not in modules]
            targets = subs + ([mod] if rest else [])
        for t in targets:
            while t not in modules and "." in t:  # `import lrl.x.y` where y is a name: the module is lrl.x
                t = t.rsplit(".", 1)[0]
            if t != me:
                out.append(Import(me, t, node.lineno, module_level))
    return out


def layer_violations(root: Path = ROOT, allowed: dict | None = None) -> list[str]:
    allowed = ALLOWED if allowed is None else allowed
    modules = all_modules(root)
    bad = []
    for path in modules.values():
        for imp in imports_of(path, modules, root):
            src, dst = group(imp.importer), group(imp.target)
            if src is None or dst is None or src == dst:
                continue  # unplaced modules are reported by test_every_module_has_a_layer
            if LAYERS[dst] < LAYERS[src] or (imp.importer, imp.target) in allowed:
                continue
            kind = "upward" if LAYERS[dst] > LAYERS[src] else "sideways (siblings are independent)"
            where = "" if imp.module_level else " (inside a function)"
            bad.append(f"{path.relative_to(root.parent)}:{imp.line}: {imp.importer} (layer {LAYERS[src]} {src}) "
                       f"imports {imp.target} (layer {LAYERS[dst]} {dst}): {kind}{where}")
    return bad


def import_circles(root: Path = ROOT) -> list[list[str]]:
    """Strongly connected components (size > 1) of the module-level import graph (Tarjan)."""
    modules = all_modules(root)
    graph = {m: sorted({i.target for i in imports_of(p, modules, root) if i.module_level}) for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in all_modules() if group(m) is None)
    assert not unplaced, (f"modules without a layer: {unplaced}; move them into a subpackage listed in "
                          "LAYERS (tests/test_layers.py, ARCHITECTURE.md) or add them to APP_MODULES")


def test_imports_run_only_downward():
    bad = layer_violations()
    assert not bad, "imports against the layer order (ARCHITECTURE.md):\n" + "\n".join(bad)


def test_no_module_level_import_circle():
    circles = import_circles()
    assert not circles, "module-level import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_every_allowed_exception_has_a_reason_and_is_still_needed():
    modules = all_modules()
    seen = {(i.importer, i.target) for p in modules.values() for i in imports_of(p, modules)}
    for pair, reason in ALLOWED.items():
        assert reason.strip(), f"ALLOWED{pair} needs a reason"
        assert pair in seen, f"ALLOWED{pair} no longer happens: remove the entry"


@pytest.mark.parametrize(
    ("files", "expect_layer", "expect_circle"),
    [
        ({"core/a.py": "from lrl.data import b\n", "data/b.py": ""}, "upward", False),
        ({"core/a.py": "def f():\n    from lrl.data.b import x\n", "data/b.py": "x = 1\n"}, "inside a function", False),
        ({"models/a.py": "import lrl.decode.b as b\n", "decode/b.py": ""}, "sideways", False),
        ({"data/a.py": "from lrl.core import b\n", "core/b.py": ""}, None, False),
        ({"data/a.py": "from . import b\n", "data/b.py": "from lrl.data.a import x\n"}, None, True),
        ({"data/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lrl.data.b import x\n",
          "data/b.py": "from lrl.data.a import y\n"}, None, False),
    ],
)
def test_the_checker_on_small_trees(tmp_path, files, expect_layer, expect_circle):
    root = tmp_path / "lrl"
    for pkg in {"", *(Path(f).parent.as_posix() for f in files)}:
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").touch()
    for rel, text in files.items():
        (root / rel).write_text(text)
    bad = layer_violations(root, allowed={})
    if expect_layer:
        assert len(bad) == 1 and expect_layer in bad[0], bad
    else:
        assert not bad, bad
    assert bool(import_circles(root)) == expect_circle
