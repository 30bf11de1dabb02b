"""The bytes on the wire: identifiers, topics, signed JSON control messages and binary chunks.

Everything here is a pure function of its arguments. `docs/protocol.md` is the specification;
the constants and formats below are its reference implementation.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Protocol, Self

from ..errors import MalformedMessage
from ..identity import PeerKind

PROTOCOL_VERSION = 1
MAX_CHUNK_SIZE = 256 * 1024
SIGNATURE_BYTES = 64
# Signed bytes start with this context string, so a control-message signature can never be
# passed off as a snapshot signature made with the same key (or the other way round).
SIGNING_CONTEXT = b"mlmule-control-v1\n"

CHUNK_MAGIC = b"MLMC"
CHUNK_FORMAT = 1
_CHUNK_HEADER = struct.Struct(">4sB16sII")
CHUNK_HEADER_BYTES = _CHUNK_HEADER.size  # 29

_MAX_JSON_INT = 2**53 - 1
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTEXT_KEY = re.compile(r"[a-z0-9_]{1,32}/[a-z0-9_]{1,32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOKEN128 = re.compile(r"[0-9a-f]{32}")
_ARCH = re.compile(r"[0-9a-f]{8,64}")
_REASON = re.compile(r"[a-z0-9_]{1,48}")
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,7}")
RESERVED_HOME_ID = "mules"  # the level under the prefix where mule inboxes live


def _check(pattern: re.Pattern[str], value: object, what: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise MalformedMessage(f"{what} {value!r} is not valid")
    return value


def check_id(value: object, what: str = "identifier") -> str:
    """A home, space or mule id: 1-64 of `A-Z a-z 0-9 _ -`, so it is one safe topic level."""
    return _check(_ID, value, what)


def check_context_key(value: object) -> str:
    """`<task>/<room kind>`, lower case, e.g. `occupancy/bedroom`."""
    return _check(_CONTEXT_KEY, value, "context key")


def check_sha256(value: object, what: str = "sha256") -> str:
    return _check(_SHA256, value, what)


def check_token128(value: object, what: str) -> str:
    """A session or transfer id: 128 random bits as 32 lower-case hex digits."""
    return _check(_TOKEN128, value, what)


def check_reason(value: object) -> str:
    """A reason code: the stable `reason` of an error, or `ok`."""
    return _check(_REASON, value, "reason code")


# ---------------------------------------------------------------------------------------------
# Topics


@dataclass(frozen=True)
class Topics:
    """The topic layout under one prefix.

    A space's inbox, written to by mules:  `<prefix>/<home>/<space>/mule/<mule>`
    A mule's inbox, written to by spaces:  `<prefix>/mules/<mule>/space/<home>/<space>`
    """

    prefix: str = "mlmule"

    def __post_init__(self) -> None:
        _check(_PREFIX, self.prefix, "topic prefix")

    def to_space(self, home: str, space: str, mule: str) -> str:
        return f"{self.prefix}/{home}/{space}/mule/{mule}"

    def to_mule(self, mule: str, home: str, space: str) -> str:
        return f"{self.prefix}/{RESERVED_HOME_ID}/{mule}/space/{home}/{space}"

    def home_filter(self, home: str) -> str:
        """What a home subscribes to: the inboxes of all its spaces."""
        return f"{self.prefix}/{home}/+/mule/+"

    def mule_filter(self, mule: str) -> str:
        return f"{self.prefix}/{RESERVED_HOME_ID}/{mule}/space/+/+"

    def parse_to_space(self, topic: str, home: str) -> tuple[str, str]:
        """(space, mule) of a topic in `home`'s inboxes."""
        levels = self._levels(topic)
        if len(levels) != 4 or levels[0] != home or levels[2] != "mule":
            raise MalformedMessage(f"topic {topic!r} is not an inbox of home {home!r}")
        return check_id(levels[1], "space id"), check_id(levels[3], "mule id")

    def parse_to_mule(self, topic: str, mule: str) -> tuple[str, str]:
        """(home, space) of a topic in `mule`'s inbox."""
        levels = self._levels(topic)
        if len(levels) != 5 or levels[:3] != [RESERVED_HOME_ID, mule, "space"]:
            raise MalformedMessage(f"topic {topic!r} is not the inbox of mule {mule!r}")
        return check_id(levels[3], "home id"), check_id(levels[4], "space id")

    def _levels(self, topic: str) -> list[str]:
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise MalformedMessage(f"topic {topic!r} is not under prefix {self.prefix!r}")
        return topic[len(head) :].split("/")


