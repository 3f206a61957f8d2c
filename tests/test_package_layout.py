"""The package's import structure: no import cycle anywhere in labkit, and the methods stand alone.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and ``from … import`` in a
module, at module level or inside a function, is an edge to the labkit module it names. ``from labkit.x import y``
with ``y`` a submodule is an edge to ``labkit.x.y``. A submodule importing one of its own parent packages (e.g.
``labkit.datasets.lowra`` importing ``labkit.datasets``) only counts when that package imports back down towards
it: Python has run the package's ``__init__`` before the submodule, so only then do the two wait on each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "labkit"


def _modules(root: Path) -> dict[str, Path]:
    """Dotted name → file of every module of the package in folder ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules (of ``known``) that one import statement in ``module`` names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if node.level:  # relative: resolve against the importing module's package
        base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    out = set()
    for alias in node.names:
        child = f"{source}.{alias.name}"
        out.add(child if child in known else source)
    return {m for m in out if m in known}


def import_graph(root: Path = PACKAGE) -> nx.DiGraph:
    """The internal import graph of the package in ``root``: module → the package's modules it imports (see the
    module docstring)."""
    modules = _modules(root)
    known = set(modules)
    raw: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        raw[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                raw[name] |= _imported(node, name, is_package, known)
        raw[name].discard(name)
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, targets in raw.items():
        for target in targets:
            if name.startswith(target + "."):  # a parent package: only if it imports back down towards `name`
                below = {".".join(name.split(".")[:k]) for k in range(len(target.split(".")) + 1,
                                                                       len(name.split(".")) + 1)}
                if not raw[target] & below:
                    continue
            graph.add_edge(name, target)
    return graph


def test_the_graph_sees_module_level_function_level_and_submodule_imports():
    graph = import_graph()
    assert graph.has_edge("labkit.runner", "labkit.session")  # module level
    assert graph.has_edge("labkit.exercises", "labkit.report")  # `from labkit import report`: the submodule
    assert graph.has_edge("labkit.cli", "labkit.runner")  # inside a function
    assert not graph.has_edge("labkit.datasets.lowra", "labkit.datasets")  # the package does not import it back
    assert graph.number_of_nodes() == len(_modules(PACKAGE))


def test_a_parent_package_counts_only_when_it_imports_its_child_back(tmp_path):
    def package(name: str, init: str) -> Path:
        root = tmp_path / name / "pkg"
        (root / "sub").mkdir(parents=True)
        (root / "__init__.py").write_text("")
        (root / "sub" / "__init__.py").write_text(init)
        (root / "sub" / "leaf.py").write_text("from pkg.sub import ERROR\n\ndef f():\n    from .. import other\n")
        (root / "other.py").write_text("import pkg.sub.leaf\n")
        return root

    one_way = import_graph(package("one_way", "ERROR = ValueError\n"))
    assert set(one_way.edges) == {("pkg.sub.leaf", "pkg.other"), ("pkg.other", "pkg.sub.leaf")}
    both_ways = import_graph(package("both_ways", "from pkg.sub import leaf\nERROR = ValueError\n"))
    assert ("pkg.sub.leaf", "pkg.sub") in both_ways.edges and ("pkg.sub", "pkg.sub.leaf") in both_ways.edges


def test_labkit_has_no_import_cycle():
    graph = import_graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join([*c, c[0]]) for c in cycles)


def test_methods_import_nothing_from_the_rest_of_labkit():
    graph = import_graph()
    outside = sorted((a, b) for a, b in graph.edges
                     if (a == "labkit.methods" or a.startswith("labkit.methods."))
                     and not (b == "labkit.methods" or b.startswith("labkit.methods.")))
    assert not outside, "labkit.methods must stand alone; it imports " + ", ".join(f"{b} (in {a})" for a, b in outside)
