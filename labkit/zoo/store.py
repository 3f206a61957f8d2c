"""The model-zoo store: one folder per zoo, one folder per model, a manifest, atomic writes (DESIGN §5).

Layout of a zoo under ``LABKIT_HOME``::

    <recipe>-<profile>-<settings hash>/
        zoo.json              recipe, profile, settings (what the hash was computed from)
        manifest.jsonl        one JSON row per finished model: id, tree, parent, split, labels, hparams, …,
                              kind ("model" | "adapter"), sha256 of the main file, and every file's sha256
        models/<id>/model.safetensors                                 full weights (+ metadata, Model-J style)
        models/<id>/adapter_config.json, adapter_model.safetensors    or a peft LoRA adapter
        COMPLETE              written last, when the recipe has finished

A model is written into a hidden temporary folder, its files are hashed, the folder is renamed into place and
only then is its manifest row appended (flushed and fsynced). A build killed at any moment therefore leaves
either a listed, complete model or something that ``ZooStore`` removes when it next opens the zoo (temporary
folders, folders without a row, a half-written last manifest line). Nothing is ever read with pickle.

safetensors writes its header from a hash map, so the same tensors and metadata can give different bytes in
two processes; ``canonical_safetensors`` re-serialises the header with sorted keys (data untouched) so every
file's sha256 is reproducible.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

__all__ = [
    "CorruptFileError",
    "ZooError",
    "ZooStore",
    "canonical_safetensors",
    "read_safetensors",
    "save_safetensors",
    "settings_hash",
    "sha256_file",
    "zoo_key",
]

MODEL_FILE = "model.safetensors"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class ZooError(RuntimeError):
    """Something wrong with a zoo on disk; the message says what to do."""


class CorruptFileError(ZooError):
    """A model file that is truncated, changed since it was written, or not a safetensors file."""


def settings_hash(settings: dict) -> str:
    """First 12 hex digits of the sha256 of the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def zoo_key(recipe: str, profile: str, settings: dict) -> str:
    """Folder name of a zoo: recipe, profile and a hash of the recipe's settings."""
    return f"{recipe}-{profile}-{settings_hash(settings)}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ safetensors I/O


