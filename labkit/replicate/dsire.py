"""``labkit dsire``: DSiRe on a LoRA-WiSE config, with the paper's protocol (reference/dsire.md §2, §4, §5).

Salama, Kahana, Horwitz & Hoshen, *Dataset Size Recovery from LoRA Weights*, arXiv 2406.19395; the method is
``labkit.methods.dsire``.

* ``read_lora_wise(root, config, …)`` streams a config (the Hub download, or ``labkit export … --format lora-wise``)
  one layer at a time — one pair of parquet columns, ``A: [N, r, d_in]`` and ``B: [N, d_out, r]`` for every model —
  and keeps only DSiRe's voters (``dsire_features``, batched over the models of the layer), the per-layer
  Frobenius norms and, for the layers named in ``keep``, the factors. Voters are named by the official simplified
  keys (``….attn1.to_out.0`` → ``….attn1.to_out``) and merged in the official order (``official_order``).
* ``dsire_lora_wise(root, config, …)`` runs the paper's protocol on them (``dsire.cross_validate``: seed-42 splits
  of the personalisation sets, 15 train sets, 10 repeats) for DSiRe and the Frobenius-NN baseline and returns a
  JSON-ready dict with the paper's numbers for the config (``PAPER``, from ``labkit.paper_numbers``) and timings (``seconds["evaluate"]``:
  the two cross-validations).

Set order (spec §2): split index ``i`` is the ``i``-th set name. The medium and high configs name their sets 1..50,
and their sorted order is the official one. The low configs use Concept101 folder names, which the official code
indexes through a hard-coded list that the spec does not give; by default they are sorted here too, so the low
splits are seeded the same way but are not the paper's exact splits. Pass ``set_order`` (``--set-order FILE``,
one name per line) to use the official list.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from labkit import paper_numbers
from labkit.methods import dsire
from labkit.safe_io import printable, read_bytes

__all__ = ["PAPER", "LoraWiseFeatures", "dsire_lora_wise", "read_lora_wise", "read_set_order", "voter_key"]

# {config: (source, DSiRe, Frobenius-NN or None)}, each metric as (mean, std) from labkit.paper_numbers: the paper's
# value where it was verified, else None (the spec's unverified transcription stays in paper_numbers as `claimed`)


def _verified(config: str, method: str, row: dict | None) -> dict | None:
    if row is None:
        return None
    nums = {m: paper_numbers.NUMBERS[f"dsire.{config}.{method}.{m}"] for m in row}
    return {m: (paper_numbers.paper(f"dsire.{config}.{method}.{m}"), n.std) for m, n in nums.items()}


PAPER = {config: (table, _verified(config, "dsire", ours), _verified(config, "frobenius_nn", frob))
         for config, (table, ours, frob) in paper_numbers.DSIRE_TABLES.items()}
LOW_SET_ORDER_NOTE = ("low-range set names are Concept101 folder names; the splits index them in sorted order (the "
                      "official code indexes a hard-coded list not given in the spec), so they are not the paper's "
                      "exact splits; pass --set-order with the official list to use it")


def voter_key(module: str) -> str:
    """The official simplified key of a LoRA-WiSE module: ``….to_out.0`` → ``….to_out`` (spec §2)."""
    return re.sub(r"\.to_out\.0(?=\.|$)", ".to_out", module)


def paper_row(config: str) -> dict | None:
    """The paper's numbers for ``config``: ``{"source", "dsire": {metric: {mean, std, status}}, "frobenius_nn"}``;
    ``mean`` / ``std`` are None where nobody verified them (``status`` "unverified", ``claimed``: the spec's value)."""
    if config not in PAPER:
        return None
    source, ours, frob = PAPER[config]

    def fmt(method, row):
        if row is None:
            return None
        out = {}
        for m, v in row.items():
            n = paper_numbers.NUMBERS[f"dsire.{config}.{method}.{m}"]
            out[m] = {"mean": v[0], "std": v[1], "status": n.status,
                      **({"claimed": n.claimed, "claimed_std": n.claimed_std} if n.status == "unverified" else {})}
        return out

    return {"source": source, "dsire": fmt("dsire", ours), "frobenius_nn": fmt("frobenius_nn", frob)}


@dataclass
class LoraWiseFeatures:
    """What ``read_lora_wise`` keeps of a config: voters ``{name: [N, r]}``, Frobenius voters ``{layer: [N, 1]}``,
    labels, set names, the simplified layer keys and the factors ``{layer: (A, B)}`` of the layers asked for."""

    config: str
    rank: int
    layers: list[str]
    sizes: torch.Tensor  # [N] int64
    sets: list
    voters: dict[str, torch.Tensor]
    frobenius: dict[str, torch.Tensor]
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _rank_in_name(config: str) -> int | None:
    m = re.match(r"^[a-z]+_(\d+)", config)
    return int(m.group(1)) if m else None


def _open(root: str | Path, config: str, rank: int | None):
    from labkit.datasets import BenchmarkMissingError
    from labkit.datasets.lora_wise import CONFIGS, open_lora_wise

    if rank is not None:
        if rank < 1:
            raise ValueError(f"--rank must be a positive integer, got {rank}")
        named = _rank_in_name(config)
        if named is not None and named != rank:
            raise ValueError(f"config {config} holds rank-{named} LoRAs; --rank {rank} would reshape its flat cells "
                             f"wrongly (leave --rank out, or pass --rank {named})")
    try:
        return open_lora_wise(root, config, rank)
    except BenchmarkMissingError:
        present = sorted({f"{p.parent.parent.name}_{p.parent.name}" for p in Path(root).glob("*/*/*.parquet")}
                         | {p.parent.name for p in Path(root).glob("*/*.parquet")}) if Path(root).is_dir() else []
        if config in CONFIGS or not present:
            raise
        raise ValueError(f"unknown LoRA-WiSE config {config!r}: {root} holds {present} (the benchmark's configs "
                         f"are {', '.join(CONFIGS)})") from None


def read_lora_wise(root: str | Path, config: str, rank: int | None = None, keep: Sequence[str] = (),
                   progress: bool = True, opened=None) -> LoraWiseFeatures:
    """Stream LoRA-WiSE config ``config`` under ``root`` layer by layer into DSiRe's voters (module docstring).

    ``keep``: simplified layer keys whose factors ``(A [N, r, d_in], B [N, d_out, r])`` (float64) are kept too;
    ``opened``: the config already opened with ``open_lora_wise`` (e.g. to pick ``keep`` from its ``.keys``).
    Errors: ``BenchmarkMissingError`` naming the download command when the config is not on disk,
    ``BenchmarkFormatError`` / ``ValueError`` for a wrong rank or a broken file.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    data = opened or _open(root, config, rank)
    keys = {voter_key(k): k for k in data.keys}
    unknown = [k for k in keep if k not in keys]
    if unknown:
        raise KeyError(f"no LoRA layer {unknown[0]!r} in {config}; its layers are {list(keys)[:3]} …")
    voters: dict[str, torch.Tensor] = {}
    frob: dict[str, torch.Tensor] = {}
    factors = {}
    load = feats = 0.0
    with tqdm(total=len(keys), desc=f"LoRA-WiSE {config} layers", unit="layer", disable=not progress) as bar:
        for name, key in keys.items():
            t1 = time.perf_counter()
            A, B = data.layer(key)  # [N, r, d_in], [N, d_out, r] float64: the only columns read
            if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
                raise ValueError(f"LoRA-WiSE {config} under {printable(root)}: layer {key} holds NaN or inf "
                                 "weights; download the config again (DSiRe's singular values would be NaN)")
            t2 = time.perf_counter()
            layer_voters = dsire.dsire_features({name: A}, {name: B})
            voters.update(layer_voters)
            frob[name] = layer_voters[name].norm(dim=-1, keepdim=True)  # ‖BA‖_F = ‖σ(BA)‖: Frobenius-NN's feature
            feats += time.perf_counter() - t2
            load += t2 - t1
            if name in keep:
                factors[name] = (A, B)
            bar.update(1)
    seconds = {"open": round(time.perf_counter() - t0 - load - feats, 3), "load": round(load, 3),
               "features": round(feats, 3)}
    return LoraWiseFeatures(config, data.rank, list(keys), data.sizes.clone(), list(data.names),
                            dsire.official_order(voters), frob, factors, seconds)


SET_ORDER_LIMIT = 1 << 20  # a list of set names; a larger file is not one


def read_set_order(path: str | Path) -> list:
    """The set names of a ``--set-order`` file, one a line (blank lines skipped; a name of digits becomes an
    int, as the medium and high configs name their sets 1..50). Errors name the file: missing, not a regular
    file, over 1 MiB, not UTF-8 text, or no names."""
    data = read_bytes(path, SET_ORDER_LIMIT, "set-order file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--set-order {printable(path)} is not UTF-8 text; give a text file with one set name "
                         "a line") from None
    if "\x00" in text:
        raise ValueError(f"--set-order {printable(path)} is a binary file; give a text file with one set name "
                         "a line")
    names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise ValueError(f"--set-order {printable(path)} holds no set names; give one set name a line")
    return [int(x) if x.lstrip("-").isdigit() else x for x in names]


def _check_sets(sets: list, set_order: Sequence | None, n_train_sets: int, source: str = "--set-order",
                config: str = "the config") -> list:
    names = sorted(set(sets), key=lambda s: (isinstance(s, str), s)) if set_order is None else list(set_order)
    if set_order is not None and (set(names) != set(sets) or len(names) != len(set(names))):
        missing = sorted(map(str, set(sets) - set(names)))
        unknown = sorted(map(str, set(names) - set(sets)))
        repeated = sorted({str(n) for n in names if names.count(n) > 1})
        what = "; ".join(f"{label} e.g. {printable(', '.join(group[:3]))}" for label, group in
                         (("missing", missing), ("not in the config", unknown), ("listed twice", repeated)) if group)
        raise ValueError(f"{source} must list every set name of {config} once, one a line ({len(set(sets))} names, "
                         f"e.g. {printable(', '.join(map(str, sorted(set(sets), key=str)[:3])))}); {what}")
    if not 0 < n_train_sets < len(names):
        raise ValueError(f"--n-train-sets {n_train_sets} leaves no test sets: the config has {len(names)} "
                         f"personalisation sets (need 1 ≤ n-train-sets ≤ {len(names) - 1})")
    return names


def dsire_lora_wise(root: str | Path, config: str, *, rank: int | None = None, repeats: int = 10,
                    n_train_sets: int = 15, seed: int = 42, set_order: Sequence | None = None,
                    set_order_file: str | Path | None = None, progress: bool = True) -> dict:
    """DSiRe and Frobenius-NN on a LoRA-WiSE config with the paper's protocol; a JSON-ready result dict.

    Keys: config, root, rank, n_models, n_layers, n_voters, n_sets, n_train_sets, repeats, seed, sizes (the
    classes), set_order, dsire and frobenius_nn (``dsire.cross_validate``'s dict: ``<metric>_mean``,
    ``<metric>_std``, per-split lists and the train sets of each split), paper (spec §5 or None), seconds, notes.
    ``set_order_file``: the file ``set_order`` was read from (``read_set_order``), named by its errors.
    """
    t0 = time.perf_counter()
    if repeats < 1:
        raise ValueError(f"--splits must be positive, got {repeats}")
    data = _open(root, config, rank)
    source = f"--set-order {printable(set_order_file)}" if set_order_file is not None else "set_order"
    names = _check_sets(list(data.names), set_order, n_train_sets, source, config)  # before reading any matrix
    feats = read_lora_wise(root, config, rank, progress=progress, opened=data)
    t1 = time.perf_counter()
    protocol = {"n_train_sets": n_train_sets, "repeats": repeats, "seed": seed, "set_order": names}
    ours = dsire.cross_validate(feats.voters, feats.sizes, feats.sets, **protocol)
    frob = dsire.cross_validate(feats.frobenius, feats.sizes, feats.sets, **protocol)
    notes = []
    if any(isinstance(s, str) for s in feats.sets) and set_order is None:
        notes.append(LOW_SET_ORDER_NOTE)
    if config not in PAPER:
        notes.append(f"the paper reports no numbers for {config}")
    return {"config": config, "root": str(root), "rank": feats.rank, "n_models": len(feats.sizes),
            "n_layers": len(feats.layers), "n_voters": len(feats.voters), "n_sets": len(names),
            "n_train_sets": n_train_sets, "repeats": repeats, "seed": seed,
            "sizes": sorted(set(feats.sizes.tolist())),
            "set_order": "given" if set_order is not None else "sorted names",
            "dsire": ours, "frobenius_nn": frob, "paper": paper_row(config),
            "seconds": {**feats.seconds, "evaluate": round(time.perf_counter() - t1, 3),
                        "total": round(time.perf_counter() - t0, 3)},
            "notes": notes}
