"""The separations the layout promises (docs/design.md §4), checked on the source itself.

* only dist.py imports horovod or mpi4py: every collective goes through one module;
* only config.py reads the environment (os.environ, os.getenv);
* the head's math modules (sharding, sampler, margin, softmax, precision) never import dist: they compute,
  the operator places the collectives;
* symbols/ imports nothing of partial_fc: networks never read a global config;
* the import graph of src/partial_fc has no cycle, imports inside functions included;
* packages import one way: errors/args/atomic, then config/dist, then head and data, then checkpoint,
  evaluation, training, bench and cli on top; a module imports only its own package or a lower layer.

The checks read the source with `ast` (nothing is imported), and each is also run on a small tree that breaks
its rule, so a check that can no longer fail is caught too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "partial_fc"

COLLECTIVE_LIBRARIES = ("horovod", "mpi4py")
COMMUNICATION_MODULE = "partial_fc.dist"
CONFIG_MODULE = "partial_fc.config"
PURE_MATH = ("partial_fc.head.sharding", "partial_fc.head.sampler", "partial_fc.head.margin",
             "partial_fc.head.softmax", "partial_fc.head.precision")
# A module may import modules of its own part or of a lower layer only.
LAYERS = {
    "errors": 0, "args": 0, "atomic": 0,
    "config": 1, "dist": 1,
    "head": 2, "data": 2,
    "checkpoint": 3,
    "evaluation": 4,
    "training": 5,
    "bench": 6,
    "study": 7,
    "cli": 8, "__init__": 8,
}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources(src: Path, package: str) -> dict[str, tuple[Path, ast.Module]]:
    """{module name: (path, syntax tree)} of every .py file of `package` under `src`."""
    found = {}
    for path in sorted((src / package).rglob("*.py")):
        found[module_name(path, src)] = (path, ast.parse(path.read_text(), str(path)))
    return found


def imports(name: str, path: Path, tree: ast.Module) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file, inside functions too. `from X import Y`
    yields X.Y (a module, or a name of module X: graph() tells them apart)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return out


def reads_environment(tree: ast.Module) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os" \
                and node.attr in ("environ", "getenv", "putenv", "unsetenv"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" \
                and any(a.name in ("environ", "getenv", "putenv", "unsetenv") for a in node.names):
            lines.append(node.lineno)
    return lines


def graph(modules: dict) -> dict[str, set[str]]:
    """Edges between the modules of the tree (imports of names that are not modules count as their module)."""
    edges = {name: set() for name in modules}
    for name, (path, tree) in modules.items():
        for target, _ in imports(name, path, tree):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def part(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(src: Path, package: str = PACKAGE, symbols: str | None = "symbols") -> list[str]:
    """Every broken rule of the tree under `src`, one line each ("path:line: why")."""
    modules = sources(src, package)
    found = []
    for name, (path, tree) in modules.items():
        where = path.relative_to(src)
        for target, line in imports(name, path, tree):
            top = target.split(".")[0]
            if top in COLLECTIVE_LIBRARIES and name != f"{package}.dist":
                found.append(f"{where}:{line}: imports {target}; only {package}/dist.py may use {top}")
            if name in {m.replace(PACKAGE, package, 1) for m in PURE_MATH} and target == f"{package}.dist":
                found.append(f"{where}:{line}: a math module imports dist; the operator places the collectives")
        if name != f"{package}.config":
            found += [f"{where}:{line}: reads the environment; only {package}/config.py may"
                      for line in reads_environment(tree)]
    edges = graph(modules)
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    for name, targets in sorted(edges.items()):
        for target in sorted(targets):
            mine, theirs = part(name), part(target)
            if mine != theirs and LAYERS.get(theirs, 99) >= LAYERS.get(mine, -1):
                found.append(f"{modules[name][0].relative_to(src)}: {name} imports {target}: '{mine}' may import "
                             f"only lower layers (docs/design.md §4), '{theirs}' is not below it")
    if symbols and (src.parent / symbols).is_dir():
        for path in sorted((src.parent / symbols).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            name = module_name(path, src.parent)
            for target, line in imports(name, path, tree):
                if target.split(".")[0] in (package, *COLLECTIVE_LIBRARIES):
                    found.append(f"{path.relative_to(src.parent)}:{line}: a network imports {target}")
            found += [f"{path.relative_to(src.parent)}:{line}: a network reads the environment"
                      for line in reads_environment(tree)]
    return found


def test_the_source_tree_keeps_every_rule():
    broken = violations(ROOT / "src")
    assert not broken, "\n".join(broken)


def test_the_tree_has_the_parts_the_rules_name():
    modules = sources(ROOT / "src", PACKAGE)
    for name in (COMMUNICATION_MODULE, CONFIG_MODULE, *PURE_MATH):
        assert name in modules, f"{name} is gone: update the rules with the layout"
    assert {part(n) for n in modules} <= set(LAYERS), "a part of the package has no layer"


def _tree(tmp_path, files: dict[str, str]) -> Path:
    src = tmp_path / "src"
    for rel, text in {"pkg/__init__.py": "", "pkg/head/__init__.py": "", **files}.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


@pytest.mark.parametrize("files, expected", [
    ({"pkg/head/operator.py": "import horovod.mxnet as hvd\n"}, "only pkg/dist.py may use horovod"),
    ({"pkg/data/__init__.py": "", "pkg/data/loader.py": "def f():\n    from mpi4py import MPI\n"},
     "only pkg/dist.py may use mpi4py"),
    ({"pkg/head/loader.py": "import os\nx = os.environ.get('PFC_X')\n"}, "reads the environment"),
    ({"pkg/head/sampler.py": "from os import getenv\n"}, "reads the environment"),
    ({"pkg/dist.py": "", "pkg/head/softmax.py": "from .. import dist\n"}, "a math module imports dist"),
    ({"pkg/head/a.py": "from . import b\n", "pkg/head/b.py": "def f():\n    from .a import g\n"},
     "import cycle: pkg.head.a -> pkg.head.b"),
    ({"pkg/config.py": "from .head import margin\n", "pkg/head/margin.py": ""}, "'config' may import only lower"),
    ({"pkg/data/__init__.py": "", "pkg/data/x.py": "from ..head import y\n", "pkg/head/y.py": ""},
     "'data' may import only lower"),
])
def test_each_rule_fails_when_broken(tmp_path, files, expected):
    src = _tree(tmp_path, files)
    broken = violations(src, "pkg", symbols=None)
    assert any(expected in line for line in broken), broken


def test_a_network_that_reads_the_config_is_refused(tmp_path):
    src = _tree(tmp_path, {})
    (src.parent / "symbols").mkdir()
    (src.parent / "symbols" / "net.py").write_text("from pkg import config\n")
    assert any("a network imports pkg.config" in line for line in violations(src, "pkg"))
