"""cnn-zoo: many small CNNs on digits with varied hyper-parameters (ProbeGen's CIFAR10-GS / Small CNN Zoo analogue).

Unterthiner et al. (2020) trained thousands of small CNNs with sampled activation, learning rate, L2, init scale,
dropout and training-set fraction, recording train and test accuracy; ProbeGen regresses the test accuracy from
the network (reference/probegen.md §4.2, metric Kendall's τ). Here each CNN is ``labkit.models.make_cnn`` (three
stride-2 3×3 convolutions, global average pooling, ``fc``) with per-model activation, width, dropout, init scale,
learning rate, weight decay, training fraction and epochs. Models of one (width, activation) share a shape and
train together in one batched computation (dropout rates ride along as a per-model buffer). Splits are by model;
a model at or below chance accuracy is kept and flagged ``"bad"``.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field

import torch

from labkit.data import load_digits_split
from labkit.models import make_cnn
from labkit.seeds import stable_seed
from labkit.training import batched_accuracy, fit_batched, init_states, stack_states, unstack_state
from labkit.zoo.settings import SplitShares
from labkit.zoo.store import ZooStore

__all__ = ["CnnZooSettings", "build", "load_model", "model_hparams", "settings"]


@dataclass(frozen=True)
class CnnZooSettings:
    """What a cnn-zoo is built from (defaults: the workshop profile). Each CNN draws its activation and width from
    the lists, lr, weight decay and init scale log-uniformly and dropout, training fraction uniformly from the
    ranges, epochs from ``epochs`` (inclusive); a CNN at or below ``bad_at_or_below`` test accuracy is flagged."""

    seed: int = 0
    n_models: int = 300
    activations: tuple[str, ...] = ("relu", "gelu", "tanh", "sigmoid", "leaky_relu")
    widths: tuple[int, ...] = (4, 8, 16)
    lr: tuple[float, float] = (1e-3, 5e-2)
    weight_decay: tuple[float, float] = (1e-5, 1e-1)
    init_scale: tuple[float, float] = (0.5, 2.0)
    dropout: tuple[float, float] = (0.0, 0.5)
    train_fraction: tuple[float, float] = (0.1, 1.0)
    epochs: tuple[int, int] = (3, 12)
    batch_size: int = 64
    splits: SplitShares = field(default_factory=SplitShares)
    bad_at_or_below: float = 0.15


def settings(profile: str) -> CnnZooSettings:
    """Workshop: 300 CNNs; smoke: 24."""
    if profile == "smoke":
        return CnnZooSettings(n_models=24, epochs=(3, 8))
    return CnnZooSettings()


def _rng(cfg: CnnZooSettings, key: str) -> random.Random:
    return random.Random(stable_seed(f"cnn-zoo:{cfg.seed}:{key}"))


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def model_hparams(cfg: CnnZooSettings, model_id: str) -> dict:
    """The sampled configuration of one CNN (from its id only)."""
    rng = _rng(cfg, model_id)
    hp = {"activation": rng.choice(cfg.activations), "width": rng.choice(cfg.widths),
          "lr": round(_log_uniform(rng, *cfg.lr), 6), "weight_decay": round(_log_uniform(rng, *cfg.weight_decay), 6),
          "init_scale": round(_log_uniform(rng, *cfg.init_scale), 4),
          "dropout": round(rng.uniform(*cfg.dropout), 3),
          "train_fraction": round(rng.uniform(*cfg.train_fraction), 3), "epochs": rng.randint(*cfg.epochs),
          "batch_size": cfg.batch_size, "seed": rng.randrange(2**31)}
    hp["split"] = cfg.splits.split_for(rng.random())
    return hp


def load_model(store: ZooStore, model_id: str) -> torch.nn.Module:
    """The stored CNN as an ``nn.Module`` (eval mode, so dropout is off)."""
    hp = store.row(model_id)["hparams"]
    model = make_cnn(hp["width"], 3, hp["activation"], hp["dropout"])
    model.load_state_dict(store.load_model(model_id)[0])
    return model.eval()


def build(store: ZooStore, cfg: CnnZooSettings, device) -> dict:
    """Train and store every CNN not yet in ``store``, one batched group per (width, activation)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    data = load_digits_split()
    X, y, Xt, yt = data.X_train.to(device), data.y_train.to(device), data.X_test.to(device), data.y_test.to(device)
    ids = [f"cnn-{i:04d}" for i in range(cfg.n_models)]
    hps = {i: model_hparams(cfg, i) for i in ids}
    groups: dict[tuple, list[str]] = {}
    for i in ids:
        groups.setdefault((hps[i]["width"], hps[i]["activation"]), []).append(i)
    bar = tqdm(total=len(ids), desc="cnn-zoo CNNs", initial=sum(i in store for i in ids))
    bad = 0
    for (width, act), group in sorted(groups.items()):
        if all(i in store for i in group):
            continue
        h = [hps[i] for i in group]
        states = []
        for hp in h:
            make = functools.partial(make_cnn, width, 3, act, hp["dropout"], init_scale=hp["init_scale"])
            states += init_states(make, [hp["seed"]])
        subsets = []
        for hp in h:  # each model trains on its own random fraction of the training set
            perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(hp["seed"]))
            subsets.append(perm[:max(cfg.batch_size, round(hp["train_fraction"] * len(X)))].to(device))
        model = make_cnn(width, 3, act).to(device)
        params = {k: v.to(device) for k, v in stack_states(states).items()}
        buffers = {"drop_p": torch.tensor([hp["dropout"] for hp in h], device=device)}
        group_seed = _rng(cfg, f"group-{width}-{act}").randrange(2**31)
        params, last = fit_batched(model, params, X, y, subsets, epochs=[hp["epochs"] for hp in h],
                                   lr=[hp["lr"] for hp in h], weight_decay=[hp["weight_decay"] for hp in h],
                                   seeds=[hp["seed"] for hp in h], batch_size=cfg.batch_size, buffers=buffers,
                                   rng_seed=group_seed, progress=f"width {width} {act}")
        train_acc = batched_accuracy(model, params, X, y)
        test_acc = batched_accuracy(model, params, Xt, yt)
        for k, i in enumerate(group):
            if i in store:
                continue
            hp = dict(hps[i])
            split = hp.pop("split")
            te, tr = float(test_acc[k]), float(train_acc[k])
            flag = "ok" if math.isfinite(te) and te > cfg.bad_at_or_below else "bad"
            bad += flag == "bad"
            row = {"tree": None, "parent": None, "split": split, "labels": round(te, 4), "hparams": hp,
                   "train_acc": round(tr, 4), "test_acc": round(te, 4), "final_loss": float(last[k]), "flag": flag}
            meta = {"test_accuracy": repr(te), "train_accuracy": repr(tr), "split": split} | \
                {f"config.{k2}": str(v) for k2, v in hp.items()}
            store.save_model(i, unstack_state(params, k), row, meta)
            bar.update()
    bar.close()
    return {"cnns": len(ids), "groups": len(groups), "bad": bad}
