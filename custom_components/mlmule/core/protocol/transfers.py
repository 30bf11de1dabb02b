"""A snapshot in chunks: cut and framed on the sending side, reassembled on the other."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from ..errors import TransferError
from .wire import ChunkFrame, Manifest, SnapshotInfo, encode_chunk

# Every chunk frame a receiver sees counts against this budget, duplicates and rejects included:
# re-sends after a nack or a reconnect stay well under it, a storm does not.
_FRAMES_PER_CHUNK = 3
_FRAMES_SLACK = 16


class OutgoingTransfer:
    """A snapshot being sent: its manifest and chunk frames, kept until the peer's verdict."""

    def __init__(
        self, transfer: str, snapshot: SnapshotInfo, payload: bytes, chunk_size: int, now: float
    ) -> None:
        self.transfer = transfer
        self.snapshot = snapshot
        self.started_at = now
        self.finished = False
        self._payload = payload
        self._chunk_size = chunk_size
        total = math.ceil(len(payload) / chunk_size)
        self.manifest = Manifest(
            transfer=transfer,
            sha256=snapshot.sha256,
            size=len(payload),
            chunk_size=chunk_size,
            chunks=tuple(hashlib.sha256(self._slice(index)).hexdigest() for index in range(total)),
        )

    def frame(self, index: int) -> bytes:
        return encode_chunk(self.transfer, index, self.manifest.total, self._slice(index))

    def finish(self) -> None:
        self.finished = True
        self._payload = b""  # a finished transfer never sends again

    def _slice(self, index: int) -> bytes:
        return self._payload[index * self._chunk_size : (index + 1) * self._chunk_size]


@dataclass
class IncomingTransfer:
    """A snapshot being received into a buffer of exactly the announced size.

    Chunks may come in any order and more than once; each is checked against the manifest's
    hash for its index before it is stored, so the first valid copy wins.
    """

    manifest: Manifest
    snapshot: SnapshotInfo
    started_at: float
    frames_seen: int = 0
    complete: bool = False
    _buffer: bytearray = field(init=False)
    _have: bytearray = field(init=False)
    _missing: int = field(init=False)

    def __post_init__(self) -> None:
        self._buffer = bytearray(self.manifest.size)
        self._have = bytearray(self.manifest.total)
        self._missing = self.manifest.total

    @property
    def frame_budget(self) -> int:
        return _FRAMES_PER_CHUNK * self.manifest.total + _FRAMES_SLACK

    @property
    def over_budget(self) -> bool:
        return self.frames_seen > self.frame_budget

    def missing(self) -> tuple[int, ...]:
        return tuple(index for index, have in enumerate(self._have) if not have)

    def accept(self, frame: ChunkFrame) -> bool:
        """Store one chunk; True if it was new. Raises `TransferError` for a chunk that does not
        match the manifest (it is dropped), and once the frame budget is exhausted."""
        self.frames_seen += 1
        if self.over_budget:
            raise TransferError(
                f"more than {self.frame_budget} chunk frames for {self.manifest.total} chunks",
                reason="too_many_chunks",
            )
        manifest = self.manifest
        if frame.total != manifest.total:
            raise TransferError(
                f"chunk says {frame.total} chunks, the manifest {manifest.total}",
                reason="chunk_total_mismatch",
            )
        if frame.index >= manifest.total:
            raise TransferError(
                f"chunk index {frame.index} beyond {manifest.total} chunks",
                reason="chunk_index_out_of_range",
            )
        start = frame.index * manifest.chunk_size
        expected = min(manifest.chunk_size, manifest.size - start)
        if len(frame.data) != expected:
            raise TransferError(
                f"chunk {frame.index} has {len(frame.data)} bytes, not {expected}",
                reason="chunk_size_mismatch",
            )
        if hashlib.sha256(frame.data).hexdigest() != manifest.chunks[frame.index]:
            raise TransferError(
                f"chunk {frame.index} does not match its hash", reason="chunk_hash_mismatch"
            )
        if self._have[frame.index]:
            return False
        self._buffer[start : start + expected] = frame.data
        self._have[frame.index] = 1
        self._missing -= 1
        self.complete = self._missing == 0
        return True

    def take(self) -> bytes:
        """The whole payload, once complete, checked against the manifest's hash; the buffer is
        released either way."""
        payload = bytes(self._buffer)
        self._buffer = bytearray()
        if hashlib.sha256(payload).hexdigest() != self.manifest.sha256:
            raise TransferError(
                "the reassembled payload does not match the manifest's sha256",
                reason="hash_mismatch",
            )
        return payload
