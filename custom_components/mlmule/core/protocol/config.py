"""Limits and timers of the encounter protocol, and the counters an endpoint keeps."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ProtocolError
from .wire import MAX_CHUNK_SIZE, Topics

# A manifest lists one sha256 per chunk: 64 hex digits, quotes and a comma.
_MANIFEST_BYTES_PER_CHUNK = 67
_MANIFEST_OVERHEAD = 2048


@dataclass(frozen=True)
class ProtocolConfig:
    """Everything an endpoint enforces. The defaults suit a home broker and 4 MiB snapshots."""

    prefix: str = "mlmule"
    max_payload: int = 4 * 2**20  # largest snapshot this endpoint sends or accepts
    chunk_size: int = MAX_CHUNK_SIZE  # size of the chunks this endpoint sends
    max_chunks: int = 256  # most chunks a manifest it accepts may have
    max_entries: int = 32  # context keys per offer
    max_offers: int = 64  # offers a peer may make in one session
    max_transfers: int = 4  # concurrent transfers per session, each direction
    max_sessions: int = 16
    max_buffered_bytes: int = 16 * 2**20  # reassembly buffers across all sessions
    retry_after: float = 5.0  # silence from a peer we wait on before we re-send or nack
    max_retries: int = 6  # re-sends in a row without an answer before the session fails
    transfer_timeout: float = 120.0  # from request to verdict
    session_timeout: float = 600.0  # idle time after which a session ends
    freshness: float = 300.0  # how far a control message's clock may be from ours
    max_control_bytes: int = 64 * 1024
    remembered_snapshots: int = 256  # hashes of received snapshots kept to skip re-fetching

    def __post_init__(self) -> None:
        Topics(self.prefix)  # validates the prefix
        if not 16 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise _config_error(f"chunk_size must be within [16, {MAX_CHUNK_SIZE}]")
        if self.max_payload < 1 or math.ceil(self.max_payload / self.chunk_size) > self.max_chunks:
            raise _config_error("max_payload must fit in max_chunks chunks of chunk_size")
        manifest_bytes = self.max_chunks * _MANIFEST_BYTES_PER_CHUNK + _MANIFEST_OVERHEAD
        if manifest_bytes > self.max_control_bytes:
            raise _config_error(
                f"a manifest of max_chunks needs max_control_bytes >= {manifest_bytes}"
            )
        counts = (self.max_entries, self.max_offers, self.max_transfers, self.max_sessions)
        if min(counts) < 1 or self.max_retries < 0 or self.remembered_snapshots < 0:
            raise _config_error("counts must be positive")
        if self.max_buffered_bytes < self.max_payload:
            raise _config_error("max_buffered_bytes must hold at least one max_payload")
        timers = (self.retry_after, self.transfer_timeout, self.session_timeout, self.freshness)
        if min(timers) <= 0:
            raise _config_error("timers must be positive")

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)


def _config_error(message: str) -> ProtocolError:
    return ProtocolError(message, reason="bad_config")


@dataclass
class EndpointStats:
    """Running counters of one endpoint, for sensors, diagnostics and the benchmark."""

    messages_sent: int = 0
    messages_received: int = 0
    messages_rejected: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    chunks_sent: int = 0
    chunks_resent: int = 0
    nacks_sent: int = 0
    retries: int = 0
    transfers_delivered: int = 0  # snapshots received whole, hash-checked, handed to the caller
    transfers_completed: int = 0  # snapshots sent for which the peer returned a verdict
    transfers_failed: int = 0
