"""Knowledge: what a model predicts on a shared proxy set, carried instead of (or beside) weights.

Weights merge only within one architecture. Knowledge travels between any models of a context
key: a peer's *knowledge* is its model's class probabilities on the key's **proxy set**, inputs
every peer regenerates identically from the feature schema alone. A receiver keeps the latest
knowledge of each contributor in a `KnowledgeCache` and distils its own model towards their
freshness- and score-weighted ensemble (`train_numpy.Distillation`, `host.receive_knowledge`):
FedCache's knowledge cache and DCCL's model-over-models distillation.

What knowledge is not: no real sample, and no hash or embedding of one, leaves a home. FedCache
relates samples across devices by hashes of their features; the proxy set replaces that
(docs/privacy-security.md says why).

The proxy set (`proxy_set`). Each proxy row is a short history of frames drawn from the
schema's per-feature statistics (`FeatureSchema.mean` / `std`), shaped to each feature's kind:
time of day and day of week consistent with a drawn instant (the lags step back in time),
flags (`*_available`, `*_on`, ...) that are on with the feature's mean as probability, counts
rounded and non-negative, other features within three standard deviations (non-negative where
the feature cannot be negative). A lag's frame keeps most of the row's base draw (correlation
0.8) and redraws the rest, so windows look like slowly changing histories. Every number comes
from SHAKE-256 over the generator version, the schema's base statistics, the size, the seed and
the lag, through integer sums and IEEE-754 arithmetic only (no `np.random`, no libm functions),
so the set is bit-identical on every machine and numpy version. Its `id` names the base
statistics, not the window: two families of one context key that share the base schema and
differ in their window share the proxy set.

The container is the signed snapshot container (`snapshot.py`), header `payload: "knowledge"`
(listed in `critical`), `proxy_id`, `proxy_size`, `n_outputs` and optional `score`; its body
is the probability matrix `[proxy_size, n_outputs]`, row-major, in the tensor section's format:
int8 with one scale (default) or float16. The defaults, int8 on 128 proxy rows, were measured in
the knowledge benchmark against float16 on 256 rows: level within the seed spread, at a third of
the bytes (bench/results/README.md, "Knowledge between different models"). `arch_hash` names
the producer's architecture, `schema_hash` its feature schema. See docs/protocol.md, "Knowledge
containers".
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from . import families
from .errors import (
    CorruptStateFile,
    IncompatibleSnapshot,
    MalformedSnapshot,
    PoisonedSnapshot,
    SnapshotFromFuture,
    SnapshotTooLarge,
    StaleSnapshot,
    WrongProxySet,
)
from .features import FeatureSchema
from .identity import Identity, Verifier
from .snapshot import (
    DEFAULT_LIMITS,
    JsonValue,
    PackedTensor,
    ReplayGuard,
    SnapshotHeader,
    SnapshotLimits,
    payload_kind,
    signed_container,
    source_extra,
    tensor_table,
    verified_frame,
)
from .storage import atomic_write_text
from .strategies import MLMULE_HALF_LIFE, Staleness
from .weights import FloatArray

__all__ = [
    "DEFAULT_KNOWLEDGE_COMPRESSION",
    "DEFAULT_PROXY_SIZE",
    "KNOWLEDGE_COMPRESSIONS",
    "KNOWLEDGE_FORMAT",
    "CacheEntry",
    "Knowledge",
    "KnowledgeCache",
    "KnowledgeCompression",
    "KnowledgeSnapshot",
    "ProxySet",
    "knowledge_of",
    "payload_kind",
    "proxy_set",
    "seal_knowledge",
    "unpack_knowledge",
]

_LOGGER = logging.getLogger(__name__)

KNOWLEDGE_FORMAT: Final = "mlmule-knowledge/1"
PROXY_GENERATOR: Final = "mlmule-proxy/1"  # bump when the generated inputs change
DEFAULT_PROXY_SIZE: Final = 128
MAX_PROXY_SIZE: Final = 4096
MAX_OUTPUTS: Final = families.MAX_CLASSES
KnowledgeCompression = Literal["fp16", "int8"]
KNOWLEDGE_COMPRESSIONS: Final[tuple[KnowledgeCompression, ...]] = ("fp16", "int8")
DEFAULT_KNOWLEDGE_COMPRESSION: Final[KnowledgeCompression] = "int8"
PROBABILITIES: Final = "probabilities"  # the body's one tensor

# How far a decoded row may stray from a probability distribution: rounding only.
_ROW_TOLERANCE: Final = {"fp16": 2e-3, "int8": 5e-3}
_TOKEN_RE = re.compile(r"[0-9a-f]{16,64}")
_SECONDS_PER_DAY: Final = 86400.0
# a lag keeps the row's base draw with this weight; 0.8**2 + 0.6**2 == 1 keeps unit variance
_LAG_KEEP: Final = 0.8
_LAG_NEW: Final = 0.6
_Z_CLIP: Final = 3.0


# ---------------------------------------------------------------------------------------------
# The proxy set


@dataclass(frozen=True, eq=False)
class ProxySet:
    """A context key's shared proxy inputs: unnormalised windowed frames like real inputs.

    `id` is a hex token over the generator version, the schema's base statistics (features,
    mean, std, step), the size and the seed; `x` is `[size, schema.n_inputs]` for the schema
    it was made for (read-only)."""

    id: str
    x: FloatArray

    @property
    def size(self) -> int:
        return int(self.x.shape[0])


def proxy_set(schema: FeatureSchema, *, size: int = DEFAULT_PROXY_SIZE, seed: str = "") -> ProxySet:
    """The proxy set of `schema`: from the schema alone, identical everywhere (module docs)."""
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_PROXY_SIZE:
        raise MalformedSnapshot(f"a proxy set has 1..{MAX_PROXY_SIZE} rows, not {size!r}")
    return _proxy_set(schema.to_json(), size, seed)


def proxy_id(schema: FeatureSchema, *, size: int = DEFAULT_PROXY_SIZE, seed: str = "") -> str:
    """The id `proxy_set` gives, without generating the inputs."""
    return hashlib.sha256(_base_key(schema, size, seed)).hexdigest()[:32]


@lru_cache(maxsize=32)
def _proxy_set(schema_json: str, size: int, seed: str) -> ProxySet:
    schema = FeatureSchema.from_json(schema_json)
    base = _base_key(schema, size, seed)
    frames = [_frame(schema, base, size, lag) for lag in schema.window]
    x = np.concatenate(frames, axis=1).astype(np.float32)
    x.setflags(write=False)
    return ProxySet(hashlib.sha256(base).hexdigest()[:32], x)


def _base_key(schema: FeatureSchema, size: int, seed: str) -> bytes:
    """What the proxy inputs depend on: never the window (families may differ in it)."""
    return json.dumps(
        {
            "generator": PROXY_GENERATOR,
            "features": list(schema.features),
            "mean": list(schema.mean),
            "std": list(schema.std),
            "step_seconds": schema.step_seconds,
            "size": size,
            "seed": seed,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8")


def _uniforms(key: bytes, label: str, count: int) -> npt.NDArray[np.float64]:
    """`count` uniforms in [0, 1), exactly: 32-bit integers from SHAKE-256 divided by 2**32."""
    stream = hashlib.shake_256(key + b"\x00" + label.encode("utf-8")).digest(4 * count)
    integers = np.frombuffer(stream, dtype=">u4").astype(np.float64)
    result: npt.NDArray[np.float64] = integers / 4294967296.0
    return result


def _normals(key: bytes, label: str, shape: tuple[int, int]) -> npt.NDArray[np.float64]:
    """Standard-normal-like draws by Irwin-Hall (sum of 4 uniforms, centred, unit variance),
    clipped to three standard deviations: sums and products only, so exact everywhere."""
    count = shape[0] * shape[1]
    u = _uniforms(key, label, 4 * count).reshape(4, count)
    z = (u[0] + u[1] + u[2] + u[3] - 2.0) * math.sqrt(3.0)
    result: npt.NDArray[np.float64] = np.clip(z, -_Z_CLIP, _Z_CLIP).reshape(shape)
    return result


def _frame(schema: FeatureSchema, base: bytes, size: int, lag: int) -> npt.NDArray[np.float64]:
    """The proxy rows' frames `lag` steps back: `[size, len(features)]`."""
    n = len(schema.features)
    shape = (size, n)
    kept = _normals(base, "z", shape)
    drawn = _normals(base, f"z@{lag}", shape)
    z = _LAG_KEEP * kept + _LAG_NEW * drawn
    u_base = _uniforms(base, "u", size * n).reshape(shape)
    u_lag = _uniforms(base, f"u@{lag}", size * n).reshape(shape)
    coin = _uniforms(base, f"c@{lag}", size * n).reshape(shape)
    u = np.where(coin < _LAG_KEEP, u_base, u_lag)
    mean = np.asarray(schema.mean, dtype=np.float64)
    std = np.asarray(schema.std, dtype=np.float64)
    values = mean + std * z
    # one instant per row over a week, stepping back `lag` frames
    instant = _uniforms(base, "t", size) * (7.0 * _SECONDS_PER_DAY)
    instant = instant - float(lag * schema.step_seconds)
    instant = np.where(instant < 0.0, instant + 7.0 * _SECONDS_PER_DAY, instant)
    day_fraction = np.mod(instant, _SECONDS_PER_DAY) / _SECONDS_PER_DAY
    weekday = np.floor(instant / _SECONDS_PER_DAY)
    tod_sin, tod_cos = _sin_cos(day_fraction)
    dow_sin, dow_cos = _sin_cos(weekday / 7.0)
    time_columns = {
        "tod_sin": tod_sin,
        "tod_cos": tod_cos,
        "dow_sin": dow_sin,
        "dow_cos": dow_cos,
        "weekend": (weekday >= 5.0).astype(np.float64),
    }
    for column, name in enumerate(schema.features):
        if name in time_columns:
            values[:, column] = time_columns[name]
        elif _is_flag(name):
            values[:, column] = (u[:, column] < min(max(mean[column], 0.0), 1.0)).astype(np.float64)
        elif "_count_" in name:
            values[:, column] = np.floor(np.maximum(values[:, column], 0.0) + 0.5)
        elif name in _NON_NEGATIVE:
            values[:, column] = np.maximum(values[:, column], 0.0)
        if name in _FRACTIONS:
            values[:, column] = np.minimum(values[:, column], _FRACTIONS[name])
    return values


