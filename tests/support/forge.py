"""Snapshot containers built from the documented layout, independently of `core.snapshot`.

Tests use them to forge what an attacker or a buggy peer could send: edited headers, other
bodies, other signers, all correctly signed so the check under test is the one that fires.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any, Protocol

MAGIC = b"MLMULE"


class Signer(Protocol):
    @property
    def id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


def split(data: bytes) -> tuple[int, dict[str, Any], bytes, bytes]:
    """(format version, header, body, signature) of a container."""
    magic, version, header_length = struct.unpack_from(">6sHI", data)
    assert magic == MAGIC
    header = json.loads(data[12 : 12 + header_length])
    (body_length,) = struct.unpack_from(">I", data, 12 + header_length)
    body = data[16 + header_length : 16 + header_length + body_length]
    return version, header, body, data[-64:]


def envelope(header: dict[str, Any], body: bytes, signer: Signer, version: int = 1) -> bytes:
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    unsigned = (
        MAGIC
        + struct.pack(">HI", version, len(header_bytes))
        + header_bytes
        + struct.pack(">I", len(body))
        + body
    )
    return unsigned + signer.sign(unsigned)


def resigned(
    data: bytes,
    edit: Callable[[dict[str, Any]], None] = lambda header: None,
    *,
    signer: Signer,
    body: bytes | None = None,
    version: int = 1,
) -> bytes:
    """`data` with its header edited and/or body replaced, correctly signed by `signer`."""
    _, header, old_body, _ = split(data)
    new_body = old_body if body is None else body
    header["body_sha256"] = hashlib.sha256(new_body).hexdigest()
    header["origin"] = signer.id
    edit(header)
    return envelope(header, new_body, signer, version)
