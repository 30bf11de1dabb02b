"""Crash-safe files: whatever is on disk is either the old content or the new, never a mix."""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

_TEMPORARIES = itertools.count()  # next() on a count is atomic: threads get distinct names


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write `data` to `path` atomically and durably.

    The bytes go to a temporary file in the same directory, are fsynced, and the file is renamed
    over the target; the directory is fsynced so the rename survives a power cut. The temporary
    is named by process and counter, created exclusively: `mkstemp`'s random names and a
    buffered file cost twice the write itself, and a host writes on every model change.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        try:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file `.<name>.<pid>-<n>.tmp` beside `path`, opened for writing only by us."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{next(_TEMPORARIES)}.tmp")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue  # a crashed process of the same pid left it; the next number is free


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: Path) -> int:
    """Delete temporaries a crash left behind in `atomic_write_bytes`; returns how many."""
    removed = 0
    if directory.is_dir():
        for leftover in directory.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed += 1
    return removed
