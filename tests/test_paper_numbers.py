"""Every number the kit labels "paper" comes from labkit.paper_numbers (shared/reference/paper_numbers.md)."""

import ast
import json
from pathlib import Path

import pytest

from labkit import paper_numbers
from labkit.replicate import dsire, probex

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_statuses_and_values():
    assert paper_numbers.NUMBERS
    for key, n in paper_numbers.NUMBERS.items():
        assert n.status in paper_numbers.STATUSES, key
        assert n.source, key
        if n.status == "unverified":
            assert n.value is None and n.std is None, key
        else:
            assert isinstance(n.value, (int, float)), key
        assert (paper_numbers.paper(key) is not None) == (n.status == "paper"), key
    assert paper_numbers.paper("probex.SupViT.probex") == 88.5
    assert paper_numbers.paper("probex.SupViT.probex.rerun") is None
    assert paper_numbers.rerun("probex.SupViT.probex.rerun") == 88.08


def _allowed(node) -> bool:
    """None, or a name / subscript / attribute / call (a lookup into labkit.paper_numbers), possibly `/ 100` or
    chosen by a condition; never a numeric literal."""
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, (ast.Name, ast.Subscript, ast.Attribute)):
        return True
    if isinstance(node, ast.Call):
        return not any(isinstance(a, ast.Constant) and isinstance(a.value, (int, float)) for a in node.args)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return _allowed(node.left) and isinstance(node.right, ast.Constant) and node.right.value == 100
    if isinstance(node, ast.IfExp):
        return _allowed(node.body) and _allowed(node.orelse)
    return False


def _paper_kwargs(path):
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        tree = ast.parse("\n".join(line for line in source.split("\n") if not line.lstrip().startswith(("%", "!"))))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "paper":
                        yield cell.get("id"), kw.value


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_paper_arguments_are_lookups(path):
    bad = [(cid, ast.unparse(v)) for cid, v in _paper_kwargs(path) if not _allowed(v)]
    assert not bad, f"{path.name}: paper= literals not taken from labkit.paper_numbers: {bad}"
    text = path.read_text()
    if "paper=paper_numbers" in text.replace(" ", ""):
        assert "from labkit import paper_numbers" in text


def test_replicate_paper_tables_come_from_paper_numbers():
    for subset, row in probex.PAPER.items():
        assert row["probex"] == paper_numbers.paper(f"probex.{subset}.probex")
        assert row["statnn"] == paper_numbers.paper(f"probex.{subset}.statnn")
        assert row["probegen"] == paper_numbers.paper(f"probex.{subset}.probegen")
        rerun = probex.RERUN[subset]
        assert rerun["probex"] == paper_numbers.rerun(f"probex.{subset}.probex.rerun")
        assert rerun["layer"] == paper_numbers.rerun(f"probex.{subset}.rerun_layer")
    for config, (_, ours, frob) in dsire.PAPER.items():
        for method, row in (("dsire", ours), ("frobenius_nn", frob)):
            for metric, (mean, std) in (row or {}).items():
                n = paper_numbers.NUMBERS[f"dsire.{config}.{method}.{metric}"]
                assert mean == paper_numbers.paper(f"dsire.{config}.{method}.{metric}") and std == n.std


@pytest.mark.parametrize("module", ["probex", "dsire", "detune"])
def test_replicate_modules_hold_no_paper_literals(module):
    path = Path(probex.__file__).with_name(f"{module}.py")
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ("PAPER", "RERUN")
                                                for t in node.targets):
            floats = [c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)
                      and isinstance(c.value, float)]
            assert not floats, f"{module}.py: literal numbers in a paper table: {floats}"
