"""``labkit probegen``: ProbeGen on the paper's INR zoos (MNIST / FMNIST SIRENs) and on CIFAR10-GS.

Kahana, Horwitz, Shuval & Hoshen, ICLR 2025 (arXiv 2410.10811); method in ``labkit.methods.probegen``, formats,
splits and defaults in reference/probegen.md §2 and §4.

* ``inr_networks(folder, split_json)`` — the DWSNets SIRENs of each Neural-Graphs split as ``{split: (Networks, y)}``
  (one ``Siren`` template, int64 digit / clothing labels). ``folder`` is the zoo (``…/fmnist_inrs``,
  ``…/mnist-inrs``); the split JSON defaults to ``<prefix>_splits.json`` next to it, and its paths are read
  relative to the folder that holds both, as in the official ``experiments/inr_classification/dataset/``.
* ``cifar10_gs_networks(folder, split_file)`` — the Small CNN Zoo's final checkpoints of NFN's splits as
  ``{split: (Networks, test accuracy)}``: one ``SmallCNN`` template per activation (``config.activation``), stride-2
  3×3 convolutions, global average pooling, ``fc``. The split file defaults to ``nfn_cifar10_split.csv`` /
  ``cifar10_split.csv`` in the folder (without one the rows keep their file order — not the paper's split).
* ``probegen_inr`` / ``probegen_cifar10_gs`` — load, train one method (``probegen``: the paper's generator,
  ``linear_2_no_acts`` / ``deep_linear_6``; ``vanilla``: free probes; ``synthetic``: fixed uniform coordinates /
  dead-leaves images, head only) with the released scripts' settings (128 probes, Adam 3e-4 with cosine annealing,
  batch 32, 6-layer 256-wide head, seed 1, evaluation every 500 steps; 30 epochs for INRs, 150 for CIFAR10-GS) and
  report the test metric at the best validation point: accuracy (INRs) or Kendall's τ (CIFAR10-GS).

The spec does not transcribe the paper's Table 1, so no ProbeGen number comes with the result; ``reference`` holds
the baselines the spec does verify (NFN on the INR zoos, NFN / NG-GNN / NG-T on CIFAR10-GS).
"""

from __future__ import annotations

import itertools
import math
import re
import time
from pathlib import Path

import torch
from torch import nn

from labkit.datasets import BenchmarkFormatError, BenchmarkMissingError
from labkit.datasets.probegen_zoos import MAX_JSON_BYTES
from labkit.methods import probegen as pg
from labkit.replicate import command_device
from labkit.safe_io import printable, read_json

__all__ = ["DEFAULTS", "METHODS", "REFERENCE", "SmallCNN", "cifar10_gs_networks", "inr_networks",
           "probegen_cifar10_gs", "probegen_inr", "to_device", "train_method"]

METHODS = ("probegen", "vanilla", "synthetic")
# the released scripts (spec §2): generator depth of ProbeGen, epochs, probes (64 and 128 scripts; 128 = argparse)
DEFAULTS = {"inr": {"gen_depth": 2, "epochs": 30, "n_probes": 128},
            "cifar10-gs": {"gen_depth": 6, "epochs": 150, "n_probes": 128}}
# spec §5: verified baseline numbers (accuracy % for INRs, Kendall's τ for CIFAR10-GS); ProbeGen's own are not there
REFERENCE = {"mnist": {"NFN": 92.9}, "fmnist": {"NFN": 75.6},
             "cifar10-gs": {"NFN (HNP)": 0.934, "NFN (NP)": 0.922, "NFT": 0.926, "NG-GNN": 0.930, "NG-T": 0.935}}
INR_SOURCE = ("DWSNets' Dropbox mnist-inrs.zip / fmnist_inrs.zip and the Neural-Graphs split JSON "
              "(data_scripts/README.md, 'Fetched by hand')")
GS_SOURCE = ("cifar10.tar.xz from the gresearch/smallcnnzoo-dataset bucket and NFN's cifar10_split.csv "
             "(data_scripts/README.md, 'Fetched by hand')")
GS_SPLIT_FILES = ("nfn_cifar10_split.csv", "cifar10_split.csv")


# ------------------------------------------------------------------------------------------------ loading


