"""``labkit trees recover``: MoTHer (Horwitz et al., ICLR 2025, §4) on any folder of models.

* :func:`load_folder` — every model of a folder as float64 state dicts: a ``ZooStore`` folder (checked against its
  manifest), ``*.safetensors`` files, or peft adapter folders merged onto a base model of the folder with peft's
  rules (``labkit.lora.merge_adapter``);
* :func:`recover_folder` — the models grouped by architecture, MoTHer run on each group, the recovered edges,
  roots and trees as a JSON-able dict (what the command prints).

The lab's own zoo forests are ``labkit.forests``; the algorithm is ``labkit.methods.mother``. Every file is read
with safetensors (``labkit.tensor_files.read_safetensors``); nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from labkit.forests import merged_state
from labkit.lora import ADAPTER_CONFIG, merge_adapter, read_adapter
from labkit.safe_io import printable
from labkit.tensor_files import read_safetensors
from labkit.zoo.store import ZooStore

__all__ = ["load_folder", "recover_folder"]


def _is_zoo(path: Path) -> bool:
    return (path / "zoo.json").is_file() and (path / "manifest.jsonl").is_file()


def load_folder(path: str | Path) -> tuple[list[str], list[dict[str, torch.Tensor]]]:
    """``(ids, float64 state dicts)`` of every model in ``path``; adapters merged onto their base.

    ``path`` is a ``ZooStore`` folder (``zoo.json`` + ``manifest.jsonl``; adapters merge onto the manifest's
    parent; every file is checked against the manifest's sha256 first) or a plain folder holding
    ``*.safetensors`` files (id = file stem), sub-folders with one ``*.safetensors`` file (id = folder name), and
    peft adapter sub-folders (``adapter_config.json`` + ``adapter_model.safetensors``) whose
    ``base_model_name_or_path`` names another model of the folder (its id, or the last part of a path / hub name).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such folder: {printable(path)}")
    if _is_zoo(path):
        store = ZooStore(path)
        ids, cache = store.ids(), {}
        return ids, [merged_state(store, i, cache, verify=True) for i in ids]
    full: dict[str, Path] = {}
    adapters: dict[str, tuple[dict, dict[str, torch.Tensor]]] = {}
    for p in sorted(path.iterdir()):
        if p.is_file() and p.suffix == ".safetensors":
            full[p.stem] = p
        elif p.is_dir() and (p / ADAPTER_CONFIG).is_file():
            adapters[p.name] = read_adapter(p)
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
        for i, (config, tensors) in list(pending.items()):
            base = str(config.get("base_model_name_or_path") or "")
            key = base if base in states else base.rstrip("/").rsplit("/", 1)[-1]
            if key in states:
                states[i] = merge_adapter(states[key], config, tensors, printable(path / i))
                del pending[i]
                progressed = True
        if not progressed:
            i, (config, _) = next(iter(pending.items()))
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