def canonical_safetensors(raw: bytes) -> bytes:
    """The same safetensors file with its JSON header keys sorted (tensor data and offsets unchanged)."""
    if len(raw) < 8:
        raise CorruptFileError("not a safetensors file: shorter than its 8-byte header length")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise CorruptFileError("not a safetensors file: header length exceeds the file size (truncated?)")
    header = json.loads(raw[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


def _metadata_strings(metadata: dict | None) -> dict[str, str]:
    """safetensors metadata must be str → str; other values are stored as JSON."""
    return {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (metadata or {}).items()}


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write tensors (made contiguous, on CPU) and metadata to ``path`` with a reproducible byte layout."""
    from safetensors.torch import save

    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"save_safetensors takes tensors only; {bad[:3]} are not tensors")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _write_bytes(Path(path), canonical_safetensors(save(tensors, metadata=_metadata_strings(metadata))))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load tensors and metadata; a truncated or corrupt file gives one clear ``CorruptFileError``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ZooError(f"missing model file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(f"{path} is corrupt or truncated ({e}); delete it and rebuild or re-download it") \
            from None
    return tensors, metadata


# ---------------------------------------------------------------------------------------------- the store


class ZooStore:
    """One zoo folder. Open it with ``ZooStore.open(recipe, profile, settings)`` or ``ZooStore(path)``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "zoo.json").is_file():
            raise ZooError(f"{self.root} is not a labkit zoo (no zoo.json); build one with `labkit zoo build`")
        self.info = json.loads((self.root / "zoo.json").read_text())
        self._rows: dict[str, dict] = {}
        self._repair()

    @classmethod
    def open(cls, recipe: str, profile: str, settings: dict, home: str | Path | None = None) -> ZooStore:
        """Open (creating if needed) the zoo for this recipe, profile and settings under ``home``."""
        if home is None:
            from labkit.session import kit_home

            home = kit_home() / "zoos"
        root = Path(home) / zoo_key(recipe, profile, settings)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "zoo.json").is_file():
            info = {"recipe": recipe, "profile": profile, "settings": settings, "key": root.name}
            tmp = root / ".zoo.json.tmp"
            tmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
            os.replace(tmp, root / "zoo.json")
        return cls(root)

    # -- state -------------------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.jsonl"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def complete(self) -> bool:
        return (self.root / "COMPLETE").is_file()

    def mark_complete(self, summary: dict | None = None) -> None:
        """Record that the recipe finished (with an optional summary: timings, counts)."""
        tmp = self.root / ".COMPLETE.tmp"
        tmp.write_text(json.dumps(summary or {}, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.root / "COMPLETE")

    def summary(self) -> dict:
        return json.loads((self.root / "COMPLETE").read_text()) if self.complete else {}

    @contextlib.contextmanager
    def lock(self, timeout: float = 3600):
        """Exclusive lock for builders, so two processes never build the same zoo at once."""
        from filelock import FileLock

        with FileLock(str(self.root / ".lock"), timeout=timeout):
            self._repair()  # another process may have added models while we waited
            yield self

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[str]:
        return list(self._rows)

    def rows(self) -> list[dict]:
        """Manifest rows in the order the models were written."""
        return [dict(r) for r in self._rows.values()]

    def row(self, model_id: str) -> dict:
        try:
            return dict(self._rows[model_id])
        except KeyError:
            raise ZooError(f"no model {model_id!r} in zoo {self.root.name}") from None

    def _repair(self) -> None:
        """Re-read the manifest and remove what an interrupted build left behind."""
        rows: dict[str, dict] = {}
        if self.manifest_path.is_file():
            raw = self.manifest_path.read_bytes()
            good_end = 0
            for line in raw.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break  # a half-written last line: the model it described is not finished
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                rows[row["id"]] = row
                good_end += len(line)
            if good_end < len(raw):
                with open(self.manifest_path, "r+b") as f:
                    f.truncate(good_end)
        self._rows = rows
        if self.models_dir.is_dir():
            for child in self.models_dir.iterdir():
                if child.name.startswith(".tmp-") or child.name not in rows:
                    shutil.rmtree(child, ignore_errors=True)

    # -- writing -----------------------------------------------------------------------------------------

    def _commit(self, model_id: str, tmp: Path, kind: str, main_file: str, row: dict) -> dict:
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        final = self.models_dir / model_id
        if final.exists():  # a folder whose manifest row never made it: not a finished model
            shutil.rmtree(final)
        os.replace(tmp, final)
        full = {"id": model_id, **row, "kind": kind, "sha256": files[main_file], "files": files}
        line = json.dumps(full, sort_keys=True, default=str) + "\n"
        with open(self.manifest_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._rows[model_id] = full
        return dict(full)

    def _tmp_dir(self, model_id: str) -> Path:
        if not isinstance(model_id, str) or not _ID.match(model_id):
            raise ValueError(f"model id {model_id!r} must be letters, digits, '.', '_' or '-'")
        if model_id in self._rows:
            raise ZooError(f"model {model_id!r} is already in zoo {self.root.name}; ids must be unique")
        tmp = self.models_dir / f".tmp-{model_id}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def save_model(self, model_id: str, tensors: dict[str, torch.Tensor], row: dict | None = None,
                   metadata: dict | None = None) -> dict:
        """Store full weights as ``model.safetensors`` with ``metadata`` (str values, or JSON-encoded)."""
        tmp = self._tmp_dir(model_id)
        save_safetensors(tmp / MODEL_FILE, tensors, metadata)
        return self._commit(model_id, tmp, "model", MODEL_FILE, row or {})

    def save_adapter(self, model_id: str, peft_model, row: dict | None = None, base_model: str | None = None) -> dict:
        """Store a peft LoRA adapter (``save_pretrained``); ``base_model`` replaces any machine-specific path."""
        if base_model is not None and (os.path.isabs(base_model) or "\\" in base_model):
            raise ValueError(f"base_model must be a portable name, not a path: {base_model!r}")
        tmp = self._tmp_dir(model_id)
        peft_model.save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # the auto-generated model card says nothing we need
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_model
        if isinstance(config.get("target_modules"), list):  # peft keeps them in a set: order varies by process
            config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        weights = tmp / "adapter_model.safetensors"
        _write_bytes(weights, canonical_safetensors(weights.read_bytes()))
        missing = [f for f in ADAPTER_FILES if not (tmp / f).is_file()]
        if missing:
            raise ZooError(f"peft did not write {missing} for {model_id!r}; is this a PeftModel?")
        return self._commit(model_id, tmp, "adapter", "adapter_model.safetensors", row or {})

    # -- reading -----------------------------------------------------------------------------------------

    def path(self, model_id: str) -> Path:
        self.row(model_id)
        return self.models_dir / model_id

    def verify(self, model_id: str) -> None:
        """Check every file of a model against the sha256 in the manifest."""
        row, folder = self.row(model_id), self.models_dir / model_id
        for name, digest in row["files"].items():
            path = folder / name
            if not path.is_file():
                raise CorruptFileError(f"{path} is missing; delete {folder} and rebuild the zoo "
                                       f"(`labkit zoo build {self.info['recipe']} --profile {self.info['profile']}`)")
            if sha256_file(path) != digest:
                raise CorruptFileError(f"{path} does not match its sha256 in the manifest (changed or truncated); "
                                       f"delete {folder} and rebuild the zoo (`labkit zoo build "
                                       f"{self.info['recipe']} --profile {self.info['profile']}`)")

    def verify_all(self) -> list[str]:
        """Verify every model; return one line per problem (empty when the zoo is intact)."""
        problems = []
        for model_id in self._rows:
            try:
                self.verify(model_id)
            except CorruptFileError as e:
                problems.append(str(e))
        return problems

    def load_model(self, model_id: str, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """``(state_dict, metadata)`` of a full model."""
        if self.row(model_id)["kind"] != "model":
            raise ZooError(f"{model_id!r} is a LoRA adapter; use load_adapter_weights or load_adapter")
        if verify:
            self.verify(model_id)
        return read_safetensors(self.models_dir / model_id / MODEL_FILE)

    def load_adapter_weights(self, model_id: str, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
        """``(adapter state dict with peft's file keys, adapter_config)`` without building a model."""
        if self.row(model_id)["kind"] != "adapter":
            raise ZooError(f"{model_id!r} is a full model; use load_model")
        if verify:
            self.verify(model_id)
        folder = self.models_dir / model_id
        tensors, _ = read_safetensors(folder / "adapter_model.safetensors")
        return tensors, json.loads((folder / "adapter_config.json").read_text())

    def load_adapter(self, model_id: str, base, verify: bool = True):
        """``PeftModel.from_pretrained(base, folder)`` after checking the files (note: peft wraps ``base`` in place)."""
        from peft import PeftModel

        if verify:
            self.verify(model_id)
        return PeftModel.from_pretrained(base, str(self.models_dir / model_id))
