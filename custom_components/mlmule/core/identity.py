"""Ed25519 identities of spaces and mules, the trust list, and pairing codes.

Every home (its spaces share one key) and every mule has an Ed25519 key pair, generated on first
use. An identity's id is derived from its public key, so an id can never be re-pointed at
another key: the trust list stores the key itself and checks that the two agree.

Pairing code (version 1), before base32:

    u8  version                       1
    u8  kind                          0 = space (a home), 1 = mule
    32  public key                    raw Ed25519
    u8  n, n bytes                    name, UTF-8, at most 64 bytes
    u8  n, n bytes                    one-time token, at most 32 bytes (may be empty)
    u8  flags                         bit 0: a broker follows, bit 1: the broker uses TLS
    [u8 n, n bytes host, u16 port, u8 n, n bytes username]   only with a broker
    4   checksum                      first bytes of sha256 of everything above

It is written as `MLMULE-` and RFC 4648 base32 in groups of five, upper case: only characters of
the QR alphanumeric mode, so a QR code of it stays small. Reading ignores case, spaces and
dashes, and takes 0, 1 and 8 (absent from the alphabet) for the O, I and B they are mistaken for.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import BadSignature, InvalidIdentity, InvalidPairingCode, TrustError, UnknownSigner
from .storage import atomic_write_text


class PeerKind(StrEnum):
    """What a peer is: a home (its spaces share one identity) or a mule (a phone). In an
    encounter it is also the side a peer plays."""

    SPACE = "space"
    MULE = "mule"


class TrustRole(StrEnum):
    """What a paired peer is to a home: its household's (owner) or a visitor's (guest)."""

    OWNER = "owner"
    GUEST = "guest"


PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_ID_DIGEST_BYTES = 10  # 80 bits: 16 base32 characters, plenty to tell a household's peers apart
_KINDS: tuple[PeerKind, ...] = tuple(PeerKind)  # in pairing-code order


def identity_id(public_key: bytes) -> str:
    """The short, stable id of a public key: base32 of the first 80 bits of its sha256."""
    digest = hashlib.sha256(public_key).digest()[:_ID_DIGEST_BYTES]
    return base64.b32encode(digest).decode("ascii").lower()


@functools.lru_cache(maxsize=256)
def _loaded_public_key(public_key: bytes) -> Ed25519PublicKey:
    """The key object of raw key bytes; a peer's key verifies every message of its encounters,
    and loading it costs a tenth of a verification."""
    return Ed25519PublicKey.from_public_bytes(public_key)


def verify(public_key: bytes, data: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; raises `BadSignature` if it does not hold."""
    try:
        _loaded_public_key(public_key).verify(signature, data)
    except (InvalidSignature, ValueError) as err:
        raise BadSignature("the Ed25519 signature does not verify") from err


class Verifier(Protocol):
    """Resolves a signer's key id to its public key; raises `UnknownSigner` if it is untrusted."""

    def public_key_for(self, key_id: str) -> bytes: ...


