"""Allow-listed unpickling: read the pickles some benchmarks ship (VTHR trees, CNN Wild Park checkpoints)
without running their code, and without letting a crafted file take unbounded memory, time or stack.

A pickle is a program: every ``GLOBAL`` opcode imports an object and ``REDUCE`` calls it, so ``pickle.load`` of
an untrusted file can run anything (``os.system`` included). Every global is resolved through an explicit
allow-list ``{"module.name": object}``; any other is refused with ``UnsafePickleError`` naming it — nothing is
imported, nothing outside the list is called. Classes of other projects are replaced by ``stub`` classes that only
store their pickled state in ``__dict__`` (the real classes are never imported).

* Plain pickles (VTHR trees) go through a small ``pickle.Unpickler`` whose ``find_class`` is the allow-list.
* Torch checkpoints in the zip format (``torch.save`` since 1.6) go through ``torch.load(weights_only=True)``
  with the allow-list registered by ``torch.serialization.safe_globals``; torch reads the zip, checks each
  storage record against the size its pickle declares and rebuilds the tensors. Before torch runs, the globals
  the checkpoint names are checked against ``TORCH_GLOBALS`` + the allow-list (torch's own default list also
  holds ``bytearray``, whose ``bytearray(10**13)`` would allocate unbounded memory). The legacy non-zip torch
  format is refused.

Bounds (each refusal is one ``UnsafePickleError`` line naming the file):

* the file: a regular file of at most ``max_bytes`` (default ``MAX_FILE_BYTES``), checked before reading; a zip
  holds at most ``MAX_ZIP_ENTRIES`` members, stored uncompressed (as ``torch.save`` writes them: no zip bombs),
  each declared at most ``MAX_OBJECT_BYTES`` and all together at most ``MAX_TOTAL_BYTES``, checked before torch
  reads any of them;
* every allocation an allow-listed callable makes (``bytearray(n)``, ``bytes(n)``, ``list(x)``, numpy
  shapes × itemsize): at most ``MAX_OBJECT_BYTES`` each and ``MAX_TOTAL_BYTES`` per file;
* the opcode stream (of a plain pickle, or a checkpoint's ``data.pkl``) is scanned before anything runs:
  declared lengths must fit the data, memo indices must be dense, at most ``MAX_PICKLE_OBJECTS`` objects, nesting
  at most ``MAX_PRESCAN_DEPTH`` (a deep tuple chain would crash the interpreter when hashed);
* the loaded object graph: at most ``MAX_NODES`` nodes once shared children are expanded (a 600-byte pickle
  can describe 2**60 of them), nesting at most ``MAX_DEPTH``, and no array or tensor (a stride-0 view included)
  larger than ``MAX_OBJECT_BYTES``, so recursive walkers stay fast and shallow.

Public API::

    restricted_load(file, allowed, max_bytes=MAX_FILE_BYTES)   # path or binary file
    stub("model_graph", "ModelGraph")     # a state-holding stand-in class
    BASIC, OMEGACONF, NUMPY               # ready allow-lists: plain containers; OmegaConf configs; numpy
                                          # numbers/arrays of non-object dtypes
    TORCH_GLOBALS                         # what a checkpoint may name besides the allow-list (storages, tensors)
    to_plain(obj, where)                  # OmegaConf stubs → dicts/lists/values; other stubs → their __dict__
    UnsafePickleError                     # a BenchmarkFormatError (ValueError)
"""

from __future__ import annotations

import _compat_pickle
import collections
import contextvars
import io
import itertools
import math
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from labkit.datasets import BenchmarkFormatError
from labkit.safe_io import UnsafeInputError, printable, read_bytes, regular_file

__all__ = ["BASIC", "MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "MAX_OBJECT_BYTES", "MAX_TOTAL_BYTES", "NUMPY",
           "OMEGACONF", "TORCH_GLOBALS", "Stub", "UnsafePickleError", "restricted_load", "stub", "to_plain"]

