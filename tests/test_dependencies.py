"""Dependencies: every third-party import is declared in pyproject.toml, and requirements.txt is a full lock of
those ranges with torch as its CPU build (no CUDA packages)."""

from __future__ import annotations

import ast
import itertools
import json
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("labkit", "notebooks", "tests", "benchmarks", "data_scripts")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return {_norm(r.name): r for r in map(Requirement, reqs)}


def _lock() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[_norm(name)] = Version(version)
    return out


def _code(path: Path) -> list[str]:
    if path.suffix == ".py":
        return [path.read_text()]
    cells = json.loads(path.read_text())["cells"]
    return ["\n".join(ln for ln in "".join(c["source"]).splitlines() if not ln.lstrip().startswith(("%", "!")))
            for c in cells if c["cell_type"] == "code"]


def _imported_modules() -> dict[str, set[str]]:
    """Top-level module → files that import it (absolute imports only), over the kit's code and notebooks."""
    found: dict[str, set[str]] = {}
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".ipynb") or ".ipynb_checkpoints" in path.parts:
                continue
            for source in _code(path):
                for node in ast.walk(ast.parse(source)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                        [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
                    for name in names:
                        found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared():
    local = {"labkit", "conftest"} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    dists = packages_distributions()
    declared = _declared()
    undeclared = {}
    for module, files in _imported_modules().items():
        if module in sys.stdlib_module_names or module in local:
            continue
        names = {_norm(d) for d in dists.get(module, [module])}
        if not names & declared.keys():
            undeclared[module] = sorted(files)[:3]
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_lock_pins_every_declared_package_inside_its_range():
    lock = _lock()
    for name, req in _declared().items():
        assert name in lock, f"{name} is declared in pyproject.toml but not locked in requirements.txt"
        assert req.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} is outside {req}"
    assert len(lock) > 100  # a full lock (every transitive package), not a list of the direct ones


def test_torch_is_locked_as_the_cpu_build_without_cuda_packages():
    lock = _lock()
    assert lock["torch"].local == "cpu" and lock["torch"].base_version == "2.13.0"
    cuda = [n for n in lock if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert not cuda, f"the lock pulls CUDA packages: {cuda}"
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    header = "\n".join(itertools.takewhile(lambda ln: ln.startswith("#"), lines))
    assert "make lock" in header and "+cpu" in header and "peft/transformers" in header
