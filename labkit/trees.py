"""The data side of lab 01 (``01_model_trees``): models → MoTHer's stacked layers, ground truth, probes.

``labkit.methods.mother`` is the algorithm and takes tensors; this module turns model files into those tensors:

* :func:`merged_state` — the full weights of any zoo model, a peft adapter merged onto its parent
  (``W = W_parent + (alpha / r) · B A``) in float64, so the rank of a LoRA difference is exact;
* :func:`load_forest` — a set of zoo models as a :class:`Forest`: square 2-D weights ``[n, d, d]``, true parents
  and tree ids (the answers MoTHer must recover);
* :func:`regime_forest`, :func:`evaluate`, :func:`sibling_shortcuts` — cut a zoo into trees of one training
  regime, run MoTHer on them with pooled scores, and diagnose the wrong edges;
* :func:`load_folder`, :func:`recover_folder` — any folder of models (a ``ZooStore`` folder, ``*.safetensors``
  files, or peft adapter folders whose base model is in the folder) for ``labkit trees recover``;
* :func:`kurtosis_trajectory` — the kurtosis of a model's weights after every epoch of a fine-tune (the
  direction signal of MoTHer §4.2);
* :func:`probe_accuracy` — the motivating experiment of ProbeX (§1): a linear probe on one layer reads a
  model's training classes within one tree, not across trees.

Every file is read with safetensors (``labkit.zoo.store.read_safetensors``); nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from labkit.lora import lora_factors, read_adapter_config
from labkit.methods.mother import kurtosis
from labkit.safe_io import printable
from labkit.zoo.store import ZooStore, read_safetensors

__all__ = [
    "Forest",
    "TreeCase",
    "architecture_groups",
    "evaluate",
    "kurtosis_trajectory",
    "load_folder",
    "load_forest",
    "merged_state",
    "multi_hot",
    "probe_accuracy",
    "recover_folder",
    "recover_view",
    "regime_forest",
    "sibling_shortcuts",
    "square_layers",
    "tree_cases",
    "within_vs_mixed",
]


# ------------------------------------------------------------------------------------------------- weights


def _merge(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], config: dict,
           where: str) -> dict[str, torch.Tensor]:
    """``base`` with every LoRA factor pair of ``adapter`` merged in: ``W += (lora_alpha / r) · B A`` (float64)."""
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not r or alpha is None:
        raise ValueError(f"{where}: adapter_config.json needs 'r' and 'lora_alpha'")
    out = dict(base)
    for layer, (A, B) in lora_factors(adapter).items():
        key = f"{layer}.weight"
        if key not in out:
            raise ValueError(f"{where}: the adapter changes {layer!r} but the base model has no {key!r}")
        delta = (alpha / r) * (B.double() @ A.double())
        if delta.shape != out[key].shape:
            raise ValueError(f"{where}: LoRA update of shape {list(delta.shape)} does not fit {key!r} "
                             f"{list(out[key].shape)}")
        out[key] = out[key] + delta
    return out


def merged_state(store: ZooStore, model_id: str, cache: dict | None = None,
                 verify: bool = False) -> dict[str, torch.Tensor]:
    """Full float64 weights of any model of ``store``; adapters are merged onto their (recursively merged) parent.

    ``verify``: check each file read (the parents' too) against the sha256 the manifest records first
    (``CorruptFileError`` if one differs) — for folders a user points the kit at; the course's own zoos are
    checked when they are built."""
    cache = {} if cache is None else cache
    if model_id in cache:
        return cache[model_id]
    row = store.row(model_id)
    if row["kind"] == "adapter":
        tensors, config = store.load_adapter_weights(model_id, verify=verify)
        state = _merge(merged_state(store, row["parent"], cache, verify), tensors, config, model_id)
    else:
        state = {k: v.double() for k, v in store.load_model(model_id, verify=verify)[0].items()}
    cache[model_id] = state
    return state


def square_layers(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the square 2-D weights (the layers MoTHer's official code uses), in the state's order."""
    return [k for k, v in state.items() if v.ndim == 2 and v.shape[0] == v.shape[1]]


# -------------------------------------------------------------------------------------------- zoo forests


@dataclass
class Forest:
    """Models of one architecture with their answers. ``layers: {name: [n, d, d]}`` (float64)."""

    ids: list[str]
    layers: dict[str, torch.Tensor]
    parents: np.ndarray                 # [n] index of the true parent, −1 for a root (or a parent not loaded)
    trees: np.ndarray                   # [n] index into tree_names
    tree_names: list[str]
    kinds: list[str] = field(default_factory=list)  # "pretrain" | "full" | "lora" per model

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def true_edges(self) -> list[tuple[int, int]]:
        return [(int(p), c) for c, p in enumerate(self.parents.tolist()) if p >= 0]

    def subset(self, idx: Sequence[int]) -> Forest:
        """The models ``idx`` (in that order); parents outside the subset become −1."""
        idx = [int(i) for i in idx]
        pos = {old: new for new, old in enumerate(idx)}
        parents = np.array([pos.get(int(self.parents[i]), -1) if self.parents[i] >= 0 else -1 for i in idx])
        sel = torch.as_tensor(idx)
        return Forest([self.ids[i] for i in idx], {k: W[sel] for k, W in self.layers.items()}, parents,
                      self.trees[idx], self.tree_names, [self.kinds[i] for i in idx] if self.kinds else [])

    def shuffled(self, seed: int = 0) -> Forest:
        """The same forest in a random order, so that no method can use "the root comes first"."""
        return self.subset(np.random.default_rng(seed).permutation(len(self)))


def architecture_groups(rows: Sequence[dict]) -> dict[str, list[str]]:
    """``{architecture: [model ids]}`` from manifest rows (MoTHer compares models of one architecture only)."""
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r["architecture"], []).append(r["id"])
    return groups