class Identity:
    """An Ed25519 key pair with the kind and name of its owner."""

    def __init__(self, private_key: Ed25519PrivateKey, *, kind: PeerKind, name: str) -> None:
        if kind not in _KINDS:
            raise InvalidIdentity(f"identity kind must be one of {_KINDS}, not {kind!r}")
        kind = PeerKind(kind)
        self._private_key = private_key
        self.kind = kind
        self.name = name
        self.public_key_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.id = identity_id(self.public_key_bytes)

    def __repr__(self) -> str:
        return f"Identity(id={self.id!r}, kind={self.kind!r}, name={self.name!r})"

    @classmethod
    def generate(cls, *, kind: PeerKind, name: str) -> Identity:
        return cls(Ed25519PrivateKey.generate(), kind=kind, name=name)

    @classmethod
    def from_private_bytes(cls, raw: bytes, *, kind: PeerKind, name: str) -> Identity:
        """From the raw 32-byte private key, e.g. as Home Assistant keeps it in its config entry."""
        try:
            key = Ed25519PrivateKey.from_private_bytes(raw)
        except ValueError as err:
            raise InvalidIdentity("an Ed25519 private key is 32 raw bytes") from err
        return cls(key, kind=kind, name=name)

    @classmethod
    def load_or_create(cls, path: Path, *, kind: PeerKind, name: str) -> Identity:
        """Load the key stored at `path`, or generate one and store it there first.

        The key is an unencrypted PKCS#8 PEM file of mode 0600 (what `openssl pkey` reads); a
        directory this creates for it gets mode 0700. A key file that others can read has its
        permissions tightened to 0600 on load.
        """
        if not path.exists():
            identity = cls.generate(kind=kind, name=name)
            if not path.parent.exists():
                path.parent.mkdir(mode=0o700, parents=True)
            atomic_write_text(path, identity._private_pem(), mode=0o600)
            return identity
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as err:
            raise InvalidIdentity(f"{path} is not an unencrypted PEM private key") from err
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidIdentity(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key, kind=kind, name=name)

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key, for a caller that stores it itself (keep it secret)."""
        return self._private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def public_key_for(self, key_id: str) -> bytes:
        """As a `Verifier`, an identity trusts itself only (to reload what it signed)."""
        if key_id != self.id:
            raise UnknownSigner(f"signer {key_id!r} is not this identity ({self.id})")
        return self.public_key_bytes

    def _private_pem(self) -> str:
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")


# ---------------------------------------------------------------------------------------------
# Pairing codes

PAIRING_VERSION = 1
PAIRING_PREFIX = "MLMULE"
_CHECKSUM_BYTES = 4
_MAX_NAME_BYTES = 64
_MAX_TOKEN_BYTES = 32
_MAX_HOST_BYTES = 253
_MAX_USERNAME_BYTES = 64
_FLAG_BROKER = 0x01
_FLAG_TLS = 0x02
_GROUP = 5
_TYPO_FIXES = str.maketrans({"0": "O", "1": "I", "8": "B"})


@dataclass(frozen=True)
class BrokerInfo:
    """Where a phone reaches a home's MQTT broker."""

    host: str
    port: int
    tls: bool
    username: str = ""


@dataclass(frozen=True)
class PairingCode:
    """What one side shows and the other types in or scans to pair.

    A home's code (kind "space", made by the `mlmule.pair_mule` action) carries the home's key and
    name, its broker and a one-time token the phone presents back when it completes the pairing.
    A mule's code (kind "mule") carries the phone's key and name, for adding it from HA's side.
    """

    kind: PeerKind
    public_key: bytes
    name: str
    token: bytes = b""
    broker: BrokerInfo | None = None

    @property
    def peer_id(self) -> str:
        return identity_id(self.public_key)

    @classmethod
    def for_identity(
        cls, identity: Identity, *, token: bytes = b"", broker: BrokerInfo | None = None
    ) -> PairingCode:
        return cls(identity.kind, identity.public_key_bytes, identity.name, token, broker)

    def encode(self) -> str:
        """The code as text; the same string is the QR payload."""
        payload = bytearray([PAIRING_VERSION, _KINDS.index(self._checked_kind())])
        if len(self.public_key) != PUBLIC_KEY_BYTES:
            raise InvalidPairingCode("a pairing code carries a 32-byte Ed25519 public key")
        payload += self.public_key
        payload += _short_field(self.name.encode("utf-8"), _MAX_NAME_BYTES, "name")
        payload += _short_field(self.token, _MAX_TOKEN_BYTES, "token")
        if self.broker is None:
            payload.append(0)
        else:
            broker = self.broker
            if not 0 < broker.port < 2**16:
                raise InvalidPairingCode(f"broker port {broker.port} is out of range")
            payload.append(_FLAG_BROKER | (_FLAG_TLS if broker.tls else 0))
            payload += _short_field(broker.host.encode("utf-8"), _MAX_HOST_BYTES, "host")
            payload += struct.pack(">H", broker.port)
            payload += _short_field(broker.username.encode("utf-8"), _MAX_USERNAME_BYTES, "user")
        payload += hashlib.sha256(payload).digest()[:_CHECKSUM_BYTES]
        text = base64.b32encode(bytes(payload)).decode("ascii").rstrip("=")
        groups = [text[i : i + _GROUP] for i in range(0, len(text), _GROUP)]
        return "-".join([PAIRING_PREFIX, *groups])

    @classmethod
    def decode(cls, text: str) -> PairingCode:
        """Read a code as typed or scanned; raises `InvalidPairingCode` on any defect."""
        compact = "".join(text.split()).replace("-", "").upper()
        if not compact.startswith(PAIRING_PREFIX):
            raise InvalidPairingCode(f"a pairing code starts with {PAIRING_PREFIX}")
        body = compact[len(PAIRING_PREFIX) :].translate(_TYPO_FIXES)
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except (binascii.Error, ValueError) as err:
            raise InvalidPairingCode("the pairing code has characters outside base32") from err
        if len(raw) < 2 + _CHECKSUM_BYTES:
            raise InvalidPairingCode("the pairing code is too short")
        payload, checksum = raw[:-_CHECKSUM_BYTES], raw[-_CHECKSUM_BYTES:]
        if hashlib.sha256(payload).digest()[:_CHECKSUM_BYTES] != checksum:
            raise InvalidPairingCode("the pairing code's checksum does not match: a typo?")
        if payload[0] != PAIRING_VERSION:
            raise InvalidPairingCode(
                f"pairing code version {payload[0]} is not supported (this peer reads "
                f"version {PAIRING_VERSION}); update the app that reads it"
            )
        return cls._from_payload(_Reader(payload, start=1))

    @classmethod
    def _from_payload(cls, reader: _Reader) -> PairingCode:
        kind_index = reader.byte()
        if kind_index >= len(_KINDS):
            raise InvalidPairingCode(f"unknown pairing code kind {kind_index}")
        public_key = reader.take(PUBLIC_KEY_BYTES)
        name = reader.text(reader.byte())
        token = reader.take(reader.byte())
        flags = reader.byte()
        broker = None
        if flags & ~(_FLAG_BROKER | _FLAG_TLS):
            raise InvalidPairingCode(f"unknown pairing code flags {flags:#04x}")
        if flags & _FLAG_BROKER:
            host = reader.text(reader.byte())
            (port,) = struct.unpack(">H", reader.take(2))
            username = reader.text(reader.byte())
            broker = BrokerInfo(host, port, bool(flags & _FLAG_TLS), username)
        elif flags & _FLAG_TLS:
            raise InvalidPairingCode("the pairing code sets TLS without a broker")
        reader.expect_end()
        return cls(_KINDS[kind_index], public_key, name, token, broker)

    def _checked_kind(self) -> PeerKind:
        if self.kind not in _KINDS:
            raise InvalidPairingCode(f"pairing code kind must be one of {_KINDS}")
        return PeerKind(self.kind)