# ---------------------------------------------------------------------------------------------
# Offer contents


class Mode(StrEnum):
    """Who trains on a context key: the space on its sensors, or the mule on the phone's."""

    FIXED = "fixed"
    MOBILE = "mobile"


class PayloadKind(StrEnum):
    """What a snapshot carries: a model's weights, or its knowledge (its predictions on the
    context key's shared proxy set, `core/knowledge.py`), which peers of any family can use."""

    WEIGHTS = "weights"
    KNOWLEDGE = "knowledge"


class ExchangeMode(StrEnum):
    """What a side swaps with its peers: weights (merged within one family), knowledge
    (distilled across families), or both. A space's setting in Home Assistant, a phone's
    `exchange_mode` in its config.yaml."""

    WEIGHTS = "weights"
    KNOWLEDGE = "knowledge"
    BOTH = "both"

    @property
    def kinds(self) -> frozenset[PayloadKind]:
        """The payload kinds this mode exchanges (for the endpoints' `kinds`)."""
        if self is ExchangeMode.BOTH:
            return frozenset(PayloadKind)
        return frozenset({PayloadKind(self.value)})


# A new space's. In the knowledge benchmark (bench/results/knowledge.json) knowledge alone ended
# at or above weights-only at the median in every setting, with 7 to 31 times fewer bytes per
# exchange, and both within the seed spread of knowledge alone; in the learning benchmark both
# matched either alone on the spaces' occupancy (0.984). Both, so that a space learns from every
# phone, whichever kinds the phone swaps.
DEFAULT_EXCHANGE_MODE = ExchangeMode.BOTH
# A phone's, for the spaces' models it carries (fixed-data mode): whatever each space it visits
# exchanges (a side that does not exchange a kind neither offers nor fetches it), so one phone
# carries in weights and knowledge homes alike.
MULE_EXCHANGE_MODE = ExchangeMode.BOTH
# A phone's, for the models it learns itself from its own labels (mobile-data mode: its activity
# model). In the learning benchmark's phone activity (5 seeds) knowledge alone ended at 0.489
# against 0.478 for both, with 120 against 192 next-day regressions and a fifth of the bytes;
# 0.496 against 0.487 at the learning world's size (bench/results/README.md). A space learns
# nothing from the phones' model it hosts (it cannot read the phones' sensors), so weights add
# nothing there. With DP-SGD on, a phone does not distil, so its own models swap both.
MULE_OWN_EXCHANGE_MODE = ExchangeMode.KNOWLEDGE
# A space added before exchange modes existed swapped weights, and keeps doing so.
LEGACY_EXCHANGE_MODE = ExchangeMode.WEIGHTS


def leader_of(mode: Mode) -> PeerKind:
    """The side that merges and trains in this mode; the other side sends first."""
    return PeerKind.SPACE if mode is Mode.FIXED else PeerKind.MULE