def load_forest(store: ZooStore, ids: Sequence[str], layer_names: Sequence[str] | None = None,
                cache: dict | None = None) -> Forest:
    """Stack the (merged) weights of ``ids`` into a :class:`Forest` with the true parents and trees."""
    from labkit.methods.mother import stack_layers

    ids = list(ids)
    cache = {} if cache is None else cache
    states = [merged_state(store, i, cache) for i in ids]
    layers = stack_layers(states, layer_names)
    rows = [store.row(i) for i in ids]
    pos = {i: n for n, i in enumerate(ids)}
    tree_names = sorted({r["tree"] for r in rows}, key=[r["tree"] for r in rows].index)
    parents = np.array([pos.get(r["parent"], -1) if r["parent"] else -1 for r in rows])
    trees = np.array([tree_names.index(r["tree"]) for r in rows])
    return Forest(ids, layers, parents, trees, tree_names, [r["training"] for r in rows])


def regime_forest(forest: Forest, regime: str) -> Forest:
    """The part of a digit-trees forest whose every edge is of one training regime (MoTHer assumes one).

    ``"ft"``: the roots, their full fine-tunes and the full grandchildren (depth 2). ``"lora"``: the roots and
    their LoRA children (depth 1) — the zoo's LoRA grandchildren hang off *full* children, so a tree of LoRA
    edges only stops at depth 1.
    """
    if regime not in ("ft", "lora"):
        raise ValueError(f"regime must be 'ft' or 'lora', got {regime!r}")
    keep = []
    for n, kind in enumerate(forest.kinds):
        p = int(forest.parents[n])
        if kind == "pretrain" or (regime == "ft" and kind == "full") or \
                (regime == "lora" and kind == "lora" and p >= 0 and forest.kinds[p] == "pretrain"):
            keep.append(n)
    return forest.subset(keep)


