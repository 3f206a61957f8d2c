"""Model-J (ProbeX, Horwitz et al. 2025; spec ``probex.md`` §4).

Discriminative subsets ``SupViT``, ``DINO``, ``MAE``, ``ResNet`` (one hub repo per model,
``ProbeX/Model-J__<Subset>__model_idx_<NNNN>``) in the hub-cache layout the official downloader writes::

    <root>/<split>/models--ProbeX--Model-J__SupViT__model_idx_0482/refs/main        (commit hash)
    <root>/<split>/models--ProbeX--Model-J__SupViT__model_idx_0482/snapshots/<hash>/model.safetensors

Labels: the safetensors metadata ``dataset_chosen_targets``, the ``repr`` of a list of CIFAR-100 class names,
parsed with ``ast.literal_eval`` (never ``eval``). Generative subsets ``SD_200``, ``SD_1k`` (one bundled repo each)::

    <root>/<split>/model_idx_<XXXX>/pytorch_lora_weights.safetensors   (diffusers LoRA keys, metadata
                                                                        ``imagenet_class_id``, e.g. n02457408)

``<root>`` may also be the hub cache of the bundle (``models--ProbeX--Model-J__SD_200/…``); the snapshot named by
``refs/main`` is used. Splits: ``train``, ``val``, ``test``, ``val_holdout``, ``test_holdout`` (the last two
only for SD: classes unseen in training).

Public API::

    mj = open_model_j(root, "SupViT")          # root = the subset folder (or its parent)
    mj.kind, mj.splits, mj.classes             # "discriminative" | "lora"; splits present; label vocabulary
                                               # (CIFAR-100 order, else sorted labels of all splits)
    mj.models("train")                         # [ModelJModel(idx, path, labels)], sorted by idx
    mj.layer_names("train")                    # ProbeX's layer list: sorted .weight keys / sorted LoRA modules
    X, Y, idx = mj.layer("train", name)        # X [N, d_H, d_W] float32, Y [N, C] multi-hot, idx [N]

``layer`` follows ProbeX's tensor → matrix rules: tensors that squeeze to 2-D are squeezed, 1-D → ``[d, 1]``,
a k×k conv ``[out, in, k, k]`` is reshaped (not permuted) to ``[in·k·k, out]``; for LoRA subsets a module name
gives ``X = up @ down`` (no alpha/rank scale), a full tensor key gives that tensor.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.benchmarks import BenchmarkFormatError, BenchmarkMissingError

__all__ = ["CIFAR100_CLASSES", "DISCRIMINATIVE", "GENERATIVE", "SPLITS", "ModelJModel", "ModelJSubset",
           "open_model_j", "read_header"]

DISCRIMINATIVE = ("SupViT", "DINO", "MAE", "ResNet")
GENERATIVE = ("SD_200", "SD_1k")
SPLITS = ("train", "val", "test", "val_holdout", "test_holdout")
DOWN, UP = ".lora.down.weight", ".lora.up.weight"
CIFAR100_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm".split())
_REPO = re.compile(r"^models--ProbeX--Model-J__(?P<subset>[^_]+(?:_[^_]+)*)__model_idx_(?P<idx>\d+)$")
_IDX = re.compile(r"^model_idx_(\d+)$")


@dataclass(frozen=True)
class ModelJModel:
    """One model file: its index, path and labels (class names or wnids)."""

    idx: int
    path: Path
    labels: tuple[str, ...]


def read_header(path: Path) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str]]:
    """({name: (dtype, shape)}, metadata) of a safetensors file, reading only its header."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            info = {k: (str(f.get_slice(k).get_dtype()), list(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise BenchmarkFormatError(f"{path} is not a readable safetensors file ({e}); it is truncated or corrupt — "
                                   "download it again") from None
    return info, meta


def _labels(path: Path, meta: dict[str, str], kind: str) -> tuple[str, ...]:
    if kind == "lora":
        wnid = meta.get("imagenet_class_id")
        if not wnid:
            raise BenchmarkFormatError(f"{path}: no 'imagenet_class_id' in the safetensors metadata; not a Model-J "
                                       "SD LoRA file")
        return (wnid,)
    text = meta.get("dataset_chosen_targets")
    if text is None:
        raise BenchmarkFormatError(f"{path}: no 'dataset_chosen_targets' in the safetensors metadata; not a Model-J "
                                   "model file")
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        names = None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise BenchmarkFormatError(f"{path}: dataset_chosen_targets must be the repr of a list of class names, got "
                                   f"{text[:60]!r}")
    return tuple(names)


def _snapshot(repo_dir: Path) -> Path:
    """The snapshot folder a hub-cache repo folder's ``refs/main`` names (or its only snapshot)."""
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snap = repo_dir / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted(p for p in (repo_dir / "snapshots").glob("*") if p.is_dir())
    if len(snaps) != 1:
        raise BenchmarkFormatError(f"{repo_dir}: cannot tell which snapshot to read (refs/main missing and "
                                   f"{len(snaps)} snapshots); re-run the download")
    return snaps[0]


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    """ProbeX's tensor → matrix rule (probex.md §2, "Which layer")."""
    if t.dim() == 1:
        return t.reshape(-1, 1)
    s = t.squeeze()
    if s.dim() <= 2:
        return s.reshape(-1, 1) if s.dim() == 1 else s
    return s.reshape(-1, s.shape[0])