class _Reader:
    """Strict access to one JSON object: each field read once, typed, and nothing left over."""

    def __init__(self, raw: object, what: str) -> None:
        if not isinstance(raw, dict):
            raise MalformedMessage(f"{what} is not a JSON object")
        self._raw: dict[str, object] = raw
        self._what = what
        self._read: set[str] = set()

    def get(self, name: str) -> object:
        if name not in self._raw:
            raise MalformedMessage(f"{self._what} has no field {name!r}")
        self._read.add(name)
        return self._raw[name]

    def optional(self, name: str) -> object | None:
        """A field that may be absent (an older peer does not send it): None then. A field
        present with null is malformed, like any other wrong value."""
        if name not in self._raw:
            return None
        value = self.get(name)
        if value is None:
            raise MalformedMessage(f"{self._what}.{name} is null")
        return value

    def integer(self, name: str, low: int = 0, high: int = _MAX_JSON_INT) -> int:
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise MalformedMessage(f"{self._what}.{name} must be an integer in [{low}, {high}]")
        return value

    def boolean(self, name: str) -> bool:
        value = self.get(name)
        if not isinstance(value, bool):
            raise MalformedMessage(f"{self._what}.{name} must be true or false")
        return value

    def text(self, name: str, check: Callable[[object], str]) -> str:
        return check(self.get(name))

    def optional_text(self, name: str, check: Callable[[object], str]) -> str | None:
        value = self.get(name)
        return None if value is None else check(value)

    def items(self, name: str) -> list[object]:
        value = self.get(name)
        if not isinstance(value, list):
            raise MalformedMessage(f"{self._what}.{name} must be a list")
        return value

    def nested(self, name: str) -> _Reader:
        return _Reader(self.get(name), f"{self._what}.{name}")

    def done(self) -> None:
        extra = set(self._raw) - self._read
        if extra:
            raise MalformedMessage(f"{self._what} has unknown fields {sorted(extra)}")


def _check_arch(value: object) -> str:
    return _check(_ARCH, value, "architecture hash")


