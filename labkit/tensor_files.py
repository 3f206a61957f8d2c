"""Model files in safetensors: written with reproducible bytes, read with one error type (DESIGN §5).

safetensors writes its header from a hash map, so the same tensors and metadata can give different bytes in two
processes; ``canonical_safetensors`` re-serialises the header with sorted keys (data untouched) so every file's
sha256 is reproducible. ``read_safetensors`` refuses what is not a regular file before opening it and turns every
failure into one ``CorruptFileError`` line. The zoo store, the replication commands and the exporters all write
and read model files through this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from labkit.safe_io import CorruptFileError, printable, regular_file, utf8_path

__all__ = ["canonical_safetensors", "read_safetensors", "save_safetensors", "write_synced"]


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


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (in place: callers write inside a temporary folder or name and
    rename; ``labkit.safe_io.write_atomic`` does both for a single file)."""
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
    write_synced(Path(path), canonical_safetensors(save(tensors, metadata=_metadata_strings(metadata))))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load tensors and metadata; a truncated or corrupt file gives one clear ``CorruptFileError``."""
    from safetensors import SafetensorError, safe_open

    name = utf8_path(regular_file(path, "model file"))  # before opening: a FIFO would block, a device never end
    try:
        with safe_open(name, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(f"{printable(path)} is corrupt or truncated ({printable(e)}); delete it and rebuild or "
                               "re-download it") from None
    return tensors, metadata
