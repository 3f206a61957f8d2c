"""Reading untrusted files without being hurt by them: regular files only, sizes bounded before reading, paths
named by a dataset's own files kept inside the dataset, and names escaped before they reach a terminal.

Every loader and command that opens a file it did not write goes through these few checks::

    regular_file(path)              # the path (symlinks followed) if it is a regular file; a FIFO, a device
                                    # (/dev/zero), a socket or a folder is refused before anything is opened
    read_bytes(path, limit)         # its bytes, refused if the file holds more than ``limit``
    read_json(path, limit)          # its JSON value; not UTF-8, not JSON or nested past the parser's depth refused
    inside(root, relative)          # root / relative resolved; refused if it leaves root (``..``, absolute,
                                    # a symlink out of the dataset)
    printable(text)                 # control characters and undecodable bytes escaped (\\x1b, \\udcff)
    utf8_path(path)                 # str(path) for libraries that take UTF-8 paths only (safetensors' safe_open)

and every file the kit writes goes through one writer, so a reader never sees half a file::

    write_atomic(path, data)        # bytes or text to a temporary file beside ``path``, fsynced, then renamed
    write_json_atomic(path, value)  # the same for a JSON value (indented, newline-terminated)

Errors are ``UnsafeInputError`` (a ``ValueError``) with one line saying what is wrong and what to do; every
safetensors reader of the kit (``labkit.tensor_files.read_safetensors``, the Model-J header reader, ``labkit detune``)
raises ``CorruptFileError`` (also a ``ValueError``) for a file that is truncated, changed or not safetensors.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

__all__ = ["CorruptFileError", "UnsafeInputError", "inside", "printable", "read_bytes", "read_json", "regular_file", "utf8_path",
           "write_atomic", "write_json_atomic"]


class UnsafeInputError(ValueError):
    """A file or path the kit refuses to read (not a regular file, too large, outside its dataset)."""


class CorruptFileError(ValueError):
    """A model file that is truncated, changed since it was written, or not a safetensors file."""


def printable(text: object) -> str:
    """``text`` with every non-printable character escaped, so file names and metadata cannot drive a terminal
    (``"\\x1b[2J"`` stays visible text) and undecodable file-name bytes show as ``\\udcff``."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``path`` as a ``Path`` if it is a regular file (after following symlinks); ``FileNotFoundError`` if it
    does not exist, ``UnsafeInputError`` for a folder, FIFO, device or socket (reading those can hang or never
    end)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{printable(path)} does not exist") from None
    except OSError as e:  # a symlink loop, a name too long, no permission
        raise UnsafeInputError(f"{printable(path)}: cannot open the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise UnsafeInputError(f"{printable(path)} is {kind}, not a regular {what}; point labkit at the file itself")
    return path


def read_bytes(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, refused (before reading) if it holds more than ``limit`` bytes."""
    path = regular_file(path, what)
    size = path.stat().st_size
    if size > limit:
        raise UnsafeInputError(f"{printable(path)}: {size:,} bytes, more than the {limit:,} a {what} may hold; "
                               "it is not the file labkit expects")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while we read it
        raise UnsafeInputError(f"{printable(path)}: more than {limit:,} bytes; it is not the file labkit expects")
    return data


def read_json(path: str | os.PathLike, limit: int, what: str = "JSON file",
              error: type[ValueError] = UnsafeInputError) -> object:
    """The JSON value in the regular file ``path`` (at most ``limit`` bytes); ``error`` (a loader's own
    ``ValueError`` class) naming the file if it is not UTF-8 JSON, including JSON nested deeper than the parser
    can follow (``[[[[…`` 100,000 deep)."""
    data = read_bytes(path, limit, what)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{printable(path)}: not valid JSON ({printable(e)[:100]})") from None


def inside(root: str | os.PathLike, relative: str | os.PathLike, what: str = "path") -> Path:
    """``root / relative`` with symlinks and ``..`` resolved, refused unless it stays inside ``root`` (also
    resolved). Use it for every path a dataset's own files name (a card's ``data_files``, a split file's
    paths, a hub cache's ``refs/main``)."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise UnsafeInputError(f"{what} {printable(relative)!s} points outside {printable(base)} (to "
                               f"{printable(target)}); labkit reads only files inside the dataset folder")
    return target


def utf8_path(path: str | os.PathLike) -> str:
    """``str(path)`` if it is valid UTF-8 (safetensors' ``safe_open`` takes nothing else), else an
    ``UnsafeInputError`` asking to rename the file: its name holds bytes that are not UTF-8."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeInputError(f"{printable(text)}: the file name is not valid UTF-8, which the safetensors library "
                               "cannot open; rename the file (or its folder)") from None
    return text


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through ``.<name>.<pid>.tmp`` in the same folder (flushed and fsynced), then
    ``os.replace``: a reader sees the old file or the new one, never half of one; a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, value) -> None:
    """``value`` as indented JSON (keys in insertion order, newline-terminated), written by ``write_atomic``."""
    write_atomic(path, json.dumps(value, indent=2) + "\n")