@dataclass(frozen=True)
class SnapshotInfo:
    """What an offer tells about one snapshot: enough to decide whether to fetch it."""

    context_key: str
    version: int
    sha256: str  # of the whole snapshot container: its identity for idempotency
    size: int
    arch: str  # architecture hash: only weights with the same one can merge
    data_time: int  # unix seconds of the newest data it was trained on
    # weights (the default, and all a peer that predates knowledge sends), or knowledge: then
    # `arch` is the producer's family, for information, since knowledge crosses families
    kind: PayloadKind = PayloadKind.WEIGHTS

    def __post_init__(self) -> None:
        check_context_key(self.context_key)
        if not isinstance(self.kind, PayloadKind):
            raise MalformedMessage(f"snapshot kind {self.kind!r} is not weights or knowledge")
        check_sha256(self.sha256)
        _check_arch(self.arch)
        for name in ("version", "size", "data_time"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise MalformedMessage(f"snapshot {name} must be an integer")
            if not 0 <= value <= _MAX_JSON_INT:
                raise MalformedMessage(f"snapshot {name} {value} is out of range")
        if self.size == 0:
            raise MalformedMessage("a snapshot is never empty")

    def to_json(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "arch": self.arch,
            "data_time": self.data_time,
        }
        if self.kind is not PayloadKind.WEIGHTS:
            # weights stay as they always were on the wire: a peer that predates `kind` reads them
            fields["kind"] = self.kind.value
        return fields

    @classmethod
    def from_json(cls, context_key: str, reader: _Reader) -> SnapshotInfo:
        kind = reader.optional("kind")
        if kind is not None and kind not in {k.value for k in PayloadKind}:
            raise MalformedMessage(f"snapshot kind {kind!r} is not weights or knowledge")
        info = cls(
            context_key=context_key,
            version=reader.integer("version"),
            sha256=reader.text("sha256", check_sha256),
            size=reader.integer("size", 1),
            arch=reader.text("arch", _check_arch),
            data_time=reader.integer("data_time"),
            kind=PayloadKind.WEIGHTS if kind is None else PayloadKind(kind),
        )
        reader.done()
        return info


@dataclass(frozen=True)
class OfferEntry:
    """One context key in an offer: its mode, the sender's snapshot (if any), and what it answers.

    `in_reply_to` is the sha256 of the peer's snapshot this one answers: the leader sets it on the
    snapshot it made by merging the follower's (see `leader_of`). An offer may hold two entries
    for a key: its weights (or null), and its knowledge (never null).
    """

    context_key: str
    mode: Mode
    snapshot: SnapshotInfo | None = None
    in_reply_to: str | None = None

    def __post_init__(self) -> None:
        check_context_key(self.context_key)
        if self.snapshot is not None and self.snapshot.context_key != self.context_key:
            raise MalformedMessage("an offered snapshot belongs to another context key")
        if self.in_reply_to is not None:
            check_sha256(self.in_reply_to, "in_reply_to")

    @property
    def kind(self) -> PayloadKind:
        """Which payload this entry is about; an entry with no snapshot is about weights."""
        return PayloadKind.WEIGHTS if self.snapshot is None else self.snapshot.kind

    def to_json(self) -> dict[str, object]:
        return {
            "context_key": self.context_key,
            "mode": self.mode.value,
            "snapshot": None if self.snapshot is None else self.snapshot.to_json(),
            "in_reply_to": self.in_reply_to,
        }

    @classmethod
    def from_json(cls, raw: object) -> OfferEntry:
        reader = _Reader(raw, "offer entry")
        context_key = reader.text("context_key", check_context_key)
        mode_text = reader.get("mode")
        if mode_text not in {mode.value for mode in Mode}:
            raise MalformedMessage(f"offer entry mode {mode_text!r} is not fixed or mobile")
        snapshot_raw = reader.get("snapshot")
        snapshot = (
            None
            if snapshot_raw is None
            else SnapshotInfo.from_json(context_key, _Reader(snapshot_raw, "snapshot"))
        )
        in_reply_to = reader.optional_text("in_reply_to", check_sha256)
        entry = cls(context_key, Mode(mode_text), snapshot, in_reply_to)
        reader.done()
        return entry


# ---------------------------------------------------------------------------------------------
# Control message bodies


def _sha_list(values: list[object], what: str) -> tuple[str, ...]:
    shas = tuple(check_sha256(value, what) for value in values)
    if len(set(shas)) != len(shas):
        raise MalformedMessage(f"{what} lists a hash twice")
    return shas


@dataclass(frozen=True)
class Offer:
    """The sender's snapshots for some context keys; the peer answers with a `Request`."""

    TYPE: ClassVar[str] = "offer"
    number: int  # counts this sender's offers in the session, from 1
    entries: tuple[OfferEntry, ...]

    def to_json(self) -> dict[str, object]:
        return {"offer": self.number, "entries": [entry.to_json() for entry in self.entries]}

    @classmethod
    def from_json(cls, reader: _Reader) -> Self:
        number = reader.integer("offer", 1)
        entries = tuple(OfferEntry.from_json(raw) for raw in reader.items("entries"))
        if len({(entry.context_key, entry.kind) for entry in entries}) != len(entries):
            raise MalformedMessage("an offer lists a context key's weights or knowledge twice")
        modes = {entry.context_key: entry.mode for entry in entries}
        if any(modes[entry.context_key] is not entry.mode for entry in entries):
            raise MalformedMessage("an offer gives a context key two modes")
        return cls(number, entries)


@dataclass(frozen=True)
class Request:
    """Answers offer `offer`: the snapshots (by sha256) the sender wants; may be empty."""

    TYPE: ClassVar[str] = "request"
    offer: int
    want: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"offer": self.offer, "want": list(self.want)}

    @classmethod
    def from_json(cls, reader: _Reader) -> Self:
        return cls(reader.integer("offer", 1), _sha_list(reader.items("want"), "request.want"))


@dataclass(frozen=True)
class Manifest:
    """Announces a transfer: the whole payload's hash and size, and each chunk's hash."""

    TYPE: ClassVar[str] = "manifest"
    transfer: str
    sha256: str
    size: int
    chunk_size: int
    chunks: tuple[str, ...]  # sha256 of every chunk, in order; the total is their count

    @property
    def total(self) -> int:
        return len(self.chunks)

    def to_json(self) -> dict[str, object]:
        return {
            "transfer": self.transfer,
            "sha256": self.sha256,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
        }

    @classmethod
    def from_json(cls, reader: _Reader) -> Self:
        return cls(
            transfer=reader.text("transfer", lambda v: check_token128(v, "transfer id")),
            sha256=reader.text("sha256", check_sha256),
            size=reader.integer("size", 1),
            chunk_size=reader.integer("chunk_size", 1, MAX_CHUNK_SIZE),
            chunks=tuple(check_sha256(raw, "chunk hash") for raw in reader.items("chunks")),
        )


