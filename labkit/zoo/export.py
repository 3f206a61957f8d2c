"""Export mini-jungle zoos to the public benchmarks' on-disk formats (Model-J, LoRA-WiSE, LoWRA Bench).

The replication path (DESIGN §8) reads the papers' public data with ``labkit.datasets``; these exports write
the kit's own zoos in exactly those formats, so the same loaders, the ``labkit detune`` command and the official
scripts run on both, and a learner can see what the public files hold at a size that fits a laptop.

* ``export_model_j(store, out)`` — the ``digit-trees`` zoo as Model-J's discriminative subsets
  (reference/probex.md §4.1): one subset per root (``mlp_a``, ``mlp_b``, ``ae_mlp``, ``cnn``), its depth-1 full
  fine-tunes in the Hugging Face hub-cache layout
  ``<out>/<Subset>/<split>/models--ProbeX--Model-J__<Subset>__model_idx_<NNNN>/{refs/main, snapshots/<hash>/
  model.safetensors}``; the safetensors metadata keeps ``dataset_chosen_targets`` (``repr`` of the class names)
  and every hyper-parameter as strings.
* ``export_lora_wise(store, out)`` — the ``digit-diffusion`` dataset-size zoo (rows ``zoo == "size"``) as
  LoRA-WiSE (reference/dsire.md §4): one config per range and rank (``low_8``, ``medium_8``) in
  ``<range>/<rank>/train-00000-of-00001.parquet`` with ``label`` (dataset size, int64), ``name`` (the
  personalisation set, int64 from 1) and one flat ``list<float64>`` column per LoRA matrix,
  ``<module>.lora.down.weight`` (A, ``r × in``) and ``<module>.lora.up.weight`` (B, ``out × r``), row-major.
* ``export_lowra(store, out)`` — a Spectral DeTuning zoo (``minilm-lora``; ``digit-diffusion`` rows
  ``zoo == "detune"``) as LoWRA Bench (reference/spectral_detuning.md §3): one row per adapted layer in
  ``<subset>/train-00000-of-00001.parquet`` with ``task_name, layer_model, layer_name, pre_ft_name`` (string),
  ``pre_ft_weight`` (``list<list<float32>>``) and per LoRA ``k`` ``lora_{k}_name`` (string),
  ``lora_{k}_A_weight``, ``lora_{k}_B_weight`` (``list<list<float32>>``), ``lora_{k}_rank``,
  ``lora_{k}_alpha`` (int64): 5 + 5·n columns, the exact 80 of the benchmark when n = 15.

Every parquet folder gets the ``README.md`` YAML ``configs:`` block that ``datasets.load_dataset(folder, name)``
needs; exporting a second config into the same folder adds it to that block. Writes are atomic: a config is
written into a hidden temporary folder next to its final place and renamed into place, so an interrupted
export never leaves a half-written config behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from labkit.lora import lora_factors
from labkit.safe_io import write_atomic
from labkit.tensor_files import read_safetensors, save_safetensors
from labkit.zoo.store import ZooStore

__all__ = ["FORMATS", "LOWRA_SUBSETS", "describe", "export", "export_lora_wise", "export_lowra", "export_model_j",
           "lowra_table", "write_readme_configs"]

FORMATS = ("model-j", "lora-wise", "lowra")
# recipe -> (LoWRA subset name, task_name, layer_model) of its Spectral DeTuning zoo
LOWRA_SUBSETS = {"minilm-lora": ("minilm-lora", "minilm-lora text tasks", "bert"),
                 "digit-diffusion": ("digit-diffusion", "digit-diffusion concepts", "denoiser")}


# ------------------------------------------------------------------------------------------------ helpers


def _recipe(store: ZooStore) -> str:
    return store.info["recipe"]


def _require(store: ZooStore, recipes: Sequence[str], fmt: str) -> None:
    if _recipe(store) not in recipes:
        raise ValueError(f"the {fmt} export takes a {' or '.join(recipes)} zoo, not {_recipe(store)!r}")
    if not store.complete:
        raise ValueError(f"zoo {store.root.name} is not fully built; run `labkit zoo build {_recipe(store)}` first")


def _fresh_tmp(final: Path) -> Path:
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` folder to ``final`` (replacing an older export of the same config)."""
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_readme_configs(folder: Path, configs: dict[str, str]) -> Path:
    """Write or update ``folder/README.md``'s YAML ``configs:`` (config name → data-file glob, split ``train``).

    The card is read and written with ``huggingface_hub.DatasetCard``: configs already listed there, other
    metadata and the text are kept (so several exports can share one folder); the file is replaced atomically.
    This is the block ``datasets.load_dataset(folder, name=config)`` reads.
    """
    from huggingface_hub import DatasetCard

    from labkit.datasets._parquet import read_card

    folder = Path(folder)
    path = folder / "README.md"
    card = read_card(path) if path.is_file() else \
        DatasetCard("---\n{}\n---\nExported from a labkit mini-jungle zoo (labkit.zoo.export).\n")
    old = getattr(card.data, "configs", None)
    entries = {e["config_name"]: e for e in (old if isinstance(old, list) else [])
               if isinstance(e, dict) and "config_name" in e}
    for name, glob in configs.items():
        entries[name] = {"config_name": name, "data_files": [{"split": "train", "path": glob}]}
    card.data.configs = [entries[k] for k in sorted(entries)]
    write_atomic(path, str(card))
    return path


