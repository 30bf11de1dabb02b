"""Snapshots: the signed, versioned container a mule carries and a space hosts.

A snapshot is an ONNX model with what it takes to trust and merge it. Layout of format version 1,
integers big-endian:

    6 bytes   magic                 b"MLMULE"
    u16       format version        1
    u32       header length H       at most `SnapshotLimits.max_header_bytes`
    H bytes   header                canonical JSON: sorted keys, no spaces, UTF-8
    u32       body length B
    B bytes   body                  the model (see compression below)
    64 bytes  signature             Ed25519 over every byte before it, by the header's `origin`

Header fields (all required unless noted):
    origin        id of the identity that signed the container (see identity.py). The origin is
                  authenticated: a mule passing on a space's model signs it as its own new
                  version and records the space's in `lineage`.
    task, context_key, arch_hash, schema_hash      what the model is for and what it is
    created_at, data_time    unix seconds: when it was made, and its newest training data
    trained_at    (optional) unix seconds of its last training: of a merge, the newest among the
                  models that got a share. Re-signing and adopting keep it. Staleness is measured
                  from it (strategies.py); a snapshot without it is as old as its `data_time`.
                  `data_time <= trained_at <= created_at`.
    samples       number of training samples behind it
    version       the origin's version counter for this context key; it only ever grows
    lineage       strings naming what was merged into it, oldest first
    extra         (optional) object of application data, carried and signed untouched
    compression   "none", "fp16" or "int8"
    body_sha256   hex sha256 of the body
    tensors       (compressed only) the tensor section: name, dtype, shape, int8 scale
    critical      (optional) header fields a reader must understand to read this snapshot

Versioning. The u16 version changes only when a reader of the old version would misread the
container; a reader refuses versions it does not know with `UnsupportedSnapshotFormat`, which
lists the versions it reads. Within a version, header fields may be added: a reader ignores
fields it does not know, unless the writer named them in `critical`; then it refuses, naming them
(same error). A compression a reader does not know is refused in the same way. Fields added so
far: `trained_at` (December 2026). It is not critical: a reader that predates it measures
staleness from `data_time`, an older and so more cautious age, and a newer reader does the same
for a snapshot without it.

Compression is a transport concern: `unpack` always yields a float32 ONNX model. With "none" the
body is the ONNX file as given. With "fp16" or "int8" the weight matrices (float32 initializers
of rank >= 2) leave the graph, which declares them as typed graph inputs instead, so the graph
stays a valid ONNX model, and their values follow it in the body, in the order of the header's
`tensors`: float16 little-endian, or int8 with one symmetric scale per tensor (value = q * scale).
Vectors and scalars (biases, normalisation constants, calibration) stay float32 in the graph:
they are a small share of the bytes and the most sensitive to rounding.

The identity hash of a snapshot, used by the protocol for idempotency, is the sha256 of the whole
container (`Snapshot.sha256`).

`unpack` checks, cheapest first, and raises a `SnapshotError` at the first failure: size and
framing (every length is checked against the bytes actually there before it is used), the
header's JSON, the signer's key (`UnknownSigner`), the signature (`BadSignature`), the body hash,
the header fields, the architecture expected for the context key (`IncompatibleSnapshot`), the
clock (`SnapshotFromFuture`, `StaleSnapshot`), replays (`ReplayedSnapshot`), and last the model
itself: the tensor section against the graph, the ONNX structure and operators the numpy
executor can run (`SnapshotModelInvalid`, whose reason is the ONNX layer's), the node, depth,
tensor count and size limits (`SnapshotTooLarge`), non-finite weights (`PoisonedSnapshot`), and,
for a receiver about to merge, that it is the canonical model of its architecture. Every size
is bounded before anything is allocated for it. A rejected snapshot never reaches the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from .errors import (
    CorruptStateFile,
    IncompatibleSnapshot,
    MalformedSnapshot,
    OnnxError,
    PoisonedSnapshot,
    ReplayedSnapshot,
    SnapshotError,
    SnapshotFromFuture,
    SnapshotModelInvalid,
    SnapshotTooLarge,
    StaleSnapshot,
    UnsupportedSnapshotFormat,
    WrongPayload,
)
from .families import META_ARCH_HASH, FamilySpec, from_onnx
from .features import FeatureSchema
from .identity import SIGNATURE_BYTES, Identity, Verifier, verify
from .onnx import DataType, NumpyExecutor, OnnxLimits, OnnxModel, ValueInfo, load_model, save_model
from .onnx.model import TOO_LARGE as ONNX_TOO_LARGE
from .storage import atomic_write_text
from .weights import Weights, copy_weights

# The core runs on Python 3.11, which has no `type` statement.
JsonValue: TypeAlias = "str | int | float | bool | list[JsonValue] | dict[str, JsonValue] | None"
Compression = Literal["none", "fp16", "int8"]
# A canonical model read back (`families.from_onnx`): its family, feature schema and weights.
Canonical: TypeAlias = tuple[FamilySpec, FeatureSchema, Weights]

MAGIC: Final = b"MLMULE"
FORMAT_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)
COMPRESSIONS: Final[tuple[Compression, ...]] = ("none", "fp16", "int8")

_PREFIX = struct.Struct(">6sHI")  # magic, format version, header length
_BODY_LENGTH = struct.Struct(">I")
_MIN_SIZE = _PREFIX.size + _BODY_LENGTH.size + SIGNATURE_BYTES
_HEADER_FIELDS = frozenset(
    {
        "origin",
        "task",
        "context_key",
        "arch_hash",
        "schema_hash",
        "created_at",
        "data_time",
        "trained_at",
        "samples",
        "version",
        "lineage",
        "extra",
        "compression",
        "body_sha256",
        "tensors",
        "critical",
        # knowledge containers (knowledge.py)
        "payload",
        "proxy_id",
        "n_outputs",
        "proxy_size",
        "score",
    }
)
# What a container carries: a model (this module) or knowledge, predictions on a proxy set
# (knowledge.py). A header without `payload` carries weights; a knowledge container names
# `payload` in `critical`, so a reader that predates it refuses the container cleanly.
Payload = Literal["weights", "knowledge"]
PAYLOADS: Final[tuple[Payload, ...]] = ("weights", "knowledge")
_ORIGIN_RE = re.compile(r"[a-z2-7]{16}")
_TASK_RE = re.compile(r"[a-z0-9_]{1,32}")
_CONTEXT_RE = re.compile(r"([a-z0-9_]{1,32})/[a-z0-9_]{1,32}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces: hashes and ids
_MAX_LINEAGE_ENTRY = 256
_MAX_RANK = 8
_MAX_INT = 2**63 - 1
_PACKED_DTYPES: Final[Mapping[str, np.dtype[Any]]] = {
    "float16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
}
_FLOAT16_MAX: Final = float(np.finfo(np.float16).max)
_MAX_INT8_SCALE: Final = float(np.finfo(np.float32).max) / 128


@dataclass(frozen=True)
class SnapshotLimits:
    """What a receiver accepts. The defaults suit the MLPs mlmule trains, with ample headroom."""

    max_bytes: int = 4 * 2**20
    max_header_bytes: int = 64 * 2**10
    max_tensors: int = 256
    max_tensor_elements: int = 2**20
    max_nodes: int = 512
    max_depth: int = 256  # nodes on the longest path through the graph
    max_lineage: int = 256
    max_clock_skew: float = 600.0  # seconds a creation time may lie in the future

    def onnx_limits(self) -> OnnxLimits:
        # int8 weights come out four times larger as float32.
        return OnnxLimits(
            max_bytes=4 * self.max_bytes,
            max_nodes=self.max_nodes,
            max_initializers=self.max_tensors,
            max_tensor_elements=self.max_tensor_elements,
            max_depth=self.max_depth,
        )


DEFAULT_LIMITS: Final = SnapshotLimits()


@dataclass(frozen=True)
class SnapshotMeta:
    """What the origin states about the model; all of it is signed."""

    task: str
    context_key: str
    arch_hash: str
    schema_hash: str
    created_at: float
    data_time: float
    samples: int
    version: int
    lineage: tuple[str, ...] = ()
    extra: Mapping[str, JsonValue] = field(default_factory=dict, hash=False)
    trained_at: float | None = None  # None: not stated (a writer that predates the field)

    @property
    def last_trained(self) -> float:
        """When the model was last trained, as far as the header tells: what staleness measures."""
        return self.data_time if self.trained_at is None else self.trained_at

    @property
    def source(self) -> str:
        """Which of the signer's hosts wrote it ("" when not stated): the spaces of one home
        sign with the home's key, each counting its own versions (`extra.source`)."""
        source = self.extra.get("source")
        return source if isinstance(source, str) else ""

    def versions_key(self, base: str) -> str:
        """What the signer's versions of `base` count up within: `base`, per source."""
        return f"{base}@{self.source}" if self.source else base


