"""A versioned, crash-safe store of snapshots: one current version per context key, with history.

Both sides use it: a space keeps its models under `<config>/mlmule/<space>/`, and the companion
keeps what the phone carries (there with a size cap and least-recently-used eviction).

Layout under the root:
    index.json                       what is current, the kept versions, last use (atomic rewrite)
    <key-slug>/<version>-<sha>.snap  the snapshot container bytes (atomic write, never modified)

A snapshot file is written before the index names it, so a crash leaves either the old index (and a
harmless orphan file, removed on the next open) or the new one. A lost or corrupt index is rebuilt
from the file names, which carry the context key, version and hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import MlmuleError
from .storage import (
    atomic_write_bytes,
    atomic_write_text,
    fsync_directory,
    remove_stale_temporaries,
)

INDEX_FILE = "index.json"
SNAPSHOT_SUFFIX = ".snap"
_FILE_RE = re.compile(r"^(?P<version>\d{1,12})-(?P<sha>[0-9a-f]{16})\.snap$")
_KEY_RE = re.compile(r"^[a-z0-9_]+(/[a-z0-9_]+)*$")


class StoreError(MlmuleError):
    """A store operation that cannot be done (unknown key or version, bad context key)."""

    reason = "store"


@dataclass(frozen=True)
class StoredSnapshot:
    context_key: str
    version: int
    sha256: str
    size: int
    stored_at: float
    file: str  # relative to the store root


def key_slug(context_key: str) -> str:
    """A directory name for a context key (`occupancy/bedroom` -> `occupancy__bedroom`)."""
    if not _KEY_RE.match(context_key):
        raise StoreError(f"invalid context key {context_key!r}")
    return context_key.replace("/", "__")


def slug_key(slug: str) -> str:
    return slug.replace("__", "/")


class SnapshotStore:
    """Snapshots by context key, the newest `keep_versions` kept, an optional size cap (LRU)."""

    def __init__(self, root: Path, *, keep_versions: int = 5, max_bytes: int | None = None) -> None:
        if keep_versions < 1:
            raise StoreError("keep_versions must be at least 1")
        self.root = root
        self.keep_versions = keep_versions
        self.max_bytes = max_bytes
        self._versions: dict[str, list[StoredSnapshot]] = {}  # oldest first
        self._current: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        # the files the index named when it was last written: what a rewrite may drop
        self._indexed: set[str] = set()
        self.root.mkdir(parents=True, exist_ok=True)
        self._load()

    # reading

    def context_keys(self) -> list[str]:
        return sorted(self._versions)

    def current(self, context_key: str) -> StoredSnapshot | None:
        version = self._current.get(context_key)
        if version is None:
            return None
        return self._find(context_key, version)

    def history(self, context_key: str) -> list[StoredSnapshot]:
        """Kept versions, newest first."""
        return list(reversed(self._versions.get(context_key, [])))

    def read(self, stored: StoredSnapshot) -> bytes:
        """The bytes of a stored snapshot, checked against the hash it was stored with."""
        data = (self.root / stored.file).read_bytes()
        if hashlib.sha256(data).hexdigest()[:16] != stored.sha256[:16]:
            raise StoreError(f"{stored.file} does not match its recorded hash")
        return data

    def total_bytes(self) -> int:
        return sum(s.size for versions in self._versions.values() for s in versions)

    # writing

    def put(
        self, context_key: str, version: int, data: bytes, *, now: float | None = None
    ) -> StoredSnapshot:
        """Store `data` as the new current version of `context_key`.

        Versions only grow; storing the current version's bytes again is a no-op.
        """
        if version < 0:
            raise StoreError("versions are non-negative")
        now = time.time() if now is None else now
        sha = hashlib.sha256(data).hexdigest()
        current = self.current(context_key)
        if current is not None and version <= current.version:
            if (current.version, current.sha256) == (version, sha):
                return current
            raise StoreError(
                f"version {version} of {context_key} is not newer than {current.version}"
            )
        slug = key_slug(context_key)
        relative = f"{slug}/{version}-{sha[:16]}{SNAPSHOT_SUFFIX}"
        target = self.root / relative
        if not target.exists():
            atomic_write_bytes(target, data)
        stored = StoredSnapshot(context_key, version, sha, len(data), now, relative)
        self._versions[context_key] = [*self._versions.get(context_key, []), stored]
        self._current[context_key] = version
        self._last_used[context_key] = now
        self._prune(context_key)
        self._evict_over_cap(protect=context_key)
        self._save_index()
        return stored

    def rollback(self, context_key: str, to_version: int | None = None) -> StoredSnapshot:
        """Make an older kept version current: the one before the current, or `to_version`."""
        current = self.current(context_key)
        if current is None:
            raise StoreError(f"nothing stored for {context_key}")
        older = [s for s in self._versions[context_key] if s.version < current.version]
        if to_version is not None:
            target = self._find(context_key, to_version)
            if target is None:
                raise StoreError(f"version {to_version} of {context_key} is not kept")
        elif older:
            target = older[-1]
        else:
            raise StoreError(f"{context_key} has no older version to roll back to")
        # versions newer than the target are dropped, so the next put does not resurrect them
        self._versions[context_key] = [
            s for s in self._versions[context_key] if s.version <= target.version
        ]
        self._current[context_key] = target.version
        self._save_index()
        return target

    def touch(self, context_key: str, *, now: float | None = None) -> None:
        """Mark a context key as used (for least-recently-used eviction)."""
        if context_key in self._versions:
            self._last_used[context_key] = time.time() if now is None else now
            self._save_index()

    def remove(self, context_key: str) -> None:
        if self._versions.pop(context_key, None) is None:
            raise StoreError(f"nothing stored for {context_key}")
        self._current.pop(context_key, None)
        self._last_used.pop(context_key, None)
        self._save_index()

    # internals

    def _find(self, context_key: str, version: int) -> StoredSnapshot | None:
        for stored in self._versions.get(context_key, []):
            if stored.version == version:
                return stored
        return None

    def _prune(self, context_key: str) -> None:
        versions = self._versions[context_key]
        if len(versions) > self.keep_versions:
            self._versions[context_key] = versions[-self.keep_versions :]

    def _evict_over_cap(self, *, protect: str) -> None:
        if self.max_bytes is None:
            return
        # first drop history, then whole least-recently-used keys; never the key being written
        for key in sorted(self._versions, key=lambda k: self._last_used.get(k, 0.0)):
            while self.total_bytes() > self.max_bytes and len(self._versions[key]) > 1:
                self._versions[key] = self._versions[key][1:]
        for key in sorted(self._versions, key=lambda k: self._last_used.get(k, 0.0)):
            if self.total_bytes() <= self.max_bytes:
                break
            if key != protect:
                del self._versions[key]
                self._current.pop(key, None)
                self._last_used.pop(key, None)

    def _save_index(self) -> None:
        index = {
            key: {
                "current": self._current[key],
                "last_used": self._last_used.get(key, 0.0),
                # flat fields of plain values: vars() is asdict() without its deep copy
                "versions": [vars(s) for s in versions],
            }
            for key, versions in sorted(self._versions.items())
        }
        # compact: an index is rewritten on every put (indenting costs more than the write)
        atomic_write_text(self.root / INDEX_FILE, json.dumps({"format": 1, "keys": index}))
        self._remove_dropped()

    def _referenced(self) -> set[str]:
        return {s.file for versions in self._versions.values() for s in versions}

    def _remove_dropped(self) -> None:
        """Delete the files the index stopped naming (pruned, evicted, rolled back, removed);
        orphans of a crash are left to the next open's full sweep."""
        referenced = self._referenced()
        dropped = self._indexed - referenced
        self._indexed = referenced
        for relative in sorted(dropped):
            file = self.root / relative
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
            with contextlib.suppress(OSError):
                file.parent.rmdir()  # only succeeds when empty
        if dropped:
            fsync_directory(self.root)

    def _load(self) -> None:
        remove_stale_temporaries(self.root)
        for directory in self.root.iterdir():
            if directory.is_dir():
                remove_stale_temporaries(directory)
        try:
            raw = json.loads((self.root / INDEX_FILE).read_text())
            self._load_index(raw)
        except (OSError, ValueError, KeyError, TypeError):
            self._rebuild_from_files()
            self._save_index()
        self._remove_unreferenced()  # a crash's orphans, whatever the index says

    def _load_index(self, raw: dict[str, object]) -> None:
        keys = raw["keys"]
        if raw.get("format") != 1 or not isinstance(keys, dict):
            raise ValueError("unknown index format")
        for key, entry in keys.items():
            versions = [StoredSnapshot(**item) for item in entry["versions"]]
            # an index entry whose file vanished is dropped rather than trusted
            versions = [s for s in versions if (self.root / s.file).is_file()]
            if not versions:
                continue
            self._versions[key] = sorted(versions, key=lambda s: s.version)
            current = int(entry["current"])
            self._current[key] = current if self._find(key, current) else versions[-1].version
            self._last_used[key] = float(entry.get("last_used", 0.0))

    def _rebuild_from_files(self) -> None:
        self._versions.clear()
        self._current.clear()
        self._last_used.clear()
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            key = slug_key(directory.name)
            for file in directory.iterdir():
                match = _FILE_RE.match(file.name)
                if match is None:
                    continue
                stat = file.stat()
                self._versions.setdefault(key, []).append(
                    StoredSnapshot(
                        key,
                        int(match["version"]),
                        match["sha"],
                        stat.st_size,
                        stat.st_mtime,
                        f"{directory.name}/{file.name}",
                    )
                )
        for key, versions in self._versions.items():
            versions.sort(key=lambda s: s.version)
            self._current[key] = versions[-1].version
            self._last_used[key] = versions[-1].stored_at

    def _remove_unreferenced(self) -> None:
        referenced = self._referenced()
        self._indexed = referenced
        for directory in [p for p in self.root.iterdir() if p.is_dir()]:
            for file in directory.glob(f"*{SNAPSHOT_SUFFIX}"):
                if f"{directory.name}/{file.name}" not in referenced:
                    with contextlib.suppress(FileNotFoundError):
                        file.unlink()
            with contextlib.suppress(OSError):
                directory.rmdir()  # only succeeds when empty
            fsync_directory(self.root)
