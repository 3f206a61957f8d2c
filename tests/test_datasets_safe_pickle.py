"""The restricted unpickler executes nothing outside its allow-list; VTHR tree pickles load through it."""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from labkit.datasets import BenchmarkFormatError
from labkit.datasets.safe_pickle import TORCH_GLOBALS, UnsafePickleError, restricted_load
from labkit.datasets.vthr import load_vthr_graph

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
    with pytest.raises(UnsafePickleError, match=r"global 'posix\.system' is not in the allow-list"):
        restricted_load(path, {})
    assert not target.exists()
    # bytearray: torch.load's own default allow-list has it, unbounded (bytearray(10**13)); labkit refuses it
    torch.save({"w": torch.ones(2), "b": _Call(bytearray, 10**13)}, path)
    with pytest.raises(UnsafePickleError, match=r"global 'builtins\.bytearray' is not in the allow-list"):
        restricted_load(path, {})


def test_torch_zip_tensors_round_trip(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5), "v": torch.randn(4, 3).t(), "h": torch.ones(2).half()}
    torch.save(state, tmp_path / "s.pt")
    got = restricted_load(tmp_path / "s.pt", {})
    for k, v in state.items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype
    assert "torch._utils._rebuild_tensor_v2" in TORCH_GLOBALS


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

    from labkit.datasets.safe_pickle import NUMPY

    sd = torch.nn.Linear(3, 2).state_dict()
    torch.save({"model": sd, "acc": np.float64(0.25), "hist": np.arange(4.0), "n": np.int64(7)}, tmp_path / "c.pt")
    got = restricted_load(tmp_path / "c.pt", NUMPY)
    assert torch.equal(got["model"]["weight"], sd["weight"]) and got["model"]._metadata == sd._metadata
    assert got["acc"] == 0.25 and got["n"] == 7 and np.array_equal(got["hist"], np.arange(4.0))
    torch.save({"x": np.array([object()], dtype=object)}, tmp_path / "o.pt")
    with pytest.raises(UnsafePickleError, match=r"global 'builtins\.object' is not in the allow-list"):
        restricted_load(tmp_path / "o.pt", NUMPY)  # refused by name, before torch runs
    torch.save({"x": np.array([1, None], dtype=object)}, tmp_path / "o.pt")  # no global beyond numpy's
    with pytest.raises(UnsafePickleError, match="object dtypes"):
        restricted_load(tmp_path / "o.pt", NUMPY)  # refused by the numpy.dtype guard torch.load calls


# ---------------------------------------------------------------------- bounds (issue 13: crafted pickles)