def evaluate(forests: dict[str, Forest], regime: str, lambdas: Sequence[float] = (0.0, 0.1, 0.3, 1.0, 3.0),
             lam: float = 0.3, reverse: bool = False, ft_variant: str = "normalised", seed: int = 0) -> dict:
    """Run :func:`labkit.methods.mother.mother` on each forest (one per architecture, models shuffled with
    ``seed``, as many trees as it has roots) and pool the scores over forests.

    Returns ``{"edge_accuracy": at lam, "sweep": {λ: accuracy} (lambdas and lam), "cluster_accuracy": ...,
    "edges": number of true edges, "runs": {name: (shuffled forest, MotherResult at lam)}}``. Pass
    ``lambdas=()`` to skip the sweep (each λ costs one Edmonds run per tree).
    """
    from labkit.methods.mother import clustering_accuracy, edge_accuracy, lambda_sweep, mother

    lam = float(lam)
    others = sorted({float(x) for x in lambdas} - {lam})
    runs, sweep, n_edges, n_models, clustered = {}, dict.fromkeys(sorted([*others, lam]), 0.0), 0, 0, 0.0
    for name, forest in forests.items():
        f = forest.shuffled(seed)
        res = mother(f.layers, len(f.tree_names), regime=regime, lam=lam, reverse=reverse, ft_variant=ft_variant)
        runs[name] = (f, res)
        edges = f.true_edges
        accs = {lam: edge_accuracy(res.edges, edges), **(lambda_sweep(res, edges, others) if others else {})}
        for k, acc in accs.items():
            sweep[k] += acc * len(edges)
        n_edges += len(edges)
        n_models += len(f)
        clustered += clustering_accuracy(res.clusters, f.trees) * len(f)
    sweep = {k: v / n_edges for k, v in sweep.items()}
    return {"edge_accuracy": sweep[lam], "sweep": sweep, "cluster_accuracy": clustered / n_models,
            "edges": n_edges, "runs": runs}


def sibling_shortcuts(forest: Forest, pred_parents: np.ndarray) -> dict[str, float]:
    """Why a distance-based tree goes wrong: for every model given a wrong parent, is that parent a *sibling*
    that moved less from their common parent than the model itself (a "fan" read as a "snake")?

    Also returns the mean cosine between the weight updates of siblings (0 for independent random updates).
    """
    W = torch.cat([v.reshape(len(forest), -1) for v in forest.layers.values()], 1)
    wrong = shortcut = 0
    for c, p in enumerate(forest.parents.tolist()):
        q = int(pred_parents[c])
        if p < 0 or q == p:
            continue
        wrong += 1
        if q >= 0 and forest.parents[q] == p and (W[q] - W[p]).norm() < (W[c] - W[p]).norm():
            shortcut += 1
    cos, count = 0.0, 0
    for p in np.unique(forest.parents[forest.parents >= 0]):
        kids = np.flatnonzero(forest.parents == p)
        if len(kids) < 2:
            continue
        d = W[kids] - W[p]
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        C = d @ d.T
        off = ~torch.eye(len(kids), dtype=torch.bool)
        cos += float(C[off].sum())
        count += int(off.sum())
    return {"wrong": wrong, "sibling_shortcuts": shortcut, "share": shortcut / wrong if wrong else 0.0,
            "sibling_cosine": cos / count if count else float("nan")}


@dataclass
class TreeCase:
    """One true tree, ready for MoTHer's last step: ``D: [n, n]``, ``kurt: [n]``, true ``parents: [n]``."""

    D: torch.Tensor
    kurt: torch.Tensor
    parents: np.ndarray
    kinds: list[str]
    ids: list[str]


def tree_cases(forest: Forest, regime: str = "lora", ft_variant: str = "normalised") -> dict[str, TreeCase]:
    """``{tree name: TreeCase}`` for every true tree of ``forest`` (distance of the regime, κ of its layers)."""
    from labkit.methods.mother import ft_distance, rank_distance

    out = {}
    for t, name in enumerate(forest.tree_names):
        sub = forest.subset(np.flatnonzero(forest.trees == t))
        if len(sub) < 2:
            continue
        D = rank_distance(sub.layers) if regime == "lora" else ft_distance(sub.layers, variant=ft_variant)
        out[name] = TreeCase(D, kurtosis(sub.layers), sub.parents, sub.kinds, sub.ids)
    return out


def recover_view(case: TreeCase, lam: float, reverse: bool = False) -> dict:
    """MoTHer's arborescence on one :class:`TreeCase` at ``lam``: recovered parents, edge accuracy, wrong edges."""
    from labkit.methods.mother import edge_accuracy, edges_from_parents, recover_tree

    parents = recover_tree(case.D, case.kurt, lam, reverse=reverse)
    pred, true = set(edges_from_parents(parents)), set(edges_from_parents(case.parents))
    return {"parents": parents, "edge_accuracy": edge_accuracy(pred, true), "wrong": sorted(pred - true),
            "missed": sorted(true - pred), "lam": float(lam), "reverse": bool(reverse)}


