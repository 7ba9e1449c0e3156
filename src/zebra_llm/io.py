"""Atomic writes: a crash never leaves a half-written result or checkpoint.

Files are written to a temporary sibling and renamed into place (``os.replace``
is atomic on POSIX within one filesystem); directories are built under a
temporary sibling name and renamed when complete. The results get the
permissions an ordinary ``open``/``mkdir`` would give (the process umask, or an
existing file's mode), not the private 0600/0700 of ``tempfile``. Everything
is fsynced before the rename and the parent directory after it, so a power
loss leaves the old or the new version, never an empty file or directory
under the real name.

Reading: :func:`check_regular_file` tells a missing path from a device or
FIFO (never "does not exist" for ``/dev/null``), and :func:`read_text_file` /
:func:`decode_text` decode strictly, naming the file and the byte offset of a
byte that does not decode.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, path)
        _fsync_path(path.parent)  # the rename itself survives a power loss
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(x)
    return str(x)


def _fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to disk (directories: the names in them)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. a platform that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every directory bottom-up, so that a
    rename published after this never exposes a complete-looking but empty tree
    after a power loss."""
    root = Path(root)
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                _fsync_path(p)
        _fsync_path(Path(dirpath))


def backup_path(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_directory` keeps the previous ``path`` while it swaps the new one in."""
    path = Path(path)
    return path.parent / f".{path.name}.old"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover_directory(path: str | os.PathLike) -> Path | None:
    """Undo a swap that a crash interrupted: if ``path`` is missing but its backup
    (:func:`backup_path`) exists, move the backup back. Returns ``path`` when it exists afterwards."""
    path = Path(path)
    old = backup_path(path)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
        _fsync_path(path.parent)
    return path if path.exists() else None


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    The new tree is fsynced before it is renamed into place, and the parent
    directory after, so a power loss cannot leave a complete-looking but empty
    result. An existing ``path`` (a directory or a file) is moved aside to the
    fixed name :func:`backup_path` first and removed after the rename: at every
    moment either the old or the new complete directory exists, and a reader
    that finds ``path`` missing finds the old one under the backup name
    (:func:`recover_directory`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        fsync_tree(tmp)
        old = backup_path(path)
        moved = False
        if os.path.lexists(path):
            if os.path.lexists(old):
                _remove(old)  # a stale backup: path itself is complete
            os.replace(path, old)
            moved = True
        os.replace(tmp, path)
        _fsync_path(path.parent)
        if moved:
            _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_regular_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is a regular file; otherwise a FileNotFoundError
    (missing) or a ValueError (a directory, a device such as /dev/null, a FIFO, a socket)
    whose message starts with ``what``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what}: {path} is not a regular file (it is {describe_file_kind(path)})")
    return path


def describe_file_kind(path: str | os.PathLike) -> str:
    """"a directory", "a FIFO", "a character device" ... for error messages."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "missing"
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


ENCODING_HINT = "convert the file or give its encoding (encoding=..., --encoding, e.g. latin-1)"


def decode_text(
    data: bytes, *, path: str | os.PathLike, encoding: str = "utf-8", what: str = "data", hint: str = ENCODING_HINT
) -> str:
    """``data`` decoded strictly; an undecodable byte is a ValueError naming the file,
    the byte offset and (``hint``) what to do about it."""
    try:
        return data.decode(encoding)
    except LookupError:
        raise ValueError(f"{what}: unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what}: {path} is not valid {encoding} text: byte 0x{data[e.start]:02x} at offset {e.start} "
            f"({e.reason}); {hint}"
        ) from None


def read_text_file(path: str | os.PathLike, *, encoding: str = "utf-8", what: str = "data") -> str:
    """A regular file's text, decoded strictly (see :func:`decode_text`), with universal
    newlines as ``Path.read_text`` gives them (``\\r\\n`` and ``\\r`` become ``\\n``)."""
    path = check_regular_file(path, what)
    text = decode_text(path.read_bytes(), path=path, encoding=encoding, what=what)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def jsonl_records(path: str | os.PathLike, *, encoding: str = "utf-8", what: str = "data"):
    """``(line number, record)`` for each non-blank line of a JSONL file, decoded strictly; a line that is
    not JSON is a ValueError naming ``what``, the file and the line."""
    import json

    text = decode_text(Path(path).read_bytes(), path=path, encoding=encoding, what=what)
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: {path} line {lineno} is not valid JSON: {e.msg}") from None
        yield lineno, record
