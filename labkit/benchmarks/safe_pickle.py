"""Allow-listed unpickling: read the pickles some benchmarks ship (VTHR trees, CNN Wild Park checkpoints)
without running their code.

A pickle is a program: every ``GLOBAL`` opcode imports an object and ``REDUCE`` calls it, so ``pickle.load`` of
an untrusted file can run anything (``os.system`` included). ``restricted_load`` resolves each global through an
explicit allow-list ``{"module.name": object}`` and refuses any other with ``UnsafePickleError`` naming it —
nothing is imported, nothing outside the list is called. Classes of other projects are replaced by ``stub``
classes that only store their pickled state in ``__dict__`` (the real classes are never imported).

Torch checkpoints in the zip format (``torch.save`` since 1.6: ``<name>/data.pkl`` + ``<name>/data/<key>``) are
read the same way; tensors are rebuilt from the raw storage bytes by our own functions (``TENSORS``). The legacy
non-zip torch format is refused.

Public API::

    restricted_load(file, allowed)        # path or binary file; allowed: {"module.name": object}
    stub("model_graph", "ModelGraph")     # a state-holding stand-in class
    BASIC, TENSORS, OMEGACONF, NUMPY      # ready allow-lists: plain containers; torch tensors; OmegaConf configs;
                                          # numpy numbers/arrays of non-object dtypes
    to_plain(obj)                         # OmegaConf stubs → dicts/lists/values; other stubs → their __dict__
    UnsafePickleError                     # a BenchmarkFormatError (ValueError)
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from labkit.benchmarks import BenchmarkFormatError

__all__ = ["BASIC", "NUMPY", "OMEGACONF", "TENSORS", "Stub", "UnsafePickleError", "restricted_load", "stub", "to_plain"]


class UnsafePickleError(BenchmarkFormatError):
    """A pickle refers to a global outside the allow-list; nothing was executed."""


class Stub:
    """Stand-in for a pickled class: accepts any constructor arguments and keeps the pickled state."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        return obj

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{type(self).__qualname__}: unexpected pickled state {type(state).__name__}")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<stub {type(self).__module__}.{type(self).__qualname__}>"


def stub(module: str, name: str) -> type:
    """A ``Stub`` subclass named like the pickled class ``module.name``."""
    return type(name, (Stub,), {"__module__": module, "__qualname__": name})


def _empty_dict(*_args) -> dict:
    """``collections.defaultdict(factory)`` as a plain dict (the factory is never called)."""
    return {}


BASIC: dict[str, Any] = {f"builtins.{t.__name__}": t for t in
                         (dict, list, set, frozenset, tuple, int, float, str, bytes, bytearray, bool, complex)}
BASIC["collections.OrderedDict"] = collections.OrderedDict  # torch state dicts (with their _metadata attribute)


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; no other codec."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"refusing _codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


def _np_dtype(spec, *_flags):
    import numpy as np

    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or dtype.hasobject:
        raise UnsafePickleError(f"refusing numpy dtype {spec!r} (object dtypes can hold code)")
    return dtype


def _np_scalar(dtype, data=None):
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError("refusing a numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype)[0]


def _np_reconstruct(cls, shape, base):
    import numpy as np

    if cls is not np.ndarray:
        raise UnsafePickleError(f"refusing to rebuild numpy subclass {cls!r}")
    return np.ndarray.__new__(np.ndarray, shape, np.uint8)


def _numpy_globals() -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {"_codecs.encode": _latin1, "numpy.dtype": _np_dtype, "numpy.ndarray": np.ndarray}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}.scalar"] = _np_scalar
        out[f"{mod}._reconstruct"] = _np_reconstruct
    return out

_DTYPES = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16,
           "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
           "Bool": torch.bool}


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


TENSORS: dict[str, Any] = {f"torch.{k}Storage": v for k, v in _DTYPES.items()}
TENSORS.update({"torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
                "torch._utils._rebuild_parameter": _rebuild_parameter, "collections.OrderedDict": collections.OrderedDict})
NUMPY: dict[str, Any] = _numpy_globals()  # numbers and arrays of plain (non-object) dtypes

_OMEGA_CLASSES = ["omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.base.Metadata",
                  "omegaconf.base.ContainerMetadata"] + [
    f"omegaconf.nodes.{n}" for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                     "BytesNode", "PathNode")]