def _list_of_lists(mats: Sequence[np.ndarray], dtype):
    """``pyarrow`` ``list<list<dtype>>`` array with one 2-D matrix (a list of rows) per entry."""
    import pyarrow as pa

    mats = [np.ascontiguousarray(m, dtype=dtype) for m in mats]
    outer = np.cumsum([0] + [m.shape[0] for m in mats], dtype=np.int32)
    inner = np.cumsum([0] + [m.shape[1] for m in mats for _ in range(m.shape[0])], dtype=np.int64)
    if inner[-1] >= 2**31:
        raise ValueError("too many values for one parquet column chunk; export fewer LoRAs or layers")
    rows = pa.ListArray.from_arrays(pa.array(inner.astype(np.int32)), pa.array(np.concatenate([m.ravel() for m in mats])))
    return pa.ListArray.from_arrays(pa.array(outer), rows)


def _flat_lists(mats: Sequence[np.ndarray], dtype):
    """``pyarrow`` ``list<dtype>`` array: each matrix flattened row-major."""
    import pyarrow as pa

    flat = [np.ascontiguousarray(m, dtype=dtype).ravel() for m in mats]
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in flat])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(flat)))


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=1 if "pre_ft_weight" in table.column_names else None)


# ------------------------------------------------------------------------------------------------ Model-J


def export_model_j(store: ZooStore, out: str | Path, roots: Sequence[str] | None = None) -> list[Path]:
    """The ``digit-trees`` zoo as Model-J subsets, one per root, in the hub-cache layout (probex.md §4.1).

    Exports each root's depth-1 full fine-tunes (Model-J's trees are root → children); ``model_idx`` numbers
    them in manifest order. Returns the subset folders ``<out>/<root>``.
    """
    _require(store, ["digit-trees"], "Model-J")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in store.rows() if r["kind"] == "model" and r.get("depth") == 1]
    roots = list(roots) if roots is not None else list(dict.fromkeys(r["tree"] for r in rows))
    written = []
    for subset in roots:
        members = [r for r in rows if r["tree"] == subset]
        if not members:
            raise ValueError(f"no depth-1 full fine-tunes of root {subset!r} in {store.root.name}")
        final = out / subset
        tmp = _fresh_tmp(final)
        for idx, row in enumerate(members):
            tensors, metadata = store.load_model(row["id"])
            metadata = {**metadata, "subset": subset, "split": row["split"], "model_idx": str(idx),
                        "labkit_id": row["id"], "base_model": f"labkit/digit-trees/{subset}"}
            repo = f"models--ProbeX--Model-J__{subset}__model_idx_{idx:04d}"
            commit = hashlib.sha1(f"{store.root.name}/{row['id']}/{row['sha256']}".encode()).hexdigest()
            snapshot = tmp / row["split"] / repo / "snapshots" / commit
            snapshot.mkdir(parents=True)
            save_safetensors(snapshot / "model.safetensors", tensors, metadata)
            (tmp / row["split"] / repo / "refs").mkdir()
            (tmp / row["split"] / repo / "refs" / "main").write_text(commit)
        _replace_dir(tmp, final)
        written.append(final)
    return written


