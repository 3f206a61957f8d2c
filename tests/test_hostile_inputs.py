"""Every command and loader against what a careless user or a hostile file hands it (issue 13, item 7).

Each case writes one bad input into a fresh folder and runs the ``labkit`` command on it in this process. A case
passes when the command ends with the expected exit code within seconds, prints no traceback, says what is wrong
in ONE line on stderr (exit 2: an input error) or reports it (exit 1: ``zoo verify`` and ``inspect`` on a damaged
zoo; exit 0: input that is odd but readable), and leaves the input folder exactly as it was: no file deleted or
changed, no marker file created by a payload. Classes: malicious, bomb, truncated, schema, rank, nonfinite, empty,
nonregular, torn (zoo manifests), names, args; the concurrent reader is the last test.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from labkit.cli import main
from labkit.zoo.store import ZooStore, zoo_key

FIX = Path(__file__).parent / "fixtures"
SECONDS = 60  # per case; a hang (a FIFO read, a pickle that walks 2^60 nodes) fails here instead of stalling CI


@dataclass(frozen=True)
class Case:
    klass: str
    name: str
    setup: Callable[[Path], list[str]]  # writes the input under the folder, returns the command line
    code: int  # expected exit status
    says: str  # a fragment the one-line error (or the report) must hold


CASES: list[Case] = []


def case(klass: str, code: int, says: str):
    def register(setup):
        CASES.append(Case(klass, setup.__name__, setup, code, says))
        return setup
    return register


# ------------------------------------------------------------------------------------------------ builders


def _pickle(tmp: Path, name: str, obj) -> Path:
    path = tmp / name
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


class _Reduce:
    """An object that pickles as ``func(*args)``: how a hostile pickle asks the loader to call something."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _marker(tmp: Path) -> str:
    return f"touch {tmp / 'pwned'}"


def _safetensors(path: Path, tensors: dict | None = None, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors or {"layer.weight": torch.randn(4, 4)}, str(path), metadata=metadata)
    return path


def _raw_safetensors(path: Path, header: str, data: bytes) -> Path:
    raw = header.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def _lowra(tmp: Path, change: Callable[[pa.Table], pa.Table] | None = None) -> Path:
    root = tmp / "lowra"
    shutil.copytree(FIX / "lowra", root)
    shard = root / "vit" / "train-00000-of-00001.parquet"
    if change is not None:
        pq.write_table(change(pq.read_table(shard)), shard)
    return root


def _detune_lowra(tmp: Path, root: Path) -> list[str]:
    return ["detune", "--lowra", str(root), "--subset", "vit", "--iters", "5", "--device", "cpu",
            "--out", str(tmp.parent / "out")]


def _lora_wise(tmp: Path, change: Callable[[pa.Table], pa.Table] | None = None) -> Path:
    root = tmp / "lora_wise"
    shutil.copytree(FIX / "lora_wise", root)
    shard = root / "medium" / "8" / "train-00000-of-00001.parquet"
    if change is not None:
        pq.write_table(change(pq.read_table(shard)), shard)
    return root


def _model_j(tmp: Path) -> Path:
    root = tmp / "model_j" / "SupViT"
    shutil.copytree(FIX / "model_j" / "SupViT", root)
    return root


def _model_j_file(root: Path) -> Path:
    return sorted((root / "train").rglob("model.safetensors"))[0]


def _retag(path: Path, **metadata: str) -> None:
    """Rewrite a safetensors file with changed metadata (the tensors kept; a symlinked blob replaced)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = {**(f.metadata() or {}), **metadata}, {k: f.get_tensor(k) for k in f.keys()}
    path.unlink()
    save_file(tensors, str(path), metadata=meta)


def _probex(root: Path) -> list[str]:
    return ["probex", "--model-j", str(root), "--subset", "SupViT", "--epochs", "2", "--device", "cpu"]


def _probegen(tmp: Path) -> Path:
    root = tmp / "probegen"
    shutil.copytree(FIX / "probegen", root)
    return root


def _cnn(root: Path) -> list[str]:
    return ["probegen", "--cnn-zoo", str(root / "small-zoo-cifar10"), "--epochs", "1", "--probes", "4",
            "--device", "cpu"]


def _zoo(tmp: Path, n: int = 4) -> ZooStore:
    store = ZooStore.open("toy", "smoke", {"n": n}, home=tmp / "zoos")
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        store.save_model(f"m{i}", {"fc.weight": torch.randn(8, 8, generator=g)},
                         {"tree": "t", "parent": None if i == 0 else "m0", "training": "full"})
    store.mark_complete({})
    return store


def _manifest_lines(store: ZooStore) -> list[str]:
    return store.manifest_path.read_text().splitlines(keepends=True)


def _zoo_with_line_2(tmp: Path, line: str) -> ZooStore:
    """A complete zoo whose manifest's second row is replaced by ``line``."""
    store = _zoo(tmp)
    lines = _manifest_lines(store)
    store.manifest_path.write_text(lines[0] + line + "".join(lines[2:]))
    return store