@dataclass(frozen=True)
class Nack:
    """The chunks a receiver still misses; an empty list means all arrived, a verdict follows."""

    TYPE: ClassVar[str] = "nack"
    transfer: str
    missing: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {"transfer": self.transfer, "missing": list(self.missing)}

    @classmethod
    def from_json(cls, reader: _Reader) -> Self:
        transfer = reader.text("transfer", lambda v: check_token128(v, "transfer id"))
        missing: list[int] = []
        for raw in reader.items("missing"):
            if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < 2**32:
                raise MalformedMessage("nack.missing holds chunk indices")
            missing.append(raw)
        if len(set(missing)) != len(missing):
            raise MalformedMessage("nack.missing lists an index twice")
        return cls(transfer, tuple(missing))


@dataclass(frozen=True)
class Result:
    """The receiver's verdict on a delivered snapshot."""

    TYPE: ClassVar[str] = "result"
    transfer: str
    sha256: str
    accepted: bool
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "transfer": self.transfer,
            "sha256": self.sha256,
            "accepted": self.accepted,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, reader: _Reader) -> Self:
        return cls(
            transfer=reader.text("transfer", lambda v: check_token128(v, "transfer id")),
            sha256=reader.text("sha256", check_sha256),
            accepted=reader.boolean("accepted"),
            reason=reader.text("reason", check_reason),
        )


@dataclass(frozen=True)
class Abort:
    """Either side gives up on a snapshot's transfer (`transfer` is null before it started)."""

    TYPE: ClassVar[str] = "abort"
    transfer: str | None
    sha256: str
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"transfer": self.transfer, "sha256": self.sha256, "reason": self.reason}

    @classmethod
    def from_json(cls, reader: _Reader) -> Self:
        return cls(
            transfer=reader.optional_text("transfer", lambda v: check_token128(v, "transfer id")),
            sha256=reader.text("sha256", check_sha256),
            reason=reader.text("reason", check_reason),
        )


@dataclass(frozen=True)
class Bye:
    """Ends the session."""

    TYPE: ClassVar[str] = "bye"
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"reason": self.reason}

    @classmethod
    def from_json(cls, reader: _Reader) -> Self:
        return cls(reader.text("reason", check_reason))


Body = Offer | Request | Manifest | Nack | Result | Abort | Bye
BODY_TYPES: dict[str, type[Body]] = {
    kind.TYPE: kind for kind in (Offer, Request, Manifest, Nack, Result, Abort, Bye)
}


# ---------------------------------------------------------------------------------------------
# Signed control envelopes


class Signer(Protocol):
    """A local identity that signs (`identity.Identity` is one)."""

    @property
    def id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Envelope:
    """A control message: who, to whom, in which session and order, and what."""

    session: str
    sender: str
    recipient: str
    space: str
    seq: int
    sent_at_ms: int
    body: Body

    def unsigned_json(self) -> dict[str, object]:
        return {
            "protocol": PROTOCOL_VERSION,
            "type": self.body.TYPE,
            "session": self.session,
            "from": self.sender,
            "to": self.recipient,
            "space": self.space,
            "seq": self.seq,
            "sent_at": self.sent_at_ms,
            "body": self.body.to_json(),
        }