# ---------------------------------------------------------------------------------------------- LoRA-WiSE


def export_lora_wise(store: ZooStore, out: str | Path) -> dict[str, Path]:
    """The ``digit-diffusion`` dataset-size zoo as LoRA-WiSE configs ``<range>_<rank>`` (dsire.md §4).

    One row per LoRA, in manifest order: ``label`` = its number of images, ``name`` = its personalisation set
    (1, 2, … in order of first appearance; the same set at every size), then per adapted module the flat
    float64 ``lora.down`` (A) and ``lora.up`` (B) columns. Returns ``{config: parquet path}``.
    """
    import pyarrow as pa

    _require(store, ["digit-diffusion"], "LoRA-WiSE")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in store.rows() if r.get("zoo") == "size"]
    if not rows:
        raise ValueError(f"no dataset-size LoRAs (zoo == 'size') in {store.root.name}")
    sets = {s: i + 1 for i, s in enumerate(dict.fromkeys(r["set"] for r in rows))}
    written: dict[str, Path] = {}
    for rng in dict.fromkeys(r["range"] for r in rows):
        members = [r for r in rows if r["range"] == rng]
        ranks = {r["hparams"]["r"] for r in members}
        if len(ranks) != 1:
            raise ValueError(f"LoRAs of the {rng} range have several ranks {sorted(ranks)}; one config holds one rank")
        rank = ranks.pop()
        factors = [lora_factors(store.load_adapter_weights(r["id"])[0]) for r in members]
        modules = list(factors[0])
        columns = {"label": pa.array([r["n"] for r in members], pa.int64()),
                   "name": pa.array([sets[r["set"]] for r in members], pa.int64())}
        for m in modules:
            columns[f"{m}.lora.down.weight"] = _flat_lists([f[m][0].numpy() for f in factors], np.float64)
            columns[f"{m}.lora.up.weight"] = _flat_lists([f[m][1].numpy() for f in factors], np.float64)
        config = f"{rng}_{rank}"
        final = out / rng / str(rank)
        tmp = _fresh_tmp(final)
        _write_parquet(pa.table(columns), tmp / "train-00000-of-00001.parquet")
        _replace_dir(tmp, final)
        written[config] = final / "train-00000-of-00001.parquet"
        write_readme_configs(out, {config: f"{rng}/{rank}/train-*"})
    return written


# -------------------------------------------------------------------------------------------------- LoWRA


def _detune_source(store: ZooStore) -> tuple[list[dict], dict[str, torch.Tensor], str]:
    """The Spectral DeTuning rows of a zoo, the pre-fine-tuning state dict and its name."""
    recipe = _recipe(store)
    if recipe == "minilm-lora":
        from labkit.text import BASE_MODEL_ID, minilm_path

        base, _ = read_safetensors(minilm_path() / "model.safetensors")
        return store.rows(), base, BASE_MODEL_ID
    from labkit.zoo.recipes.digit_diffusion import BASE_MODEL_NAME, ROOT_ID

    base, _ = store.load_model(ROOT_ID)
    return [r for r in store.rows() if r.get("zoo") == "detune"], base, BASE_MODEL_NAME