def source_extra(source: str) -> dict[str, JsonValue]:
    """The `extra` that names a snapshot's source (none for a signer with one host)."""
    return {"source": source} if source else {}


@dataclass(frozen=True)
class SnapshotHeader:
    """The verified header of a container: signature, body hash and fields checked, the model
    not yet decoded (what `verify_container` returns)."""

    meta: SnapshotMeta
    origin: str  # identity id of the signer, who vouches for this version
    sha256: str  # of the whole container: the snapshot's identity
    format_version: int
    compression: Compression
    size: int

    @property
    def replay_key(self) -> str:
        """What its signer's versions count up within: the context key, per source."""
        return self.meta.versions_key(self.meta.context_key)


@dataclass(frozen=True)
class Snapshot(SnapshotHeader):
    """A snapshot that passed every check, with its model as float32 ONNX.

    `canonical` is the model read back as its family, when the check that it is canonical ran
    (a receiver about to merge, or `seal`): a host takes it as it is instead of decoding again.
    """

    onnx_bytes: bytes = field(repr=False)
    model: OnnxModel = field(repr=False, compare=False)
    canonical: Canonical | None = field(default=None, repr=False, compare=False)


# ---------------------------------------------------------------------------------------------
# Public API


def pack(
    onnx_bytes: bytes,
    meta: SnapshotMeta,
    identity: Identity,
    *,
    compression: Compression = "none",
    limits: SnapshotLimits = DEFAULT_LIMITS,
) -> bytes:
    """Sign `onnx_bytes` and `meta` into a container, optionally compressing the weights.

    The header and the model's structure, limits and values are checked as a receiver checks
    them, so what this packs is not refused for those; whether the model is the canonical one
    of its architecture is the receiver's check (see `unpack`).
    """
    return _signed(onnx_bytes, None, meta, identity, compression=compression, limits=limits)[0]


