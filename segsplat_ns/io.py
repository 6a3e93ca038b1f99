"""Atomic file writes: a crash or an error never leaves a half-written cache, dataset file or export."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; some filesystems refuse to open folders, which is harmless here
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask (read without changing it where /proc allows, else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    # what open() would have created: 0o666 less the umask; a replaced file keeps its own mode
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename (after an fsync),
    on any error or interrupt it is removed and ``path`` is untouched. The file gets the mode a plain ``open()``
    would give it (0o666 less the umask; an existing file keeps its mode), not mkstemp's private 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temp, _mode_for(path))
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: Path, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary file handle whose content appears at ``path`` only when the block completes."""
    with atomic_path(path, suffix=suffix) as temp:
        with open(temp, "wb") as handle:
            yield handle