class SmallCNN(nn.Module):
    """A Small CNN Zoo network: ``Conv2d(k3, s2, p1)`` + activation per layer, global average pool, ``fc``.

    ``x: [B, c_in, H, W]`` → logits ``[B, 10]``; parameters ``layers.{i}.weight/bias`` and ``fc.weight/bias``.
    """

    def __init__(self, channels: list[int], activation: str, n_classes: int = 10):
        from labkit.models.cnn import ACTIVATIONS

        super().__init__()
        if activation not in ACTIVATIONS:
            raise BenchmarkFormatError(f"unknown activation {activation!r} in metrics.csv.gz (known: "
                                       f"{', '.join(ACTIVATIONS)})")
        self.activation = activation
        self.layers = nn.ModuleList(nn.Conv2d(a, b, 3, 2, 1) for a, b in itertools.pairwise(channels))
        self.fc = nn.Linear(channels[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from labkit.models.cnn import ACTIVATIONS

        act = ACTIVATIONS[self.activation]
        for conv in self.layers:
            x = act(conv(x))
        return self.fc(x.mean(dim=(2, 3)))


def _missing(path: Path, what: str, source: str) -> BenchmarkMissingError:
    return BenchmarkMissingError(f"{what} not found at {path}; download {source}")


def _inr_split_json(folder: Path) -> Path:
    prefix = re.split(r"[-_]", folder.name)[0]
    for candidate in (folder.parent / f"{prefix}_splits.json", folder / f"{prefix}_splits.json"):
        if candidate.is_file():
            return candidate
    raise _missing(folder.parent / f"{prefix}_splits.json", "INR split JSON",
                   "it from the ProbeGen repository (experiments/inr_classification/dataset/"
                   f"{prefix}_splits.json) or pass --split-json")


def inr_networks(folder: str | Path, split_json: str | Path | None = None
                 ) -> dict[str, tuple[pg.Networks, torch.Tensor]]:
    """``{"train"|"val"|"test": (Networks of SIRENs, int64 labels [n])}`` from a DWSNets INR zoo folder."""
    from labkit.datasets.probegen_zoos import load_inr_zoo
    from labkit.models.siren import Siren

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise _missing(folder, "INR zoo folder", INR_SOURCE)
    split_json = Path(split_json) if split_json is not None else _inr_split_json(folder)
    if not split_json.is_file():
        raise _missing(split_json, "INR split JSON", INR_SOURCE)
    try:
        first = read_json(split_json, MAX_JSON_BYTES, "split file")["train"]["path"][0]
    except (KeyError, IndexError, TypeError):  # the loader below names what is wrong with the file
        first = ""
    # split paths look like "fmnist_inrs/train/model_1.pth": relative to the folder that holds the zoo
    root = folder.parent if Path(first).parts[:1] == (folder.name,) else folder
    template = Siren(32).eval()
    out = {}
    for split in ("train", "val", "test"):
        params, labels = load_inr_zoo(root, split_json, split)
        out[split] = (pg.Networks([pg.NetGroup(template, params)]), labels)
    return out


def _gs_split_file(folder: Path) -> Path | None:
    return next((folder / name for name in GS_SPLIT_FILES if (folder / name).is_file()), None)


def _gs_template(params: dict[str, torch.Tensor], activation: str) -> tuple[SmallCNN, dict[str, torch.Tensor]]:
    """The template for one activation and the parameters renamed from TF varnames (layout order kept)."""
    renamed, channels, n_conv, dense = {}, [], 0, False
    for name, t in params.items():
        kind = name.rsplit("/", 1)[-1].split(":")[0]
        if kind not in ("kernel", "bias") or (dense and t.ndim != 2):
            raise BenchmarkFormatError(f"layout.csv: unexpected variable {name!r}; expected conv and dense "
                                       "kernel:0 / bias:0 entries, the dense layer last")
        if t.ndim == 5:  # [N, out, in, 3, 3]
            if t.shape[-2:] != (3, 3):
                raise BenchmarkFormatError(f"layout.csv: {name} is a {tuple(t.shape[-2:])} kernel, expected 3×3")
            channels = channels or [t.shape[2]]
            channels.append(t.shape[1])
            renamed[f"layers.{n_conv}.weight"] = t
            n_conv += 1
        elif t.ndim == 3:  # [N, 10, C_last]
            renamed["fc.weight"], dense = t, True
        elif t.ndim == 2:
            renamed["fc.bias" if dense else f"layers.{n_conv - 1}.bias"] = t
        else:
            raise BenchmarkFormatError(f"layout.csv: {name} has an unexpected shape {tuple(t.shape[1:])}")
    if not n_conv or not dense:
        raise BenchmarkFormatError("layout.csv: expected conv layers and a final dense layer")
    return SmallCNN(channels, activation, renamed["fc.weight"].shape[1]).eval(), renamed


def _gs_activations(folder: Path, split_file: Path | None) -> dict[str, list[str]]:
    """``config.activation`` of each split's rows, in the order ``load_cifar10_gs`` returns them."""
    from labkit.datasets.probegen_zoos import cifar10_gs_metrics

    metrics, splits = cifar10_gs_metrics(folder, split_file)
    if "config.activation" not in metrics[0]:
        raise BenchmarkFormatError(f"{printable(folder / 'metrics.csv.gz')}: needs the column config.activation")
    return {split: [metrics[i]["config.activation"] for i in idx] for split, idx in splits.items()}


def cifar10_gs_networks(folder: str | Path, split_file: str | Path | None = None
                        ) -> dict[str, tuple[pg.Networks, torch.Tensor]]:
    """``{split: (Networks grouped by activation, test accuracy [n])}`` from a CIFAR10-GS folder (NFN's splits)."""
    from labkit.datasets.probegen_zoos import load_cifar10_gs

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise _missing(folder, "CIFAR10-GS folder", GS_SOURCE)
    for name in ("weights.npy", "metrics.csv.gz", "layout.csv"):
        if not (folder / name).exists():
            raise _missing(folder / name, f"CIFAR10-GS {name}", GS_SOURCE)
    split_file = Path(split_file) if split_file is not None else _gs_split_file(folder)
    if split_file is not None and not split_file.exists():
        raise _missing(split_file, "CIFAR10-GS split file", GS_SOURCE)
    activations = _gs_activations(folder, split_file)
    out = {}
    for split in ("train", "val", "test"):
        params, acc = load_cifar10_gs(folder, split_file, split)
        acts = activations[split]
        groups, order = [], []
        for act in sorted(set(acts)):
            rows = torch.tensor([i for i, a in enumerate(acts) if a == act], dtype=torch.long)
            template, renamed = _gs_template({k: v[rows] for k, v in params.items()}, act)
            groups.append(pg.NetGroup(template, renamed))
            order.append(rows)
        if not groups:
            raise BenchmarkFormatError(f"{folder}: the {split} split holds no final checkpoints (step 86)")
        out[split] = (pg.Networks(groups), acc[torch.cat(order)])
    return out


# ------------------------------------------------------------------------------------------------ running



def to_device(splits: dict[str, tuple[pg.Networks, torch.Tensor]], dev: str | torch.device) -> dict:
    """The same ``{split: (Networks, y)}`` with templates, parameters and targets on ``dev``."""
    dev = torch.device(dev)
    return {s: (pg.Networks([pg.NetGroup(g.model.to(dev), {k: v.to(dev) for k, v in g.params.items()})
                             for g in nets.groups]), y.to(dev)) for s, (nets, y) in splits.items()}


def train_method(task: str, splits: dict, method: str = "probegen", *, n_probes: int | None = None,
                 epochs: int | None = None, gen_depth: int | None = None, seed: int = 1,
                 progress: str | None = None) -> tuple[pg.ProbeGenRun, dict]:
    """Train ``method`` on ``splits`` (``{split: (Networks, y)}``) with the released scripts' settings.

    Returns the run (its ``test`` is the test metric at the best validation point) and the settings used.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    defaults = DEFAULTS["inr" if task == "inr" else task]
    n_probes = int(defaults["n_probes"] if n_probes is None else n_probes)
    epochs = int(defaults["epochs"] if epochs is None else epochs)
    if n_probes < 1 or epochs < 1:
        raise ValueError(f"--probes and --epochs must be positive, got {n_probes} and {epochs}")
    depth = {"probegen": defaults["gen_depth"] if gen_depth is None else int(gen_depth), "vanilla": 0,
             "synthetic": None}[method]
    if gen_depth is not None and method != "probegen":
        raise ValueError("--gen-depth applies to --method probegen only (vanilla is depth 0, synthetic has none)")
    fixed = None
    if method == "synthetic":  # uniform coordinates (INR) / dead leaves (CNN), never optimised
        g = torch.Generator().manual_seed(seed)
        fixed = pg.uniform_coordinates(n_probes, g) if task == "inr" else pg.dead_leaves(n_probes, 32, generator=g)
        fixed = fixed.to(splits["train"][1].device)
    (train, y_train), (val, y_val), (test, y_test) = (splits[s] for s in ("train", "val", "test"))
    run = pg.train_probegen(task, train, y_train, val, y_val, n_probes=n_probes, gen_depth=depth or 0,
                            fixed_probes=fixed, epochs=epochs, seed=seed, test=test, y_test=y_test,
                            progress=progress)
    settings = {"method": method, "n_probes": n_probes, "gen_depth": depth, "epochs": epochs, "batch_size": 32,
                "lr": 3e-4, "eval_every": 500, "head": "6 × 256, ReLU", "seed": seed}
    return run, settings


def _check_targets(task: str, splits: dict, folder: Path) -> None:
    """Kendall's τ needs targets that differ: refuse a split whose networks all have one test accuracy (τ is
    undefined there: NaN), or whose accuracies hold NaN or inf, before any training."""
    if pg.TASKS[task].metric != "kendall_tau":
        return
    for split in ("val", "test"):
        y = splits[split][1]
        if not torch.isfinite(y).all():
            raise ValueError(f"{printable(folder / 'metrics.csv.gz')}: {int((~torch.isfinite(y)).sum())} {split} "
                             "networks have a NaN or infinite test accuracy; download the zoo again")
        if len(y) > 1 and bool((y == y[0]).all()):
            raise ValueError(f"{printable(folder / 'metrics.csv.gz')}: every one of the {len(y)} {split} networks has "
                             f"the same test accuracy ({float(y[0]):g}), so Kendall's τ is undefined (NaN) on that "
                             "split; check its test_accuracy column and the split file")


def _check_scores(task: str, run: pg.ProbeGenRun) -> None:
    """Refuse a run whose test or best validation score is not a number (τ of constant predictions is NaN)."""
    metric = pg.TASKS[task].metric
    for name, score in (("test", run.test), ("validation", run.best_val)):
        if score is None or not math.isfinite(score):
            why = ("the trained model predicts the same accuracy for every network, so Kendall's τ is undefined"
                   if metric == "kendall_tau" else "the score is not a number")
            raise RuntimeError(f"the {name} {metric.replace('_', ' ')} is {score}: {why}; train longer (--epochs), "
                               "with more probes (--probes) or another --seed")


def _result(task: str, dataset: str, splits: dict, run: pg.ProbeGenRun, settings: dict, source: dict,
            dev: torch.device, seconds: dict) -> dict:
    metric = pg.TASKS[task].metric
    scale = 100.0 if metric == "accuracy" else 1.0
    return {"dataset": dataset, "task": task, **source, **settings, "device": str(dev),
            "metric": "test accuracy %" if metric == "accuracy" else "test Kendall tau",
            "test": scale * run.test, "best_val": scale * run.best_val, "best_step": run.best_step,
            "n_networks": {s: len(y) for s, (_, y) in splits.items()},
            "paper": None, "paper_note": "the spec does not transcribe ProbeGen's Table 1 (arXiv 2410.10811)",
            "reference": REFERENCE.get(dataset), "seconds": seconds}


def _inr_dataset(folder: Path) -> str:
    name = folder.name.lower()
    return "fmnist" if "fmnist" in name else "mnist" if "mnist" in name else folder.name


def _run(task: str, dataset: str, load, source, method: str, n_probes: int | None,
         epochs: int | None, gen_depth: int | None, device: str | None, seed: int, what: str,
         folder: Path) -> dict:
    """Load a zoo with ``load()`` → splits, train ``method`` on it, and return the command's result dict (with
    ``source()``, called once the zoo has loaded: where its files came from)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    dev = command_device(device)
    splits = to_device(load(), dev)
    _check_targets(task, splits, folder)
    t1 = time.perf_counter()
    run, settings = train_method(task, splits, method, n_probes=n_probes, epochs=epochs, gen_depth=gen_depth,
                                 seed=seed, progress=f"ProbeGen ({method}) on {what}")
    _check_scores(task, run)
    t2 = time.perf_counter()
    return _result(task, dataset, splits, run, settings, source(), dev,
                   {"load": round(t1 - t0, 3), "train": round(t2 - t1, 3), "total": round(t2 - t0, 3)})