def seal(
    model: OnnxModel,
    canonical: Canonical,
    meta: SnapshotMeta,
    identity: Identity,
    *,
    compression: Compression = "none",
    limits: SnapshotLimits = DEFAULT_LIMITS,
) -> tuple[bytes, Snapshot]:
    """Sign a model this peer has just built from `canonical` (`families.build_onnx`), and
    return the container with the snapshot a reader would unpack from it.

    The model is the canonical one of its family, so it is not encoded and decoded again to
    check it: only its values and header are (as `pack` does). A compressed container's model is
    rounded, so that one is unpacked from the container.
    """
    onnx_bytes = save_model(model)
    _check_values(model, meta)
    container, parsed = _signed(
        onnx_bytes, model, meta, identity, compression=compression, limits=limits
    )
    if compression != "none":
        return container, unpack(
            container, trust=identity, expected_arch=None, limits=limits, now=meta.created_at
        )
    spec, schema, weights = canonical
    return container, Snapshot(
        meta=parsed,
        origin=identity.id,
        sha256=hashlib.sha256(container).hexdigest(),
        format_version=FORMAT_VERSION,
        compression=compression,
        size=len(container),
        onnx_bytes=onnx_bytes,
        model=model,
        canonical=(spec, schema, copy_weights(weights)),
    )


def _signed(
    onnx_bytes: bytes,
    model: OnnxModel | None,
    meta: SnapshotMeta,
    identity: Identity,
    *,
    compression: Compression,
    limits: SnapshotLimits,
) -> tuple[bytes, SnapshotMeta]:
    """The signed container, and its metadata as a reader will see it. `model` is the parsed
    `onnx_bytes` when the caller has checked it already; None checks it here."""
    if compression not in COMPRESSIONS:
        raise MalformedSnapshot(f"compression must be one of {COMPRESSIONS}")
    header: dict[str, JsonValue] = {
        "origin": identity.id,
        "task": meta.task,
        "context_key": meta.context_key,
        "arch_hash": meta.arch_hash,
        "schema_hash": meta.schema_hash,
        "created_at": meta.created_at,
        "data_time": meta.data_time,
        "samples": meta.samples,
        "version": meta.version,
        "lineage": list(meta.lineage),
        "extra": dict(meta.extra),
        "compression": compression,
    }
    if meta.trained_at is not None:
        header["trained_at"] = meta.trained_at
    # Read the header back as a receiver would, so a writer never sends what readers refuse.
    parsed, _ = _meta_from_header(_parse_header(_serialised(header)), limits)
    if model is None:
        model = _checked_model(onnx_bytes, meta, limits, canonical=False)[0]
    body = onnx_bytes
    if compression != "none":
        body, tensors = _compress(model, compression)
        header["tensors"] = [tensor.to_json() for tensor in tensors]
    return signed_container(header, body, identity, limits), parsed


