"""The versioned snapshot store: history, rollback, size cap, and survival of crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlmule_core.store import INDEX_FILE, SnapshotStore, StoreError

KEY = "occupancy/bedroom"


def payload(version: int, size: int = 64) -> bytes:
    return (f"v{version}:".encode() * size)[:size]


def test_put_keeps_a_bounded_history_newest_first(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep_versions=3)
    for version in range(1, 6):
        store.put(KEY, version, payload(version), now=float(version))
    assert [s.version for s in store.history(KEY)] == [5, 4, 3]
    current = store.current(KEY)
    assert current is not None
    assert store.read(current) == payload(5)
    assert len(list((tmp_path / "occupancy__bedroom").glob("*.snap"))) == 3


def test_state_survives_reopening(tmp_path: Path) -> None:
    SnapshotStore(tmp_path).put(KEY, 7, payload(7))
    SnapshotStore(tmp_path).put("activity/kitchen", 2, payload(2))
    reopened = SnapshotStore(tmp_path)
    assert reopened.context_keys() == ["activity/kitchen", KEY]
    current = reopened.current(KEY)
    assert current is not None
    assert (current.version, reopened.read(current)) == (7, payload(7))


def test_rollback_to_previous_and_to_a_named_version(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for version in (1, 2, 3, 4):
        store.put(KEY, version, payload(version))
    assert store.rollback(KEY).version == 3
    assert store.rollback(KEY, to_version=1).version == 1
    assert [s.version for s in store.history(KEY)] == [1]
    with pytest.raises(StoreError, match="no older version"):
        store.rollback(KEY)
    with pytest.raises(StoreError, match="not kept"):
        store.rollback(KEY, to_version=3)
    with pytest.raises(StoreError, match="nothing stored"):
        store.rollback("activity/kitchen")
    assert SnapshotStore(tmp_path).current(KEY).version == 1  # type: ignore[union-attr]


def test_versions_only_grow_and_a_repeat_is_a_no_op(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    first = store.put(KEY, 3, payload(3), now=1.0)
    assert store.put(KEY, 3, payload(3), now=2.0) == first
    for version, data in ((3, payload(4)), (2, payload(2))):
        with pytest.raises(StoreError, match="not newer"):
            store.put(KEY, version, data)
    assert [s.version for s in store.history(KEY)] == [3]


def test_bad_context_keys_are_refused(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for bad in ("../etc", "Occupancy/Bedroom", "a//b", ""):
        with pytest.raises(StoreError, match="invalid context key"):
            store.put(bad, 1, b"x")


def test_size_cap_evicts_least_recently_used_keys(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, max_bytes=300)
    store.put("occupancy/a", 1, payload(1, 100), now=1.0)
    store.put("occupancy/b", 1, payload(1, 100), now=2.0)
    store.put("occupancy/c", 1, payload(1, 100), now=3.0)
    store.touch("occupancy/a", now=4.0)
    store.put("occupancy/d", 1, payload(1, 100), now=5.0)
    assert store.context_keys() == ["occupancy/a", "occupancy/c", "occupancy/d"]
    assert store.total_bytes() <= 300
    assert not (tmp_path / "occupancy__b").exists()


def test_size_cap_drops_history_before_whole_keys(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, max_bytes=250)
    store.put("occupancy/a", 1, payload(1, 100), now=1.0)
    store.put("occupancy/a", 2, payload(2, 100), now=2.0)
    store.put("occupancy/b", 1, payload(1, 100), now=3.0)
    assert [s.version for s in store.history("occupancy/a")] == [2]
    assert store.context_keys() == ["occupancy/a", "occupancy/b"]


def test_tampered_file_is_detected_on_read(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    stored = store.put(KEY, 1, payload(1))
    (tmp_path / stored.file).write_bytes(b"tampered")
    with pytest.raises(StoreError, match="does not match"):
        store.read(stored)


def test_orphans_and_temporaries_from_a_crash_are_cleaned(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.put(KEY, 1, payload(1))
    # a crash after writing a snapshot file but before the index named it, and one mid-write
    (tmp_path / "occupancy__bedroom" / f"2-{'ab' * 8}.snap").write_bytes(payload(2))
    (tmp_path / "occupancy__bedroom" / ".2-x.snap.123.tmp").write_bytes(b"half")
    reopened = SnapshotStore(tmp_path)
    assert [s.version for s in reopened.history(KEY)] == [1]
    assert sorted(p.name for p in (tmp_path / "occupancy__bedroom").iterdir()) == [
        reopened.history(KEY)[0].file.split("/")[1]
    ]


@pytest.mark.parametrize("damage", ["missing", "garbage", "wrong-shape"])
def test_lost_or_corrupt_index_is_rebuilt_from_files(tmp_path: Path, damage: str) -> None:
    store = SnapshotStore(tmp_path)
    for version in (1, 2, 3):
        store.put(KEY, version, payload(version))
    index = tmp_path / INDEX_FILE
    if damage == "missing":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(b"\x00{not json")
    else:
        index.write_text('{"format": 1, "keys": [1, 2]}')
    rebuilt = SnapshotStore(tmp_path)
    current = rebuilt.current(KEY)
    assert current is not None
    assert (current.version, rebuilt.read(current)) == (3, payload(3))
    assert [s.version for s in rebuilt.history(KEY)] == [3, 2, 1]


WRITER = """
import sys, pathlib
from mlmule_core.store import SnapshotStore
store = SnapshotStore(pathlib.Path(sys.argv[1]), keep_versions=3)
current = store.current("occupancy/bedroom")
version = current.version if current else 0
print("ready", flush=True)
while True:
    version += 1
    store.put("occupancy/bedroom", version, (b"%d:" % version) * 20000)
"""


def test_sigkill_in_the_middle_of_writes_leaves_a_valid_store(tmp_path: Path) -> None:
    for round_ in range(5):
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(0.05 + 0.03 * round_)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        store = SnapshotStore(tmp_path, keep_versions=3)
        current = store.current(KEY)
        assert current is not None
        assert store.read(current) == (b"%d:" % current.version) * 20000
        for stored in store.history(KEY):
            assert store.read(stored) == (b"%d:" % stored.version) * 20000
        assert not list(tmp_path.rglob("*.tmp"))