def _runs(tmp: Path, content: str) -> list[str]:
    """A runs folder whose one metrics.json holds ``content``; the report command on it."""
    path = tmp / "runs" / "smoke" / "04_dsire" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    return ["report", "--runs", str(tmp / "runs"), "--profile", "smoke"]


# ------------------------------------------------------------------------------------------------ malicious


@case("malicious", 2, "not in the allow-list")
def pickle_runs_a_shell_command(tmp):
    return ["inspect", str(_pickle(tmp, "evil.pkl", _Reduce(os.system, _marker(tmp))))]


@case("malicious", 2, "not in the allow-list")
def torch_checkpoint_runs_a_shell_command(tmp):
    torch.save({"w": torch.ones(2), "x": _Reduce(os.system, _marker(tmp))}, tmp / "evil.pt")
    return ["inspect", str(tmp / "evil.pt")]


@case("malicious", 2, "")
def inr_checkpoint_runs_a_shell_command(tmp):
    root = _probegen(tmp)
    target = root / "fmnist_inrs" / "train" / "model_0.pth"
    torch.save({**torch.load(target, weights_only=True), "x": _Reduce(os.system, _marker(tmp))}, target)
    return ["probegen", "--inr", str(root / "fmnist_inrs"), "--epochs", "1", "--probes", "4", "--device", "cpu"]


@case("malicious", 2, "not in the allow-list")
def vthr_graph_runs_a_shell_command(tmp):
    return ["inspect", str(_pickle(tmp, "model_graph.pkl", {"roots": [_Reduce(os.system, _marker(tmp))]}))]


@case("malicious", 2, "outside")
def model_j_ref_points_outside_the_dataset(tmp):
    root = _model_j(tmp)
    repo = next((root / "train").iterdir())
    (repo / "refs" / "main").write_text(str(tmp.parent))  # an absolute path out of the dataset
    return _probex(root)


@case("malicious", 2, "leaves the dataset folder")
def lowra_card_points_outside_the_dataset(tmp):
    root = _lowra(tmp)
    shutil.copytree(root / "vit", tmp / "elsewhere" / "vit")
    shutil.rmtree(root / "vit")
    (root / "README.md").write_text("---\nconfigs:\n- config_name: vit\n  data_files:\n  - split: train\n"
                                    "    path: ../elsewhere/vit/train-*\n---\n")
    return _detune_lowra(tmp, root)


@case("malicious", 2, "outside")
def inr_split_points_at_etc_passwd(tmp):
    root = _probegen(tmp)
    splits = json.loads((root / "fmnist_splits.json").read_text())
    splits["train"]["path"][0] = "/etc/passwd"
    (root / "fmnist_splits.json").write_text(json.dumps(splits))
    return ["probegen", "--inr", str(root / "fmnist_inrs"), "--epochs", "1", "--probes", "4", "--device", "cpu"]


# ------------------------------------------------------------------------------------------------ bombs


@case("bomb", 2, "")
def pickle_asks_for_a_10_terabyte_bytearray(tmp):
    return ["inspect", str(_pickle(tmp, "bomb.pkl", _Reduce(bytearray, 10**13)))]


@case("bomb", 2, "")
def pickle_asks_for_a_10_tera_element_array(tmp):
    return ["inspect", str(_pickle(tmp, "bomb.pkl", _Reduce(np.ndarray, (10**13,))))]


@case("bomb", 2, "")
def pickle_of_tuples_sharing_children_60_deep(tmp):
    t: tuple = ()
    for _ in range(60):
        t = (t, t)
    path = _pickle(tmp, "dag.pkl", t)
    assert path.stat().st_size < 1000
    return ["inspect", str(path)]