def probegen_inr(folder: str | Path, split_json: str | Path | None = None, *, method: str = "probegen",
                 n_probes: int | None = None, epochs: int | None = None, gen_depth: int | None = None,
                 device: str | None = None, seed: int = 1) -> dict:
    """Classify the INRs of a DWSNets zoo with ProbeGen (or a baseline); returns the result dict (test accuracy %)."""
    folder = Path(folder).expanduser()
    return _run("inr", _inr_dataset(folder), lambda: inr_networks(folder, split_json),
                lambda: {"inr": str(folder), "split_json": str(split_json or _inr_split_json(folder))}, method,
                n_probes, epochs, gen_depth, device, seed, folder.name, folder)


def probegen_cifar10_gs(folder: str | Path, split_file: str | Path | None = None, *, method: str = "probegen",
                        n_probes: int | None = None, epochs: int | None = None, gen_depth: int | None = None,
                        device: str | None = None, seed: int = 1) -> dict:
    """Rank the CIFAR10-GS CNNs by predicted test accuracy; returns the result dict (test Kendall's τ)."""
    folder = Path(folder).expanduser()
    found = split_file or _gs_split_file(folder)
    return _run("cifar10-gs", "cifar10-gs", lambda: cifar10_gs_networks(folder, split_file),
                lambda: {"cnn_zoo": str(folder), "split_file": str(found) if found else None}, method,
                n_probes, epochs, gen_depth, device, seed, "CIFAR10-GS", folder)
