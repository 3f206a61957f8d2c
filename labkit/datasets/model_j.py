"""Model-J (ProbeX, Horwitz et al. 2025; spec ``probex.md`` §4).

Discriminative subsets ``SupViT``, ``DINO``, ``MAE``, ``ResNet`` (one hub repo per model,
``ProbeX/Model-J__<Subset>__model_idx_<NNNN>``) in the hub-cache layout the official downloader writes::

    <root>/<split>/models--ProbeX--Model-J__SupViT__model_idx_0482/refs/main        (commit hash)
    <root>/<split>/models--ProbeX--Model-J__SupViT__model_idx_0482/snapshots/<hash>/model.safetensors

Labels: the safetensors metadata ``dataset_chosen_targets``, the ``repr`` of a list of CIFAR-100 class names,
parsed by ``parse_chosen_targets`` (string tokens only; never ``eval``). Generative subsets ``SD_200``, ``SD_1k`` (one bundled repo each)::

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
import io
import json
import math
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.datasets import BenchmarkFormatError, BenchmarkMissingError
from labkit.safe_io import CorruptFileError, inside, printable, read_bytes, regular_file

__all__ = ["CIFAR100_CLASSES", "DISCRIMINATIVE", "GENERATIVE", "SPLITS", "ModelJModel", "ModelJSubset",
           "open_model_j", "parse_chosen_targets", "read_header", "read_tensors"]

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


# --------------------------------------------------------------------------------------- safetensors files
#
# Model-J files are read through this small header parser rather than ``safetensors.safe_open`` (which the rest of
# the kit uses) for two guarantees safe_open (0.8) does not give: it takes UTF-8 path strings only, so a file whose
# name is not UTF-8 cannot be opened at all, and its JSON parser keeps the last of two entries with one tensor name
# where this one refuses the file. Errors are the kit's one ``CorruptFileError``, as from every safetensors reader.

MAX_HEADER_BYTES = 100_000_000  # what the safetensors library itself accepts
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, **{k: getattr(torch, v) for k, v in (
                  ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"), ("U32", "uint32"),
                  ("U64", "uint64")) if hasattr(torch, v)}}


@dataclass(frozen=True)
class _Entry:
    """One tensor of a safetensors header: dtype name, shape and byte range in the data section."""

    dtype: str
    shape: list[int]
    start: int
    end: int


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` that refuses a key given twice (``json.loads`` would keep the last silently)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _corrupt(path: Path, why: str) -> CorruptFileError:
    return CorruptFileError(f"{printable(path)} is not a readable safetensors file ({why}); it is truncated or "
                            "corrupt — download it again")


def _header_json(path: Path) -> tuple[dict, int, int]:
    """The parsed JSON header of a safetensors file, the offset where its data starts and the data size."""
    path = regular_file(path, "safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n > MAX_HEADER_BYTES:
            raise CorruptFileError(f"{printable(path)}: a safetensors header of {n:,} bytes, more than the "
                                   f"{MAX_HEADER_BYTES:,} allowed; this is not a model file")
        if n < 2 or 8 + n > size:
            raise _corrupt(path, f"{size} bytes, shorter than its header")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_pairs)
    except _DuplicateKey as e:
        raise CorruptFileError(f"{printable(path)}: the safetensors header names {printable(e.args[0])!r} "
                               "twice; the file is corrupt or crafted — download it again") from None
    except (ValueError, RecursionError) as e:
        raise _corrupt(path, f"header is not JSON: {printable(str(e))[:60]}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    return header, 8 + n, size - 8 - n


def _entry(path: Path, name: str, spec: object) -> _Entry:
    """One header entry, checked: dtype, non-negative shape, offsets whose length fits dtype × shape."""
    ok = isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and isinstance(spec.get("shape"), list) \
        and isinstance(spec.get("data_offsets"), list) and len(spec["data_offsets"]) == 2
    shape, offsets = (spec.get("shape"), spec.get("data_offsets")) if ok else ([], [])
    if not ok or not all(type(d) is int and d >= 0 for d in [*shape, *offsets]) or offsets[0] > offsets[1]:
        raise _corrupt(path, f"bad header entry for {printable(name)[:80]!r}")
    dtype = _ST_DTYPES.get(spec["dtype"])
    if dtype is not None and math.prod(shape) * dtype.itemsize != offsets[1] - offsets[0]:
        raise _corrupt(path, f"{printable(name)[:80]!r} is {spec['dtype']} {shape} but spans "
                             f"{offsets[1] - offsets[0]} bytes")
    return _Entry(spec["dtype"], list(shape), offsets[0], offsets[1])


def _header(path: Path) -> tuple[dict[str, _Entry], dict[str, str], int]:
    """({name: entry}, metadata, data start) of a safetensors file, its header checked like the safetensors
    library does (and duplicate names refused), reading only the header."""
    header, start, data_size = _header_json(path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _corrupt(path, "__metadata__ is not a map of strings")
    entries = {k: _entry(path, k, v) for k, v in header.items()}
    end = 0
    for e in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if e.start != end:
            raise _corrupt(path, "tensor data overlaps or leaves gaps")
        end = e.end
    if end != data_size:
        raise _corrupt(path, f"the header describes {end:,} bytes of data, the file holds {data_size:,}")
    return entries, meta, start


def read_header(path: Path) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str]]:
    """({name: (dtype, shape)}, metadata) of a safetensors file, reading only its header (checked; duplicate
    tensor names, FIFOs and devices refused; any file name, UTF-8 or not)."""
    entries, meta, _ = _header(path)
    return {k: (e.dtype, list(e.shape)) for k, e in entries.items()}, meta


def read_tensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors ``names`` of a safetensors file, reading only their bytes (``KeyError`` for a missing name)."""
    entries, _, start = _header(path)
    return _tensors(path, entries, start, names)