MAX_FILE_BYTES = 4 << 30  # default max_bytes: the largest pickle / checkpoint file read
MAX_OBJECT_BYTES = 1 << 30  # the most one allow-listed call, one zip member or one tensor may take
MAX_TOTAL_BYTES = 4 << 30  # the most those allocations (or a checkpoint's members) may add up to within one file
MAX_NODES = 1_000_000  # objects in the loaded graph, shared children counted once per reference
MAX_DEPTH = 100  # containers nested in the loaded graph
MAX_PICKLE_OBJECTS = 10 * MAX_NODES  # objects the opcode stream may create (arguments included)
MAX_PRESCAN_DEPTH = 1000  # nesting the opcode scan allows (an over-estimate of the real nesting)
MAX_ZIP_ENTRIES = 100_000  # members of a zip-format torch checkpoint
_ITEM_BYTES = 16  # what one element of a new container costs (pointer + hash slot)
_NEW_ITEM_BYTES = 128  # ... when each element is a new object (characters of a str, rows of an array)


class UnsafePickleError(BenchmarkFormatError):
    """A pickle refers to a global outside the allow-list or exceeds a bound; nothing was executed."""


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


# ------------------------------------------------------------------------------------------ allocation bounds

_BUDGET: contextvars.ContextVar[list[int]] = contextvars.ContextVar("labkit_pickle_budget")


def _charge(nbytes: int, what: str) -> None:
    """Refuse an allocation of ``nbytes`` above ``MAX_OBJECT_BYTES``, or beyond what is left of the file's
    ``MAX_TOTAL_BYTES`` (when called inside ``restricted_load``)."""
    nbytes = max(int(nbytes), 0)
    if nbytes > MAX_OBJECT_BYTES:
        raise UnsafePickleError(f"refusing {what} of {nbytes:,} bytes (one object may take at most "
                                f"{MAX_OBJECT_BYTES:,}); this is not a file labkit reads")
    budget = _BUDGET.get(None)
    if budget is not None:
        budget[0] -= nbytes
        if budget[0] < 0:
            raise UnsafePickleError(f"refusing {what}: the objects of this pickle would take more than "
                                    f"{MAX_TOTAL_BYTES:,} bytes; this is not a file labkit reads")


def _length(source: Any, what: str) -> int:
    """``len(source)``; refuse a source without a length (nothing in an allow-listed pickle lacks one)."""
    try:
        return len(source)
    except TypeError:
        raise UnsafePickleError(f"refusing {what} of a {type(source).__name__}") from None


def _per_item(source: Any) -> int:
    """Bytes one element of ``source`` costs in a new container (more when each element is a new object)."""
    return _NEW_ITEM_BYTES if isinstance(source, (str, torch.Tensor)) or hasattr(source, "__array__") else _ITEM_BYTES


def _container(kind: type) -> Callable[..., Any]:
    """``kind(*args)`` (list, tuple, dict, …) that first charges the size of the container it builds."""

    def build(*args: Any) -> Any:
        if args:
            _charge(_length(args[0], kind.__name__) * _per_item(args[0]), f"{kind.__name__}()")
        return kind(*args)

    build.__name__ = build.__qualname__ = kind.__name__
    return build


def _bytes_like(kind: type) -> Callable[..., Any]:
    """``bytes(...)`` / ``bytearray(...)`` that first charges the bytes it allocates (``bytearray(10**13)``)."""

    def build(source: Any = b"", *rest: Any) -> Any:
        if isinstance(source, int):
            n = source
        elif isinstance(source, str):
            n = 4 * len(source)
        else:
            n = getattr(source, "nbytes", None) or _length(source, kind.__name__)
        _charge(n, f"{kind.__name__}()")
        return kind(source, *rest)

    build.__name__ = build.__qualname__ = kind.__name__
    return build


_STR_SOURCES = (str, bytes, bytearray, int, float, complex, bool, type(None))


def _str(obj: Any = "", *rest: Any) -> str:
    """``str(...)`` of text, bytes or a number only (``str`` of a container can be exponentially long)."""
    if not isinstance(obj, _STR_SOURCES):
        raise UnsafePickleError(f"refusing str() of a {type(obj).__name__}")
    _charge(4 * len(obj) if isinstance(obj, (str, bytes, bytearray)) else 0, "str()")
    return str(obj, *rest)


