"""What the state machine asks its caller to do: the only way it affects the world."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MlmuleError
from .wire import Mode, SnapshotInfo


@dataclass(frozen=True)
class EncounterRef:
    """Which encounter an action belongs to: a session between one space and one mule."""

    session: str
    home: str
    space: str
    mule: str


@dataclass(frozen=True)
class Publish:
    """Send `payload` on `topic`. Always QoS 1 and never retained."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Deliver:
    """A snapshot arrived whole and hash-checked. The caller verifies it (signature, trust,
    architecture, freshness), decides, and calls the endpoint's `settle`; the peer waits for it."""

    ref: EncounterRef
    transfer: str
    mode: Mode
    snapshot: SnapshotInfo
    in_reply_to: str | None
    payload: bytes


@dataclass(frozen=True)
class Completed:
    """The peer returned its verdict on a snapshot this side sent."""

    ref: EncounterRef
    transfer: str
    snapshot: SnapshotInfo
    accepted: bool
    reason: str


@dataclass(frozen=True)
class Failed:
    """A transfer (or, with no snapshot, the session) failed; `error.reason` says why."""

    ref: EncounterRef
    error: MlmuleError
    sha256: str | None = None
    context_key: str | None = None

    @property
    def reason(self) -> str:
        return self.error.reason


@dataclass(frozen=True)
class Closed:
    """The session ended; nothing more comes from it."""

    ref: EncounterRef
    reason: str


Action = Publish | Deliver | Completed | Failed | Closed
