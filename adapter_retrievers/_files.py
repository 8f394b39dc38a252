"""Atomic file and folder writes: a crash mid-write never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_folder(parent: os.PathLike | str, prefix: str) -> Path:
    """A new temporary folder in ``parent`` with the permissions ``mkdir`` would give (the umask's).

    ``tempfile.mkdtemp`` makes owner-only folders; renamed into place they would stay unreadable to a
    serving process running as another user.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def atomic_writer(path: os.PathLike | str, mode: str = "wb") -> Iterator[IO]:
    """Stream into a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    The file gets the permissions ``open()`` would give it (0644 under umask 022), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); ``False`` where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


@contextlib.contextmanager
def atomic_folder(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``path`` in one step.

    If the body raises, ``path`` is left exactly as it was. On Linux an existing folder is swapped
    atomically (``renameat2(RENAME_EXCHANGE)``); elsewhere the old folder is moved aside first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_folder(path.parent, prefix=f".{path.name}.")
    try:
        yield tmp
        for child in sorted(tmp.rglob("*")):  # the files of subfolders too (a Chroma index's segment folders)
            if child.is_file() and not child.is_symlink():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder")
        if path.exists():
            if not _exchange(tmp, path):
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                tmp = old
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def append_line(path: os.PathLike | str, line: str) -> None:
    """Append one line with a single ``O_APPEND`` write: concurrent appenders never interleave.

    A crash loses at most this line (readers skip a cut last line); the file is created if missing.
    """
    data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # never retried: a second write could land after another process's line
            raise OSError(errno.ENOSPC, f"{path}: only {written} of {len(data)} bytes of a line were written")
    finally:
        os.close(fd)


def fsync_folder(path: os.PathLike | str) -> None:
    """Flush every file of a folder tree, then the folders themselves, to disk."""
    path = Path(path)
    for child in sorted(path.rglob("*")):
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in [path, *sorted(p for p in path.rglob("*") if p.is_dir())]:
        _fsync_dir(folder)