def _empty_dict(*_args) -> dict:
    """``collections.defaultdict(factory)`` as a plain dict (the factory is never called)."""
    return {}


BASIC: dict[str, Any] = {f"builtins.{t.__name__}": t for t in (int, float, bool, complex)}
BASIC.update({f"builtins.{t.__name__}": _container(t) for t in (dict, list, set, frozenset, tuple)})
BASIC.update({"builtins.bytes": _bytes_like(bytes), "builtins.bytearray": _bytes_like(bytearray),
              "builtins.str": _str})
# torch state dicts (with their _metadata attribute)
BASIC["collections.OrderedDict"] = _container(collections.OrderedDict)


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; no other codec."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"refusing _codecs.encode with codec {encoding!r}")
    _charge(len(text), "_codecs.encode")
    return text.encode("latin1")


def _numel(shape: Any) -> int:
    """The element count of an array shape (an int or a sequence of non-negative ints)."""
    dims = (shape,) if isinstance(shape, int) else tuple(shape) if isinstance(shape, (tuple, list)) else None
    if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise UnsafePickleError(f"refusing array shape {str(shape)[:60]!r}")
    return math.prod(dims)


def _np_dtype(spec, *_flags):
    """``numpy.dtype(spec)`` for a string spec without objects, its itemsize bounded."""
    import numpy as np

    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or dtype.hasobject:
        raise UnsafePickleError(f"refusing numpy dtype {str(spec)[:60]!r} (object dtypes can hold code)")
    _charge(dtype.itemsize, "numpy dtype")
    return dtype


def _np_plain_dtype(dtype: Any):
    """``dtype`` as a numpy dtype without objects (a string spec goes through ``_np_dtype``)."""
    import numpy as np

    if dtype is float or dtype is int or dtype is bool:
        return np.dtype(dtype)
    if isinstance(dtype, str):
        return _np_dtype(dtype)
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("refusing a numpy array whose dtype is not a plain number type")
    return dtype


def _np_ndarray(shape, dtype=float, buffer=None, offset=0, strides=None, order=None):
    """``numpy.ndarray(shape, dtype)`` that checks shape × itemsize before allocating."""
    import numpy as np

    if buffer is not None or strides is not None:
        raise UnsafePickleError("refusing numpy.ndarray over a buffer or with strides")
    dtype = _np_plain_dtype(dtype)
    _charge(_numel(shape) * dtype.itemsize, "numpy.ndarray")
    return np.ndarray(shape, dtype, order=order or "C")


def _np_scalar(dtype, data=None):
    """A numpy number from its raw bytes (``numpy.core.multiarray.scalar``)."""
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError("refusing a numpy scalar that is not a plain number")
    _charge(dtype.itemsize, "numpy scalar")
    return np.frombuffer(data, dtype)[0]


def _np_reconstruct(cls, shape, base):
    """The empty array numpy's ``_reconstruct`` makes before ``__setstate__`` fills it; shape bounded."""
    import numpy as np

    if cls is not np.ndarray and cls is not _np_ndarray:
        raise UnsafePickleError(f"refusing to rebuild numpy subclass {str(cls)[:60]!r}")
    _charge(_numel(shape), "numpy array")
    return np.ndarray.__new__(np.ndarray, shape, np.uint8)


def _numpy_globals() -> dict[str, Any]:
    """The NUMPY allow-list, under both the numpy 1.x and 2.x module names."""
    out: dict[str, Any] = {"_codecs.encode": _latin1, "numpy.dtype": _np_dtype, "numpy.ndarray": _np_ndarray}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}.scalar"] = _np_scalar
        out[f"{mod}._reconstruct"] = _np_reconstruct
    return out


# what torch.save writes for tensors and state dicts: torch.load resolves these names with its own objects
TORCH_GLOBALS = frozenset({f"torch.{k}Storage" for k in ("Float", "Double", "Half", "BFloat16", "Long", "Int",
                                                          "Short", "Char", "Byte", "Bool")} |
                          {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                           "collections.OrderedDict"})