# ------------------------------------------------------------------------------------ any folder of models


def _is_zoo(path: Path) -> bool:
    return (path / "zoo.json").is_file() and (path / "manifest.jsonl").is_file()


def load_folder(path: str | Path) -> tuple[list[str], list[dict[str, torch.Tensor]]]:
    """``(ids, float64 state dicts)`` of every model in ``path``; adapters merged onto their base.

    ``path`` is a ``ZooStore`` folder (``zoo.json`` + ``manifest.jsonl``; adapters merge onto the manifest's
    parent; every file is checked against the manifest's sha256 first) or a plain folder holding ``*.safetensors`` files (id = file stem), sub-folders with one
    ``*.safetensors`` file (id = folder name), and peft adapter sub-folders (``adapter_config.json`` +
    ``adapter_model.safetensors``) whose ``base_model_name_or_path`` names another model of the folder
    (its id, or the last part of a path / hub name).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such folder: {printable(path)}")
    if _is_zoo(path):
        store = ZooStore(path)
        ids, cache = store.ids(), {}
        return ids, [merged_state(store, i, cache, verify=True) for i in ids]
    full: dict[str, Path] = {}
    adapters: dict[str, tuple[Path, dict]] = {}
    for p in sorted(path.iterdir()):
        if p.is_file() and p.suffix == ".safetensors":
            full[p.stem] = p
        elif p.is_dir() and (p / "adapter_config.json").is_file():
            weights = p / "adapter_model.safetensors"
            if not weights.is_file():
                raise FileNotFoundError(f"adapter folder {p} has no adapter_model.safetensors "
                                        "(only safetensors adapters are read)")
            adapters[p.name] = (weights, read_adapter_config(p / "adapter_config.json"))
        elif p.is_dir():
            files = sorted(p.glob("*.safetensors"))
            if len(files) == 1:
                full[p.name] = files[0]
            elif len(files) > 1:
                raise ValueError(f"{p} holds {len(files)} safetensors files; expected one model per folder")
    states = {i: {k: v.double() for k, v in read_safetensors(f)[0].items()} for i, f in full.items()}
    pending = dict(adapters)
    while pending:  # adapters of adapters merge once their base is known
        progressed = False
        for i, (weights, config) in list(pending.items()):
            base = str(config.get("base_model_name_or_path") or "")
            key = base if base in states else base.rstrip("/").rsplit("/", 1)[-1]
            if key in states:
                states[i] = _merge(states[key], read_safetensors(weights)[0], config, str(weights.parent))
                del pending[i]
                progressed = True
        if not progressed:
            i, (_, config) = next(iter(pending.items()))
            raise ValueError(f"adapter {i!r}: its base model {config.get('base_model_name_or_path')!r} is not "
                             f"in {path}; put the base model's safetensors file next to it")
    if not states:
        raise ValueError(f"{path} holds no models: expected *.safetensors files or peft adapter folders")
    ids = list(full) + [i for i in adapters]
    return ids, [states[i] for i in ids]


def _group_by_architecture(ids: list[str], states: list[dict[str, torch.Tensor]]) -> list[list[int]]:
    """Models grouped by their parameter names; a name with two shapes is an error (one clear sentence)."""
    shapes: dict[str, tuple[tuple, str]] = {}
    groups: dict[tuple, list[int]] = {}
    for i, (model_id, st) in enumerate(zip(ids, states)):
        for k, v in st.items():
            if k in shapes and shapes[k][0] != tuple(v.shape):
                raise ValueError(f"models have different shapes: {list(shapes[k][0])} ({shapes[k][1]}) and "
                                 f"{list(v.shape)} ({model_id}) for {k!r}; MoTHer compares models of one "
                                 "architecture")
            shapes.setdefault(k, (tuple(v.shape), model_id))
        groups.setdefault(tuple(sorted(st)), []).append(i)
    return list(groups.values())


def _check_group(path: str | Path, members: list[str], layers: dict[str, torch.Tensor]) -> None:
    """Refuse a group MoTHer cannot read a tree from: a weight holding NaN or inf (every distance to that model
    would be NaN), or models that are all identical in every weight compared (every distance 0: any tree fits)."""
    for name, W in layers.items():
        bad = (~torch.isfinite(W)).flatten(1).any(1)
        if bad.any():
            model = members[int(bad.nonzero()[0])]
            raise ValueError(f"model {printable(model)!r} in {printable(path)}: weight {printable(name)!r} holds NaN "
                             "or inf; remove that model (a diverged fine-tune?) or fix its file")
    if all(bool((W == W[:1]).all()) for W in layers.values()):
        raise ValueError(f"the {len(members)} models like {printable(members[0])!r} in {printable(path)} are "
                         f"identical in every weight MoTHer compares ({len(layers)} square layers): all distances are "
                         "0, so no edge can be recovered; are these copies of one model?")


def recover_folder(path: str | Path, regime: str = "ft", lam: float = 0.3, trees: Sequence[int] | None = None,
                   reverse: bool = False, ft_variant: str = "normalised") -> dict:
    """MoTHer on every model of a folder (see :func:`load_folder`); the result as a JSON-able dict.

    Models are grouped by architecture (their parameter names) and each group is recovered on its own, with
    ``trees[g]`` trees (default 1 per group); the distance and κ use every square 2-D weight a group shares.
    """
    from labkit.methods.mother import mother, stack_layers

    ids, states = load_folder(path)
    if len(ids) < 2:
        raise ValueError(f"{path} holds a single model ({ids[0]}); MoTHer needs at least 2 models to relate")
    groups = _group_by_architecture(ids, states)
    if trees is None:
        trees = [1] * len(groups)
    trees = [int(k) for k in trees]
    if len(trees) != len(groups):
        sizes = ", ".join(f"{len(g)} like {ids[g[0]]}" for g in groups)
        raise ValueError(f"{path} holds models of {len(groups)} architectures ({sizes}); give one --trees value per "
                         f"architecture, in this order")
    out = {"regime": regime, "lambda": float(lam), "reverse": bool(reverse), "models": len(ids), "groups": [],
           "edges": [], "roots": [], "trees": {}}
    offset = 0
    for g, k in zip(groups, trees):
        members = [ids[i] for i in g]
        out["groups"].append({"models": len(members), "first": members[0], "trees": k})
        if len(g) == 1:  # a lone model of its architecture is its own tree
            out["roots"].append(members[0])
            out["trees"][members[0]] = offset
            offset += 1
            continue
        layers = stack_layers([states[i] for i in g])
        _check_group(path, members, layers)
        res = mother(layers, k, regime=regime, lam=lam, reverse=reverse, ft_variant=ft_variant)
        out["edges"] += [{"parent": members[p], "child": members[c]} for p, c in res.edges]
        out["roots"] += [members[r] for r in res.roots]
        out["trees"].update({m: offset + int(t) for m, t in zip(members, res.clusters)})
        offset += int(res.clusters.max()) + 1
    return out


# ------------------------------------------------------------------------------------- kurtosis in training


def kurtosis_trajectory(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor,
                        subsets: Sequence[torch.Tensor], lrs: Sequence[float], epochs: int = 10,
                        batch_size: int = 32, layer_names: Sequence[str] | None = None,
                        seed: int = 0) -> torch.Tensor:
    """Fine-tune copies of ``model`` (one per ``subsets[k]``, row indices of ``X``, with ``lrs[k]``; AdamW) and
    return κ (:func:`labkit.methods.mother.kurtosis`, summed over ``layer_names``, default: the square
    weights) before training and after every epoch: ``[runs, epochs + 1]``."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    names = list(layer_names) if layer_names is not None else square_layers(state)
    out = torch.zeros(len(subsets), epochs + 1, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of 32 through a tiny model: extra threads only add overhead
    try:
        _trajectories(model, state, names, X, y, subsets, lrs, epochs, batch_size, seed, out)
    finally:
        torch.set_num_threads(threads)
    return out


def _trajectories(model, state, names, X, y, subsets, lrs, epochs, batch_size, seed, out) -> None:
    import copy

    for k, (rows, lr) in enumerate(zip(subsets, lrs)):
        net = copy.deepcopy(model).train()
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
        g = torch.Generator().manual_seed(seed + k)
        snapshots = [{n: state[n].cpu().clone() for n in names}]
        for _ in range(epochs):
            order = rows[torch.randperm(len(rows), generator=g)]
            for s in range(0, len(order), batch_size):
                b = order[s:s + batch_size]
                loss = torch.nn.functional.cross_entropy(net(X[b]), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sd = net.state_dict()
            snapshots.append({n: sd[n].detach().cpu().clone() for n in names})
        out[k] = kurtosis({n: torch.stack([s[n] for s in snapshots]) for n in names})


# ----------------------------------------------------------------------------------- the probe experiment


def multi_hot(classes: Sequence[Sequence[int]], n_classes: int = 10) -> torch.Tensor:
    """Each model's training classes as a 0/1 row: ``[n_models, n_classes]``."""
    Y = torch.zeros(len(classes), n_classes)
    for i, c in enumerate(classes):
        Y[i, list(c)] = 1.0
    return Y


def probe_accuracy(X_train: torch.Tensor, Y_train: torch.Tensor, X_test: torch.Tensor, Y_test: torch.Tensor,
                   alpha: float = 10.0) -> float:
    """A linear probe (ridge regression on standardised weights, threshold 0.5) predicting each model's
    training classes from one layer. ``X: [models, features]``, ``Y: [models, classes]`` (0/1).
    Returns the mean per-class binary accuracy on the test models (ProbeX's metric for Model-J)."""
    X_train, X_test = X_train.double(), X_test.double()
    mu, sd = X_train.mean(0), X_train.std(0).clamp_min(1e-8)
    A, B = (X_train - mu) / sd, (X_test - mu) / sd
    y_mu = Y_train.double().mean(0)
    # dual form: W = Aᵀ (A Aᵀ + αI)⁻¹ (Y − ȳ), cheap when models ≪ features
    G = A @ A.T + alpha * torch.eye(A.shape[0], dtype=A.dtype)
    pred = B @ (A.T @ torch.linalg.solve(G, Y_train.double() - y_mu)) + y_mu
    return float(((pred > 0.5).double() == Y_test.double()).double().mean())


def within_vs_mixed(X: torch.Tensor, Y: torch.Tensor, trees: np.ndarray, train: np.ndarray, test: np.ndarray,
                    repeats: int = 5, seed: int = 0, alpha: float = 10.0) -> dict[str, float]:
    """The motivating experiment of ProbeX (§1) with an equal training budget.

    For each tree t, a probe for t's test models is trained on the n_t training models of tree t (**within**),
    on n_t training models drawn from all trees (**mixed**, ``repeats`` draws), and on the other trees' models
    only (**cross**). ``X: [models, features]`` (one layer, flattened), ``Y: [models, classes]``, ``trees: [models]``,
    ``train``/``test``: boolean masks. Returns test-size-weighted means of :func:`probe_accuracy`.
    """
    rng = np.random.default_rng(seed)
    res = {"within": 0.0, "mixed": 0.0, "cross": 0.0}
    total = 0
    pool = np.flatnonzero(train)
    for t in np.unique(trees):
        own, te = np.flatnonzero(train & (trees == t)), test & (trees == t)
        if len(own) < 2 or te.sum() == 0:
            continue
        w = int(te.sum())
        res["within"] += w * probe_accuracy(X[own], Y[own], X[te], Y[te], alpha)
        res["mixed"] += w * float(np.mean([probe_accuracy(X[m], Y[m], X[te], Y[te], alpha) for m in
                                           (rng.choice(pool, len(own), replace=False) for _ in range(repeats))]))
        other = np.flatnonzero(train & (trees != t))
        res["cross"] += w * probe_accuracy(X[other], Y[other], X[te], Y[te], alpha) if len(other) > 1 else 0.0
        total += w
    if total == 0:
        raise ValueError("no tree has both training and test models")
    return {k: v / total for k, v in res.items()}