def _short_field(value: bytes, limit: int, what: str) -> bytes:
    if len(value) > limit:
        raise InvalidPairingCode(f"the {what} is longer than {limit} bytes")
    return bytes([len(value)]) + value


class _Reader:
    """Bounded reads from a pairing code payload."""

    def __init__(self, data: bytes, start: int) -> None:
        self._data = data
        self._pos = start

    def take(self, count: int) -> bytes:
        if self._pos + count > len(self._data):
            raise InvalidPairingCode("the pairing code ends early")
        chunk = self._data[self._pos : self._pos + count]
        self._pos += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def text(self, count: int) -> str:
        try:
            return self.take(count).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidPairingCode("the pairing code has text that is not UTF-8") from err

    def expect_end(self) -> None:
        if self._pos != len(self._data):
            raise InvalidPairingCode("the pairing code has trailing bytes")


# ---------------------------------------------------------------------------------------------
# Trust list

TRUST_FILE_VERSION = 1
ALL_SPACES = "all"


@dataclass(frozen=True)
class TrustEntry:
    """A paired peer: a mule a home accepts, or a home a mule accepts.

    `spaces` names the spaces (HA space subentry ids) the peer may exchange with; `None` means
    all of them. An owner's mules usually get all, a guest's mules the few rooms a host chose.
    """

    peer_id: str
    public_key: bytes
    kind: PeerKind
    role: TrustRole
    label: str
    paired_at: float
    spaces: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if len(self.public_key) != PUBLIC_KEY_BYTES:
            raise TrustError("a trusted peer's public key is 32 raw bytes")
        if identity_id(self.public_key) != self.peer_id:
            raise TrustError(f"peer id {self.peer_id!r} does not belong to its public key")
        if self.kind not in _KINDS or self.role not in tuple(TrustRole):
            raise TrustError(f"kind must be one of {_KINDS} and role one of {tuple(TrustRole)}")
        object.__setattr__(self, "kind", PeerKind(self.kind))
        object.__setattr__(self, "role", TrustRole(self.role))

    @classmethod
    def for_key(
        cls,
        public_key: bytes,
        *,
        kind: PeerKind,
        role: TrustRole,
        label: str,
        paired_at: float,
        spaces: frozenset[str] | None = None,
    ) -> TrustEntry:
        return cls(identity_id(public_key), public_key, kind, role, label, paired_at, spaces)

    def allows(self, space_id: str) -> bool:
        return self.spaces is None or space_id in self.spaces

    def to_json(self) -> dict[str, object]:
        return {
            "peer_id": self.peer_id,
            "public_key": base64.b64encode(self.public_key).decode("ascii"),
            "kind": self.kind,
            "role": self.role,
            "label": self.label,
            "paired_at": self.paired_at,
            "spaces": ALL_SPACES if self.spaces is None else sorted(self.spaces),
        }

    @classmethod
    def from_json(cls, raw: object) -> TrustEntry:
        if not isinstance(raw, dict):
            raise TrustError("a trust entry is a JSON object")
        try:
            spaces_raw = raw["spaces"]
            spaces = None if spaces_raw == ALL_SPACES else frozenset(_str_list(spaces_raw))
            paired_at = raw["paired_at"]
            if isinstance(paired_at, bool) or not isinstance(paired_at, int | float):
                raise TrustError("paired_at is a number of seconds")
            return cls(
                peer_id=_str(raw["peer_id"]),
                public_key=base64.b64decode(_str(raw["public_key"]), validate=True),
                kind=PeerKind(_str(raw["kind"])),
                role=TrustRole(_str(raw["role"])),
                label=_str(raw["label"]),
                paired_at=float(paired_at),
                spaces=spaces,
            )
        except (KeyError, ValueError) as err:  # binascii.Error is a ValueError
            raise TrustError(f"malformed trust entry: {err}") from err


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TrustError(f"expected a string, got {type(value).__name__}")
    return value