# names torch.load would resolve with its own, unbounded object, not the allow-list's guard: refused in checkpoints
_TORCH_UNBOUNDED = frozenset({"builtins.bytearray"})
NUMPY: dict[str, Any] = _numpy_globals()  # numbers and arrays of plain (non-object) dtypes

_OMEGA_CLASSES = ["omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig", "omegaconf.base.Metadata",
                  "omegaconf.base.ContainerMetadata"] + [
    f"omegaconf.nodes.{n}" for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                     "BytesNode", "PathNode")]
OMEGACONF: dict[str, Any] = {k: stub(*k.rsplit(".", 1)) for k in _OMEGA_CLASSES}
OMEGACONF.update({"typing.Any": Any, "collections.defaultdict": _empty_dict})


def to_plain(obj: Any, where: str = "pickle") -> Any:
    """Replace OmegaConf stubs by plain dicts, lists and values (recursively); other stubs by their state.
    A structure nested deeper than ``MAX_DEPTH`` (or one that contains itself) raises ``UnsafePickleError``
    naming ``where`` (the file it came from)."""
    return _plain(obj, 0, where)


def _plain(obj: Any, depth: int, where: str) -> Any:
    if depth > MAX_DEPTH:
        raise UnsafePickleError(f"{printable(where)}: a config nested deeper than {MAX_DEPTH} levels (or containing "
                                "itself); this is not a config labkit reads")
    d = depth + 1
    if isinstance(obj, Stub):
        kind = type(obj).__qualname__
        if kind == "DictConfig":
            content = obj.__dict__.get("_content")
            return {k: _plain(v, d, where) for k, v in content.items()} if isinstance(content, dict) else content
        if kind == "ListConfig":
            content = obj.__dict__.get("_content")
            return [_plain(v, d, where) for v in content] if isinstance(content, list) else content
        if kind.endswith("Node") and type(obj).__module__ == "omegaconf.nodes":
            return _plain(obj.__dict__.get("_val"), d, where)
        return {k: v for k, v in obj.__dict__.items() if k != "_args"}
    if isinstance(obj, dict):
        return {k: _plain(v, d, where) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, d, where) for v in obj)
    return obj


# ------------------------------------------------------------------------------- the opcode scan (before load)

_LEAF_OPS = frozenset("NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT STRING "
                      "BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8 UNICODE "
                      "SHORT_BINUNICODE BINUNICODE BINUNICODE8 GLOBAL EXT1 EXT2 EXT4 PERSID NEXT_BUFFER "
                      "EMPTY_LIST EMPTY_DICT EMPTY_SET EMPTY_TUPLE".split())
_NEW_FROM_MARK = frozenset({"TUPLE", "LIST", "DICT", "FROZENSET", "INST", "OBJ"})
_INTO_TOP_FROM_MARK = frozenset({"APPENDS", "SETITEMS", "ADDITEMS"})
_NEW_FROM_TOP = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3,
                 "STACK_GLOBAL": 2, "BINPERSID": 1}
_INTO_TOP = {"APPEND": 1, "SETITEM": 2, "BUILD": 1}
_PUTS, _GETS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"}), frozenset({"GET", "BINGET", "LONG_BINGET"})
_NO_STACK = frozenset({"PROTO", "FRAME", "STOP", "READONLY_BUFFER"})