def signed_container(
    header: dict[str, JsonValue], body: bytes, identity: Identity, limits: SnapshotLimits
) -> bytes:
    """Frame and sign `header` (completed with `body_sha256`) and `body`: the one container
    layout of every payload."""
    header["body_sha256"] = hashlib.sha256(body).hexdigest()
    header_bytes = _serialised(header)
    if len(header_bytes) > limits.max_header_bytes:
        raise SnapshotTooLarge(f"header of {len(header_bytes)} bytes exceeds the limit")
    unsigned = b"".join(
        (
            _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)),
            header_bytes,
            _BODY_LENGTH.pack(len(body)),
            body,
        )
    )
    container = unsigned + identity.sign(unsigned)
    if len(container) > limits.max_bytes:
        raise SnapshotTooLarge(
            f"snapshot of {len(container)} bytes exceeds the {limits.max_bytes}-byte limit"
        )
    return container


def verify_container(
    data: bytes,
    *,
    trust: Verifier,
    limits: SnapshotLimits = DEFAULT_LIMITS,
    payload: Payload | None = "weights",
) -> SnapshotHeader:
    """Check framing, signer, signature, body hash and header, without decoding the model.

    `payload` is what the container must carry (`WrongPayload` otherwise); None takes either."""
    return verified_frame(data, trust, limits, payload)[0]


def payload_kind(data: bytes, *, limits: SnapshotLimits = DEFAULT_LIMITS) -> Payload:
    """What a container carries, from its framing and header alone: nothing is verified, so
    this only routes bytes to `unpack` or `knowledge.unpack_knowledge`, which verify."""
    return _payload_of(Frame.parse(data, limits).header)


def _payload_of(header: Mapping[str, JsonValue]) -> Payload:
    payload = header.get("payload", "weights")
    for known in PAYLOADS:
        if payload == known:
            return known
    raise UnsupportedSnapshotFormat(
        f"payload {payload!r} is not one this peer reads: {PAYLOADS}",
        supported_versions=SUPPORTED_VERSIONS,
        unknown_fields=("payload",),
    )


def verified_frame(
    data: bytes, trust: Verifier, limits: SnapshotLimits, payload: Payload | None
) -> tuple[SnapshotHeader, Frame]:
    """The verified header and the raw frame of a container (for the readers of each payload):
    framing, signer, signature, body hash, common header fields, and the payload kind."""
    frame = Frame.parse(data, limits)
    origin = frame.header.get("origin")
    if not isinstance(origin, str) or not _ORIGIN_RE.fullmatch(origin):
        raise MalformedSnapshot("the header has no valid origin id")
    verify(trust.public_key_for(origin), data[:-SIGNATURE_BYTES], data[-SIGNATURE_BYTES:])
    if hashlib.sha256(frame.body).hexdigest() != frame.header.get("body_sha256"):
        raise MalformedSnapshot("the body does not match the header's body_sha256")
    carried = _payload_of(frame.header)
    if payload is not None and carried != payload:
        raise WrongPayload(f"this container carries {carried}, not {payload}")
    meta, compression = _meta_from_header(frame.header, limits)
    if (compression == "none") == ("tensors" in frame.header):
        raise MalformedSnapshot("a tensor section goes with fp16 or int8 compression only")
    info = SnapshotHeader(
        meta=meta,
        origin=origin,
        sha256=hashlib.sha256(data).hexdigest(),
        format_version=frame.version,
        compression=compression,
        size=len(data),
    )
    return info, frame


