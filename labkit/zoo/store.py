"""The model-zoo store: one folder per zoo, one folder per model, a manifest, atomic writes (DESIGN §5).

Layout of a zoo under ``LABKIT_HOME``::

    <recipe>-<profile>-<settings hash>/
        zoo.json              recipe, profile, settings (what the hash was computed from)
        manifest.jsonl        one JSON row per finished model: id, tree, parent, split, labels, hparams, …,
                              kind ("model" | "adapter"), sha256 of the main file, every file's sha256 and size
        models/<id>/model.safetensors                                 full weights (+ metadata, Model-J style)
        models/<id>/adapter_config.json, adapter_model.safetensors    or a peft LoRA adapter
        models/<id>/row.json  the model's own copy of its manifest row (so a lost manifest can be rebuilt)
        COMPLETE              written last, when the recipe has finished: a summary and the ids it promised

A model is written into a hidden temporary folder with its files hashed into ``row.json``, the folder is renamed
into place and only then is its manifest row appended (flushed and fsynced). A build killed at any moment
therefore leaves a listed, complete model, a temporary folder, a folder whose row is missing (or half-written
as the manifest's last line) — never a listed model with missing files.

Readers never change anything: opening a zoo, ``labkit zoo verify`` and ``labkit inspect`` only read, so they
can run while a build writes. Only a build, holding the zoo's lock, repairs (``ZooStore._repair``): it removes
the builders' temporary folders and models whose files fail their sha256, cuts a half-written last line, and
lists again a finished folder whose ``row.json`` matches its files. A manifest line that cannot be read is an
error naming the line; ``labkit zoo repair`` rebuilds the manifest from the folders, deleting nothing. A zoo
marked complete is served only if its manifest lists every promised model and every listed file exists with
its recorded size (``problems(full=False)``); the full sha256 check is ``labkit zoo verify`` and the loaders'.
Nothing is ever read with pickle.

Model files are written and read by ``labkit.tensor_files`` (reproducible bytes, one ``CorruptFileError``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.safe_io import CorruptFileError, printable, read_bytes, read_json, write_atomic
from labkit.tensor_files import canonical_safetensors, read_safetensors, save_safetensors, write_synced

__all__ = [
    "ZooError",
    "ZooStore",
    "settings_hash",
    "sha256_file",
    "zoo_key",
]

_log = logging.getLogger("labkit.zoo")
MODEL_FILE = "model.safetensors"
ROW_FILE = "row.json"  # each model folder's own copy of its manifest row
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class ZooError(RuntimeError):
    """Something wrong with a zoo on disk; the message says what to do."""


def settings_hash(settings: dict) -> str:
    """First 12 hex digits of the sha256 of the settings as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def zoo_key(recipe: str, profile: str, settings: dict) -> str:
    """Folder name of a zoo: recipe, profile and a hash of the recipe's settings."""
    return f"{recipe}-{profile}-{settings_hash(settings)}"


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of the file at ``path`` (read in chunks by ``hashlib.file_digest``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ------------------------------------------------------------------------------------------- the manifest

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_MANIFEST = 1 << 30  # 1 GiB: far above any real zoo (a row is ~1 KB), far below what would hurt to read


def _check_row(row: object) -> str | None:
    """Why ``row`` is not a manifest row (None when it is one): a JSON object with a safe ``id``, a ``kind``, and
    ``files`` mapping plain file names to sha256 digests (``sizes``, when present, to byte counts)."""
    if not isinstance(row, dict):
        return f"is a JSON {type(row).__name__}, not an object"
    if not isinstance(row.get("id"), str) or not _ID.match(row["id"]):
        return f"has no valid model id (got {str(row.get('id'))[:40]!r})"
    if row.get("kind") not in ("model", "adapter"):
        return f"has kind {str(row.get('kind'))[:20]!r}, not 'model' or 'adapter'"
    files, sizes = row.get("files"), row.get("sizes", {})
    if not isinstance(files, dict) or not files or not all(
            isinstance(k, str) and _ID.match(k) and isinstance(v, str) and _HEX64.match(v) for k, v in files.items()):
        return "has no valid 'files' (file name → sha256)"
    if not isinstance(sizes, dict) or not all(k in files and type(v) is int and v >= 0 for k, v in sizes.items()):
        return "has invalid 'sizes' (file name → bytes)"
    if row.get("sha256") not in files.values():
        return "has a 'sha256' that is none of its files' digests"
    return None


@dataclass
class _Manifest:
    rows: dict[str, dict]  # id -> row, in file order
    good_end: int  # bytes up to the end of the last complete line
    size: int  # bytes in the file (> good_end: a half-written last line)
    bad: list[tuple[int, str]]  # (line number, what is wrong with it)


def _read_manifest(path: Path) -> _Manifest:
    """Parse ``manifest.jsonl`` without changing it. A last line without its newline is a row still being written
    (or whose writer was killed) and is not counted; any other line that is not a valid row is reported in
    ``bad`` with its number."""
    if not path.is_file():
        return _Manifest({}, 0, 0, [])
    raw = read_bytes(path, _MAX_MANIFEST, "manifest")
    rows: dict[str, dict] = {}
    bad: list[tuple[int, str]] = []
    good_end = 0
    for number, line in enumerate(raw.splitlines(keepends=True), 1):
        if not line.endswith(b"\n"):
            break
        good_end += len(line)
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            bad.append((number, f"is not valid JSON ({printable(e)[:80]})"))
            continue
        why = _check_row(row)
        if why is None and row["id"] in rows:
            why = f"repeats model id {row['id']!r}"
        if why is None:
            rows[row["id"]] = row
        else:
            bad.append((number, why))
    return _Manifest(rows, good_end, len(raw), bad)


def _read_json(path: Path, what: str, limit: int = 16 << 20) -> dict:
    """A small JSON object file of the store (zoo.json, COMPLETE, row.json); one-line ``ZooError`` otherwise."""
    try:
        data = read_json(path, limit, what)
    except (OSError, ValueError) as e:
        raise ZooError(f"{printable(path)}: not a readable {what} ({printable(e)[:100]}); restore it or rebuild "
                       "the zoo") from None
    if not isinstance(data, dict):
        raise ZooError(f"{printable(path)}: the {what} must be a JSON object, got a {type(data).__name__}")
    return data


def _in_write_order(rows: list[dict]) -> list[dict]:
    """Rows sorted by their ``seq`` (the manifest position each model was written at), so a manifest rebuilt
    from the folders lists them as the build did; rows of an older kit (no ``seq``) keep the order given."""
    return sorted(rows, key=lambda r: r["seq"]) if all(type(r.get("seq")) is int for r in rows) else rows


def _row_line(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str) + "\n"


# ---------------------------------------------------------------------------------------------- the store


class ZooStore:
    """One zoo folder. Open it with ``ZooStore.open(recipe, profile, settings)`` or ``ZooStore(path)``.

    Opening a store only reads: it never deletes, truncates or rewrites anything, so any number of readers
    (notebooks, ``labkit zoo verify``, ``labkit inspect``) can open a zoo while a build writes it. A manifest line
    that is not a valid row is a ``ZooError`` naming the line; the models stay on disk (``repair_manifest``).
    Only a build holding ``lock()`` repairs (see ``_repair``).
    """

    def __init__(self, root: str | Path):
        self._open(root)
        self._reload()

    def _open(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / "zoo.json").is_file():
            raise ZooError(f"{printable(self.root)} is not a labkit zoo (no zoo.json); build one with "
                           "`labkit zoo build`")
        self.info = _read_json(self.root / "zoo.json", "zoo.json")
        self._rows: dict[str, dict] = {}
        self._torn = False

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
            write_atomic(root / "zoo.json", json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
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
        """Record that the recipe finished, with the ids it promised (every model now listed) and an optional
        summary (timings, counts)."""
        summary = {**(summary or {}), "ids": self.ids()}
        write_atomic(self.root / "COMPLETE", json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")

    def mark_incomplete(self) -> None:
        """Withdraw the COMPLETE marker (a build found the zoo damaged and is filling it in again)."""
        (self.root / "COMPLETE").unlink(missing_ok=True)

    def summary(self) -> dict:
        return _read_json(self.root / "COMPLETE", "COMPLETE marker") if self.complete else {}

    @contextlib.contextmanager
    def lock(self, timeout: float = 3600):
        """Exclusive lock for builders, so two processes never build the same zoo at once. On entry the holder
        re-reads the manifest (another process may have added models while we waited) and repairs what an
        interrupted build left (``_repair``)."""
        from filelock import FileLock

        with FileLock(str(self.root / ".lock"), timeout=timeout):
            self._repair()
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
            raise ZooError(f"no model {model_id!r} in zoo {printable(self.root.name)}") from None

    def _unreadable(self, number: int, why: str) -> ZooError:
        return ZooError(f"{printable(self.manifest_path)}: line {number} {why}; nothing was changed and the models "
                        f"stay in {printable(self.models_dir)}; rebuild the manifest from them with "
                        f"`labkit zoo repair {printable(self.root)}`")

    def _reload(self) -> _Manifest:
        """Re-read the manifest (read only); ``ZooError`` naming the first line that is not a valid row."""
        manifest = _read_manifest(self.manifest_path)
        if manifest.bad:
            raise self._unreadable(*manifest.bad[0])
        self._rows, self._torn = manifest.rows, manifest.size > manifest.good_end
        return manifest

    def _folders(self) -> list[Path]:
        """Model folders on disk (hidden temporaries excluded)."""
        if not self.models_dir.is_dir():
            return []
        return sorted(p for p in self.models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def _file_problems(self, row: dict, full: bool) -> list[str]:
        """What is wrong with one listed model's files: missing, a size other than recorded, or (``full``) a
        sha256 other than recorded. Empty when the model is intact."""
        folder, sizes = self.models_dir / row["id"], row.get("sizes", {})
        rebuild = (f"delete {printable(folder)} and rebuild the zoo (`labkit zoo build {self.info.get('recipe')} "
                   f"--profile {self.info.get('profile')}`)")
        out = []
        for name, digest in row["files"].items():
            path = folder / name
            if not path.is_file():
                out.append(f"{printable(path)} is missing; {rebuild}")
            elif name in sizes and path.stat().st_size != sizes[name]:
                out.append(f"{printable(path)} has {path.stat().st_size} bytes, the manifest records {sizes[name]} "
                           f"(changed or truncated); {rebuild}")
            elif full and sha256_file(path) != digest:
                out.append(f"{printable(path)} does not match its sha256 in the manifest (changed or truncated); "
                           f"{rebuild}")
        return out

    def problems(self, full: bool = True) -> list[str]:
        """One line per problem, empty when the zoo is intact; changes nothing.

        Always: a half-written last manifest line, models a complete zoo promised but the manifest does not
        list, listed files that are missing or have another size than recorded. ``full`` adds every file's
        sha256 and model folders that the manifest does not list. A complete zoo is served only if the quick
        check (``full=False``) is clean."""
        out = []
        if self._torn:
            out.append(f"{printable(self.manifest_path)}: the last line is half-written (a build was interrupted); "
                       "the next build repairs it")
        if self.complete:
            summary = self.summary()
            promised = summary.get("ids")
            if isinstance(promised, list):
                missing = [i for i in promised if i not in self._rows]
                if missing:
                    out.append(f"the zoo was completed with {len(promised)} models but the manifest lists "
                               f"{len(promised) - len(missing)} of them (missing: {', '.join(map(printable, missing[:5]))}"
                               f"{', …' if len(missing) > 5 else ''})")
            elif isinstance(summary.get("models"), int) and summary["models"] > len(self._rows):
                out.append(f"the zoo was completed with {summary['models']} models but the manifest lists "
                           f"{len(self._rows)}")
        for row in self._rows.values():
            out += self._file_problems(row, full)
        if full:
            unlisted = [p.name for p in self._folders() if p.name not in self._rows]
            if unlisted:
                out.append(f"{len(unlisted)} model folders are not in the manifest ({', '.join(map(printable, unlisted[:5]))}"
                           f"{', …' if len(unlisted) > 5 else ''}); `labkit zoo repair {printable(self.root)}` lists "
                           "those whose files check out")
        return out

    def verify_all(self) -> list[str]:
        """Every problem, each file's sha256 included (``problems(full=True)``)."""
        return self.problems(full=True)

    # -- repair (builders only) --------------------------------------------------------------------------

    def _recorded_row(self, folder: Path) -> dict | None:
        """The row a model folder carries in ``row.json`` if it is valid and every file matches it, else None."""
        path = folder / ROW_FILE
        if not path.is_file():
            return None
        try:
            row = _read_json(path, "row file")
        except ZooError:
            return None
        if _check_row(row) is not None or row["id"] != folder.name or self._file_problems(row, full=True):
            return None
        return row

    def _write_manifest(self, rows: list[dict]) -> None:
        """Replace the manifest atomically (readers see the old or the new file, never a mix)."""
        write_atomic(self.manifest_path, "".join(_row_line(r) for r in rows))

    def _repair(self) -> None:
        """Put the store back into a state a build can continue from; call only while holding ``lock()``.

        What it may remove is the builders' own: ``.tmp-*`` folders (no other builder runs while we hold the
        lock) and models whose files fail their sha256. A half-written last manifest line is cut; a model folder
        the manifest does not list is listed again if its ``row.json`` and files check out (the build was killed
        between moving it into place and appending its row), removed if its ``row.json`` does not match its
        files, and otherwise left alone. A manifest line that cannot be read stops the build with a ``ZooError``
        (``repair_manifest`` rebuilds the manifest); nothing is removed because of it. Each repair is logged as a
        warning (``labkit.zoo`` logger), so the person whose build mends a zoo sees what was mended."""
        manifest = self._reload()
        done = []
        if self._torn:
            with open(self.manifest_path, "r+b") as f:
                f.truncate(manifest.good_end)
            self._torn = False
            done.append("cut the half-written last manifest line")
        if self.models_dir.is_dir():
            for tmp in self.models_dir.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
        broken = [i for i, row in self._rows.items() if self._file_problems(row, full=True)]
        adopted = []
        for folder in self._folders():
            if folder.name in self._rows:
                continue
            row = self._recorded_row(folder)
            if row is not None:
                adopted.append(row)
            elif (folder / ROW_FILE).is_file():
                shutil.rmtree(folder)
                done.append(f"removed {folder.name} (its files do not match its row.json)")
        if broken or adopted:
            rows = [r for i, r in self._rows.items() if i not in broken] + _in_write_order(adopted)
            self._write_manifest(rows)
            for model_id in broken:
                shutil.rmtree(self.models_dir / model_id, ignore_errors=True)
            self._rows = {r["id"]: r for r in rows}
            done += [f"removed {i} (files fail their sha256; it will be rebuilt)" for i in broken]
            done += [f"listed {r['id']} again (its files match its row.json)" for r in adopted]
        for line in done:
            _log.warning("%s: %s", printable(self.root.name), line)

    @classmethod
    def repair_manifest(cls, root: str | Path) -> dict:
        """Rebuild an unreadable or lost manifest from the model folders (``labkit zoo repair ROOT``; takes the
        zoo's lock). Keeps every readable row whose files exist with their recorded sizes, then adds every
        unlisted folder whose ``row.json`` matches its files; the old manifest is kept beside it as
        ``manifest.jsonl.damaged-<n>``. Deletes nothing. Returns ``{"kept", "recovered", "unrecoverable",
        "bad_lines", "backup"}``."""
        from filelock import FileLock

        store = cls.__new__(cls)  # not ZooStore(root): that refuses the unreadable manifest we are here to mend
        store._open(root)
        with FileLock(str(store.root / ".lock"), timeout=3600):
            manifest = _read_manifest(store.manifest_path)
            kept = [r for r in manifest.rows.values() if not store._file_problems(r, full=False)]
            listed = {r["id"] for r in kept}
            recovered, unrecoverable = [], []
            for folder in store._folders():
                if folder.name in listed:
                    continue
                row = store._recorded_row(folder)
                (recovered if row is not None else unrecoverable).append(row or folder.name)
            backup = None
            if manifest.bad or manifest.size > manifest.good_end or recovered or len(kept) < len(manifest.rows):
                if store.manifest_path.is_file():
                    n = 1
                    while (backup := store.root / f"manifest.jsonl.damaged-{n}").exists():
                        n += 1
                    shutil.copy2(store.manifest_path, backup)
                store._write_manifest(_in_write_order(kept + recovered))
            store._reload()
        return {"kept": len(kept), "recovered": [r["id"] for r in recovered], "unrecoverable": unrecoverable,
                "bad_lines": [n for n, _ in manifest.bad], "backup": str(backup) if backup else None}

    # -- writing -----------------------------------------------------------------------------------------

    def _commit(self, model_id: str, tmp: Path, kind: str, main_file: str, row: dict) -> dict:
        paths = sorted(p for p in tmp.iterdir() if p.is_file())
        files = {p.name: sha256_file(p) for p in paths}
        full = {"id": model_id, **row, "kind": kind, "sha256": files[main_file], "files": files,
                "sizes": {p.name: p.stat().st_size for p in paths}, "seq": len(self._rows)}
        line = _row_line(full)
        write_synced(tmp / ROW_FILE, line.encode())  # the folder describes itself: repair can list it again
        final = self.models_dir / model_id
        if final.exists():  # an unlisted folder the repair could not check: this build rewrites that model
            shutil.rmtree(final)
        os.replace(tmp, final)
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
        write_synced(weights, canonical_safetensors(weights.read_bytes()))
        missing = [f for f in ADAPTER_FILES if not (tmp / f).is_file()]
        if missing:
            raise ZooError(f"peft did not write {missing} for {model_id!r}; is this a PeftModel?")
        return self._commit(model_id, tmp, "adapter", "adapter_model.safetensors", row or {})

    # -- reading -----------------------------------------------------------------------------------------

    def path(self, model_id: str) -> Path:
        self.row(model_id)
        return self.models_dir / model_id

    def verify(self, model_id: str) -> None:
        """Check every file of a model against the sha256 in the manifest (``CorruptFileError`` if one fails)."""
        problems = self._file_problems(self.row(model_id), full=True)
        if problems:
            raise CorruptFileError(problems[0])

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