class _Scan:
    """A symbolic run of the pickle machine: every stack entry is a record ``[nesting depth]`` shared with the
    memo (so a list filled after it was memoised is seen at its real depth), no object is built."""

    def __init__(self) -> None:
        self.stack: list[list[int]] = []
        self.marks: list[int] = []
        self.memo: dict[int, list[int]] = {}
        self.created = 0
        self.globals: set[str] = set()  # the "module.name" of every GLOBAL opcode, Python 2 names mapped

    def pop(self, n: int) -> list[list[int]]:
        if len(self.stack) - (self.marks[-1] if self.marks else 0) < n:
            raise UnsafePickleError("the opcode stream pops more than it pushed; the file is corrupt")
        items = self.stack[len(self.stack) - n:]
        del self.stack[len(self.stack) - n:]
        return items

    def pop_mark(self) -> list[list[int]]:
        if not self.marks:
            raise UnsafePickleError("the opcode stream uses a MARK it never set; the file is corrupt")
        m = self.marks.pop()
        items = self.stack[m:]
        del self.stack[m:]
        return items

    def push(self, depth: int) -> None:
        self.created += 1
        if self.created > MAX_PICKLE_OBJECTS:
            raise UnsafePickleError(f"the pickle builds more than {MAX_PICKLE_OBJECTS:,} objects; this is not a "
                                    "file labkit reads")
        self.stack.append([_checked_depth(depth)])

    def grow_top(self, items: list[list[int]]) -> None:
        if not self.stack:
            raise UnsafePickleError("the opcode stream fills a container it never built; the file is corrupt")
        top = self.stack[-1]
        top[0] = _checked_depth(max([top[0], *(1 + r[0] for r in items)]))

    def step(self, name: str, arg: Any) -> None:
        if name == "GLOBAL":
            self.globals.add(_py3_name(*str(arg).split(" ", 1)))
        if name in _LEAF_OPS:
            self.push(1 if name.startswith("EMPTY_") else 0)
        elif name == "MARK":
            self.marks.append(len(self.stack))
        elif name in _NEW_FROM_MARK:
            self.push(1 + max((r[0] for r in self.pop_mark()), default=0))
        elif name in _NEW_FROM_TOP:
            self.push(max((r[0] + (name.startswith("TUPLE")) for r in self.pop(_NEW_FROM_TOP[name])), default=1))
        elif name in _INTO_TOP_FROM_MARK:
            self.grow_top(self.pop_mark())
        elif name in _INTO_TOP:
            self.grow_top(self.pop(_INTO_TOP[name]))
        else:
            self.step_memo(name, arg)

    def step_memo(self, name: str, arg: Any) -> None:
        if name in _PUTS or name == "MEMOIZE":
            idx = len(self.memo) if name == "MEMOIZE" else arg
            if not isinstance(idx, int) or idx < 0 or idx > self.created:  # the C unpickler sizes its memo by idx
                raise UnsafePickleError(f"memo index {str(idx)[:20]} is not dense; the file is corrupt or crafted")
            if not self.stack:
                raise UnsafePickleError("the opcode stream memoises an empty stack; the file is corrupt")
            self.memo[idx] = self.stack[-1]
        elif name in _GETS:
            if arg not in self.memo:
                raise UnsafePickleError(f"memo index {str(arg)[:20]} was never set; the file is corrupt")
            self.stack.append(self.memo[arg])
        elif name == "DUP":
            self.stack.append(self.pop(1)[0])
            self.stack.append(self.stack[-1])
        elif name == "POP":
            if self.marks and self.marks[-1] == len(self.stack):
                self.marks.pop()
            else:
                self.pop(1)
        elif name == "POP_MARK":
            self.pop_mark()
        elif name not in _NO_STACK:
            raise UnsafePickleError(f"unknown pickle opcode {name}")


def _checked_depth(depth: int) -> int:
    """``depth`` unless it exceeds ``MAX_PRESCAN_DEPTH``."""
    if depth > MAX_PRESCAN_DEPTH:
        raise UnsafePickleError(f"objects nested more than {MAX_PRESCAN_DEPTH} levels deep; this is not a file "
                                "labkit reads")
    return depth


def _prescan(data: bytes) -> set[str]:
    """Check the opcode stream before anything runs: declared lengths fit the data (``pickletools.genops``
    raises otherwise), memo indices are dense, object count and nesting are bounded. Returns the names of the
    globals it refers to (``"module.name"``)."""
    scan = _Scan()
    for op, arg, _pos in pickletools.genops(data):
        scan.step(op.name, arg)
    return scan.globals


# ------------------------------------------------------------------------------- the object graph (after load)

_DONE = object()