class ModelJSubset:
    """One Model-J subset on disk (see the module docstring); open it with ``open_model_j``."""

    def __init__(self, root: Path, subset: str):
        self.root, self.subset = root, subset
        self.kind = "lora" if subset in GENERATIVE or subset.startswith("SD") else "discriminative"
        self.splits = [s for s in SPLITS if (root / s).is_dir()]
        if not self.splits:
            raise BenchmarkMissingError(f"no Model-J split folders ({', '.join(SPLITS)}) under {root}; fetch them "
                                        f"with `python data_scripts/download.py model-j --subset {subset} "
                                        f"--dest {root.parent}`")
        self._models: dict[str, list[ModelJModel]] = {}

    def __repr__(self) -> str:
        return f"ModelJSubset({self.subset!r}, {self.kind}, splits {self.splits})"

    def _files(self, split: str) -> list[tuple[int, Path]]:
        d = self.root / split
        if self.kind == "lora":
            out = [(int(m.group(1)), p / "pytorch_lora_weights.safetensors")
                   for p in d.iterdir() if (m := _IDX.match(p.name))]
        else:
            out = [(int(m.group("idx")), _snapshot(p) / "model.safetensors")
                   for p in d.iterdir() if (m := _REPO.match(p.name))]
        missing = [str(p) for _, p in out if not p.is_file()]
        if missing:
            raise BenchmarkFormatError(f"{missing[0]} is missing ({len(missing)} model files in {split}); the "
                                       "download was interrupted — run it again to resume")
        return sorted(out)

    def models(self, split: str) -> list[ModelJModel]:
        """The models of ``split`` sorted by index, with their labels from the safetensors metadata."""
        if split not in self.splits:
            raise KeyError(f"split {split!r} not found under {self.root}; present: {self.splits}")
        if split not in self._models:
            self._models[split] = [ModelJModel(i, p, _labels(p, read_header(p)[1], self.kind))
                                   for i, p in self._files(split)]
        return self._models[split]

    @property
    def classes(self) -> list[str]:
        """Label vocabulary: the 100 CIFAR-100 names in their standard order when every label is one (the real
        discriminative subsets), else the sorted labels of all splits (SD wnids, exported mini-jungle zoos)."""
        seen = {lab for s in self.splits for m in self.models(s) for lab in m.labels}
        return list(CIFAR100_CLASSES) if seen <= set(CIFAR100_CLASSES) and self.kind != "lora" else sorted(seen)

    def layer_names(self, split: str = "train") -> list[str]:
        """ProbeX's layer list, sorted lexicographically: matrix/conv ``.weight`` keys and the position embeddings
        (no biases, norms, patch embedding) for discriminative subsets; LoRA module names for SD subsets."""
        keys = read_header(self.models(split)[0].path)[0]
        if self.kind == "lora":
            return sorted(k[: -len(DOWN)] for k in keys if k.endswith(DOWN))
        return sorted(k for k, (_, shape) in keys.items() if k.endswith("position_embeddings")
                      or (k.endswith(".weight") and len(shape) >= 2 and "patch_embeddings" not in k))

    def layer(self, split: str, name: str, classes: list[str] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer stacked over the models of ``split``: ``X [N, d_H, d_W]`` float32, multi-hot ``Y [N, C]``
        over ``classes`` (default ``self.classes``) and the model indices ``[N]``."""
        from safetensors import safe_open

        classes = list(self.classes if classes is None else classes)
        col = {c: j for j, c in enumerate(classes)}
        models = self.models(split)
        mats = []
        for m in models:
            try:
                with safe_open(str(m.path), framework="pt") as f:
                    keys = set(f.keys())
                    if self.kind == "lora" and name + DOWN in keys:
                        x = f.get_tensor(name + UP).float() @ f.get_tensor(name + DOWN).float()
                    elif name in keys:
                        x = _as_matrix(f.get_tensor(name).float())
                    else:
                        raise KeyError(f"{m.path} has no tensor {name!r}; see .layer_names()")
            except (OSError, ValueError) as e:
                raise BenchmarkFormatError(f"{m.path}: cannot read {name!r} ({e}); the file is truncated — download "
                                           "it again") from None
            if mats and x.shape != mats[0].shape:
                raise BenchmarkFormatError(f"{m.path}: {name!r} is {tuple(x.shape)}, other models have "
                                           f"{tuple(mats[0].shape)}; models of different architectures in one split")
            mats.append(x)
        Y = torch.zeros(len(models), len(classes))
        for i, m in enumerate(models):
            unknown = [lab for lab in m.labels if lab not in col]
            if unknown:
                raise BenchmarkFormatError(f"{m.path}: labels {unknown[:3]} are not in the class list")
            Y[i, [col[lab] for lab in m.labels]] = 1.0
        return torch.stack(mats), Y, torch.tensor([m.idx for m in models])


def open_model_j(root: str | Path, subset: str) -> ModelJSubset:
    """Open Model-J ``subset`` at ``root`` (the subset folder holding the split folders, or its parent, or the hub
    cache of an SD bundle)."""
    root = Path(root).expanduser()
    candidates = [root, root / subset]
    for base in list(candidates):
        repo = base / f"models--ProbeX--Model-J__{subset}"
        if repo.is_dir():
            candidates.insert(0, _snapshot(repo))
    for c in candidates:
        if any((c / s).is_dir() for s in SPLITS):
            return ModelJSubset(c, subset)
    raise BenchmarkMissingError(f"Model-J {subset} not found under {root}; fetch it with "
                                f"`python data_scripts/download.py model-j --subset {subset} --dest {root}`")