def _is_flag(name: str) -> bool:
    return name.endswith(("_available", "_on", "_open", "_playing"))


# measured quantities that cannot be negative (the room and phone schemas' names)
_NON_NEGATIVE: Final = frozenset(
    {
        "motion_since_log",
        "door_since_log",
        "illuminance_log",
        "co2_ppm",
        "humidity_pct",
        "power_above_baseline_log",
        "accel_mean",
        "accel_std",
        "step_rate",
        "gyro_energy",
        "screen_on",
        "orientation_change",
    }
)
# bounded above: a fraction of a minute, a relative humidity in percent
_FRACTIONS: Final[Mapping[str, float]] = {"screen_on": 1.0, "humidity_pct": 100.0}


def _sin_cos(
    turns: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """sin and cos of `2 pi turns` for turns in [0, 1], by Taylor series after reduction to
    [-pi, pi]: only IEEE-754 sums and products, so bit-identical everywhere (libm is not)."""
    angle = (turns - np.floor(turns + 0.5)) * (2.0 * math.pi)
    square = angle * angle
    sin_term = angle.copy()
    cos_term = np.ones_like(angle)
    sin_sum = sin_term.copy()
    cos_sum = cos_term.copy()
    for k in range(1, 18):
        sin_term = sin_term * square / float((2 * k) * (2 * k + 1)) * -1.0
        cos_term = cos_term * square / float((2 * k - 1) * (2 * k)) * -1.0
        sin_sum = sin_sum + sin_term
        cos_sum = cos_sum + cos_term
    return sin_sum, cos_sum


# ---------------------------------------------------------------------------------------------
# Knowledge


@dataclass(frozen=True, eq=False)
class Knowledge:
    """A model's predictions on its context key's proxy set, with what they are worth.

    `probabilities` is `[proxy_size, n_outputs]`: one column (the positive class) for a binary
    task, K columns summing to 1 otherwise. `family` is the producer's architecture hash
    (informational: any family may learn from any other). `score` is the producer's own held-out
    score when it has one. `schema_hash` is the producer's feature schema; `data_time` its
    newest training data (default: `trained_at`)."""

    context_key: str
    task: str
    proxy_id: str
    family: str
    probabilities: FloatArray
    samples: int
    score: float | None
    trained_at: float
    schema_hash: str = ""
    data_time: float | None = None

    @property
    def n_outputs(self) -> int:
        return int(self.probabilities.shape[1])

    @property
    def newest_data(self) -> float:
        return self.trained_at if self.data_time is None else self.data_time


def knowledge_of(
    spec: families.FamilySpec,
    weights: Mapping[str, FloatArray],
    schema: FeatureSchema,
    context_key: str,
    *,
    samples: int,
    score: float | None,
    trained_at: float,
    data_time: float | None = None,
    proxy: ProxySet | None = None,
) -> Knowledge:
    """The knowledge of a model: its probabilities on the proxy set of `schema`."""
    chosen = proxy_set(schema) if proxy is None else proxy
    probabilities = np.ascontiguousarray(families.forward(spec, weights, chosen.x))
    return Knowledge(
        context_key=context_key,
        task=spec.task,
        proxy_id=chosen.id,
        family=families.arch_hash(spec, schema),
        probabilities=probabilities,
        samples=samples,
        score=score,
        trained_at=trained_at,
        schema_hash=schema.schema_hash(),
        data_time=data_time,
    )


# ---------------------------------------------------------------------------------------------
# The container


@dataclass(frozen=True)
class KnowledgeSnapshot(SnapshotHeader):
    """A knowledge container that passed every check. `contributor` is whose model made the
    knowledge: the first entry of the lineage when a peer relays it, else its signer."""

    knowledge: Knowledge

    @property
    def contributor(self) -> str:
        return self.meta.lineage[0] if self.meta.lineage else self.origin

    @property
    def replay_key(self) -> str:
        """What its signer's knowledge versions count up within: per context key and
        contributor (a relay passes on several contributors' knowledge, each with its own
        versions) and per source (the spaces of one home), apart from the model versions."""
        return self.meta.versions_key(f"knowledge:{self.meta.context_key}@{self.contributor}")


def seal_knowledge(
    knowledge: Knowledge,
    identity: Identity,
    *,
    version: int,
    created_at: float,
    lineage: Sequence[str] = (),
    compression: KnowledgeCompression = DEFAULT_KNOWLEDGE_COMPRESSION,
    limits: SnapshotLimits = DEFAULT_LIMITS,
    source: str = "",
) -> bytes:
    """Sign `knowledge` into a container. A relay passes on a contributor's knowledge with the
    contributor first in `lineage`; `source` names the signer's host that wrote it (the space
    of a home). What this writes is read back as a receiver reads it, so it is never what
    receivers refuse."""
    if compression not in KNOWLEDGE_COMPRESSIONS:
        raise MalformedSnapshot(f"knowledge compression must be one of {KNOWLEDGE_COMPRESSIONS}")
    probabilities = np.asarray(knowledge.probabilities, dtype=np.float32)
    if probabilities.ndim != 2:
        raise MalformedSnapshot("knowledge probabilities must be a [proxy_size, n_outputs] matrix")
    _check_distribution(probabilities, _ROW_TOLERANCE["fp16"])
    size, n_outputs = (int(d) for d in probabilities.shape)
    if compression == "fp16":
        tensor = PackedTensor(PROBABILITIES, "float16", (size, n_outputs))
        body = probabilities.astype("<f2").tobytes()
    else:
        scale = float(np.float32(probabilities.max() / np.float32(127))) if size else 0.0
        quantised = (
            np.clip(np.rint(probabilities / np.float32(scale)), 0, 127)
            if scale > 0
            else np.zeros(probabilities.shape)
        )
        tensor = PackedTensor(PROBABILITIES, "int8", (size, n_outputs), scale)
        body = quantised.astype(np.int8).tobytes()
    header: dict[str, JsonValue] = {
        "origin": identity.id,
        "payload": "knowledge",
        "critical": ["payload", "proxy_id"],
        "task": knowledge.task,
        "context_key": knowledge.context_key,
        "arch_hash": knowledge.family,
        "schema_hash": knowledge.schema_hash,
        "proxy_id": knowledge.proxy_id,
        "proxy_size": size,
        "n_outputs": n_outputs,
        "created_at": created_at,
        "data_time": knowledge.newest_data,
        "trained_at": knowledge.trained_at,
        "samples": knowledge.samples,
        "version": version,
        "lineage": list(lineage),
        "extra": source_extra(source),
        "compression": compression,
        "tensors": [tensor.to_json()],
    }
    if knowledge.score is not None:
        header["score"] = knowledge.score
    container = signed_container(header, body, identity, limits)
    unpack_knowledge(container, trust=identity, expected_proxy=None, limits=limits, now=created_at)
    return container


def unpack_knowledge(
    container: bytes,
    *,
    trust: Verifier,
    expected_proxy: Mapping[str, str] | None,
    limits: SnapshotLimits = DEFAULT_LIMITS,
    now: float | None = None,
    replay: ReplayGuard | None = None,
    replay_key: str | None = None,
    max_age: float | None = None,
) -> KnowledgeSnapshot:
    """Verify and decode a knowledge container; raises a `SnapshotError` at the first failure.

    In order: size and framing, signer (`UnknownSigner`), signature (`BadSignature`), body
    hash, payload (`WrongPayload`), header fields and the tensor section (`MalformedSnapshot`,
    `SnapshotTooLarge`: sizes are checked before anything is decoded), the proxy set expected
    for the context key (`expected_proxy`: key -> proxy id; a key not in it is
    `IncompatibleSnapshot`, another id `WrongProxySet`; None skips this), the clock
    (`SnapshotFromFuture`, and `StaleSnapshot` beyond `max_age` of data age), replays
    (`ReplayedSnapshot`: `replay` keyed by origin and `replay_key`, default the context key;
    recorded once every check passed), and last the values (`PoisonedSnapshot`: non-finite,
    outside [0, 1], or rows that are not distributions).
    """
    info, frame = verified_frame(container, trust, limits, "knowledge")
    meta = info.meta
    proxy, score, tensor = _knowledge_fields(frame.header, info.compression, limits)
    if tensor.nbytes != len(frame.body):
        raise MalformedSnapshot("the body is not the size of its probability tensor")
    if expected_proxy is not None:
        wanted = expected_proxy.get(meta.context_key)
        if wanted is None:
            raise IncompatibleSnapshot(f"this peer does not serve {meta.context_key!r}")
        if wanted != proxy:
            raise WrongProxySet(
                f"knowledge on proxy set {proxy[:12]}, not {wanted[:12]} of {meta.context_key}"
            )
    current = time.time() if now is None else now
    if meta.created_at > current + limits.max_clock_skew:
        raise SnapshotFromFuture(
            f"created {meta.created_at - current:.0f} s in the future; check the clocks"
        )
    if max_age is not None and current - meta.data_time > max_age:
        raise StaleSnapshot(f"its newest data is {current - meta.data_time:.0f} s old")
    key = meta.context_key if replay_key is None else replay_key
    if replay is not None:
        replay.check(info.origin, key, meta.version)
    dtype = np.dtype("<f2") if tensor.dtype == "float16" else np.dtype("i1")
    values = np.frombuffer(frame.body, dtype, tensor.elements).astype(np.float32)
    if tensor.scale is not None:
        values *= np.float32(tensor.scale)
    probabilities = values.reshape(tensor.shape)
    _check_distribution(probabilities, _ROW_TOLERANCE[info.compression])
    if tensor.shape[1] > 1:
        probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    probabilities = np.ascontiguousarray(probabilities, dtype=np.float32)
    if replay is not None:
        replay.record(info.origin, key, meta.version)
    knowledge = Knowledge(
        context_key=meta.context_key,
        task=meta.task,
        proxy_id=proxy,
        family=meta.arch_hash,
        probabilities=probabilities,
        samples=meta.samples,
        score=score,
        trained_at=meta.last_trained,
        schema_hash=meta.schema_hash,
        data_time=meta.data_time,
    )
    return KnowledgeSnapshot(
        meta=meta,
        origin=info.origin,
        sha256=info.sha256,
        format_version=info.format_version,
        compression=info.compression,
        size=info.size,
        knowledge=knowledge,
    )


def _knowledge_fields(
    header: Mapping[str, JsonValue], compression: str, limits: SnapshotLimits
) -> tuple[str, float | None, PackedTensor]:
    """The knowledge header's own fields: proxy id, score and the one probability tensor."""
    if compression not in KNOWLEDGE_COMPRESSIONS:
        raise MalformedSnapshot("knowledge is compressed with fp16 or int8")
    proxy = header.get("proxy_id")
    if not isinstance(proxy, str) or not _TOKEN_RE.fullmatch(proxy):
        raise MalformedSnapshot("header field 'proxy_id' is missing or malformed")
    size = _bounded_int(header, "proxy_size", MAX_PROXY_SIZE)
    n_outputs = _bounded_int(header, "n_outputs", MAX_OUTPUTS)
    score = header.get("score")
    if score is not None and (
        isinstance(score, bool)
        or not isinstance(score, int | float)
        or not 0.0 <= float(score) <= 1.0
    ):
        raise MalformedSnapshot("header field 'score' must be a number in [0, 1]")
    tensors = tensor_table(header, limits)
    if (
        len(tensors) != 1
        or tensors[0].name != PROBABILITIES
        or tensors[0].shape != (size, n_outputs)
    ):
        raise MalformedSnapshot(
            f"knowledge holds one tensor {PROBABILITIES!r} of shape [proxy_size, n_outputs]"
        )
    return proxy, None if score is None else float(score), tensors[0]


def _bounded_int(header: Mapping[str, JsonValue], key: str, high: int) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MalformedSnapshot(f"header field {key!r} must be a positive integer")
    if value > high:
        raise SnapshotTooLarge(f"header field {key!r} of {value} exceeds {high}")
    return value


def _check_distribution(probabilities: FloatArray, tolerance: float) -> None:
    """Finite, within [0, 1], and (K > 1 columns) rows summing to 1, within rounding."""
    if probabilities.size == 0:
        raise MalformedSnapshot("knowledge holds no predictions")
    if not np.isfinite(probabilities).all():
        raise PoisonedSnapshot("knowledge holds NaN or infinite probabilities")
    if probabilities.min() < -tolerance or probabilities.max() > 1.0 + tolerance:
        raise PoisonedSnapshot("knowledge holds probabilities outside [0, 1]")
    n_outputs = probabilities.shape[1]
    if n_outputs > 1:
        deviation = float(np.abs(probabilities.sum(axis=1, dtype=np.float64) - 1.0).max())
        if deviation > tolerance * n_outputs:
            raise PoisonedSnapshot(
                f"a row of the knowledge is not a distribution (sum off by {deviation:.3g})"
            )


# ---------------------------------------------------------------------------------------------
# The cache

CACHE_FILE_VERSION: Final = 1
UNSCORED: Final = 0.5  # the score weight of knowledge whose producer stated no score
MIN_SCORE_WEIGHT: Final = 0.05


@dataclass(frozen=True, eq=False)
class CacheEntry:
    """The latest knowledge of one contributor for one context key."""

    contributor: str
    knowledge: Knowledge
    received_at: float
    version: int = 0  # the contributor's version of it, kept so that a relay can pass it on

    def weight(self, now: float, half_life: float = MLMULE_HALF_LIFE) -> float:
        """Freshness (`(1 + age / half_life) ** -1` on the age since training, as ML Mule's
        pull) times the score weight (the producer's score, `UNSCORED` without one)."""
        freshness = Staleness(half_life=half_life, exponent=1.0).weight(
            now - self.knowledge.trained_at
        )
        score = UNSCORED if self.knowledge.score is None else self.knowledge.score
        return freshness * max(score, MIN_SCORE_WEIGHT)

    def to_json(self) -> dict[str, Any]:
        k = self.knowledge
        raw = np.ascontiguousarray(k.probabilities, dtype="<f4").tobytes()
        return {
            "contributor": self.contributor,
            "received_at": self.received_at,
            "version": self.version,
            "context_key": k.context_key,
            "task": k.task,
            "proxy_id": k.proxy_id,
            "family": k.family,
            "schema_hash": k.schema_hash,
            "samples": k.samples,
            "score": k.score,
            "trained_at": k.trained_at,
            "data_time": k.data_time,
            "shape": list(k.probabilities.shape),
            "probabilities": base64.b64encode(raw).decode("ascii"),
        }

    @classmethod
    def from_json(cls, raw: Any) -> CacheEntry:
        try:
            probabilities = _stored_probabilities(raw["shape"], raw["probabilities"])
            score = raw["score"]
            data_time = raw["data_time"]
            knowledge = Knowledge(
                context_key=str(raw["context_key"]),
                task=str(raw["task"]),
                proxy_id=str(raw["proxy_id"]),
                family=str(raw["family"]),
                probabilities=probabilities,
                samples=int(raw["samples"]),
                score=None if score is None else float(score),
                trained_at=float(raw["trained_at"]),
                schema_hash=str(raw["schema_hash"]),
                data_time=None if data_time is None else float(data_time),
            )
            return cls(
                str(raw["contributor"]),
                knowledge,
                float(raw["received_at"]),
                int(raw.get("version", 0)),
            )
        except (KeyError, TypeError, ValueError, PoisonedSnapshot, MalformedSnapshot) as err:
            raise CorruptStateFile(f"a knowledge cache entry is unusable: {err}") from err


def _weighted_mean(entries: Sequence[CacheEntry], now: float, half_life: float) -> FloatArray:
    weights = np.array([e.weight(now, half_life) for e in entries], dtype=np.float64)
    stacked = np.stack([e.knowledge.probabilities.astype(np.float64) for e in entries])
    mean = np.tensordot(weights / weights.sum(), stacked, axes=1)
    return np.asarray(mean, dtype=np.float32)


def combined_knowledge(
    entries: Sequence[CacheEntry],
    *,
    now: float,
    prefer: str | None = None,
    half_life: float = MLMULE_HALF_LIFE,
) -> Knowledge | None:
    """Several contributors' knowledge of one key (on one proxy set) as one, which a peer
    without labels passes on (MoMoDistill's model over models): their freshness- and
    score-weighted ensemble (`CacheEntry.weight`), the most samples and newest training and
    data among them, their mean stated score. Family, task and schema are `prefer`'s entry's,
    else the most recently trained one's. None without entries."""
    if not entries:
        return None
    preferred = [e for e in entries if e.contributor == prefer]
    base = (preferred or sorted(entries, key=lambda e: e.knowledge.trained_at))[-1].knowledge
    scores = [e.knowledge.score for e in entries if e.knowledge.score is not None]
    return Knowledge(
        context_key=base.context_key,
        task=base.task,
        proxy_id=base.proxy_id,
        family=base.family,
        probabilities=_weighted_mean(entries, now, half_life),
        samples=max(e.knowledge.samples for e in entries),
        score=float(np.mean(scores)) if scores else None,
        trained_at=max(e.knowledge.trained_at for e in entries),
        schema_hash=base.schema_hash,
        data_time=max(e.knowledge.newest_data for e in entries),
    )


def _stored_probabilities(raw_shape: Any, encoded: Any) -> FloatArray:
    shape = tuple(int(d) for d in raw_shape)
    if len(shape) != 2 or not (0 < shape[0] <= MAX_PROXY_SIZE and 0 < shape[1] <= MAX_OUTPUTS):
        raise CorruptStateFile(f"a knowledge cache entry has shape {shape}")
    data = base64.b64decode(encoded, validate=True)
    if len(data) != 4 * shape[0] * shape[1]:
        raise CorruptStateFile("a knowledge cache entry's probabilities have the wrong size")
    probabilities = np.frombuffer(data, "<f4").astype(np.float32).reshape(shape)
    _check_distribution(probabilities, _ROW_TOLERANCE["int8"])
    return probabilities


class KnowledgeCache:
    """Per context key, the latest knowledge of each contributor, bounded and persisted.

    At most `max_entries` contributors per key (a new one evicts the least weighted, by
    freshness and score at its arrival) and `max_keys` keys. Knowledge on another proxy set
    than the key's newest replaces the key's entries (the set changed; old rows mean other
    inputs). Persisted as JSON with `path` (atomic writes); a file that does not parse is moved
    aside to `<name>.corrupt`, logged, and the cache starts empty (`corrupt` holds the error).
    """

    def __init__(
        self, path: Path | None = None, *, max_entries: int = 32, max_keys: int = 64
    ) -> None:
        if max_entries < 1 or max_keys < 1:
            raise ValueError("a knowledge cache holds at least one entry and one key")
        self.path = path
        self.max_entries = max_entries
        self.max_keys = max_keys
        self.corrupt: CorruptStateFile | None = None
        self._entries: dict[str, dict[str, CacheEntry]] = {}
        if path is not None and path.exists():
            try:
                self._entries = self._parse(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, CorruptStateFile) as err:
                self.corrupt = (
                    err
                    if isinstance(err, CorruptStateFile)
                    else CorruptStateFile(f"the knowledge cache is unreadable: {err}")
                )
                _LOGGER.warning("Knowledge cache %s is corrupt (%s); starting empty", path, err)
                path.replace(path.with_name(path.name + ".corrupt"))

    def add(
        self, contributor: str, knowledge: Knowledge, *, received_at: float, version: int = 0
    ) -> bool:
        """Keep `knowledge` as `contributor`'s latest for its key; False (nothing changes) when
        the cache holds knowledge of that contributor trained as recently or later."""
        key = knowledge.context_key
        entries = self._entries.get(key, {})
        held = entries.get(contributor)
        if held is not None and held.knowledge.trained_at >= knowledge.trained_at:
            return False
        if any(e.knowledge.proxy_id != knowledge.proxy_id for e in entries.values()):
            entries = {}
        entries = {
            **entries,
            contributor: CacheEntry(contributor, knowledge, received_at, version),
        }
        while len(entries) > self.max_entries:
            weakest = min(
                entries.values(),
                key=lambda e: (e.weight(received_at), e.knowledge.trained_at, e.contributor),
            )
            del entries[weakest.contributor]
        if contributor not in entries:
            return False
        self._entries.pop(key, None)
        self._entries[key] = entries  # the most recently changed key last
        while len(self._entries) > self.max_keys:
            del self._entries[next(iter(self._entries))]
        self._save()
        return True

    def entries(self, context_key: str, *, proxy_id: str | None = None) -> list[CacheEntry]:
        """The key's entries, contributors in sorted order. With `proxy_id`: none if they were
        made on another proxy set (cached before an update changed the key's set; the next
        knowledge on the current set replaces them)."""
        held = self._entries.get(context_key, {})
        entries = [held[name] for name in sorted(held)]
        if proxy_id is not None and entries and entries[0].knowledge.proxy_id != proxy_id:
            return []
        return entries

    def context_keys(self) -> list[str]:
        return sorted(self._entries)

    def ensemble(
        self,
        context_key: str,
        *,
        now: float,
        half_life: float = MLMULE_HALF_LIFE,
        exclude: frozenset[str] = frozenset(),
    ) -> FloatArray | None:
        """The freshness- and score-weighted mean of the key's probabilities (`CacheEntry
        .weight`), without the contributors in `exclude`; None when nothing is left."""
        chosen = [e for e in self.entries(context_key) if e.contributor not in exclude]
        return _weighted_mean(chosen, now, half_life) if chosen else None

    def as_dict(self) -> dict[str, Any]:
        """Per key and contributor: what is held, without the probabilities (for status)."""
        return {
            key: {
                name: {
                    "family": e.knowledge.family[:12],
                    "proxy_id": e.knowledge.proxy_id,
                    "samples": e.knowledge.samples,
                    "score": e.knowledge.score,
                    "trained_at": e.knowledge.trained_at,
                    "received_at": e.received_at,
                }
                for name, e in sorted(entries.items())
            }
            for key, entries in sorted(self._entries.items())
        }

    def _save(self) -> None:
        if self.path is None:
            return
        document = {
            "version": CACHE_FILE_VERSION,
            "format": KNOWLEDGE_FORMAT,
            "keys": {
                key: [entry.to_json() for entry in entries.values()]
                for key, entries in self._entries.items()
            },
        }
        atomic_write_text(self.path, json.dumps(document, sort_keys=True) + "\n")

    def _parse(self, text: str) -> dict[str, dict[str, CacheEntry]]:
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise CorruptStateFile(f"the knowledge cache is not JSON: {err}") from err
        if not isinstance(document, dict) or document.get("version") != CACHE_FILE_VERSION:
            raise CorruptStateFile("the knowledge cache is not a version 1 file")
        keys = document.get("keys")
        if not isinstance(keys, dict):
            raise CorruptStateFile("the knowledge cache holds no keys")
        result: dict[str, dict[str, CacheEntry]] = {}
        for key, raw_entries in list(keys.items())[-self.max_keys :]:
            if not isinstance(raw_entries, list):
                raise CorruptStateFile("a knowledge cache key holds no list")
            parsed = [CacheEntry.from_json(raw) for raw in raw_entries][-self.max_entries :]
            result[str(key)] = {entry.contributor: entry for entry in parsed}
        return result