def _children(obj: Any) -> Iterator[Any] | None:
    """The objects ``obj`` holds, or None for a leaf (numbers, text, arrays, tensors, classes)."""
    if isinstance(obj, dict):
        items = itertools.chain.from_iterable(obj.items())
        extra = getattr(obj, "__dict__", None) if type(obj) is not dict else None
        return itertools.chain(items, extra.values()) if extra else items
    if isinstance(obj, (list, tuple, set, frozenset)):
        return iter(obj)
    if isinstance(obj, Stub):
        return iter(list(obj.__dict__.values()))
    return None


def _check_leaf(obj: Any) -> None:
    """Arrays and tensors (stride-0 views included): the bytes a walker would materialise; tensors: no hooks."""
    if isinstance(obj, torch.Tensor):
        _charge_view(obj.numel() * obj.element_size(), "tensor")
        if getattr(obj, "_backward_hooks", None):
            raise UnsafePickleError("refusing a tensor with hooks attached")
    elif hasattr(obj, "__array_interface__") and hasattr(obj, "size") and hasattr(obj, "itemsize"):
        _charge_view(int(obj.size) * max(int(obj.itemsize), 1), "numpy array")


def _charge_view(nbytes: int, what: str) -> None:
    """Refuse an existing array or view whose materialised size would exceed ``MAX_OBJECT_BYTES``."""
    if nbytes > MAX_OBJECT_BYTES:
        raise UnsafePickleError(f"refusing a {what} of {nbytes:,} bytes (one object may take at most "
                                f"{MAX_OBJECT_BYTES:,}); this is not a file labkit reads")


class _Walk:
    """One iterative depth-first pass: expanded size (memoised by id), nesting depth, cycles of plain containers."""

    def __init__(self) -> None:
        self.size: dict[int, int] = {}
        self.depth: dict[int, int] = {}
        self.on_path: dict[int, int] = {}
        self.stubs: list[int] = []  # stubs on the path up to and including each position
        self.frames: list[list[Any]] = []  # [obj, children, expanded size, depth of deepest child]

    def enter(self, obj: Any, children: Iterator[Any]) -> None:
        if len(self.frames) >= MAX_DEPTH:
            raise UnsafePickleError(f"objects nested more than {MAX_DEPTH} levels deep; this is not a file labkit "
                                    "reads")
        self.on_path[id(obj)] = len(self.frames)
        self.stubs.append((self.stubs[-1] if self.stubs else 0) + isinstance(obj, Stub))
        self.frames.append([obj, children, 1, 0])

    def add(self, size: int, depth: int) -> None:
        frame = self.frames[-1]
        frame[2] += size
        frame[3] = max(frame[3], depth)
        if frame[2] > MAX_NODES:
            raise UnsafePickleError(f"the objects expand to more than {MAX_NODES:,} nodes (shared children counted "
                                    "once per reference); this is not a file labkit reads")

    def leave(self) -> None:
        obj, _, size, depth = self.frames.pop()
        del self.on_path[id(obj)]
        self.stubs.pop()
        self.size[id(obj)], self.depth[id(obj)] = size, depth + 1
        if self.frames:
            self.add(size, depth + 1)

    def cycle(self, start: int) -> None:
        """A reference back to the path position ``start``: fine through a stub (object graphs with parent
        links), refused among plain containers (recursive walkers would never end)."""
        if self.stubs[-1] - (self.stubs[start - 1] if start else 0) == 0:
            raise UnsafePickleError("a list or dict that contains itself; this is not a file labkit reads")
        self.add(1, 0)

    def visit(self, child: Any) -> None:
        cid = id(child)
        if cid in self.size:
            self.add(self.size[cid], self.depth[cid])
        elif cid in self.on_path:
            self.cycle(self.on_path[cid])
        elif (children := _children(child)) is None:
            _check_leaf(child)
            self.add(1, 0)
        else:
            self.enter(child, children)


def _check_graph(root: Any) -> None:
    """Refuse an object graph that expands beyond ``MAX_NODES`` or nests deeper than ``MAX_DEPTH``."""
    children = _children(root)
    if children is None:
        _check_leaf(root)
        return
    walk = _Walk()
    walk.enter(root, children)
    while walk.frames:
        child = next(walk.frames[-1][1], _DONE)
        if child is _DONE:
            walk.leave()
        else:
            walk.visit(child)