class _Call:
    """Pickles as ``func(*args)``: how a crafted file makes an allow-listed global allocate."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _refused(data, allowed=None, match="refusing"):
    with pytest.raises(UnsafePickleError, match=match):
        restricted_load(io.BytesIO(data), allowed or {})


def test_allocating_globals_check_the_size_first():
    import numpy as np

    from labkit.datasets.safe_pickle import NUMPY

    _refused(pickle.dumps(_Call(bytearray, 10**13), protocol=2), match=r"bytearray\(\) of 10,000,000,000,000 bytes")
    _refused(pickle.dumps(_Call(bytes, 10**13), protocol=4), match=r"bytes\(\) of")
    _refused(pickle.dumps(_Call(np.ndarray, (10**13,)), protocol=4), NUMPY, match="numpy.ndarray of")
    rebuild = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct
    _refused(pickle.dumps(_Call(rebuild, np.ndarray, (10**13,), b"b"), protocol=4), NUMPY, match="numpy array of")
    _refused(pickle.dumps(_Call(list, "\u4e00" * 10**7), protocol=4), match=r"list\(\) of")
    _refused(pickle.dumps(_Call(str, [1] * 10), protocol=4), match=r"str\(\) of a list")


def test_shared_children_do_not_expand_exponentially():
    t = ()
    for _ in range(60):
        t = (t, t)  # 2**60 nodes once expanded; the memo makes the pickle tiny
    data = pickle.dumps(t, protocol=4)
    assert len(data) < 1000
    _refused(data, match="expand to more than 1,000,000 nodes")


def test_deep_nesting_is_refused_without_recursion_errors():
    nested: list = []
    for _ in range(150):
        nested = [nested]
    _refused(pickle.dumps(nested), match="nested more than 100 levels")
    _refused(b"\x80\x04)" + b"\x85" * 100_000 + b".", match="nested more than 1000 levels")  # ((((),),),)…
    _refused(b"\x80\x04" + b"]" * 100_000 + b"a" * 99_999 + b".", match="nested more than")  # [[[[]]]]…
    cyclic: list = []
    cyclic.append(cyclic)
    _refused(pickle.dumps(cyclic), match="contains itself")


def test_deep_tuple_used_as_a_key_does_not_crash_the_interpreter():
    import subprocess
    import sys

    # hashing a 100,000-deep tuple overflows the C stack (a segfault) unless the opcodes are scanned first
    data = b"\x80\x04}" + b")" + b"\x85" * 100_000 + b"Ns."
    code = ("import io, sys; from labkit.datasets.safe_pickle import restricted_load as r\n"
            "try:\n r(io.BytesIO(sys.stdin.buffer.read()), {})\nexcept ValueError as e:\n print(e)")
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, timeout=120)
    assert out.returncode == 0 and b"nested more than" in out.stdout


def test_crafted_opcode_streams_are_refused_before_loading():
    _refused(b"\x80\x02Nr\xff\xff\xff\x7f.", match="memo index 2147483647")  # would size the memo to 2**32
    with pytest.raises(BenchmarkFormatError, match="truncated or corrupt"):  # a 10 TB bytes8 in a 20-byte file
        restricted_load(io.BytesIO(b"\x80\x04\x8e" + (10**13).to_bytes(8, "little") + b"."), {})


def test_file_size_cap_and_non_regular_files(tmp_path):
    from labkit.safe_io import UnsafeInputError

    (tmp_path / "p.pkl").write_bytes(pickle.dumps(list(range(1000))))
    with pytest.raises(UnsafeInputError, match="more than the 100 a pickle may hold"):
        restricted_load(tmp_path / "p.pkl", {}, max_bytes=100)
    assert restricted_load(tmp_path / "p.pkl", {})[-1] == 999
    os.mkfifo(tmp_path / "fifo.pkl")
    with pytest.raises(UnsafeInputError, match="FIFO"):
        restricted_load(tmp_path / "fifo.pkl", {})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        restricted_load(tmp_path / "missing.pkl", {})


def _checkpoint(path, numel, raw, size=None, stride=(1,), compress=0):
    """A zip-format torch checkpoint by hand: one float32 storage ``raw`` declared to hold ``numel`` values."""
    import collections
    import zipfile

    from torch._utils import _rebuild_tensor_v2

    storage = object()

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is storage else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"w": _Call(_rebuild_tensor_v2, storage, 0, size or (numel,), stride, False,
                                        collections.OrderedDict())})
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", raw)
        z.writestr("archive/version", "3\n")
    return path


def test_torch_zip_storages_are_checked_against_their_declared_sizes(tmp_path, monkeypatch):
    import zipfile

    from labkit.datasets import safe_pickle

    ok = restricted_load(_checkpoint(tmp_path / "ok.pt", 3, torch.arange(3.0).numpy().tobytes()), {})
    assert torch.equal(ok["w"], torch.arange(3.0))
    # torch compares the record with the declared size before it allocates anything
    with pytest.raises(BenchmarkFormatError, match=r"ok2.pt: not a readable torch checkpoint \(RuntimeError: "
                                                   r"record size \(12 bytes\) does not match expected size"):
        restricted_load(_checkpoint(tmp_path / "ok2.pt", 10**12, bytes(12)), {})
    with pytest.raises(UnsafePickleError, match="view.pt: refusing a tensor of 4,000,000,000,000 bytes"):
        restricted_load(_checkpoint(tmp_path / "view.pt", 1, bytes(4), size=(10**12,), stride=(0,)), {})
    with pytest.raises(UnsafePickleError, match=r"zip member archive/data.pkl is compressed \(method 8\)"):
        restricted_load(_checkpoint(tmp_path / "bomb.pt", 10_000, bytes(40_000), compress=zipfile.ZIP_DEFLATED), {})
    monkeypatch.setattr(safe_pickle, "MAX_OBJECT_BYTES", 1000)  # a storage above the bound, scaled down
    with pytest.raises(UnsafePickleError, match=r"zip member archive/data/0 declares 40,000 bytes, more than the "
                                                r"1,000"):
        restricted_load(_checkpoint(tmp_path / "big.pt", 10_000, bytes(40_000)), {})
    monkeypatch.setattr(safe_pickle, "MAX_OBJECT_BYTES", 100)
    with pytest.raises(UnsafePickleError, match=r"archive/data.pkl declares \d+ bytes, more than the 100"):
        restricted_load(tmp_path / "ok.pt", {})
    monkeypatch.setattr(safe_pickle, "MAX_OBJECT_BYTES", 1 << 30)
    monkeypatch.setattr(safe_pickle, "MAX_TOTAL_BYTES", 1000)
    with pytest.raises(UnsafePickleError, match=r"members of this checkpoint declare [\d,]+ bytes, more than the "
                                                r"1,000"):
        restricted_load(tmp_path / "big.pt", {})


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Touch(tmp_path / "x")))
    with pytest.raises(UnsafePickleError, match=rf"^{re.escape(str(path))}: refusing to unpickle: global .*system"):
        restricted_load(path, {})
    path.write_bytes(pickle.dumps(_Call(bytearray, 10**13), protocol=2))
    with pytest.raises(UnsafePickleError, match=rf"^{re.escape(str(path))}: refusing bytearray"):
        load_vthr_graph(path)


def test_to_plain_refuses_a_config_that_contains_itself():
    from labkit.datasets.safe_pickle import OMEGACONF, to_plain

    cfg = OMEGACONF["omegaconf.dictconfig.DictConfig"]()
    cfg.__dict__["_content"] = {"self": cfg}
    with pytest.raises(UnsafePickleError, match="nested deeper than 100"):
        to_plain(cfg)
    with pytest.raises(UnsafePickleError, match=r"^ckpt.pt: a config nested deeper than 100"):
        to_plain(cfg, "ckpt.pt")


def test_vthr_errors_are_one_line_naming_the_file(tmp_path, monkeypatch):
    import sys
    import types

    from labkit.datasets.vthr import VTHR_CLASSES

    module = types.ModuleType("model_graph")  # so the stubs pickle under their real names
    for key, cls in VTHR_CLASSES.items():
        if key.startswith("model_graph."):
            setattr(module, cls.__qualname__, cls)
    monkeypatch.setitem(sys.modules, "model_graph", module)
    graph_cls, node_cls = VTHR_CLASSES["model_graph.ModelGraph"], VTHR_CLASSES["model_graph.ModelGraphNode"]
    node = node_cls()
    node.__dict__.update(metadata=None, children=7)
    graph = graph_cls()
    graph.__dict__["roots"] = [node]
    path = tmp_path / "g.pkl"
    for uuid, match in ((None, "a node without a string metadata.uuid"), ("u1", "node u1 has children of type int")):
        meta = VTHR_CLASSES["model_graph.ModelGraphNodeMetadata"]()
        meta.__dict__["uuid"] = uuid
        node.__dict__["metadata"] = meta
        path.write_bytes(pickle.dumps(graph, protocol=4))
        with pytest.raises(BenchmarkFormatError, match=rf"^{re.escape(str(path))}: {match}"):
            load_vthr_graph(path)
    path.write_bytes(pickle.dumps(graph, protocol=4)[:-30])
    with pytest.raises(BenchmarkFormatError, match=rf"^{re.escape(str(path))}: not a readable pickle"):
        load_vthr_graph(path)
