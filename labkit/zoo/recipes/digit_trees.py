"""digit-trees: a Model-J analogue on 8×8 digits, with depth-2 Model Trees for MoTHer (DESIGN §3; labs 01, 02).

References: reference/model_trees.md §A (how Model-J trees are built) and reference/probex.md §4 (file format).

* **Roots** — pre-trained on all 10 classes, differing like foundation models: ``mlp_a`` and ``mlp_b`` (one MLP
  architecture 64→64→64→10, two seeds), ``ae_mlp`` (the same MLP whose ``fc1, fc2`` were first trained as an
  autoencoder) and ``cnn`` (three stride-2 convolutions, a square hidden layer, ``fc``).
* **Children** — full fine-tunes on a random 5 of the 10 classes with per-model lr, weight decay, epochs,
  augmentation flags (1-pixel shift, pixel noise) and seed; all children of a root train in one batched
  computation (``labkit.training.fit_batched``). Stored Model-J style: ``model.safetensors`` whose metadata
  holds ``dataset_chosen_targets`` = ``repr`` of the chosen class names plus every hyper-parameter (strings).
* **LoRA children** — peft adapters (ranks from ``lora_ranks``) on every linear layer of the root, trained as
  ``labkit.lora.BatchedLoRA`` groups (one group per root and rank), exported as real peft adapters.
* **Grandchildren** — full and LoRA fine-tunes of some full children (again a random 5 classes), so every tree
  has depth 2.

Ids: root ``<root>``, child ``<root>-c007``, LoRA child ``<root>-l003``, grandchildren ``<root>-c007-g1`` (full)
and ``<root>-c007-l1`` (LoRA). Every model's classes, hyper-parameters and split come from a generator seeded
by its own id, and every batched group has a fixed membership, so a resumed build writes identical files.
Models that trained badly (test accuracy below ``bad_below``) are kept and flagged ``"flag": "bad"``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
from torch import nn

from labkit.data import CLASS_NAMES, load_digits_split
from labkit.models import make_cnn, make_mlp
from labkit.seeds import stable_seed
from labkit.training import (
    batched_accuracy,
    fit_batched,
    fit_lora_batched,
    init_states,
    stack_states,
    unstack_state,
)
from labkit.zoo.settings import SplitShares
from labkit.zoo.store import ZooStore

__all__ = ["ROOTS", "DigitTreesSettings", "build", "load_model", "make_architecture", "settings"]

# root id -> (architecture, pre-training objective, init seed)
ROOTS = {"mlp_a": ("mlp", "supervised", 0), "mlp_b": ("mlp", "supervised", 1),
         "ae_mlp": ("mlp", "autoencoder", 2), "cnn": ("cnn", "supervised", 3)}
LORA_TARGETS = {"mlp": ["fc1", "fc2", "fc3"], "cnn": ["fc_hidden", "fc"]}


def make_architecture(name: str) -> nn.Module:
    """``"mlp"``: 64→64→64→10 (``fc1, fc2`` square); ``"cnn"``: 3 convs of width 32, ``fc_hidden [32, 32]``, ``fc``."""
    if name == "mlp":
        return make_mlp(64, (64, 64), 10)
    if name == "cnn":
        return make_cnn(width=32, n_conv=3, activation="relu", hidden=32)
    raise ValueError(f"unknown digit-trees architecture {name!r}; use 'mlp' or 'cnn'")


@dataclass(frozen=True)
class DigitTreesSettings:
    """What a digit-trees zoo is built from (defaults: the workshop profile, ≈ 260 models).

    Roots pre-train on every training image for ``root_epochs`` (the autoencoder root: as many autoencoder
    epochs, then half as many classifier epochs) with AdamW (``root_lr``, ``root_weight_decay``), mini-batches of
    ``root_batch_size``. Fine-tunes draw lr log-uniformly from ``lr`` (LoRAs: ``lora_lr``), weight decay
    uniformly from ``weight_decay``, epochs from ``epochs`` (inclusive) and train on ``batch_size`` batches.
    """

    seed: int = 0
    roots: tuple[str, ...] = tuple(ROOTS)
    root_epochs: int = 24
    root_batch_size: int = 64
    root_lr: float = 3e-3
    root_weight_decay: float = 1e-4
    children: int = 32
    lora_children: int = 12
    lora_ranks: tuple[int, ...] = (2, 4, 8)
    grand_parents: int = 4  # full children that get grandchildren
    grandchildren: int = 3  # full fine-tunes per parent
    lora_grandchildren: int = 2  # LoRA fine-tunes per parent
    n_classes: int = 5
    lr: tuple[float, float] = (3e-4, 1e-2)
    lora_lr: tuple[float, float] = (1e-3, 2e-2)
    weight_decay: tuple[float, float] = (0.005, 0.03)
    epochs: tuple[int, int] = (2, 6)
    batch_size: int = 32
    bad_below: float = 0.6
    splits: SplitShares = field(default_factory=SplitShares)


def settings(profile: str) -> DigitTreesSettings:
    """Zoo sizes per profile (workshop ≈ 260 models, smoke ≈ 50)."""
    if profile == "smoke":
        return DigitTreesSettings(root_epochs=8, children=6, lora_children=3, grand_parents=1, grandchildren=2,
                                  lora_grandchildren=1)
    return DigitTreesSettings()


# --------------------------------------------------------------------------------------------- sampling


def _sample(cfg: DigitTreesSettings, model_id: str, lora: bool) -> dict:
    """Classes, hyper-parameters and split of one model, from its own id."""
    rng = random.Random(stable_seed(f"digit-trees:{cfg.seed}:{model_id}"))
    lo, hi = cfg.lora_lr if lora else cfg.lr
    classes = sorted(rng.sample(range(10), cfg.n_classes))
    hp = {
        "lr": round(math.exp(rng.uniform(math.log(lo), math.log(hi))), 6),
        "weight_decay": round(rng.uniform(*cfg.weight_decay), 4),
        "epochs": rng.randint(*cfg.epochs),
        "augment_shift": rng.random() < 0.5,
        "augment_noise": rng.random() < 0.5,
        "seed": rng.randrange(2**31),
        "batch_size": cfg.batch_size,
    }
    if lora:
        hp["rank"] = rng.choice(cfg.lora_ranks)
        hp["alpha"] = 2 * hp["rank"]
    return {"classes": classes, "hparams": hp, "split": cfg.splits.split_for(rng.random())}


def _metadata(row: dict) -> dict[str, str]:
    """Model-J style safetensors metadata: every value a string; the label as ``repr`` of the class names."""
    meta = {"dataset_chosen_targets": repr(row["labels"]), "tree": row["tree"], "parent": str(row["parent"]),
            "architecture": row["architecture"]}
    meta.update({k: str(v) for k, v in row["hparams"].items()})
    return meta


# --------------------------------------------------------------------------------------------- loading


def load_model(store: ZooStore, model_id: str) -> nn.Module:
    """An ``nn.Module`` for any model of a digit-trees zoo (adapters are loaded onto their parent with peft)."""
    row = store.row(model_id)
    if row["kind"] == "adapter":
        return store.load_adapter(model_id, load_model(store, row["parent"]))
    model = make_architecture(row["architecture"])
    state, _ = store.load_model(model_id)
    model.load_state_dict(state)
    return model.eval()


def _state(store: ZooStore, model_id: str) -> dict[str, torch.Tensor]:
    return store.load_model(model_id, verify=False)[0]


# ----------------------------------------------------------------------------------------------- build


def _root_hparams(root: str, cfg: DigitTreesSettings) -> dict:
    """What a root trains with (recorded in its row and metadata)."""
    _, objective, seed = ROOTS[root]
    return {"objective": objective, "epochs": cfg.root_epochs, "lr": cfg.root_lr,
            "weight_decay": cfg.root_weight_decay, "seed": seed, "batch_size": cfg.root_batch_size}


def _pretrain_root(root: str, cfg: DigitTreesSettings, X, y) -> dict[str, torch.Tensor]:
    arch = ROOTS[root][0]
    hp = _root_hparams(root, cfg)
    seed = hp["seed"]
    model = make_architecture(arch)
    state = {k: v.to(X.device) for k, v in init_states(lambda: make_architecture(arch), [seed])[0].items()}
    model.to(X.device)
    everything = [torch.arange(len(X))]
    epochs = hp["epochs"]
    train = {"lr": [hp["lr"]], "weight_decay": [hp["weight_decay"]], "seeds": [seed], "batch_size": hp["batch_size"]}
    if hp["objective"] == "autoencoder":  # fc1, fc2 as the encoder of a (denoising) autoencoder, then the classifier
        ae = nn.Sequential(model.fc1, nn.ReLU(), model.fc2, nn.ReLU(), nn.Linear(64, 64))
        names = dict(zip(["0.weight", "0.bias", "2.weight", "2.bias"], ["fc1.weight", "fc1.bias", "fc2.weight",
                                                                          "fc2.bias"]))
        ae_state = init_states(lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                                     nn.Linear(64, 64)), [seed])[0]
        ae_state = {k: v.to(X.device) for k, v in ae_state.items()} | {k: state[v] for k, v in names.items()}
        params, _ = fit_batched(ae, stack_states([ae_state]), X, X, everything, epochs=[epochs], noise=[True],
                                loss="mse", **train)
        state.update({v: params[k][0] for k, v in names.items()})
        epochs = max(1, epochs // 2)
    params, _ = fit_batched(model, stack_states([state]), X, y, everything, epochs=[epochs], **train)
    return unstack_state(params, 0)


def _row(cfg: DigitTreesSettings, model_id, tree, parent, depth, arch, sample, kind_hint, train_acc, test_acc, extra=None):
    bad = not (math.isfinite(test_acc) and test_acc >= cfg.bad_below)
    return {"tree": tree, "parent": parent, "depth": depth, "architecture": arch, "split": sample["split"],
            "labels": [CLASS_NAMES[c] for c in sample["classes"]], "classes": sample["classes"],
            "hparams": sample["hparams"], "training": kind_hint, "train_acc": round(float(train_acc), 4),
            "test_acc": round(float(test_acc), 4), "flag": "bad" if bad else "ok", **(extra or {})}


def build(store: ZooStore, cfg: DigitTreesSettings, device) -> dict:
    """Write every model of the digit-trees zoo that is not yet in ``store``."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    data = load_digits_split()
    X, y = data.X_train.to(device), data.y_train.to(device)
    Xt, yt = data.X_test.to(device), data.y_test.to(device)
    counts = {"roots": 0, "children": 0, "lora_children": 0, "grandchildren": 0, "lora_grandchildren": 0}
    bar = tqdm(total=len(cfg.roots) * (1 + cfg.children + cfg.lora_children + cfg.grand_parents
                                      * (cfg.grandchildren + cfg.lora_grandchildren)),
               desc="digit-trees models", initial=len(store))

    def subset(classes):
        return torch.nonzero(torch.isin(y, torch.tensor(classes, device=device))).flatten()

    def test_mask(samples):
        return torch.stack([torch.isin(yt, torch.tensor(s["classes"], device=device)) for s in samples])

    def train_mask(samples):
        return torch.stack([torch.isin(y, torch.tensor(s["classes"], device=device)) for s in samples])

    def full_group(ids, parents, tree, depth, arch):
        """Fine-tune ``ids`` (each from its parent's weights) in one batched computation; save the missing."""
        if all(i in store for i in ids):
            return
        samples = [_sample(cfg, i, lora=False) for i in ids]
        hps = [s["hparams"] for s in samples]
        model = make_architecture(arch).to(device)
        params = stack_states([{k: v.to(device) for k, v in _state(store, p).items()} for p in parents])
        params, _ = fit_batched(model, params, X, y, [subset(s["classes"]) for s in samples],
                                epochs=[h["epochs"] for h in hps], lr=[h["lr"] for h in hps],
                                weight_decay=[h["weight_decay"] for h in hps], seeds=[h["seed"] for h in hps],
                                batch_size=cfg.batch_size, shift=[h["augment_shift"] for h in hps],
                                noise=[h["augment_noise"] for h in hps], progress=f"{tree} depth {depth}")
        tr = batched_accuracy(model, params, X, y, train_mask(samples))
        te = batched_accuracy(model, params, Xt, yt, test_mask(samples))
        for k, (i, p, s) in enumerate(zip(ids, parents, samples)):
            if i in store:
                continue
            row = _row(cfg, i, tree, p, depth, arch, s, "full", tr[k], te[k])
            store.save_model(i, unstack_state(params, k), row, _metadata(row))
            counts["children" if depth == 1 else "grandchildren"] += 1
            bar.update()

    def lora_groups(ids, parent, tree, depth, arch):
        """LoRA fine-tunes of one parent, one ``BatchedLoRA`` per rank; save the missing as peft adapters."""
        from labkit.lora import BatchedLoRA

        samples = {i: _sample(cfg, i, lora=True) for i in ids}
        for rank in cfg.lora_ranks:
            group = [i for i in ids if samples[i]["hparams"]["rank"] == rank]
            if not group or all(i in store for i in group):
                continue
            base = make_architecture(arch).to(device)
            base.load_state_dict(_state(store, parent))
            base.eval()
            hps = [samples[i]["hparams"] for i in group]
            lora = BatchedLoRA(base, LORA_TARGETS[arch], [h["seed"] for h in hps], r=rank, alpha=2 * rank)
            fit_lora_batched(lora, X, y, [subset(samples[i]["classes"]) for i in group],
                             epochs=[h["epochs"] for h in hps], lr=[h["lr"] for h in hps],
                             weight_decay=[h["weight_decay"] for h in hps], seeds=[h["seed"] for h in hps],
                             batch_size=cfg.batch_size, shift=[h["augment_shift"] for h in hps],
                             noise=[h["augment_noise"] for h in hps], progress=f"{tree} LoRA r={rank}")
            with torch.no_grad():
                K = len(group)
                tr = (lora(X[None].expand(K, *X.shape)).argmax(-1) == y).float()
                te = (lora(Xt[None].expand(K, *Xt.shape)).argmax(-1) == yt).float()
            trm, tem = train_mask([samples[i] for i in group]).float(), test_mask([samples[i] for i in group]).float()
            tr, te = (tr * trm).sum(1) / trm.sum(1), (te * tem).sum(1) / tem.sum(1)
            peft_model = lora.peft_model()
            for k, i in enumerate(group):
                if i in store:
                    continue
                row = _row(cfg, i, tree, parent, depth, arch, samples[i], "lora", tr[k], te[k],
                           {"targets": LORA_TARGETS[arch]})
                store.save_adapter(i, lora.export_adapter(k, peft_model), row,
                                   base_model=f"labkit/digit-trees/{parent}")
                counts["lora_children" if depth == 1 else "lora_grandchildren"] += 1
                bar.update()

    for root in cfg.roots:
        arch = ROOTS[root][0]
        if root not in store:
            state = _pretrain_root(root, cfg, X, y)
            model = make_architecture(arch).to(device)
            one = stack_states([state])
            tr = batched_accuracy(model, one, X, y)[0]
            te = batched_accuracy(model, one, Xt, yt)[0]
            sample = {"classes": list(range(10)), "split": "root", "hparams": _root_hparams(root, cfg)}
            row = _row(cfg, root, root, None, 0, arch, sample, "pretrain", tr, te)
            store.save_model(root, state, row, _metadata(row))
            counts["roots"] += 1
            bar.update()
        children = [f"{root}-c{j:03d}" for j in range(cfg.children)]
        full_group(children, [root] * len(children), root, 1, arch)
        lora_groups([f"{root}-l{j:03d}" for j in range(cfg.lora_children)], root, root, 1, arch)
        parents = children[:cfg.grand_parents]
        grand = [(f"{p}-g{j}", p) for p in parents for j in range(1, cfg.grandchildren + 1)]
        full_group([g for g, _ in grand], [p for _, p in grand], root, 2, arch)
        for p in parents:
            lora_groups([f"{p}-l{j}" for j in range(1, cfg.lora_grandchildren + 1)], p, root, 2, arch)
    bar.close()
    rows = store.rows()
    return {**counts, "bad": sum(r.get("flag") == "bad" for r in rows), "trees": len(cfg.roots)}