# ------------------------------------------------------------------------------------------------- loading

def _py3_name(module: str, name: str = "") -> str:
    """``"module.name"`` of a global as the unpicklers resolve it: Python 2 names (protocol 2 writes
    ``__builtin__.set``) mapped as ``pickle`` and ``torch.load`` map them."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _refused_global(key: str) -> UnsafePickleError:
    return UnsafePickleError(f"refusing to unpickle: global {printable(key)[:120]!r} is not in the allow-list "
                             "(nothing was executed); if you trust the file, load it with its own project's code")


class _Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come only from the allow-list; persistent ids are refused."""

    def __init__(self, file: BinaryIO, allowed: Mapping[str, Any]):
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        key = _py3_name(module, name)
        if key not in self._allowed:
            raise _refused_global(key)
        return self._allowed[key]

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing to unpickle: persistent id {str(pid)[:40]!r} outside a torch checkpoint")


def _unpickle(data: bytes, allowed: Mapping[str, Any]) -> Any:
    """Scan ``data``'s opcodes, then unpickle it through the allow-list."""
    _prescan(data)
    return _Unpickler(io.BytesIO(data), allowed).load()


def _checked_zip(f: BinaryIO, where: str) -> bytes:
    """The ``<name>/data.pkl`` of the zip-format torch checkpoint ``f`` (seekable), after checking the members
    torch would read: their count before the central directory is parsed, then that each is stored uncompressed
    (as ``torch.save`` writes it; a deflated member could expand without bound) and its declared size."""
    end = getattr(zipfile, "_EndRecData", None)
    rec = end(f) if end is not None else None
    if rec is not None and rec[4] > MAX_ZIP_ENTRIES:  # _ECD_ENTRIES_TOTAL
        raise UnsafePickleError(f"{where}: a zip file of {rec[4]:,} members (a torch checkpoint has far fewer "
                                f"than {MAX_ZIP_ENTRIES:,})")
    f.seek(0)
    with zipfile.ZipFile(f) as z:
        infos = z.infolist()
        pkl = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pkl) != 1:
            raise BenchmarkFormatError(f"{where}: a zip file but not a torch checkpoint (no <name>/data.pkl)")
        total = 0
        for info in infos:
            name = printable(info.filename)[:120]
            if info.compress_type != zipfile.ZIP_STORED:
                raise UnsafePickleError(f"zip member {name} is compressed (method {info.compress_type}); torch "
                                        "checkpoints store their members uncompressed")
            if info.file_size > MAX_OBJECT_BYTES:
                raise UnsafePickleError(f"zip member {name} declares {info.file_size:,} bytes, more than the "
                                        f"{MAX_OBJECT_BYTES:,} it may hold")
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise UnsafePickleError(f"the members of this checkpoint declare {total:,} bytes, more than the "
                                    f"{MAX_TOTAL_BYTES:,} labkit reads from one file")
        return z.read(pkl[0])  # zipfile stops at the declared size and checks the CRC


def _build_types() -> list[tuple[Any, str]]:
    """Classes torch.load must accept for ``BUILD`` (``__setstate__``) of what the NUMPY guards return: arrays
    and plain dtypes. Registered under names no checkpoint may use (``_torch_load`` refuses every global outside
    ``TORCH_GLOBALS`` and the allow-list), so they are never looked up by name."""
    import numpy as np

    kinds = {type(np.dtype(c)) for c in np.typecodes["All"] if c != "O"}
    return [(t, f"labkit-build-only.{t.__module__}.{t.__qualname__}") for t in (np.ndarray, *kinds)]