def _tensors(path: Path, entries: dict[str, _Entry], start: int, names: list[str]) -> dict[str, torch.Tensor]:
    """``read_tensors`` with the header already parsed (``_header``)."""
    out = {}
    with open(path, "rb") as f:
        for name in names:
            e = entries[name]
            dtype = _ST_DTYPES.get(e.dtype)
            if dtype is None:
                raise BenchmarkFormatError(f"{printable(path)}: {printable(name)!r} has dtype {e.dtype}, which "
                                           "labkit does not read")
            raw = bytearray(e.end - e.start)
            f.seek(start + e.start)
            if f.readinto(raw) != len(raw):
                raise _corrupt(path, f"{printable(name)!r} is cut short")
            out[name] = torch.frombuffer(raw, dtype=dtype).reshape(e.shape) if raw else torch.zeros(e.shape, dtype=dtype)
    return out


# ------------------------------------------------------------------------------------------------- labels

MAX_TARGETS_CHARS = 100_000  # the real lists (50 CIFAR-100 names) are about 700 characters
_BLANK_TOKENS = frozenset({tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER})
_BRACKETS = {"[": "]", "(": ")"}


def _string_literal(token: str) -> str | None:
    """One Python string literal token as its value; None for bytes or anything else."""
    try:
        value = ast.literal_eval(token)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def parse_chosen_targets(text: str, where: str) -> tuple[str, ...]:
    """The class names of a ``dataset_chosen_targets`` value: the ``repr`` of a list (or tuple) of strings,
    nothing else — read token by token (no ``eval``, no deep recursion, at most ``MAX_TARGETS_CHARS``).
    ``BenchmarkFormatError`` naming ``where`` otherwise."""
    shown = printable(str(text)[:60])
    bad = BenchmarkFormatError(f"{printable(where)}: dataset_chosen_targets must be the repr of a list of class "
                               f"names, got {shown!r}")
    if not isinstance(text, str):
        raise bad
    if len(text) > MAX_TARGETS_CHARS:
        raise BenchmarkFormatError(f"{printable(where)}: dataset_chosen_targets holds {len(text):,} characters, more "
                                   f"than the {MAX_TARGETS_CHARS:,} a list of class names needs")
    names: list[str] = []
    close, expect_name = None, True
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text.strip()).readline):
            if tok.type in _BLANK_TOKENS:
                continue
            if close is None and tok.string in _BRACKETS:
                close = _BRACKETS[tok.string]
            elif close is not None and expect_name and tok.type == tokenize.STRING:
                value = _string_literal(tok.string)
                if value is None:
                    raise bad
                names.append(value)
                expect_name = False
            elif close is not None and not expect_name and tok.string == ",":
                expect_name = True
            elif close is not None and tok.string == close and (names or expect_name):
                close = ""
            else:
                raise bad  # anything else, or anything after the closing bracket
    except (tokenize.TokenError, SyntaxError):
        raise bad from None
    if close != "":
        raise bad
    return tuple(names)