def _str_list(value: object) -> list[str]:
    if not isinstance(value, list):
        raise TrustError(f"spaces is {ALL_SPACES!r} or a list of space ids")
    return [_str(item) for item in value]


class TrustStore:
    """The peers an identity has paired with, persisted as JSON when it has a path.

    Every change is written atomically at once, so the file on disk always holds a whole list.
    """

    def __init__(self, path: Path | None = None, entries: Iterable[TrustEntry] = ()) -> None:
        self.path = path
        self._entries = {entry.peer_id: entry for entry in entries}

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        """The trust list stored at `path`; empty (and not yet written) if there is none."""
        if not path.exists():
            return cls(path)
        return cls.from_json(path.read_text(encoding="utf-8"), path)

    @classmethod
    def from_json(cls, text: str, path: Path | None = None) -> TrustStore:
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise TrustError(f"the trust list is not valid JSON: {err}") from err
        if not isinstance(document, dict) or document.get("version") != TRUST_FILE_VERSION:
            raise TrustError(f"the trust list is not a version {TRUST_FILE_VERSION} trust file")
        raw_entries = document.get("entries")
        if not isinstance(raw_entries, list):
            raise TrustError("the trust list has no entries list")
        return cls(path, [TrustEntry.from_json(raw) for raw in raw_entries])

    def to_json(self) -> str:
        document = {
            "version": TRUST_FILE_VERSION,
            "entries": [entry.to_json() for entry in self._entries.values()],
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    def add(self, entry: TrustEntry) -> None:
        """Trust a peer, replacing what was known about the same id."""
        self._entries[entry.peer_id] = entry
        self._save()

    def remove(self, peer_id: str) -> bool:
        """Forget a peer; returns whether it was known."""
        if self._entries.pop(peer_id, None) is None:
            return False
        self._save()
        return True

    def get(self, peer_id: str) -> TrustEntry | None:
        return self._entries.get(peer_id)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._entries

    def __iter__(self) -> Iterator[TrustEntry]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def is_allowed(self, peer_id: str, space_id: str) -> bool:
        """Whether the peer is paired and may exchange models with this space."""
        entry = self._entries.get(peer_id)
        return entry is not None and entry.allows(space_id)

    def public_key_for(self, key_id: str) -> bytes:
        entry = self._entries.get(key_id)
        if entry is None:
            raise UnknownSigner(f"signer {key_id!r} is not in the trust list")
        return entry.public_key

    def _save(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, self.to_json(), mode=0o600)