OMEGACONF: dict[str, Any] = {k: stub(*k.rsplit(".", 1)) for k in _OMEGA_CLASSES}
OMEGACONF.update({"typing.Any": Any, "collections.defaultdict": _empty_dict})


def to_plain(obj: Any) -> Any:
    """Replace OmegaConf stubs by plain dicts, lists and values (recursively); other stubs by their state."""
    if isinstance(obj, Stub):
        kind = type(obj).__qualname__
        if kind == "DictConfig":
            content = obj.__dict__.get("_content")
            return {k: to_plain(v) for k, v in content.items()} if isinstance(content, dict) else content
        if kind == "ListConfig":
            content = obj.__dict__.get("_content")
            return [to_plain(v) for v in content] if isinstance(content, list) else content
        if kind.endswith("Node") and type(obj).__module__ == "omegaconf.nodes":
            return to_plain(obj.__dict__.get("_val"))
        return {k: v for k, v in obj.__dict__.items() if k != "_args"}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


_RENAMES = {("__builtin__", "long"): ("builtins", "int"), ("__builtin__", "unicode"): ("builtins", "str")}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, allowed: Mapping[str, Any], storage=None):
        super().__init__(file)
        self._allowed, self._storage = allowed, storage

    def find_class(self, module: str, name: str) -> Any:
        module, name = _RENAMES.get((module, name), (module, name))
        module = "builtins" if module == "__builtin__" else module
        key = f"{module}.{name}"
        if key not in self._allowed:
            raise UnsafePickleError(f"refusing to unpickle: global {key!r} is not in the allow-list (nothing was "
                                    "executed); if you trust the file, load it with its own project's code")
        return self._allowed[key]

    def persistent_load(self, pid: Any) -> Any:
        if self._storage is None:
            raise UnsafePickleError(f"refusing to unpickle: persistent id {str(pid)[:40]!r} outside a torch checkpoint")
        return self._storage(pid)


def _torch_zip(z: zipfile.ZipFile, allowed: Mapping[str, Any], where: str) -> Any:
    pkl = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise BenchmarkFormatError(f"{where}: a zip file but not a torch checkpoint (no <name>/data.pkl)")
    prefix = pkl[0][: -len("data.pkl")]
    order = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in z.namelist() else "little"
    if order != "little":
        raise BenchmarkFormatError(f"{where}: big-endian torch checkpoints are not supported")
    storages: dict[str, torch.Tensor] = {}
    dtypes = {v: k for k, v in TENSORS.items() if k.endswith("Storage")}

    def storage(pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in dtypes):
            raise UnsafePickleError(f"{where}: unexpected persistent id {str(pid)[:60]!r}")
        _, dtype, key, _, numel = pid
        if key not in storages:
            raw = bytearray(z.read(f"{prefix}data/{key}"))
            t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if t.numel() != numel:
                raise BenchmarkFormatError(f"{where}: storage {key} holds {t.numel()} values, expected {numel}")
            storages[key] = t
        return storages[key]

    return _Unpickler(io.BytesIO(z.read(pkl[0])), {**allowed, **TENSORS}, storage).load()


def restricted_load(file: str | Path | BinaryIO, allowed: Mapping[str, Any]) -> Any:
    """Unpickle ``file`` (a plain pickle or a zip-format torch checkpoint) resolving globals only through
    ``allowed`` (``{"module.name": object}``; ``BASIC`` is always included)."""
    where = str(file) if isinstance(file, (str, Path)) else "pickle"
    data = Path(file).read_bytes() if isinstance(file, (str, Path)) else file.read()
    allowed = {**BASIC, **allowed}
    try:
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                return _torch_zip(z, allowed, where)
        if data[:2] == b"\x80\x02" and data[2:3] == b"\x8a":
            raise BenchmarkFormatError(f"{where}: a legacy (pre-1.6, non-zip) torch file; re-save it with torch.save")
        return _Unpickler(io.BytesIO(data), allowed).load()
    except BenchmarkFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, TypeError, ValueError, IndexError,
            AttributeError, RuntimeError) as e:
        raise BenchmarkFormatError(f"{where}: not a readable pickle ({type(e).__name__}: {str(e)[:80]}); the file "
                                   "is truncated or corrupt — download it again") from None