def _labels(path: Path, meta: dict[str, str], kind: str) -> tuple[str, ...]:
    if kind == "lora":
        wnid = meta.get("imagenet_class_id")
        if not wnid:
            raise BenchmarkFormatError(f"{printable(path)}: no 'imagenet_class_id' in the safetensors metadata; not a "
                                       "Model-J SD LoRA file")
        return (wnid,)
    text = meta.get("dataset_chosen_targets")
    if text is None:
        raise BenchmarkFormatError(f"{printable(path)}: no 'dataset_chosen_targets' in the safetensors metadata; "
                                   "not a Model-J model file")
    return parse_chosen_targets(text, str(path))


def _snapshot(repo_dir: Path) -> Path:
    """The snapshot folder a hub-cache repo folder's ``refs/main`` names (or its only snapshot); a ref that
    leads outside ``snapshots/`` is refused."""
    ref = repo_dir / "refs" / "main"
    if ref.exists():
        commit = read_bytes(ref, 1024, "hub ref").decode("utf-8", errors="replace").strip()
        snap = inside(repo_dir / "snapshots", commit, f"{printable(ref)} names snapshot")
        if commit and snap != (repo_dir / "snapshots").resolve() and snap.is_dir():
            return repo_dir / "snapshots" / commit
    snaps = sorted(p for p in (repo_dir / "snapshots").glob("*") if p.is_dir())
    if len(snaps) != 1:
        raise BenchmarkFormatError(f"{printable(repo_dir)}: cannot tell which snapshot to read (refs/main missing "
                                   f"and {len(snaps)} snapshots); re-run the download")
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
        missing = [printable(p) for _, p in out if not p.is_file()]
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

    def _matrix(self, path: Path, name: str) -> torch.Tensor:
        """Layer ``name`` of one model file as a float32 matrix (``up @ down`` for a LoRA module name)."""
        keys, _, start = _header(path)  # parsed once per file, then only the wanted tensors are read
        if self.kind == "lora" and name + DOWN in keys:
            t = _tensors(path, keys, start, [name + UP, name + DOWN])
            try:
                return t[name + UP].float() @ t[name + DOWN].float()
            except RuntimeError:
                raise BenchmarkFormatError(f"{printable(path)}: {name!r} up {tuple(t[name + UP].shape)} and down "
                                           f"{tuple(t[name + DOWN].shape)} do not multiply; the file is corrupt") \
                    from None
        if name not in keys:
            raise KeyError(f"{printable(path)} has no tensor {name!r}; see .layer_names()")
        return _as_matrix(_tensors(path, keys, start, [name])[name].float())

    def layer(self, split: str, name: str, classes: list[str] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer stacked over the models of ``split``: ``X [N, d_H, d_W]`` float32, multi-hot ``Y [N, C]``
        over ``classes`` (default ``self.classes``) and the model indices ``[N]``."""
        classes = list(self.classes if classes is None else classes)
        col = {c: j for j, c in enumerate(classes)}
        models = self.models(split)
        mats = []
        for m in models:
            x = self._matrix(m.path, name)
            if mats and x.shape != mats[0].shape:
                raise BenchmarkFormatError(f"{printable(m.path)}: {name!r} is {tuple(x.shape)}, other models have "
                                           f"{tuple(mats[0].shape)}; models of different architectures in one split")
            mats.append(x)
        Y = torch.zeros(len(models), len(classes))
        for i, m in enumerate(models):
            unknown = [lab for lab in m.labels if lab not in col]
            if unknown:
                raise BenchmarkFormatError(f"{printable(m.path)}: labels {unknown[:3]} are not in the class list")
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
