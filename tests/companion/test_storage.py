"""Crash-safe writes: the whole new content or the old, the asked mode, no temporary left."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest
from mlmule_core import storage
from mlmule_core.storage import atomic_write_bytes, remove_stale_temporaries


def test_a_write_replaces_the_content_with_exactly_the_asked_mode(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "index.json"
    old_umask = os.umask(0o077)
    try:
        atomic_write_bytes(target, b"first")
        atomic_write_bytes(target, b"second" * 10_000, mode=0o640)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"second" * 10_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["index.json"]


def test_a_temporary_a_crash_left_under_the_same_name_does_not_block_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a crashed process of this pid left the name the next write would take (a fault no test
    # can cause for real: pids are not chosen)
    monkeypatch.setattr(storage, "_TEMPORARIES", itertools.count(5))
    target = tmp_path / "model.snap"
    leftover = tmp_path / f".model.snap.{os.getpid()}-5.tmp"
    leftover.write_bytes(b"half")
    atomic_write_bytes(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert leftover.read_bytes() == b"half"  # not ours to reuse; the next open sweeps it
    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.snap"]


def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()  # the rename over a directory fails after the bytes are written
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(target, b"new")
    assert target.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]