@case("bomb", 2, "")
def model_j_labels_of_200000_minus_signs(tmp):
    root = _model_j(tmp)
    _retag(_model_j_file(root), dataset_chosen_targets="-" * 200_000 + "1")
    return _probex(root)


@case("bomb", 0, "is not the repr of a list of class names")
def inspect_labels_of_200000_minus_signs(tmp):
    path = _safetensors(tmp / "m.safetensors", metadata={"dataset_chosen_targets": "-" * 200_000 + "1"})
    return ["inspect", str(path)]


@case("bomb", 2, "")
def safetensors_header_claims_an_exabyte(tmp):
    path = tmp / "m.safetensors"
    path.write_bytes((1 << 60).to_bytes(8, "little") + b"{}")
    return ["inspect", str(path)]


@case("bomb", 2, "not valid JSON")
def json_nested_100000_deep(tmp):
    path = tmp / "config.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    return ["inspect", str(path)]


@case("bomb", 2, "metrics.json: not valid JSON")
def metrics_json_nested_100000_deep(tmp):
    return _runs(tmp, "[" * 100_000 + "]" * 100_000)


@case("bomb", 2, "adapter_config.json: not valid JSON")
def adapter_config_nested_100000_deep(tmp):
    folder = tmp / "models" / "ad"
    _safetensors(tmp / "models" / "base.safetensors", {"fc.weight": torch.randn(4, 4)})
    _safetensors(folder / "adapter_model.safetensors", {"base_model.model.fc.lora_A.weight": torch.zeros(2, 4),
                                                        "base_model.model.fc.lora_B.weight": torch.zeros(4, 2)})
    (folder / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    return ["trees", "recover", str(tmp / "models")]


# ------------------------------------------------------------------------------------------------ truncated


@case("truncated", 2, "")
def safetensors_cut_in_half(tmp):
    path = _safetensors(tmp / "m.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ["inspect", str(path)]


@case("truncated", 2, "")
def torch_checkpoint_cut_in_half(tmp):
    torch.save({"w": torch.ones(64)}, tmp / "m.pt")
    (tmp / "m.pt").write_bytes((tmp / "m.pt").read_bytes()[:300])
    return ["inspect", str(tmp / "m.pt")]


@case("truncated", 2, "")
def lowra_shard_cut_in_half(tmp):
    root = _lowra(tmp)
    shard = root / "vit" / "train-00000-of-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return _detune_lowra(tmp, root)


@case("truncated", 1, "has 100 bytes, the manifest records")
def zoo_model_file_cut(tmp):
    store = _zoo(tmp)
    path = store.path("m2") / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    return ["zoo", "verify", str(store.root)]


@case("truncated", 2, "does not match its sha256")
def zoo_model_file_tampered_then_trees_recover(tmp):
    store = _zoo(tmp)
    path = store.path("m3") / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40  # same size, one weight changed
    path.write_bytes(bytes(data))
    return ["trees", "recover", str(store.root)]


# ------------------------------------------------------------------------------------------------ wrong schema


@case("schema", 2, "")
def lowra_shard_without_pre_ft_weight(tmp):
    return _detune_lowra(tmp, _lowra(tmp, lambda t: t.drop_columns(["pre_ft_weight"])))


@case("schema", 2, "")
def lora_wise_without_labels(tmp):
    root = _lora_wise(tmp, lambda t: t.drop_columns(["label"]))
    return ["dsire", "--lora-wise", str(root), "--config", "medium_8"]


@case("schema", 2, "metrics.json holds a JSON list")
def metrics_json_is_a_list(tmp):
    return _runs(tmp, "[1, 2]")


@case("schema", 2, "metrics.json holds a JSON int")
def metrics_json_is_a_bare_number(tmp):
    return _runs(tmp, "7")


@case("schema", 2, "manifest.jsonl: line 2 is a JSON list")
def zoo_manifest_line_is_a_list(tmp):
    return ["zoo", "verify", str(_zoo_with_line_2(tmp, "[1, 2]\n").root)]


@case("schema", 2, "zoo.json")
def zoo_json_is_not_json(tmp):
    store = _zoo(tmp)
    (store.root / "zoo.json").write_text("{recipe: toy")
    return ["inspect", str(store.root)]


@case("schema", 2, "adapter_config.json")
def adapter_config_is_not_json(tmp):
    folder = tmp / "adapter"
    _safetensors(folder / "adapter_model.safetensors", {"base_model.model.fc.lora_A.weight": torch.zeros(2, 4),
                                                        "base_model.model.fc.lora_B.weight": torch.zeros(4, 2)})
    (folder / "adapter_config.json").write_text('{"r": 2, "lora_alpha": ')
    return ["inspect", str(folder)]


@case("schema", 2, "dataset_chosen_targets")
def model_j_labels_are_a_number(tmp):
    root = _model_j(tmp)
    _retag(_model_j_file(root), dataset_chosen_targets="5")
    return _probex(root)


@case("schema", 2, "layout.csv")
def cifar10_gs_layout_without_columns(tmp):
    root = _probegen(tmp)
    (root / "small-zoo-cifar10" / "layout.csv").write_text("varname,shape\nx,(1,)\n")
    return _cnn(root)


@case("schema", 2, "nfn_cifar10_split.csv")
def cifar10_gs_split_index_out_of_range(tmp):
    root = _probegen(tmp)
    split = root / "small-zoo-cifar10" / "nfn_cifar10_split.csv"
    split.write_text(split.read_text() + "999999\n")
    return _cnn(root)


@case("schema", 2, "order.txt")
def dsire_set_order_is_binary(tmp):
    (tmp / "order.txt").write_bytes(b"\x00\x01\xff\xfe")
    return ["dsire", "--lora-wise", str(_lora_wise(tmp)), "--config", "medium_8", "--set-order", str(tmp / "order.txt")]


@case("schema", 2, "names 'w' twice")
def safetensors_header_repeats_a_tensor(tmp):
    entry = '{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
    path = _raw_safetensors(tmp / "m.safetensors", f'{{"w":{entry},"w":{entry}}}', b"\0" * 8)
    return ["inspect", str(path)]


# ------------------------------------------------------------------------------------------------ wrong rank


@case("rank", 2, "rank")
def lora_wise_with_the_wrong_rank(tmp):
    return ["dsire", "--lora-wise", str(_lora_wise(tmp)), "--config", "medium_8", "--rank", "3"]


@case("rank", 2, "lora_0_rank")
def lowra_shard_with_a_null_rank(tmp):
    def null_rank(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("lora_0_rank")
        return t.set_column(i, "lora_0_rank", pa.array([None] * t.num_rows, type=t.schema.field(i).type))
    return _detune_lowra(tmp, _lowra(tmp, null_rank))


# ------------------------------------------------------------------------------------------------ NaN / inf


@case("nonfinite", 2, "NaN")
def detune_checkpoint_with_nan(tmp):
    g = torch.Generator().manual_seed(1)
    paths = []
    for i in range(3):
        w = torch.randn(16, 16, generator=g)
        if i == 1:
            w[3, 4] = float("nan")
        paths.append(str(_safetensors(tmp / f"ft{i}.safetensors", {"fc.weight": w})))
    return ["detune", "--checkpoints", *paths, "--rank", "2", "--iters", "5", "--device", "cpu",
            "--out", str(tmp.parent / "out")]


@case("nonfinite", 2, "Kendall")
def cifar10_gs_with_one_accuracy_for_all(tmp):
    root = _probegen(tmp)
    path = root / "small-zoo-cifar10" / "metrics.csv.gz"
    with gzip.open(path, "rt") as f:
        rows = [line.rstrip("\n").split(",") for line in f]
    with gzip.open(path, "wt") as f:
        f.write(",".join(rows[0]) + "\n")
        f.writelines(",".join([r[0], "0.5", *r[2:]]) + "\n" for r in rows[1:])
    return _cnn(root)


# ------------------------------------------------------------------------------------------------ empty


@case("empty", 2, "")
def lowra_shard_with_no_rows(tmp):
    return _detune_lowra(tmp, _lowra(tmp, lambda t: t.slice(0, 0)))


@case("empty", 2, "")
def lora_wise_with_no_rows(tmp):
    root = _lora_wise(tmp, lambda t: t.slice(0, 0))
    return ["dsire", "--lora-wise", str(root), "--config", "medium_8"]


@case("empty", 2, "")
def safetensors_of_zero_bytes(tmp):
    (tmp / "m.safetensors").write_bytes(b"")
    return ["inspect", str(tmp / "m.safetensors")]


@case("empty", 2, "no model files")
def empty_folder(tmp):
    (tmp / "empty").mkdir()
    return ["inspect", str(tmp / "empty")]


@case("empty", 2, "identical")
def trees_recover_on_identical_models(tmp):
    w = torch.randn(8, 8)
    for name in "abc":
        _safetensors(tmp / "models" / f"{name}.safetensors", {"fc.weight": w})
    return ["trees", "recover", str(tmp / "models")]


@case("empty", 2, "")
def report_with_no_runs(tmp):
    (tmp / "runs").mkdir()
    return ["report", "--runs", str(tmp / "runs"), "--profile", "smoke"]


# ------------------------------------------------------------------------------------------------ not a regular file


@case("nonregular", 2, "FIFO")
def inspect_a_fifo(tmp):
    os.mkfifo(tmp / "m.safetensors")
    return ["inspect", str(tmp / "m.safetensors")]


@case("nonregular", 2, "character device")
def inspect_a_link_to_dev_zero(tmp):
    (tmp / "m.pt").symlink_to("/dev/zero")
    return ["inspect", str(tmp / "m.pt")]


@case("nonregular", 2, "FIFO")
def detune_a_fifo_checkpoint(tmp):
    a = _safetensors(tmp / "a.safetensors", {"fc.weight": torch.randn(16, 16)})
    os.mkfifo(tmp / "b.safetensors")
    return ["detune", "--checkpoints", str(a), str(tmp / "b.safetensors"), "--rank", "2", "--device", "cpu",
            "--out", str(tmp.parent / "out")]


@case("nonregular", 2, "character device")
def cifar10_gs_weights_link_to_dev_zero(tmp):
    root = _probegen(tmp)
    (root / "small-zoo-cifar10" / "weights.npy").unlink()
    (root / "small-zoo-cifar10" / "weights.npy").symlink_to("/dev/zero")
    return _cnn(root)


# ------------------------------------------------------------------------------------------------ torn manifests


@case("torn", 1, "the last line is half-written")
def zoo_manifest_last_line_torn(tmp):
    store = _zoo(tmp)
    lines = _manifest_lines(store)
    store.manifest_path.write_text("".join(lines[:-1]) + lines[-1][:30])
    return ["zoo", "verify", str(store.root)]


@case("torn", 2, "line 2 is not valid JSON")
def zoo_manifest_middle_line_broken(tmp):
    return ["zoo", "verify", str(_zoo_with_line_2(tmp, '{"id": "m1", "ki\n').root)]


@case("torn", 2, "line 2 is not valid JSON")
def inspect_a_zoo_with_a_broken_middle_line(tmp):
    return ["inspect", str(_zoo_with_line_2(tmp, "oops\n").root)]


@case("torn", 1, "4 model folders are not in the manifest")
def zoo_manifest_missing(tmp):
    store = _zoo(tmp)
    store.manifest_path.unlink()
    return ["zoo", "verify", str(store.root)]


@case("torn", 2, "nothing was changed")
def trees_recover_on_a_zoo_with_a_broken_line(tmp):
    return ["trees", "recover", str(_zoo_with_line_2(tmp, "[]\n").root)]


# ------------------------------------------------------------------------------------------------ odd names


@case("names", 0, "\\x1b[2J")
def tensor_names_with_terminal_escapes(tmp):
    return ["inspect", str(_safetensors(tmp / "m.safetensors", {"w\x1b[2J\x1b]0;owned\x07": torch.ones(2)},
                                        {"note": "\x1b[31mred"}))]


@case("names", 0, "m\\udcff.safetensors")
def a_file_name_that_is_not_utf8(tmp):
    return ["inspect", str(_safetensors(Path(os.fsdecode(bytes(tmp) + b"/m\xff.safetensors"))))]


def _non_utf8_models(tmp: Path) -> Path:
    g = torch.Generator().manual_seed(2)
    for i in range(3):
        _safetensors(Path(os.fsdecode(bytes(tmp) + b"/models/ft%d\xff.safetensors" % i)),
                     {"fc.weight": torch.randn(8, 8, generator=g)})
    return tmp / "models"


@case("names", 2, "the file name is not valid UTF-8")
def detune_on_files_whose_names_are_not_utf8(tmp):
    return ["detune", "--checkpoints", *map(str, sorted(_non_utf8_models(tmp).iterdir())), "--rank", "2",
            "--device", "cpu", "--out", str(tmp.parent / "out")]


@case("names", 2, "the file name is not valid UTF-8")
def trees_recover_on_files_whose_names_are_not_utf8(tmp):
    return ["trees", "recover", str(_non_utf8_models(tmp))]


# ------------------------------------------------------------------------------------------------ arguments


@case("args", 2, "positive number of seconds")
def run_with_a_zero_timeout(tmp):
    return ["run", "00", "--timeout", "0"]


@case("args", 2, "positive number of seconds")
def run_with_a_negative_timeout(tmp):
    return ["run", "00", "--timeout", "-1"]


# ------------------------------------------------------------------------------------------------ the matrix


class _Hang(BaseException):
    """Raised by the alarm: a BaseException, so no ``except Exception`` in the kit can swallow it."""


def _snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = os.fsencode(p.relative_to(root)).decode("utf-8", "backslashreplace")
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)}"
        elif p.is_fifo():
            out[rel] = "<fifo>"
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "<dir>"
    return out


def _call(argv: list[str]) -> int:
    def alarm(*_):
        raise _Hang(f"labkit {' '.join(argv[:2])} ran past {SECONDS} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(SECONDS)
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own one-line error
        return int(e.code or 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("c", CASES, ids=[f"{c.klass}-{c.name}" for c in CASES])
def test_hostile_input(c: Case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LABKIT_DEBUG", raising=False)
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "kit_home"))
    tmp = tmp_path / "input"
    tmp.mkdir()
    argv = c.setup(tmp)
    capsys.readouterr()
    before = _snapshot(tmp)
    t0 = time.perf_counter()
    code = _call(argv)
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert code == c.code, f"exit {code}, expected {c.code}; stderr: {err[-500:]}"
    assert "Traceback" not in out + err and "\x1b" not in out + err
    if c.code == 2:  # one line that says what is wrong, and it is the last thing printed (progress bars and
        # argparse's usage may come before it)
        lines = [ln for ln in err.splitlines() if ln.startswith("labkit ")]
        assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
        assert "internal error" not in lines[0], lines[0]
        assert c.says in lines[0], lines[0]
    else:
        assert c.says in out + err
    assert _snapshot(tmp) == before, "the command changed its input"
    assert not (tmp / "pwned").exists()
    assert seconds < SECONDS


def test_the_matrix_covers_every_class():
    classes = {c.klass for c in CASES}
    assert classes == {"malicious", "bomb", "truncated", "schema", "rank", "nonfinite", "empty", "nonregular",
                       "torn", "names", "args"}
    assert len(CASES) >= 58


def test_zoo_repair_rebuilds_a_broken_manifest_and_deletes_nothing(tmp_path, capsys):
    store = _zoo_with_line_2(tmp_path, "oops\n")
    folders = sorted(p.name for p in store.models_dir.iterdir())
    assert main(["zoo", "repair", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "3 rows kept, 1 listed again from their row.json, unreadable lines [2] dropped; nothing deleted" in out
    assert sorted(p.name for p in store.models_dir.iterdir()) == folders
    assert main(["zoo", "verify", str(store.root)]) == 0
    assert ZooStore(store.root).ids() == ["m0", "m1", "m2", "m3"]


def test_readers_during_a_build(tmp_path, capsys):
    """`labkit zoo verify` and `labkit inspect` in a loop while another process builds the zoo: the build
    succeeds, the readers only read (exit 0 or 1: a build in progress may show a half-written last line)."""
    script = textwrap.dedent("""
        import sys, torch
        from labkit.zoo.store import ZooStore
        store = ZooStore.open("demo", "smoke", {"k": 3}, home=sys.argv[1])
        with store.lock():
            for i in range(200):
                store.save_model(f"m{i:03d}", {"w": torch.full((64, 64), float(i))}, {"i": i})
            store.mark_complete({})
    """)
    root = tmp_path / zoo_key("demo", "smoke", {"k": 3})
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stderr=subprocess.PIPE, text=True)
    codes = []
    while proc.poll() is None:
        if (root / "manifest.jsonl").is_file():
            codes += [main(["zoo", "verify", str(root)]), main(["inspect", str(root)])]
    assert proc.returncode == 0, proc.stderr.read()
    assert codes and set(codes) <= {0, 1}, codes
    capsys.readouterr()
    assert main(["zoo", "verify", str(root)]) == 0 and len(ZooStore(root)) == 200
    assert load_file(str(root / "models" / "m199" / "model.safetensors"))["w"][0, 0] == 199
