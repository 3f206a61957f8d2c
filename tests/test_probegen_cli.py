"""``labkit probegen`` (labkit/replicate/probegen.py) on small zoos in the real formats (reference/probegen.md §4)."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.cli import main
from labkit.datasets.probegen_zoos import load_cifar10_gs, load_inr_zoo
from labkit.methods import probegen as pg
from labkit.models.siren import Siren, make_siren
from labkit.replicate.probegen import cifar10_gs_networks, inr_networks

FIX = Path(__file__).parent / "fixtures" / "probegen"
GS_NAMES = ["sequential/conv2d/kernel:0", "sequential/conv2d/bias:0", "sequential/conv2d_1/kernel:0",
            "sequential/conv2d_1/bias:0", "sequential/conv2d_2/kernel:0", "sequential/conv2d_2/bias:0",
            "sequential/dense/kernel:0", "sequential/dense/bias:0"]


def write_public_probegen(root: Path, n_inr=(40, 12, 12), n_gs: int = 64, activations=("relu", "tanh")) -> Path:
    """A small ProbeGen data folder as ``data_root("probegen")`` holds it: ``fmnist_inrs/`` + ``fmnist_splits.json``
    (SIRENs whose output bias encodes the label) and ``small-zoo-cifar10/`` (CNNs whose weight scale sets their
    test accuracy; NFN's split CSV with its duplicated ``0`` header row)."""
    g = torch.Generator().manual_seed(0)
    splits = {}
    for split, n in zip(("train", "val", "test"), n_inr):
        paths, labels = [], []
        for i in range(n):
            label = i % 5
            sd = make_siren(32, generator=g).state_dict()
            sd["seq.2.bias"] = sd["seq.2.bias"] * 0 + 0.2 * label
            rel = f"fmnist_inrs/{split}/model_{split}{i}.pth"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            torch.save({**sd, "label": label}, root / rel)
            paths.append(rel)
            labels.append(label if i % 2 else str(label))  # MNIST's split files hold digit strings
        splits[split] = {"path": paths, "label": labels}
    (root / "fmnist_splits.json").write_text(json.dumps(splits))

    gs = root / "small-zoo-cifar10"
    gs.mkdir(parents=True)
    shutil.copy(FIX / "small-zoo-cifar10" / "layout.csv", gs / "layout.csv")
    rng = np.random.default_rng(0)
    n_rows = n_gs + n_gs // 8
    scale = rng.uniform(0.05, 1.0, n_rows)
    weights = (rng.standard_normal((n_rows, 4970)) * scale[:, None] * 0.3).astype(np.float32)
    np.save(gs / "weights.npy", weights)
    with gzip.open(gs / "metrics.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "test_accuracy", "train_accuracy", "config.activation"])
        for i in range(n_rows):
            acc = 0.1 + 0.5 * scale[i]
            w.writerow([0 if i % 9 == 8 else 86, f"{acc:.4f}", f"{acc + 0.05:.4f}", activations[i % len(activations)]])
    perm = rng.permutation(n_rows)
    (gs / "nfn_cifar10_split.csv").write_text("0\n" + "\n".join(str(i) for i in perm) + "\n")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_public_probegen(tmp_path_factory.mktemp("probegen"))


def _run(args, capsys):
    rc = main(["probegen", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_inr_command(data, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc, stdout, err = _run(["--inr", str(data / "fmnist_inrs"), "--probes", "8", "--epochs", "2", "--device", "cpu",
                            "--json", str(out)], capsys)
    assert rc == 0, err
    assert stdout == ""
    r = json.loads(out.read_text())
    assert r["dataset"] == "fmnist" and r["task"] == "inr" and r["method"] == "probegen"
    assert r["gen_depth"] == 2 and r["n_probes"] == 8 and r["epochs"] == 2 and r["seed"] == 1
    assert r["n_networks"] == {"train": 40, "val": 12, "test": 12}
    assert 0.0 <= r["test"] <= 100.0 and 0.0 <= r["best_val"] <= 100.0
    assert r["paper"] is None and r["reference"] == {"NFN": 75.6}
    assert r["split_json"] == str(data / "fmnist_splits.json")
    assert set(r["seconds"]) == {"load", "train", "total"}
    assert "labkit probegen: fmnist probegen (8 probes): test accuracy %" in err


@pytest.mark.parametrize("method", ["probegen", "vanilla", "synthetic"])
def test_cnn_zoo_command(data, capsys, method):
    rc, stdout, err = _run(["--cnn-zoo", str(data / "small-zoo-cifar10"), "--probes", "4", "--epochs", "2",
                            "--method", method, "--device", "cpu"], capsys)
    assert rc == 0, err
    r = json.loads(stdout)
    assert r["task"] == "cifar10-gs" and r["metric"] == "test Kendall tau" and r["method"] == method
    assert r["gen_depth"] == {"probegen": 6, "vanilla": 0, "synthetic": None}[method]
    # 64 final checkpoints + row 0 again (the split file's "0" header): 65; test = second half, 80/20 of the rest
    assert r["n_networks"] == {"train": 25, "val": 7, "test": 33}
    assert -1.0 <= r["test"] <= 1.0
    assert r["reference"]["NG-T"] == 0.935 and r["split_file"].endswith("nfn_cifar10_split.csv")


def test_inr_matches_direct_call(data, tmp_path, capsys):
    """The command's accuracy is train_probegen + task_metric on the loader's tensors with the same seed."""
    out = tmp_path / "r.json"
    rc, _, err = _run(["--inr", str(data / "fmnist_inrs"), "--probes", "8", "--epochs", "3", "--seed", "3",
                       "--device", "cpu", "--json", str(out)], capsys)
    assert rc == 0, err
    nets = {}
    for split in ("train", "val", "test"):
        params, labels = load_inr_zoo(data, data / "fmnist_splits.json", split)
        nets[split] = (pg.Networks([pg.NetGroup(Siren(32).eval(), params)]), labels)
    run = pg.train_probegen("inr", *nets["train"], *nets["val"], n_probes=8, gen_depth=2, epochs=3, seed=3)
    direct = pg.task_metric(run.model, pg.TASKS["inr"], *nets["test"])
    assert json.loads(out.read_text())["test"] == pytest.approx(100 * direct, abs=1e-9)


def test_cifar10_gs_matches_direct_call(tmp_path, capsys):
    """One activation: the command's τ is train_probegen + task_metric on load_cifar10_gs's tensors, renamed."""
    root = write_public_probegen(tmp_path, n_inr=(2, 2, 2), n_gs=48, activations=("relu",))
    rc, stdout, err = _run(["--cnn-zoo", str(root / "small-zoo-cifar10"), "--probes", "4", "--epochs", "3",
                            "--device", "cpu"], capsys)
    assert rc == 0, err
    from labkit.replicate.probegen import SmallCNN

    names = ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "layers.2.weight",
             "layers.2.bias", "fc.weight", "fc.bias"]
    nets = {}
    for split in ("train", "val", "test"):
        params, acc = load_cifar10_gs(root / "small-zoo-cifar10", root / "small-zoo-cifar10" / "nfn_cifar10_split.csv",
                                      split)
        stacked = {new: params[old] for new, old in zip(names, GS_NAMES)}
        nets[split] = (pg.Networks([pg.NetGroup(SmallCNN([1, 16, 16, 16], "relu").eval(), stacked)]), acc)
    run = pg.train_probegen("cifar10-gs", *nets["train"], *nets["val"], n_probes=4, gen_depth=6, epochs=3, seed=1)
    tau = pg.task_metric(run.model, pg.TASKS["cifar10-gs"], *nets["test"])
    assert json.loads(stdout)["test"] == pytest.approx(tau, abs=1e-9)


def test_small_cnn_matches_tf_semantics():
    """SmallCNN on a zoo row equals the network computed by hand: 3 × (conv k3 s2 p1 + act), mean pool, dense."""
    splits = cifar10_gs_networks(FIX / "small-zoo-cifar10", FIX / "small-zoo-cifar10" / "nfn_cifar10_split.csv")
    nets, acc = splits["test"]
    assert len(nets) == 4 and [g.model.activation for g in nets.groups] == sorted({g.model.activation
                                                                                   for g in nets.groups})
    x = torch.rand(5, 1, 32, 32)
    group = nets.groups[0]
    w = {k: v[0] for k, v in group.params.items()}
    h = x
    act = {"relu": torch.relu, "tanh": torch.tanh}[group.model.activation]
    for i in range(3):
        h = act(torch.nn.functional.conv2d(h, w[f"layers.{i}.weight"], w[f"layers.{i}.bias"], stride=2, padding=1))
    expected = h.mean((2, 3)) @ w["fc.weight"].T + w["fc.bias"]
    assert torch.allclose(nets.responses(x, torch.tensor([0]))[0], expected, atol=1e-5)
    # labels follow the networks: every test accuracy of the fixture is one of its test rows'
    _, test_acc = load_cifar10_gs(FIX / "small-zoo-cifar10", FIX / "small-zoo-cifar10" / "nfn_cifar10_split.csv")
    assert sorted(acc.tolist()) == sorted(test_acc.tolist())


def test_inr_fixture_loads(capsys):
    """The kit's INR fixture (2 / 1 / 1 networks) loads; training refuses a 1-network val split in one line."""
    splits = inr_networks(FIX / "fmnist_inrs")
    assert [len(splits[s][0]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert splits["train"][1].tolist() == [6, 1]
    rc, _, err = _run(["--inr", str(FIX / "fmnist_inrs"), "--epochs", "1", "--device", "cpu"], capsys)
    assert rc == 2 and err.strip().count("\n") == 0
    assert "val: need at least 2 networks, got 1" in err


@pytest.mark.parametrize("args, message", [
    (["--inr", "{tmp}/nowhere"], "INR zoo folder not found at {tmp}/nowhere; download DWSNets"),
    (["--cnn-zoo", "{tmp}/nowhere"], "smallcnnzoo-dataset"),
    (["--inr", "{data}/small-zoo-cifar10"], "INR split JSON not found"),
    (["--cnn-zoo", "{data}/fmnist_inrs"], "CIFAR10-GS weights.npy not found"),
    (["--cnn-zoo", "{data}/small-zoo-cifar10", "--method", "magic"], "argument --method: invalid choice: 'magic'"),
    (["--cnn-zoo", "{data}/small-zoo-cifar10", "--method", "vanilla", "--gen-depth", "3"], "--gen-depth applies"),
    (["--cnn-zoo", "{data}/small-zoo-cifar10", "--gen-depth", "3", "--epochs", "1"], "deep_linear_5 and deep_linear_6"),
    (["--inr", "{data}/fmnist_inrs", "--split-file", "x.csv"], "--split-file applies to --cnn-zoo"),
    (["--inr", "{data}/fmnist_inrs", "--epochs", "0"], "--probes and --epochs must be positive, got 128 and 0"),
    ([], "one of the arguments --inr --cnn-zoo is required"),
])
def test_errors_are_one_line(data, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, data=data) for a in args]
    rc, stdout, err = _run(args, capsys)
    assert rc == 2 and stdout == ""
    assert err.startswith("labkit probegen: ") and err.strip().count("\n") == 0
    assert message.format(tmp=tmp_path) in err


def test_wrong_layout(data, tmp_path, capsys):
    gs = tmp_path / "gs"
    shutil.copytree(data / "small-zoo-cifar10", gs)
    text = (gs / "layout.csv").read_text().replace('"(16, 10)"', '"(10, 16, 1)"')
    (gs / "layout.csv").write_text(text)
    rc, _, err = _run(["--cnn-zoo", str(gs), "--epochs", "1"], capsys)
    assert rc == 2 and err.strip().count("\n") == 0 and "layout.csv" in err

    inr = tmp_path / "inr"
    shutil.copytree(data / "fmnist_inrs", inr / "fmnist_inrs")
    shutil.copy(data / "fmnist_splits.json", inr / "fmnist_splits.json")
    bad = inr / json.loads((inr / "fmnist_splits.json").read_text())["val"]["path"][0]
    torch.save({"seq.0.weight": torch.zeros(16, 2)}, bad)
    rc, _, err = _run(["--inr", str(inr / "fmnist_inrs"), "--epochs", "1"], capsys)
    assert rc == 2 and err.strip().count("\n") == 0 and "not a DWSNets SIREN" in err


def test_equal_test_accuracies_are_refused_not_reported_as_nan(data, tmp_path, capsys):
    """Kendall's τ is undefined when every test network has one accuracy: one line naming metrics.csv.gz."""
    gs = tmp_path / "gs"
    shutil.copytree(data / "small-zoo-cifar10", gs)
    with gzip.open(gs / "metrics.csv.gz", "rt") as f:
        rows = list(csv.reader(f))
    with gzip.open(gs / "metrics.csv.gz", "wt", newline="") as f:
        csv.writer(f).writerows([rows[0], *([r[0], "0.5", *r[2:]] for r in rows[1:])])
    rc, stdout, err = _run(["--cnn-zoo", str(gs), "--probes", "4", "--epochs", "1", "--device", "cpu"], capsys)
    assert rc == 2 and stdout == "" and err.strip().count("\n") == 0, err
    assert err.startswith(f"labkit probegen: {gs / 'metrics.csv.gz'}: every one of the 7 val networks has the "
                          "same test accuracy (0.5), so Kendall's τ is undefined"), err


def test_a_nan_score_is_refused():
    from labkit.replicate.probegen import _check_scores

    with pytest.raises(RuntimeError, match="predicts the same accuracy for every network, so Kendall's τ is undefined"):
        _check_scores("cifar10-gs", pg.ProbeGenRun(model=None, best_val=0.4, best_step=1, test=float("nan")))
    with pytest.raises(RuntimeError, match="the validation kendall tau is -inf"):
        _check_scores("cifar10-gs", pg.ProbeGenRun(model=None, best_val=float("-inf"), best_step=1, test=0.3))
    _check_scores("cifar10-gs", pg.ProbeGenRun(model=None, best_val=0.4, best_step=1, test=0.3))