def _torch_reason(e: Exception) -> str:
    """The first line of torch's error, or for its long "Weights only load failed ..." the reason inside it."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = m.group(1) if m else text.removeprefix("Weights only load failed. ").splitlines()[0] if text else ""
    reason = printable(f"{type(e).__name__}: {reason}")
    return reason if len(reason) <= 200 else reason[:199] + "…"


def _torch_load(f: BinaryIO, allowed: Mapping[str, Any], where: str) -> Any:
    """A zip-format torch checkpoint from the seekable ``f`` through ``torch.load(weights_only=True)``, after the
    zip members are checked and ``data.pkl``'s opcodes scanned: a global outside ``TORCH_GLOBALS`` and
    ``allowed`` is refused before torch runs anything."""
    for key in sorted(_prescan(_checked_zip(f, where))):
        if key in _TORCH_UNBOUNDED or (key not in TORCH_GLOBALS and key not in allowed):
            raise _refused_global(key)
    f.seek(0)
    registered = [(obj, key) for key, obj in allowed.items() if key not in TORCH_GLOBALS]
    try:
        with torch.serialization.safe_globals(registered + _build_types()):
            return torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as e:  # a short or missing record, a storage of the wrong size,
        # an opcode the weights-only unpickler does not know
        raise BenchmarkFormatError(f"{where}: not a readable torch checkpoint ({_torch_reason(e)}); the file is "
                                   "truncated or corrupt — download it again") from None


def _load(file: str | Path | BinaryIO, allowed: Mapping[str, Any], where: str, max_bytes: int) -> Any:
    if isinstance(file, (str, Path)):
        path = regular_file(file, "pickle")
        size = path.stat().st_size
        if size > max_bytes:
            raise UnsafeInputError(f"{where}: {size:,} bytes, more than the {max_bytes:,} a pickle may hold; pass "
                                   "max_bytes= if you trust it")
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                return _torch_load(f, allowed, where)
        data = read_bytes(path, max_bytes, "pickle")
    else:
        data = file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise UnsafeInputError(f"{where}: more than the {max_bytes:,} bytes a pickle may hold")
        if data[:4] == b"PK\x03\x04":
            return _torch_load(io.BytesIO(data), allowed, where)
    if data[:2] == b"\x80\x02" and data[2:3] == b"\x8a":
        raise BenchmarkFormatError(f"{where}: a legacy (pre-1.6, non-zip) torch file; re-save it with torch.save")
    return _unpickle(data, allowed)


def _located(e: BenchmarkFormatError, where: str) -> BenchmarkFormatError:
    """``e`` with ``where`` in front of its message (once)."""
    msg = str(e)
    return e if msg.startswith(where) else type(e)(f"{where}: {msg}")


_CORRUPT = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, TypeError,
            ValueError, IndexError, AttributeError, RuntimeError, OverflowError, struct.error, UnicodeError)


def restricted_load(file: str | Path | BinaryIO, allowed: Mapping[str, Any], max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Unpickle ``file`` (a plain pickle or a zip-format torch checkpoint, at most ``max_bytes``) resolving
    globals only through ``allowed`` (``{"module.name": object}``; ``BASIC`` is always included). Every error
    is one line naming the file: ``UnsafePickleError`` for a refused global or bound, ``BenchmarkFormatError``
    for a damaged file, ``UnsafeInputError`` for a non-regular or too large file."""
    where = printable(file) if isinstance(file, (str, Path)) else "pickle"
    allowed = {**BASIC, **allowed}
    token = _BUDGET.set([MAX_TOTAL_BYTES])
    try:
        obj = _load(file, allowed, where, max_bytes)
        _check_graph(obj)
        return obj
    except BenchmarkFormatError as e:
        raise _located(e, where) from None
    except (UnsafeInputError, FileNotFoundError):
        raise
    except MemoryError:
        raise UnsafePickleError(f"{where}: unpickling it needs more memory than this machine has; it is not a "
                                "file labkit reads") from None
    except OSError as e:
        raise BenchmarkFormatError(f"{where}: cannot read it ({printable(e.strerror or e)}); check the file") \
            from None
    except _CORRUPT as e:
        raise BenchmarkFormatError(f"{where}: not a readable pickle ({type(e).__name__}: "
                                   f"{printable(str(e).splitlines()[0] if str(e) else '')[:80]}); the file is "
                                   "truncated or corrupt — download it again") from None
    finally:
        _BUDGET.reset(token)