def canonical_json(value: object) -> bytes:
    """RFC 8785 (JCS) for the values we send: no floats, ASCII keys, so sorted keys suffice."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def signed_bytes(unsigned: dict[str, object]) -> bytes:
    return SIGNING_CONTEXT + canonical_json(unsigned)


def encode_control(envelope: Envelope, signer: Signer) -> bytes:
    unsigned = envelope.unsigned_json()
    signature = signer.sign(signed_bytes(unsigned))
    return canonical_json({**unsigned, "sig": base64.b64encode(signature).decode("ascii")})


@dataclass(frozen=True)
class SignedEnvelope:
    """A parsed control message, with what its signature covers (checked by the caller)."""

    envelope: Envelope
    signed: bytes
    signature: bytes


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedMessage(f"JSON object repeats the key {key!r}")
        result[key] = value
    return result


def _reject_float(text: str) -> object:
    raise MalformedMessage(f"control messages carry no fractional numbers ({text})")


def decode_control(payload: bytes, max_bytes: int) -> SignedEnvelope:
    """Parse a control message strictly; raises `MalformedMessage`, or a subclass, if anything is
    off. The signature is returned, not checked: the caller knows the sender's key."""
    if len(payload) > max_bytes:
        raise MalformedMessage(f"control message of {len(payload)} bytes exceeds {max_bytes}")
    try:
        raw = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_keys,
            parse_float=_reject_float,
            parse_constant=_reject_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise MalformedMessage(f"control message is not UTF-8 JSON: {err}") from err
    reader = _Reader(raw, "message")
    protocol = reader.integer("protocol", 1)
    if protocol != PROTOCOL_VERSION:
        raise MalformedMessage(
            f"protocol version {protocol} is not understood (this peer speaks {PROTOCOL_VERSION})",
            reason="unsupported_protocol",
        )
    kind = reader.get("type")
    body_type = BODY_TYPES.get(kind) if isinstance(kind, str) else None
    if body_type is None:
        raise MalformedMessage(f"unknown message type {kind!r}", reason="unknown_type")
    body_reader = reader.nested("body")
    body = body_type.from_json(body_reader)
    body_reader.done()
    envelope = Envelope(
        session=reader.text("session", lambda v: check_token128(v, "session id")),
        sender=reader.text("from", lambda v: check_id(v, "sender id")),
        recipient=reader.text("to", lambda v: check_id(v, "recipient id")),
        space=reader.text("space", lambda v: check_id(v, "space id")),
        seq=reader.integer("seq", 1),
        sent_at_ms=reader.integer("sent_at"),
        body=body,
    )
    signature_text = reader.get("sig")
    reader.done()
    if not isinstance(signature_text, str):
        raise MalformedMessage("the signature is not a base64 string")
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (ValueError, binascii.Error) as err:
        raise MalformedMessage("the signature is not base64") from err
    if len(signature) != SIGNATURE_BYTES:
        raise MalformedMessage(f"an Ed25519 signature is {SIGNATURE_BYTES} bytes")
    return SignedEnvelope(envelope, signed_bytes(envelope.unsigned_json()), signature)


# ---------------------------------------------------------------------------------------------
# Binary chunks


@dataclass(frozen=True)
class ChunkFrame:
    transfer: str
    index: int
    total: int
    data: bytes


def encode_chunk(transfer: str, index: int, total: int, data: bytes) -> bytes:
    header = _CHUNK_HEADER.pack(CHUNK_MAGIC, CHUNK_FORMAT, bytes.fromhex(transfer), index, total)
    return header + data


def is_chunk(payload: bytes) -> bool:
    return payload[: len(CHUNK_MAGIC)] == CHUNK_MAGIC


def decode_chunk(payload: bytes) -> ChunkFrame:
    """Split a chunk into header fields and data; the data is at most `MAX_CHUNK_SIZE` bytes."""
    if len(payload) < CHUNK_HEADER_BYTES:
        raise MalformedMessage(f"a chunk of {len(payload)} bytes is shorter than its header")
    if len(payload) > CHUNK_HEADER_BYTES + MAX_CHUNK_SIZE:
        raise MalformedMessage(f"a chunk of {len(payload)} bytes exceeds the chunk size limit")
    magic, version, transfer, index, total = _CHUNK_HEADER.unpack_from(payload)
    if magic != CHUNK_MAGIC or version != CHUNK_FORMAT:
        raise MalformedMessage(
            f"chunk format {version} is not understood", reason="unsupported_protocol"
        )
    return ChunkFrame(transfer.hex(), index, total, payload[CHUNK_HEADER_BYTES:])