def lowra_table(store: ZooStore, n_loras: int | None = None):
    """The LoWRA Bench table (``pyarrow.Table``, one row per adapted layer) of a Spectral DeTuning zoo.

    ``n_loras``: keep the first ``n`` LoRAs in manifest order (all by default; 15 gives the benchmark's exact
    80 columns).
    """
    import pyarrow as pa

    _require(store, list(LOWRA_SUBSETS), "LoWRA")
    rows, base, base_name = _detune_source(store)
    if n_loras is not None:
        if not 1 <= n_loras <= len(rows):
            raise ValueError(f"n_loras={n_loras}: the zoo holds {len(rows)} Spectral DeTuning LoRAs")
        rows = rows[:n_loras]
    if not rows:
        raise ValueError(f"no Spectral DeTuning LoRAs in {store.root.name}")
    _, task_name, layer_model = LOWRA_SUBSETS[_recipe(store)]
    adapters = [store.load_adapter_weights(r["id"]) for r in rows]
    factors = [lora_factors(tensors) for tensors, _ in adapters]
    layers = list(factors[0])
    if any(list(f) != layers for f in factors):
        raise ValueError("the LoRAs adapt different layers; LoWRA needs the same layers in every LoRA")
    for config in (c for _, c in adapters):
        if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_rslora"):
            raise ValueError("LoWRA stores one rank and alpha per LoRA; rank/alpha patterns and rsLoRA are not "
                             "supported")
    string = pa.string()
    L = len(layers)
    columns = {"task_name": pa.array([task_name] * L, string),
               "layer_model": pa.array([layer_model] * L, string),
               "layer_name": pa.array([f"{layer}.weight" for layer in layers], string),
               "pre_ft_name": pa.array([base_name] * L, string),
               "pre_ft_weight": _list_of_lists([base[f"{layer}.weight"].numpy() for layer in layers], np.float32)}
    for k, (row, (_, config), f) in enumerate(zip(rows, adapters, factors)):
        alpha = config["lora_alpha"]
        if alpha != int(alpha):
            raise ValueError(f"LoRA {row['id']} has lora_alpha={alpha}; LoWRA stores alpha as an integer")
        columns[f"lora_{k}_name"] = pa.array([row["id"]] * L, string)
        columns[f"lora_{k}_A_weight"] = _list_of_lists([f[layer][0].numpy() for layer in layers], np.float32)
        columns[f"lora_{k}_B_weight"] = _list_of_lists([f[layer][1].numpy() for layer in layers], np.float32)
        columns[f"lora_{k}_rank"] = pa.array([int(config["r"])] * L, pa.int64())
        columns[f"lora_{k}_alpha"] = pa.array([int(alpha)] * L, pa.int64())
    return pa.table(columns)


def export_lowra(store: ZooStore, out: str | Path, subset: str | None = None, n_loras: int | None = None) -> Path:
    """A Spectral DeTuning zoo as a LoWRA Bench config ``subset`` (default: the recipe name); returns the parquet.

    Layers are the adapted ``nn.Linear`` weights (``layer_name`` = the state-dict key, e.g.
    ``encoder.layer.4.attention.self.query.weight``); ``pre_ft_weight`` is the base the LoRAs were trained on.
    """
    table = lowra_table(store, n_loras)
    subset = subset or LOWRA_SUBSETS[_recipe(store)][0]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = out / subset
    tmp = _fresh_tmp(final)
    _write_parquet(table, tmp / "train-00000-of-00001.parquet")
    _replace_dir(tmp, final)
    write_readme_configs(out, {subset: f"{subset}/train-*"})
    return final / "train-00000-of-00001.parquet"


# ------------------------------------------------------------------------------------------------ dispatch


def export(store: ZooStore, fmt: str, out: str | Path, **kwargs) -> list[Path]:
    """Export ``store`` in format ``fmt`` (``model-j`` | ``lora-wise`` | ``lowra``); returns what was written."""
    if fmt == "model-j":
        return export_model_j(store, out, **kwargs)
    if fmt == "lora-wise":
        return list(export_lora_wise(store, out, **kwargs).values())
    if fmt == "lowra":
        return [export_lowra(store, out, **kwargs)]
    raise ValueError(f"unknown export format {fmt!r}; formats are {', '.join(FORMATS)}")


def describe(paths: Sequence[Path]) -> str:
    """One line per written path with its size, for the command line."""
    lines = []
    for p in paths:
        size = sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file()) if Path(p).is_dir() else \
            Path(p).stat().st_size
        lines.append(f"{p} ({size / 1e6:.2f} MB)")
    return "\n".join(lines)