def unpack(
    data: bytes,
    *,
    trust: Verifier,
    expected_arch: Mapping[str, str] | None,
    limits: SnapshotLimits = DEFAULT_LIMITS,
    replay_guard: ReplayGuard | None = None,
    now: float | None = None,
    max_age: float | None = None,
) -> Snapshot:
    """Verify and decode a container; raises a `SnapshotError` naming the first failed check.

    `trust` resolves the signer's key (a `TrustStore`, or an `Identity` for its own snapshots).
    `expected_arch` maps each context key this peer serves to its architecture hash; a snapshot
    for another key or another architecture is refused, and the model must be the canonical
    graph of that architecture (`families.from_onnx`), with the header's schema and task: this
    is what a peer about to merge it passes. `None` skips these checks and keeps the structural
    ones, for tools that only look.

    `max_age` is the hard cap on data age, `now - data_time`: a model is as old as the newest
    data it learnt from, and neither re-signing nor retraining on old data makes it fresher.
    How much a model under that cap counts is the strategy's business, by its training age.

    With a `replay_guard`, a version not newer than the last one accepted from the same origin
    and context key (per source, `SnapshotMeta.versions_key`) is refused, and this one is
    recorded once every check has passed.
    """
    info, frame = verified_frame(data, trust, limits, "weights")
    meta = info.meta
    if expected_arch is not None:
        wanted = expected_arch.get(meta.context_key)
        if wanted is None:
            raise IncompatibleSnapshot(f"this peer does not serve {meta.context_key!r}")
        if wanted != meta.arch_hash:
            raise IncompatibleSnapshot(
                f"architecture {meta.arch_hash[:12]} is not {wanted[:12]} of {meta.context_key}"
            )
    current = time.time() if now is None else now
    if meta.created_at > current + limits.max_clock_skew:
        raise SnapshotFromFuture(
            f"created {meta.created_at - current:.0f} s in the future; check the clocks"
        )
    if max_age is not None and current - meta.data_time > max_age:
        raise StaleSnapshot(f"its newest data is {current - meta.data_time:.0f} s old")
    if replay_guard is not None:
        replay_guard.check(info.origin, meta.versions_key(meta.context_key), meta.version)
    if info.compression == "none":
        onnx_bytes = frame.body
    else:
        onnx_bytes = _decompress(frame.body, tensor_table(frame.header, limits), limits)
    model, canonical = _checked_model(onnx_bytes, meta, limits, canonical=expected_arch is not None)
    if replay_guard is not None:
        replay_guard.record(info.origin, meta.versions_key(meta.context_key), meta.version)
    return Snapshot(
        meta=meta,
        origin=info.origin,
        sha256=info.sha256,
        format_version=info.format_version,
        compression=info.compression,
        size=info.size,
        onnx_bytes=onnx_bytes,
        model=model,
        canonical=canonical,
    )


def inspect(data: bytes, *, limits: SnapshotLimits = DEFAULT_LIMITS) -> dict[str, JsonValue]:
    """The framing and the header as stored, for display. Nothing here is verified."""
    frame = Frame.parse(data, limits)
    return {
        "format_version": frame.version,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "header_bytes": frame.header_length,
        "body_bytes": len(frame.body),
        "verified": False,
        "header": dict(frame.header),
    }


# ---------------------------------------------------------------------------------------------
# Framing and header


@dataclass(frozen=True)
class Frame:
    version: int
    header: dict[str, JsonValue]
    header_length: int
    body: bytes

    @classmethod
    def parse(cls, data: bytes, limits: SnapshotLimits) -> Frame:
        if len(data) > limits.max_bytes:
            raise SnapshotTooLarge(
                f"snapshot of {len(data)} bytes exceeds the {limits.max_bytes}-byte limit"
            )
        if len(data) < _MIN_SIZE:
            raise MalformedSnapshot(f"{len(data)} bytes is too short for a snapshot")
        magic, version, header_length = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise MalformedSnapshot("not a snapshot: wrong magic")
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedSnapshotFormat(
                f"snapshot format {version} is not supported; this peer reads {SUPPORTED_VERSIONS}",
                supported_versions=SUPPORTED_VERSIONS,
            )
        if header_length > limits.max_header_bytes:
            raise SnapshotTooLarge(f"header of {header_length} bytes exceeds the limit")
        body_length_at = _PREFIX.size + header_length
        if body_length_at + _BODY_LENGTH.size + SIGNATURE_BYTES > len(data):
            raise MalformedSnapshot("the header length runs past the end of the snapshot")
        (body_length,) = _BODY_LENGTH.unpack_from(data, body_length_at)
        body_at = body_length_at + _BODY_LENGTH.size
        if body_at + body_length + SIGNATURE_BYTES != len(data):
            raise MalformedSnapshot("the body length does not match the size of the snapshot")
        header = _parse_header(data[_PREFIX.size : body_length_at])
        return cls(version, header, header_length, data[body_at : body_at + body_length])


