"""The restricted unpickler executes nothing outside its allow-list; VTHR tree pickles load through it."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from labkit.benchmarks import BenchmarkFormatError
from labkit.benchmarks.safe_pickle import TENSORS, UnsafePickleError, restricted_load
from labkit.benchmarks.vthr import load_vthr_graph

FIX = Path(__file__).parent / "fixtures" / "vthr"


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_malicious_pickle_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    data = pickle.dumps({"x": _Touch(target)})
    with pytest.raises(UnsafePickleError, match=r"system.*not in the allow-list"):
        restricted_load(io.BytesIO(data), {})
    assert not target.exists()
    # the same payload inside a torch checkpoint
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2), "evil": _Touch(target)}, buf)
    path = tmp_path / "evil.pt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="system"):
        restricted_load(path, {})
    assert not target.exists()


def test_torch_zip_tensors_round_trip(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5), "v": torch.randn(4, 3).t(), "h": torch.ones(2).half()}
    torch.save(state, tmp_path / "s.pt")
    got = restricted_load(tmp_path / "s.pt", {})
    for k, v in state.items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype
    assert "torch._utils._rebuild_tensor_v2" in TENSORS


def test_truncated_pickle_is_a_format_error(tmp_path):
    data = pickle.dumps({"a": list(range(100))})
    with pytest.raises(BenchmarkFormatError, match="truncated or corrupt"):
        restricted_load(io.BytesIO(data[:20]), {})


def test_vthr_graph():
    g = load_vthr_graph(FIX / "full_ft_model_graph.pkl")
    assert [n["depth"] for n in g.nodes] == [0, 1, 2, 2, 1]
    assert set(g.edges) == {("Root0aaa", "Chld1bbb"), ("Root0aaa", "Chld2ccc"), ("Chld1bbb", "Gran1ddd"),
                            ("Chld1bbb", "Gran2eee")}
    root = g.nodes[0]
    assert root["parent"] is None and root["dataset_name"] is None and root["tree"] == 0
    assert g.model_file("Gran2eee", FIX).is_file()


def test_vthr_refuses_other_classes(tmp_path):
    data = (FIX / "full_ft_model_graph.pkl").read_bytes().replace(b"model_graph", b"model_grapx")
    (tmp_path / "g.pkl").write_bytes(data)
    with pytest.raises(UnsafePickleError, match="model_grapx"):
        load_vthr_graph(tmp_path / "g.pkl")
    (tmp_path / "t.pkl").write_bytes(pickle.dumps({"roots": []}))
    with pytest.raises(BenchmarkFormatError, match="not a VTHR model graph"):
        load_vthr_graph(tmp_path / "t.pkl")


def test_real_state_dicts_and_numpy_numbers(tmp_path):
    import numpy as np

    from labkit.benchmarks.safe_pickle import NUMPY

    sd = torch.nn.Linear(3, 2).state_dict()
    torch.save({"model": sd, "acc": np.float64(0.25), "hist": np.arange(4.0), "n": np.int64(7)}, tmp_path / "c.pt")
    got = restricted_load(tmp_path / "c.pt", NUMPY)
    assert torch.equal(got["model"]["weight"], sd["weight"]) and got["model"]._metadata == sd._metadata
    assert got["acc"] == 0.25 and got["n"] == 7 and np.array_equal(got["hist"], np.arange(4.0))
    torch.save({"x": np.array([object()], dtype=object)}, tmp_path / "o.pt")
    with pytest.raises(UnsafePickleError, match="object dtypes"):
        restricted_load(tmp_path / "o.pt", NUMPY)
