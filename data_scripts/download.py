"""Fetch the public benchmarks from the Hugging Face Hub (DESIGN §8). Run by hand; never by tests or CI.

    python data_scripts/download.py lowra     --subset vit          --dest data/lowra       [--dry-run]
    python data_scripts/download.py lora-wise --subset low_16       --dest data/lora_wise   [--dry-run]
    python data_scripts/download.py model-j   --subset SD_200       --dest data/model_j     [--splits train test]
    python data_scripts/download.py model-j   --subset SupViT       --dest data/model_j     [--limit 50]

Each uses ``huggingface_hub.snapshot_download`` with ``allow_patterns`` so only the chosen subset arrives (never
LoRA-WiSE's image zips); an interrupted download resumes when run again (finished files are skipped, partial ones
continue). Afterwards every expected file is checked — present, with the size the hub lists — and the subset is
opened with its labkit loader. ``--dry-run`` prints what would be fetched and its size from the hub API and
downloads nothing except the small dataset card it needs to find the files.

Layouts written (what the loaders in ``labkit/datasets`` read):

* LoWRA Bench → ``<dest>/README.md`` + ``<dest>/<subset>/train-*.parquet`` (``open_lowra(dest, subset)``)
* LoRA-WiSE   → ``<dest>/README.md`` + ``<dest>/low/16/train-*.parquet`` … (``open_lora_wise(dest, config)``)
* Model-J SD  → ``<dest>/<subset>/<split>/model_idx_XXXX/pytorch_lora_weights.safetensors``
* Model-J ViT/ResNet → the official hub-cache layout ``<dest>/<subset>/<split>/models--ProbeX--Model-J__…/``
  (``snapshot_download(repo, cache_dir=<dest>/<subset>/<split>)``, one repo per model, listed in the index dataset
  ``ProbeX/Model-J``); ``open_model_j(dest, subset)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPOS = {"lowra": "Eliahu/LoWRA-Bench", "lora-wise": "MoSalama98/LoRA-WiSE", "model-j": "ProbeX/Model-J"}
SUBSETS = {
    "lowra": ("vit", "stable-diffusion-1.5", "mistral-7b-v0.1-sft", "mistral-7b-v0.1-dpo"),
    "lora-wise": ("low_8", "low_16", "low_32", "medium_16", "medium_32", "medium_32_2", "high_32"),
    "model-j": ("SupViT", "DINO", "MAE", "ResNet", "SD_200", "SD_1k"),
}
SD_SPLITS = ("train", "val", "test", "val_holdout", "test_holdout")
DISCRIMINATIVE_FILES = ["model.safetensors", "config.json", "README.md"]


def card_files(card: Path, config: str) -> dict[str, list[str]]:
    """{split: data-file globs} for ``config`` from a dataset card's YAML ``configs:`` (empty if not listed)."""
    import re

    import yaml

    m = re.match(r"\A---\s*\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.S)
    meta = yaml.safe_load(m.group(1)) if m else {}
    for entry in (meta or {}).get("configs") or []:
        if entry.get("config_name") == config:
            files = entry.get("data_files")
            if isinstance(files, str):
                return {"train": [files]}
            out: dict[str, list[str]] = {}
            for f in files or []:
                paths = f["path"] if isinstance(f["path"], list) else [f["path"]]
                out.setdefault(f.get("split", "train"), []).extend(paths)
            return out
    return {}


def allow_patterns(kind: str, subset: str, card: Path | None = None, splits: list[str] | None = None,
                   images: bool = False) -> list[str]:
    """The ``allow_patterns`` that fetch exactly one subset (parquet shards or LoRA files, plus the card)."""
    if subset not in SUBSETS[kind]:
        raise ValueError(f"unknown {kind} subset {subset!r}; choose from {', '.join(SUBSETS[kind])}")
    if kind == "lowra":
        return ["README.md", f"{subset}/train-*.parquet"]
    if kind == "lora-wise":
        globs = card_files(card, subset).get("train", []) if card is not None and card.is_file() else []
        if not globs:  # the card's mapping is the source of truth; this fallback is low_16 → low/16/train-*
            rng, rank = subset.split("_", 1)
            globs = [f"{rng}/{rank.replace('_', '/')}/train-*.parquet"]
        return ["README.md", *[_glob(g) for g in globs]]
    if subset.startswith("SD"):
        chosen = splits or list(SD_SPLITS)
        pats = [f"{s}/*/pytorch_lora_weights.safetensors" for s in chosen] + [f"{s}/*/README.md" for s in chosen]
        return ["README.md", *pats, *([f"{s}/*/training_images/*" for s in chosen] if images else [])]
    return list(DISCRIMINATIVE_FILES)  # per model repo; the repos come from the index dataset ProbeX/Model-J


def _glob(pattern: str) -> str:
    """A card's data-file path (``vit/train-*`` or a file name) as a glob for parquet shards."""
    return pattern if pattern.endswith(("*", ".parquet")) else pattern + "*"


def _hub_sizes(repo: str, repo_type: str, patterns: list[str]) -> dict[str, int]:
    """{path: size in bytes} of the repo files matching ``patterns`` (one tree listing through the hub API)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    api, tops = HfApi(), sorted({p.split("/")[0] for p in patterns if "/" in p})
    tree = [f for top in [None, *tops] for f in api.list_repo_tree(repo, path_in_repo=top, repo_type=repo_type,
                                                                  recursive=top is not None) if hasattr(f, "size")]
    return {f.path: f.size for f in filter_repo_objects(tree, allow_patterns=patterns, key=lambda f: f.path)}


def check_arrival(local: Path, expected: dict[str, int]) -> list[str]:
    """Problems with the files that should have arrived under ``local``: missing or of the wrong size."""
    problems = []
    for rel, size in sorted(expected.items()):
        p = local / rel
        if not p.is_file():
            problems.append(f"missing {rel}")
        elif size is not None and p.stat().st_size != size:
            problems.append(f"{rel}: {p.stat().st_size} bytes, the hub lists {size} (run again to resume)")
    return problems


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _fetch(repo: str, repo_type: str, patterns: list[str], local: Path, dry_run: bool) -> dict[str, int]:
    from huggingface_hub import snapshot_download

    sizes = _hub_sizes(repo, repo_type, patterns)
    print(f"{repo}: {len(sizes)} files, {_gb(sum(sizes.values()))} → {local}")
    if not dry_run:
        snapshot_download(repo, repo_type=repo_type, allow_patterns=patterns, local_dir=local)
        problems = check_arrival(local, sizes)
        if problems:
            raise RuntimeError(f"{len(problems)} files did not arrive intact, e.g. {problems[0]}")
    return sizes


def _card(repo: str, dest: Path) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, "README.md", repo_type="dataset", local_dir=dest))


def download(kind: str, subset: str, dest: Path, dry_run: bool = False, splits: list[str] | None = None,
             limit: int | None = None, images: bool = False) -> None:
    if kind == "lowra":
        _fetch(REPOS[kind], "dataset", allow_patterns(kind, subset), dest, dry_run)
        if not dry_run:
            from labkit.datasets.lowra import open_lowra

            print(open_lowra(dest, subset))
    elif kind == "lora-wise":
        card = _card(REPOS[kind], dest)
        _fetch(REPOS[kind], "dataset", allow_patterns(kind, subset, card), dest, dry_run)
        if not dry_run:
            from labkit.datasets.lora_wise import open_lora_wise

            print(open_lora_wise(dest, subset))
    elif subset.startswith("SD"):
        _fetch(f"ProbeX/Model-J__{subset}", "model", allow_patterns(kind, subset, splits=splits, images=images),
               dest / subset, dry_run)
        if not dry_run:
            from labkit.datasets.model_j import open_model_j

            print(open_model_j(dest, subset))
    else:
        _discriminative(subset, dest, dry_run, splits, limit)


def _discriminative(subset: str, dest: Path, dry_run: bool, splits: list[str] | None, limit: int | None) -> None:
    """Model-J ViT/ResNet subsets: the index dataset names one model repo per row; fetch each into the hub cache."""
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi, snapshot_download

    index_dir = dest / "_index"
    card = _card(REPOS["model-j"], index_dir)
    files = card_files(card, subset)
    if not files:
        raise RuntimeError(f"the ProbeX/Model-J card lists no config {subset!r}; check the card at {card}")
    _fetch(REPOS["model-j"], "dataset", ["README.md", *[_glob(g) for gs in files.values() for g in gs]], index_dir,
           False)
    total, first_size = 0, None
    for split, globs in files.items():
        if splits and split not in splits:
            continue
        paths = sorted(p for g in globs for p in index_dir.glob(_glob(g)) if p.suffix == ".parquet")
        ids = [r for p in paths for r in pq.read_table(p, columns=["hf_model_id"]).column(0).to_pylist()]
        ids = ids[:limit] if limit else ids
        if first_size is None and ids:
            info = HfApi().model_info(ids[0], files_metadata=True)
            first_size = sum(s.size or 0 for s in info.siblings if s.rfilename in DISCRIMINATIVE_FILES)
        total += len(ids)
        print(f"{subset}/{split}: {len(ids)} models")
        if dry_run:
            continue
        for repo in ids:
            snapshot_download(repo, cache_dir=dest / subset / split, allow_patterns=allow_patterns("model-j", subset))
    print(f"{subset}: {total} models, about {_gb(total * (first_size or 0))} (from the first model's size)")
    if not dry_run:
        from labkit.datasets.model_j import open_model_j

        mj = open_model_j(dest, subset)
        print(mj, {s: len(mj.models(s)) for s in mj.splits})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="fetch a public benchmark subset from the Hugging Face Hub")
    p.add_argument("benchmark", choices=sorted(REPOS))
    p.add_argument("--subset", required=True, help="; ".join(f"{k}: {', '.join(v)}" for k, v in SUBSETS.items()))
    p.add_argument("--dest", required=True, type=Path, help="folder to download into (the loader's root)")
    p.add_argument("--dry-run", action="store_true", help="print the files and total size; download nothing")
    p.add_argument("--splits", nargs="+", default=None, help="model-j: only these splits")
    p.add_argument("--limit", type=int, default=None, help="model-j ViT/ResNet: at most N models per split")
    p.add_argument("--include-images", action="store_true", help="model-j SD: also the training images")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.subset not in SUBSETS[args.benchmark]:
        print(f"download: unknown {args.benchmark} subset {args.subset!r}; choose from "
              f"{', '.join(SUBSETS[args.benchmark])}", file=sys.stderr)
        return 2
    try:
        download(args.benchmark, args.subset, args.dest.expanduser(), args.dry_run, args.splits, args.limit,
                 args.include_images)
    except (OSError, RuntimeError, ValueError) as e:
        print(f"download: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
