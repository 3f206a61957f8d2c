"""``labkit probex``: ProbeX on one layer of a discriminative Model-J subset, with the official protocol.

Horwitz*, Cavia*, Kahana*, Hoshen, CVPR 2025 (arXiv 2410.13569); method in ``labkit.methods.probex``, protocol and
format in reference/probex.md §3–§5.

``probex_model_j(root, subset, layer, …)`` reads one layer of every model of the ``train`` / ``val`` / ``test``
splits once (``labkit.datasets.model_j``: ``X [N, d_H, d_W]``, multi-hot ``Y [N, C]`` over the 100 CIFAR-100
names), trains ProbeX on ``train`` with the official discriminative defaults (r_U = r_V = 128, r_T = 128 as in the
official sbatch script, BCE-with-logits, Adam 1e-3 with weight decay 1e-5, batch 128, 500 epochs, validation every
25 epochs from epoch 0, the strictly best ``val`` checkpoint) and reports the mean per-label binary accuracy of
that checkpoint on ``test``. With ``baselines=True`` the dense linear expert and StatNN are trained the same way.
Without a ``val`` split the model after the last epoch is scored. The paper's row for the subset (``labkit.paper_numbers``)
comes with the result, and MVProbe's rerun of ProbeX separately (``rerun``: not the paper's numbers). Training runs on ``device`` (default: CUDA when available) through ``train_learner``, which on the
CPU is exactly ``px.train_probex`` / ``train_dense_expert`` / ``train_statnn`` (tests/test_probex_cli.py).

Model-J subsets exported from the mini-jungle (``labkit export digit-trees --format model-j``) use the digit
names ``zero`` … ``nine``; their label columns are put in digit order (``labkit.data.CLASS_NAMES``), as the zoo's
own labels.
The SD LoRA subsets (single-class, zero-shot) are not handled here: their evaluation is in notebook 02.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from labkit import paper_numbers
from labkit.data import CLASS_NAMES
from labkit.datasets.model_j import DISCRIMINATIVE, GENERATIVE
from labkit.methods import probex as px
from labkit.replicate import command_device

__all__ = ["BEST_LAYER", "LEARNERS", "PAPER", "RERUN", "label_classes", "probex_model_j", "resolve_layer", "train_learner"]

# best layer per subset in the official README (spec §2 "Which layer"); the command's default --layer
BEST_LAYER = {"SupViT": 59, "DINO": 59, "MAE": 64, "ResNet": 59}
# the ProbeX paper's accuracy % per subset (labkit.paper_numbers; secondary transcription), at the README's best
# layer; the paper's StatNN / ProbeGen rows are unverified (None)
PAPER = {s: {"layer": BEST_LAYER[s], "probex": paper_numbers.paper(f"probex.{s}.probex"),
             "statnn": paper_numbers.paper(f"probex.{s}.statnn"),
             "probegen": paper_numbers.paper(f"probex.{s}.probegen")} for s in ("SupViT", "ResNet", "MAE", "DINO")}
PAPER_SOURCE = (f"{paper_numbers.NUMBERS['probex.SupViT.probex'].source}; layer: the official README's best layer; "
                "StatNN / ProbeGen rows unverified")
# MVProbe's rerun of ProbeX (seeds 1-5, lr 3e-4, 3000 epochs) at MVProbe's layer per subset: not the paper
RERUN = {s: {"layer": int(paper_numbers.rerun(f"probex.{s}.rerun_layer")),
             "probex": paper_numbers.rerun(f"probex.{s}.probex.rerun"),
             "probex_std": paper_numbers.NUMBERS[f"probex.{s}.probex.rerun"].std,
             "statnn": paper_numbers.NUMBERS[f"probex.{s}.statnn"].claimed,
             "probegen": paper_numbers.NUMBERS[f"probex.{s}.probegen"].claimed} for s in PAPER}
RERUN_SOURCE = ("MVProbe README: ProbeX rerun (seeds 1-5, lr 3e-4, 3000 epochs) at the layer given, not the paper; "
                "StatNN / ProbeGen: MVProbe's table")



def _open(root: str | Path, subset: str):
    from labkit.datasets.model_j import open_model_j

    if subset in GENERATIVE or subset.startswith("SD_"):
        raise ValueError(f"{subset} is a generative (Stable Diffusion LoRA) subset: `labkit probex` supports only "
                         f"the discriminative subsets ({', '.join(DISCRIMINATIVE)}, or an exported one); the "
                         "zero-shot evaluation is in notebook 02")
    root = Path(root)
    try:
        mj = open_model_j(root, subset)
    except FileNotFoundError:
        present = sorted({p.parent.parent.name for p in root.glob("*/*/models--ProbeX--Model-J__*")}
                         | {p.parent.name for p in root.glob("*/train")}) if root.is_dir() else []
        if subset in DISCRIMINATIVE or not present:
            raise
        raise ValueError(f"unknown Model-J subset {subset!r}: {root} holds {present} (the benchmark's "
                         f"discriminative subsets are {', '.join(DISCRIMINATIVE)})") from None
    if mj.kind != "discriminative":
        raise ValueError(f"{subset} holds LoRA models: `labkit probex` supports only discriminative subsets")
    repo = mj.models(mj.splits[0])[0].path.parents[2].name if mj.models(mj.splits[0]) else ""
    if not repo.startswith(f"models--ProbeX--Model-J__{subset}__"):
        raise ValueError(f"unknown Model-J subset {subset!r}: {mj.root} holds {repo.split('__')[1:2]} (the "
                         f"benchmark's discriminative subsets are {', '.join(DISCRIMINATIVE)})")
    for split in ("train", "test"):
        if split not in mj.splits:
            raise ValueError(f"Model-J {subset} under {mj.root} has no {split!r} split (present: {mj.splits}); "
                             f"download it with --splits train val test")
    return mj


def resolve_layer(names: list[str], layer: int | str | None, subset: str) -> tuple[int, str]:
    """``(index, name)`` of ``layer`` (an index, a digit string or a name; None: the subset's ``BEST_LAYER``)."""
    if layer is None:
        if subset not in BEST_LAYER:
            raise ValueError(f"give --layer for subset {subset!r} (an index 0–{len(names) - 1} or a name, e.g. "
                             f"{names[0]!r})")
        layer = BEST_LAYER[subset]
    if isinstance(layer, str) and layer.lstrip("-").isdigit():
        layer = int(layer)
    if isinstance(layer, int):
        if not 0 <= layer < len(names):
            raise ValueError(f"layer {layer} is out of range: subset {subset!r} has {len(names)} layers "
                             f"(0–{len(names) - 1})")
        return layer, names[layer]
    if layer not in names:
        raise ValueError(f"subset {subset!r} has no layer {layer!r}; its {len(names)} layers start {names[:3]}")
    return names.index(layer), layer


def label_classes(mj) -> list[str]:
    """The label columns: CIFAR-100 order for Model-J; digit order for an export of the digit-trees zoo."""
    classes = mj.classes
    return list(CLASS_NAMES) if set(classes) <= set(CLASS_NAMES) else classes


LEARNERS = ("probex", "dense_expert", "statnn")


def train_learner(learner: str, X_train: torch.Tensor, Y_train: torch.Tensor, X_val: torch.Tensor | None = None,
                  Y_val: torch.Tensor | None = None, *, device: str | torch.device | None = None, seed: int = 0,
                  n_probes: int = 128, proj_dim: int = 128, rep_dim: int = 128, **settings
                  ) -> tuple[torch.nn.Module, px.History]:
    """Train ``learner`` (``probex``, ``dense_expert`` or ``statnn``) with ``px.fit_multilabel`` on ``device``.

    ``X: [N, d_H, d_W]``, ``Y: [N, C]`` 0/1 (on the CPU). The model is made on the CPU after
    ``torch.manual_seed(seed)`` (as ``px.train_probex`` / ``train_dense_expert``), trained on ``device`` and
    returned on the CPU, so on the CPU this is exactly ``px.train_probex``. StatNN (7 statistics per model and a
    small MLP) always trains on the CPU with ``px.train_statnn``.
    """
    if learner not in LEARNERS:
        raise ValueError(f"unknown learner {learner!r}; one of {', '.join(LEARNERS)}")
    if learner == "statnn":
        return px.train_statnn(X_train, Y_train, X_val, Y_val, seed=seed, **settings)
    if X_train.ndim != 3 or Y_train.ndim != 2:
        raise ValueError(f"X_train must be [N, d_H, d_W] and Y_train [N, C], got {list(X_train.shape)} and "
                         f"{list(Y_train.shape)}")
    _, d_H, d_W = X_train.shape
    C = Y_train.shape[1]
    torch.manual_seed(seed)
    model = (px.ProbeXClassifier(d_H, d_W, C, n_probes, proj_dim, rep_dim) if learner == "probex"
             else px.DenseExpert(d_H, d_W, C))
    dev = command_device(device)

    def on(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dev)

    model, hist = px.fit_multilabel(model.to(dev), on(X_train), on(Y_train), on(X_val), on(Y_val), seed=seed,
                                    **settings)
    return model.cpu(), hist


def probex_model_j(
    root: str | Path,
    subset: str,
    layer: int | str | None = None,
    *,
    epochs: int = 500,
    eval_every: int = 25,
    rep_dim: int = 128,
    baselines: bool = False,
    device: str | None = None,
    seed: int = 0,
) -> dict:
    """ProbeX (and optionally the dense expert and StatNN) on one layer of Model-J ``subset`` at ``root``.

    ``layer``: an index into ProbeX's layer list (``open_model_j(...).layer_names()``, sorted names) or a name;
    default: the official README's best layer for the four discriminative subsets. Returns a dict: settings,
    ``n_models`` per split, ``probex`` (test / best-val accuracy in %, best epoch, parameters, seconds),
    ``baselines`` (or None), ``majority_baseline`` (each label's majority value on train, scored on test),
    ``paper`` (the paper's numbers, ``labkit.paper_numbers``, or None), ``rerun`` (MVProbe's rerun, or None) and
    ``seconds``.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if epochs < 1 or eval_every < 1:
        raise ValueError(f"--epochs and --eval-every must be positive, got {epochs} and {eval_every}")
    dev = command_device(device)
    mj = _open(root, subset)
    index, name = resolve_layer(mj.layer_names("train"), layer, subset)
    classes = label_classes(mj)
    splits = [s for s in ("train", "val", "test") if s in mj.splits]
    settings = {"lr": 1e-3, "weight_decay": 1e-5, "batch_size": 128, "epochs": int(epochs),
                "eval_every": int(eval_every)}
    dims = {"n_probes": 128, "proj_dim": 128, "rep_dim": int(rep_dim)}
    steps = len(splits) + (3 if baselines else 1)
    data, seconds = {}, {}
    # the bar is closed (its line ended) before any error message reaches stderr
    with tqdm(total=steps, desc=f"probex {subset} layer {index}", unit="step") as bar:
        t0 = time.perf_counter()
        for split in splits:
            bar.set_postfix_str(f"reading {split}")
            X, Y, _ = mj.layer(split, name, classes=classes)
            if not torch.isfinite(X).all():
                raise ValueError(f"layer {name!r} of a {split} model holds NaN or inf weights")
            data[split] = (X, Y)
            bar.update(1)
        seconds["load"] = round(time.perf_counter() - t0, 3)
        if len(data["train"][0]) < 2:
            raise ValueError(f"ProbeX needs at least 2 training models, {subset} has {len(data['train'][0])}")
        results = {}
        for learner in LEARNERS if baselines else LEARNERS[:1]:
            bar.set_postfix_str(f"training {learner}")
            t0 = time.perf_counter()
            model, hist = train_learner(learner, *data["train"], *data.get("val", (None, None)), device=dev,
                                        seed=seed, **dims, **settings)
            test = px.probex_accuracy(model, *data["test"])
            results[learner] = {
                "test_accuracy": round(100 * test, 4),
                "val_accuracy": round(100 * hist.best_val, 4) if hist.best_val > float("-inf") else None,
                "best_epoch": hist.best_epoch, "n_params": sum(p.numel() for p in model.parameters()),
                "seconds": round(time.perf_counter() - t0, 3)}
            bar.update(1)
    d_H, d_W = data["train"][0].shape[1:]
    C = len(classes)
    Y_train, Y_test = data["train"][1], data["test"][1]
    majority = (Y_train.mean(0, keepdim=True) > 0.5).float().expand_as(Y_test)
    paper, rerun = PAPER.get(subset), RERUN.get(subset)
    probex = results.pop("probex")
    seconds["total"] = round(time.perf_counter() - t_start, 3)
    return {
        "subset": subset, "root": str(mj.root), "layer": index, "layer_name": name, "layer_shape": [d_H, d_W],
        "n_layers": len(mj.layer_names("train")), "n_classes": C,
        "n_models": {s: len(data[s][0]) for s in splits},
        "settings": {**dims, **settings, "optimizer": "Adam", "loss": "BCEWithLogits",
                     "selection": "best val accuracy (strictly greater)" if "val" in data else "last epoch (no val)",
                     "seed": seed, "device": str(dev)},
        "metric": "mean per-label binary accuracy (%) on test, sigmoid > 0.5",
        "probex": probex,
        "baselines": results or None,
        "majority_baseline": round(100 * float((majority == Y_test).float().mean()), 4),
        "paper": {**paper, "same_layer": paper["layer"] == index, "source": PAPER_SOURCE} if paper else None,
        "rerun": {**rerun, "same_layer": rerun["layer"] == index, "source": RERUN_SOURCE} if rerun else None,
        "seconds": seconds,
    }
