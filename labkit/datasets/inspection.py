"""What a model file or folder holds — ``labkit inspect PATH``.

Recognises every format the kit reads, always through the safe loaders (no pickle code runs):

* ``.safetensors`` (Model-J, peft adapters, diffusers LoRAs, the kit's zoos): tensors from the header only, the
  metadata (``dataset_chosen_targets`` parsed to a list), LoRA ranks of ``lora.down``/``lora_A`` pairs;
* a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) and a kit zoo
  (``zoo.json`` + ``manifest.jsonl``, see ``labkit/zoo/store.py``);
* LoWRA Bench and LoRA-WiSE parquet shards (or their dataset folders), Model-J subset folders;
* torch checkpoints (zip format) and pickles through ``restricted_load`` (tensors, OmegaConf configs, VTHR trees),
  ``.npy`` arrays (``allow_pickle=False``), JSON files.

Anything else, or a pickle that refers to code outside the allow-list, is refused with a one-line reason.

Public API: ``inspect_path(path) -> dict`` (keys ``path``, ``format``, ``tensors`` [{name, dtype, shape}],
``metadata``, ``lora_ranks`` {module: rank}, ``notes`` [str], ``problems`` [str]) and ``format_report(info, limit=40) -> str``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from labkit.datasets import BenchmarkFormatError
from labkit.safe_io import printable, read_json, regular_file

__all__ = ["format_report", "inspect_path"]

_LORA_PAIRS = ((".lora.down.weight", ".lora.up.weight"), (".lora_A.weight", ".lora_B.weight"))


_MAX_JSON = 64 << 20  # a JSON file labkit inspects (configs, split files): 64 MiB is far above any real one


def _info(path: Path, fmt: str, **kw) -> dict:
    return {"path": str(path), "format": fmt, "tensors": [], "metadata": {}, "lora_ranks": {}, "notes": [],
            "problems": [], **kw}


def _lora_ranks(tensors: list[dict]) -> dict[str, int]:
    shapes = {t["name"]: t["shape"] for t in tensors}
    ranks = {}
    for down, up in _LORA_PAIRS:
        for name, shape in shapes.items():
            if name.endswith(down) and name[: -len(down)] + up in shapes and shape:
                ranks[name[: -len(down)]] = int(shape[0])
    return ranks


def _safetensors(path: Path) -> dict:
    from labkit.datasets.model_j import parse_chosen_targets, read_header

    header, meta = read_header(path)
    info = _info(path, "safetensors")
    info["tensors"] = [{"name": k, "dtype": d, "shape": s} for k, (d, s) in sorted(header.items())]
    for k, v in meta.items():
        if k == "dataset_chosen_targets":
            try:
                v = list(parse_chosen_targets(v, str(path)))
                info["notes"].append(f"Model-J discriminative model: {len(v)} training classes")
            except BenchmarkFormatError:
                info["notes"].append("dataset_chosen_targets is not the repr of a list of class names")
        elif k == "imagenet_class_id":
            info["notes"].append(f"Model-J SD LoRA trained on ImageNet class {v}")
        info["metadata"][k] = v
    info["lora_ranks"] = _lora_ranks(info["tensors"])
    if info["lora_ranks"]:
        info["format"] = "safetensors (LoRA weights)"
    return info


def _tensor_rows(obj, prefix: str = "", out: list | None = None) -> list[dict]:
    out = [] if out is None else out
    if isinstance(obj, torch.Tensor):
        out.append({"name": prefix or "<tensor>", "dtype": str(obj.dtype).replace("torch.", ""),
                    "shape": list(obj.shape)})
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _tensor_rows(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensor_rows(v, f"{prefix}.{i}" if prefix else str(i), out)
    return out


def _pickled(path: Path) -> dict:
    from labkit.datasets.safe_pickle import NUMPY, OMEGACONF, restricted_load, to_plain
    from labkit.datasets.vthr import VTHR_CLASSES, load_vthr_graph

    obj = restricted_load(path, {**OMEGACONF, **NUMPY, **VTHR_CLASSES})
    if hasattr(obj, "roots"):
        g = load_vthr_graph(path)
        info = _info(path, "VTHR model graph (pickle)")
        info["notes"] += [f"{len(g.nodes)} nodes, {len(g.edges)} edges, {sum(n['parent'] is None for n in g.nodes)} "
                          "trees", *(f"{a} → {b}" for a, b in g.edges[:10])]
        return info
    with open(path, "rb") as f:
        is_zip = f.read(2) == b"PK"
    info = _info(path, "torch checkpoint (zip)" if is_zip else "pickle")
    info["tensors"] = _tensor_rows(obj)
    if isinstance(obj, dict):
        info["notes"].append(f"top-level keys: {list(obj)[:12]}")
        if "config" in obj:
            info["metadata"]["config"] = to_plain(obj["config"], str(path))
        if "label" in obj and isinstance(obj["label"], int):
            info["metadata"]["label"] = obj["label"]
    return info


def _parquet(path: Path) -> dict:
    import pyarrow.parquet as pq

    from labkit.datasets._parquet import open_parquet

    pf = open_parquet(path)
    names = pf.schema_arrow.names
    rows = pf.metadata.num_rows
    info = _info(path, "parquet")
    shown = ", ".join(f"{n}: {pf.schema_arrow.field(n).type}" for n in names[:6])
    shown = shown if len(shown) <= 160 else shown[:157] + "..."
    info["notes"].append(f"{rows} rows, {len(names)} columns ({shown}{', …' if len(names) > 6 else ''})")
    if "pre_ft_weight" in names and "lora_0_A_weight" in names:
        info["format"] = "LoWRA Bench shard (parquet)"
        cols = [c for c in names if c.startswith("lora_") and c.endswith(("_rank", "_alpha"))] + ["layer_name"]
        first = pq.ParquetFile(path).read_row_group(0, columns=cols).slice(0, 1).to_pylist()[0]
        n_lora = sum(c.endswith("_A_weight") for c in names)
        info["notes"].append(f"{rows} layers × {n_lora} LoRAs; layer 0 = {first['layer_name']}")
        info["lora_ranks"] = {f"lora_{k}": first[f"lora_{k}_rank"] for k in range(n_lora) if f"lora_{k}_rank" in first}
        info["metadata"]["alphas (layer 0)"] = [first.get(f"lora_{k}_alpha") for k in range(n_lora)]
    elif "label" in names and any(n.endswith(".lora.down.weight") for n in names):
        info["format"] = "LoRA-WiSE shard (parquet)"
        info["notes"].append(f"{rows} LoRA models × {sum(n.endswith('.lora.down.weight') for n in names)} layers; "
                             "the rank is the config suffix (low_16 → 16)")
    return info


def _folder(path: Path) -> dict:
    if (path / "zoo.json").is_file():
        from labkit.zoo.store import ZooStore

        store = ZooStore(path)  # reads only: a damaged zoo is reported, never repaired here
        info = _info(path, "labkit zoo", metadata={k: store.info.get(k) for k in ("recipe", "profile")
                                                   if k in store.info})
        rows = store.rows()
        kinds = sorted({r.get("kind", "model") for r in rows})
        info["notes"].append(f"{len(rows)} models ({', '.join(kinds)}); complete: {store.complete}")
        info["problems"] = store.problems(full=False)
        shown = next((r for r in rows if store.path(r["id"]).is_dir()), None)
        if shown is not None:
            first = inspect_path(store.path(shown["id"]))
            info["notes"] += [f"manifest columns: {sorted(shown)}", f"first model {shown['id']}: {first['format']}"]
            info["tensors"], info["lora_ranks"] = first["tensors"], first["lora_ranks"]
            info["metadata"].update({f"{shown['id']} {k}": v for k, v in first["metadata"].items()})
        return info
    if (path / "adapter_config.json").is_file():
        cfg = read_json(path / "adapter_config.json", _MAX_JSON, "adapter_config.json", BenchmarkFormatError)
        if not isinstance(cfg, dict):
            raise BenchmarkFormatError(f"{printable(path / 'adapter_config.json')}: must be a JSON object, got a "
                                       f"{type(cfg).__name__}")
        weights = path / "adapter_model.safetensors"
        info = _safetensors(weights) if weights.is_file() else _info(path, "")
        info.update(path=str(path), format="peft adapter folder")
        info["metadata"].update({k: cfg.get(k) for k in ("peft_type", "r", "lora_alpha", "target_modules",
                                                         "base_model_name_or_path") if k in cfg})
        return info
    if (path / "model.safetensors").is_file():
        info = _safetensors(path / "model.safetensors")
        info["path"] = str(path)
        return info
    from labkit.datasets.model_j import SPLITS

    if any((path / s).is_dir() for s in SPLITS):
        from labkit.datasets.model_j import open_model_j

        mj = open_model_j(path, path.name)
        info = _info(path, f"Model-J subset folder ({mj.kind})")
        info["notes"] += [f"{s}: {len(mj.models(s))} models" for s in mj.splits]
        first = mj.models(mj.splits[0])
        if first:
            sub = _safetensors(first[0].path)
            info["tensors"], info["lora_ranks"], info["metadata"] = sub["tensors"], sub["lora_ranks"], sub["metadata"]
            info["notes"].append(f"showing model {first[0].idx} of {mj.splits[0]}")
        return info
    shards = sorted(path.rglob("*.parquet"))
    if shards:
        info = _parquet(shards[0])
        info["notes"].insert(0, f"{len(shards)} parquet shards; showing {shards[0].relative_to(path)}")
        info["path"] = str(path)
        return info
    raise BenchmarkFormatError(f"{printable(path)}: a folder with no model files labkit knows (safetensors, peft "
                               "adapter, zoo, parquet shards, Model-J splits)")


def inspect_path(path: str | Path) -> dict:
    """Describe the model file or folder at ``path`` (see the module docstring); refuses unknown/unsafe files,
    and anything that is not a regular file or folder (a FIFO would block, a link to /dev/zero never ends).
    Reads only: nothing is created, changed or deleted. ``problems`` lists what is broken (a damaged zoo)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _folder(path)
    regular_file(path, "model file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _safetensors(path)
    if suffix == ".parquet":
        return _parquet(path)
    if suffix in (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"):
        return _pickled(path)
    if suffix == ".npy":
        import numpy as np

        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise BenchmarkFormatError(f"{printable(path)}: refusing to read it ({printable(e)}); object arrays "
                                       "need pickle") from None
        return _info(path, "numpy array", tensors=[{"name": path.stem, "dtype": str(arr.dtype), "shape": list(arr.shape)}])
    if suffix == ".json":
        data = read_json(path, _MAX_JSON, "JSON file", BenchmarkFormatError)
        info = _info(path, "json")
        info["notes"].append(f"top-level keys: {list(data)[:12]}" if isinstance(data, dict) else type(data).__name__)
        return info
    raise BenchmarkFormatError(f"{printable(path)}: unknown file type {printable(suffix) or '(none)'}; labkit inspects .safetensors, "
                               ".parquet, torch checkpoints, pickles (allow-listed), .npy, .json and model folders")


def format_report(info: dict, limit: int | None = 40) -> str:
    """A human-readable report of ``inspect_path``'s dict; at most ``limit`` tensor lines (None: all). Every name
    and value from the file is escaped (``printable``): a tensor name cannot send escape codes to the terminal."""
    lines = [printable(info["path"]), f"  format: {info['format']}"]
    lines += [f"  {printable(n)}" for n in info["notes"]]
    lines += [f"  PROBLEM: {printable(p)}" for p in info.get("problems", [])]
    for k, v in info["metadata"].items():
        text = printable(repr(v))
        lines.append(f"  metadata {printable(k)}: {text if len(text) <= 200 else text[:197] + '...'}")
    if info["lora_ranks"]:
        ranks = sorted(set(info["lora_ranks"].values()))
        lines.append(f"  LoRA: {len(info['lora_ranks'])} adapted modules, rank {ranks[0] if len(ranks) == 1 else ranks}")
    tensors = info["tensors"]
    if tensors:
        total = sum(math.prod(t["shape"]) for t in tensors)
        lines.append(f"  {len(tensors)} tensors, {total:,} values")
        shown = [{**t, "name": printable(t["name"]), "dtype": printable(t["dtype"])}
                 for t in (tensors if limit is None else tensors[:limit])]
        width = max(len(t["name"]) for t in shown)
        lines += [f"    {t['name']:<{width}}  {t['dtype']:<10} {list(t['shape'])}" for t in shown]
        if len(shown) < len(tensors):
            lines.append(f"    … and {len(tensors) - len(shown)} more (--all shows every tensor)")
    return "\n".join(lines)