def _serialised(header: dict[str, JsonValue]) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8, finite numbers only."""
    try:
        text = json.dumps(
            header, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as err:
        raise MalformedSnapshot(f"the metadata is not plain finite JSON: {err}") from err
    return text.encode("utf-8")


def _parse_header(raw: bytes) -> dict[str, JsonValue]:
    try:
        header = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise MalformedSnapshot(f"the header is not strict JSON: {err}") from err
    if not isinstance(header, dict):
        raise MalformedSnapshot("the header is not a JSON object")
    return cast("dict[str, JsonValue]", header)


def _object_without_duplicates(pairs: list[tuple[str, JsonValue]]) -> dict[str, JsonValue]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate keys")
    return result


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _meta_from_header(
    header: Mapping[str, JsonValue], limits: SnapshotLimits
) -> tuple[SnapshotMeta, Compression]:
    critical = header.get("critical", [])
    if not isinstance(critical, list) or not all(isinstance(name, str) for name in critical):
        raise MalformedSnapshot("critical must be a list of field names")
    unknown = tuple(sorted({str(name) for name in critical} - _HEADER_FIELDS))
    if unknown:
        raise UnsupportedSnapshotFormat(
            f"the snapshot needs header fields this peer does not know: {', '.join(unknown)}",
            supported_versions=SUPPORTED_VERSIONS,
            unknown_fields=unknown,
        )
    compression = header.get("compression")
    if compression not in COMPRESSIONS:
        raise UnsupportedSnapshotFormat(
            f"compression {compression!r} is not one this peer reads: {COMPRESSIONS}",
            supported_versions=SUPPORTED_VERSIONS,
            unknown_fields=("compression",),
        )
    task = _matching(header, "task", _TASK_RE)
    context_key = _matching(header, "context_key", _CONTEXT_RE)
    if not context_key.startswith(task + "/"):
        raise MalformedSnapshot(f"context key {context_key!r} is not one of task {task!r}")
    created_at = _seconds(header, "created_at")
    data_time = _seconds(header, "data_time")
    if data_time > created_at:
        raise MalformedSnapshot("the newest training data is dated after the snapshot")
    trained_at = _seconds(header, "trained_at") if "trained_at" in header else None
    if trained_at is not None and not data_time <= trained_at <= created_at:
        raise MalformedSnapshot("trained_at must lie between data_time and created_at")
    lineage = header.get("lineage")
    if not isinstance(lineage, list) or len(lineage) > limits.max_lineage:
        raise MalformedSnapshot(f"lineage must be a list of at most {limits.max_lineage} entries")
    if not all(isinstance(e, str) and 0 < len(e) <= _MAX_LINEAGE_ENTRY for e in lineage):
        raise MalformedSnapshot(f"lineage entries are strings of 1..{_MAX_LINEAGE_ENTRY} chars")
    extra = header.get("extra", {})
    if not isinstance(extra, dict):
        raise MalformedSnapshot("extra must be a JSON object")
    meta = SnapshotMeta(
        task=task,
        context_key=context_key,
        arch_hash=_matching(header, "arch_hash", _TOKEN_RE),
        schema_hash=_matching(header, "schema_hash", _TOKEN_RE),
        created_at=created_at,
        data_time=data_time,
        samples=_integer(header, "samples"),
        version=_integer(header, "version"),
        lineage=tuple(cast("list[str]", lineage)),
        extra=extra,
        trained_at=trained_at,
    )
    return meta, compression


def _matching(header: Mapping[str, JsonValue], key: str, pattern: re.Pattern[str]) -> str:
    value = header.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MalformedSnapshot(f"header field {key!r} is missing or malformed")
    return value


def _seconds(header: Mapping[str, JsonValue], key: str) -> float:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedSnapshot(f"header field {key!r} must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise MalformedSnapshot(f"header field {key!r} must be a finite time after 1970")
    return seconds


def _integer(header: Mapping[str, JsonValue], key: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT:
        raise MalformedSnapshot(f"header field {key!r} must be an integer in 0..2**63-1")
    return value


# ---------------------------------------------------------------------------------------------
# Tensor section (compression)


@dataclass(frozen=True)
class PackedTensor:
    name: str
    dtype: Literal["float16", "int8"]
    shape: tuple[int, ...]
    scale: float | None = None  # int8 only

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * _PACKED_DTYPES[self.dtype].itemsize

    def to_json(self) -> dict[str, JsonValue]:
        entry: dict[str, JsonValue] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
        }
        if self.scale is not None:
            entry["scale"] = self.scale
        return entry

    @classmethod
    def from_json(cls, raw: JsonValue, limits: SnapshotLimits) -> PackedTensor:
        if not isinstance(raw, dict):
            raise MalformedSnapshot("a tensor entry is a JSON object")
        name, dtype, shape, scale = (raw.get(k) for k in ("name", "dtype", "shape", "scale"))
        if not isinstance(name, str) or not name:
            raise MalformedSnapshot("a tensor entry needs a name")
        if not isinstance(dtype, str) or dtype not in _PACKED_DTYPES:
            raise MalformedSnapshot(f"tensor {name!r} has unknown dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise MalformedSnapshot(f"tensor {name!r} has a malformed shape")
        dims = tuple(cast("list[int]", shape))
        # Bound each dimension first so the product stays a small number.
        if any(d > limits.max_tensor_elements for d in dims) or (
            math.prod(dims) > limits.max_tensor_elements
        ):
            raise SnapshotTooLarge(f"tensor {name!r} of shape {dims} exceeds the element limit")
        if dtype == "int8":
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise MalformedSnapshot(f"int8 tensor {name!r} needs a numeric scale")
            # 127 * scale must stay a finite float32
            if not 0 <= scale <= _MAX_INT8_SCALE:
                raise PoisonedSnapshot(f"int8 tensor {name!r} has scale {scale}")
            return cls(name, "int8", dims, float(scale))
        if scale is not None:
            raise MalformedSnapshot(f"float16 tensor {name!r} has a scale")
        return cls(name, "float16", dims)


def tensor_table(header: Mapping[str, JsonValue], limits: SnapshotLimits) -> list[PackedTensor]:
    raw = header.get("tensors")
    if not isinstance(raw, list) or len(raw) > limits.max_tensors:
        raise MalformedSnapshot(f"tensors must be a list of at most {limits.max_tensors} entries")
    tensors = [PackedTensor.from_json(entry, limits) for entry in raw]
    if len({tensor.name for tensor in tensors}) != len(tensors):
        raise MalformedSnapshot("the tensor section names a tensor twice")
    return tensors


def _compress(model: OnnxModel, compression: Compression) -> tuple[bytes, list[PackedTensor]]:
    graph_inputs = {value.name for value in model.inputs}
    matrices = {
        name: value
        for name, value in model.initializers.items()
        if value.dtype == np.float32 and value.ndim >= 2 and name not in graph_inputs
    }
    tensors: list[PackedTensor] = []
    chunks: list[bytes] = []
    for name, value in matrices.items():
        shape = tuple(int(d) for d in value.shape)
        if compression == "fp16":
            if value.size and float(np.abs(value).max()) > _FLOAT16_MAX:
                raise SnapshotError(
                    f"tensor {name!r} exceeds the float16 range; use int8 or no compression",
                    reason="compression_overflow",
                )
            tensors.append(PackedTensor(name, "float16", shape))
            chunks.append(value.astype(_PACKED_DTYPES["float16"]).tobytes())
        else:
            scale, quantised = _quantise_int8(value)
            tensors.append(PackedTensor(name, "int8", shape, scale))
            chunks.append(quantised.tobytes())
    stripped = replace(
        model,
        initializers={n: v for n, v in model.initializers.items() if n not in matrices},
        inputs=(
            *model.inputs,
            *(ValueInfo(n, shape=t.shape) for n, t in zip(matrices, tensors, strict=True)),
        ),
    )
    return save_model(stripped) + b"".join(chunks), tensors


def _quantise_int8(value: npt.NDArray[np.float32]) -> tuple[float, npt.NDArray[np.int8]]:
    """Symmetric per-tensor int8: the largest magnitude maps to 127."""
    peak = np.float32(np.max(np.abs(value))) if value.size else np.float32(0)
    scale = np.float32(peak / np.float32(127))
    if scale == 0:
        return 0.0, np.zeros(value.shape, dtype=np.int8)
    quantised = np.clip(np.rint(value / scale), -127, 127).astype(np.int8)
    return float(scale), quantised


def _decompress(body: bytes, tensors: list[PackedTensor], limits: SnapshotLimits) -> bytes:
    """The float32 ONNX model from a stripped graph and its tensor section."""
    data_bytes = sum(tensor.nbytes for tensor in tensors)
    if data_bytes >= len(body):
        raise MalformedSnapshot("the tensor section leaves no room for the graph")
    graph_bytes = len(body) - data_bytes
    # the stripped graph only carries structure: the restored model is the one that must run
    graph = _load(body[:graph_bytes], limits, runnable=False)
    declared = {value.name: value for value in graph.inputs}
    weights: dict[str, npt.NDArray[np.float32]] = {}
    offset = graph_bytes
    for tensor in tensors:
        value_info = declared.get(tensor.name)
        if (
            value_info is None
            or value_info.elem_type != DataType.FLOAT
            or tuple(value_info.shape) != tensor.shape
        ):
            raise SnapshotModelInvalid(
                f"tensor {tensor.name!r} {tensor.shape} is not a float graph input of that shape"
            )
        if tensor.name in graph.initializers:
            raise MalformedSnapshot(f"tensor {tensor.name!r} is also an initializer")
        raw = np.frombuffer(body, _PACKED_DTYPES[tensor.dtype], tensor.elements, offset)
        offset += tensor.nbytes
        values = raw.astype(np.float32).reshape(tensor.shape)
        if tensor.scale is not None:
            values *= np.float32(tensor.scale)
        weights[tensor.name] = values
    restored = replace(
        graph,
        inputs=tuple(value for value in graph.inputs if value.name not in weights),
        initializers={**graph.initializers, **weights},
    )
    return save_model(restored)


# ---------------------------------------------------------------------------------------------
# The model


def _load(onnx_bytes: bytes, limits: SnapshotLimits, *, runnable: bool = True) -> OnnxModel:
    """The parsed model; `runnable` also requires that the numpy executor can run it: known
    operators and opset, valid attributes (a snapshot nobody can run is no snapshot)."""
    try:
        model = load_model(onnx_bytes, limits.onnx_limits())
        if runnable:
            NumpyExecutor(model, limits.onnx_limits())
    except OnnxError as err:
        if err.reason == ONNX_TOO_LARGE:
            raise SnapshotTooLarge(f"the model exceeds a limit: {err}") from err
        raise SnapshotModelInvalid(f"the model is not usable: {err}", reason=err.reason) from err
    return model


def _checked_model(
    onnx_bytes: bytes, meta: SnapshotMeta, limits: SnapshotLimits, *, canonical: bool
) -> tuple[OnnxModel, Canonical | None]:
    """The model, once it is well-formed, within limits, finite, and what the header says.

    With `canonical`, the model must be the canonical graph of a model family (families.py)
    whose architecture, schema and task are the header's: the receiver is about to merge it.
    """
    model = _load(onnx_bytes, limits)
    _check_values(model, meta)
    if not canonical:
        return model, None
    try:
        spec, schema, weights = from_onnx(model)
    except OnnxError as err:
        raise SnapshotModelInvalid(f"not a canonical model: {err}", reason=err.reason) from err
    # from_onnx has checked the model's arch hash against its spec and schema
    if schema.schema_hash() != meta.schema_hash or spec.task != meta.task:
        raise IncompatibleSnapshot("the model's feature schema or task differs from the header")
    return model, (spec, schema, weights)


def _check_values(model: OnnxModel, meta: SnapshotMeta) -> None:
    """Finite weights, and the architecture hash the header states."""
    for name, value in model.initializers.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise PoisonedSnapshot(f"tensor {name!r} holds NaN or infinite values")
    declared = model.metadata.get(META_ARCH_HASH)
    if declared is not None and declared != meta.arch_hash:
        raise IncompatibleSnapshot("the model's own architecture hash differs from the header's")


# ---------------------------------------------------------------------------------------------
# Replays

REPLAY_FILE_VERSION = 1


class ReplayGuard:
    """The highest version accepted per (origin, context key); persisted as JSON with a path."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._seen: dict[str, dict[str, int]] = {}
        if path is not None and path.exists():
            self._seen = _replay_state(path.read_text(encoding="utf-8"))

    def highest(self, origin: str, context_key: str) -> int | None:
        return self._seen.get(origin, {}).get(context_key)

    def check(self, origin: str, context_key: str, version: int) -> None:
        """Raise `ReplayedSnapshot` unless `version` is newer than any accepted before."""
        seen = self.highest(origin, context_key)
        if seen is not None and version <= seen:
            raise ReplayedSnapshot(
                f"version {version} of {context_key} from {origin} is not newer than {seen}"
            )

    def record(self, origin: str, context_key: str, version: int) -> None:
        self.check(origin, context_key, version)
        self._seen.setdefault(origin, {})[context_key] = version
        if self.path is not None:
            document = {"version": REPLAY_FILE_VERSION, "seen": self._seen}
            # compact: an indent makes json use its pure-Python encoder, and this is written
            # on every snapshot taken
            atomic_write_text(self.path, json.dumps(document, sort_keys=True) + "\n")


def _replay_state(text: str) -> dict[str, dict[str, int]]:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CorruptStateFile(f"the replay guard file is not JSON: {err}") from err
    if not isinstance(document, dict) or document.get("version") != REPLAY_FILE_VERSION:
        raise CorruptStateFile("the replay guard file is not a version 1 file")
    seen = document.get("seen")
    if not isinstance(seen, dict):
        raise CorruptStateFile("the replay guard file is not a version 1 file")
    for keys in seen.values():
        if not isinstance(keys, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in keys.values()
        ):
            raise CorruptStateFile("the replay guard file holds a non-integer version")
    return cast("dict[str, dict[str, int]]", seen)
