"""Typed errors of the core. Every rejection carries a short machine-readable `reason`.

The `reason` is what counters, repair issues and protocol `result` messages report, so it is
stable: change the human message freely, never the reason.
"""

from __future__ import annotations


class MlmuleError(Exception):
    """Base of every error the core raises on bad input or a broken invariant."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class OnnxError(MlmuleError):
    """An ONNX model that cannot be read, written or run."""

    reason = "onnx_invalid"


class OnnxDecodeError(OnnxError):
    """The bytes are not a well-formed ONNX model within our limits."""

    reason = "onnx_malformed"


class UnsupportedOperatorError(OnnxError):
    """The graph uses an operator the numpy executor does not implement."""

    reason = "onnx_unsupported_op"

    def __init__(self, op_type: str, domain: str = "") -> None:
        qualified = f"{domain}::{op_type}" if domain else op_type
        super().__init__(f"unsupported ONNX operator {qualified!r}")
        self.op_type = op_type
        self.domain = domain


class GraphError(OnnxError):
    """The graph is structurally unusable: cyclic, too deep, or with dangling inputs."""

    reason = "onnx_bad_graph"


class SnapshotError(MlmuleError):
    """A snapshot that must be rejected. It never reaches the model."""

    reason = "snapshot_invalid"


class MalformedSnapshot(SnapshotError):
    reason = "malformed"


class SnapshotTooLarge(SnapshotError):
    reason = "too_large"


class BadSignature(SnapshotError):
    reason = "bad_signature"


class UnknownSigner(SnapshotError):
    reason = "unknown_signer"


class StaleSnapshot(SnapshotError):
    reason = "stale"


class ReplayedSnapshot(SnapshotError):
    reason = "replayed"


class IncompatibleSnapshot(SnapshotError):
    """Wrong architecture hash, feature schema or context key for where it is going."""

    reason = "incompatible"


class PoisonedSnapshot(SnapshotError):
    """Non-finite weights, or an update far outside what the strategy accepts."""

    reason = "poisoned"


class UnsupportedVersion(SnapshotError):
    """A format version newer than this peer understands."""

    reason = "unsupported_version"


class ProtocolError(MlmuleError):
    """A protocol message that is malformed, unexpected or unauthenticated."""

    reason = "protocol"


class TransferError(ProtocolError):
    """A chunked transfer that cannot complete: wrong total, bad hash, too many chunks."""

    reason = "transfer"


class FeatureSchemaMismatch(MlmuleError):
    """A model whose feature schema differs from the one the data was built with."""

    reason = "schema_mismatch"


class TrustError(MlmuleError):
    """A pairing code or trust-list entry that is malformed or not allowed."""

    reason = "trust"


class FamilyError(MlmuleError):
    """A model family spec, or weights that do not fit their family's canonical layout."""

    reason = "family_invalid"


class NonCanonicalModel(OnnxError):
    """An ONNX model that is not the canonical graph of a model family, so it cannot be merged."""

    reason = "non_canonical"


class TrainingError(MlmuleError):
    """A training configuration or training data that cannot be used."""

    reason = "training_invalid"


class UnsupportedSnapshotFormat(UnsupportedVersion):
    """A snapshot needing a format version or critical header fields this peer does not read.

    It says what this peer does read, so the sender can fall back to something older.
    """

    def __init__(
        self,
        message: str,
        *,
        supported_versions: tuple[int, ...],
        unknown_fields: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.supported_versions = supported_versions
        self.unknown_fields = unknown_fields


class SnapshotFromFuture(SnapshotError):
    """A snapshot created later than now, beyond the clock skew we tolerate."""

    reason = "from_future"


class SnapshotModelInvalid(SnapshotError):
    """A correctly signed snapshot whose ONNX model fails validation.

    The `reason` is the ONNX layer's (e.g. `onnx_bad_graph`), so counters keep the detail.
    """

    reason = "model_invalid"


class InvalidIdentity(TrustError):
    """A stored key that cannot be loaded as an Ed25519 identity."""

    reason = "identity_invalid"


class InvalidPairingCode(TrustError):
    """A pairing code with a typo, a wrong checksum, or a version this peer does not read."""

    reason = "pairing_code_invalid"


class StrategyError(MlmuleError):
    """An aggregation that cannot run: a bad clock value or an unusable local model."""

    reason = "strategy"


class StrategyOptionError(StrategyError):
    """An unknown strategy name, an unknown option, or an option of the wrong type or range."""

    reason = "strategy_option"


class StrategyStateError(StrategyError):
    """Persisted adaptive strategy state (freshness ages, update norms) that cannot be loaded."""

    reason = "strategy_state"


class InvalidModelState(StrategyError):
    """A model state with unusable metadata or weights (wrong types, negative counts, NaN times)."""

    reason = "model_state"


class MalformedMessage(ProtocolError):
    """Bytes that are not a well-formed protocol message within our limits."""

    reason = "malformed_message"


class UnauthenticatedMessage(ProtocolError):
    """A message from a peer we do not trust here, or whose signature does not verify.

    The `reason` says which: `unknown_peer`, `not_allowed` or `bad_signature`.
    """

    reason = "unauthenticated"


class StaleMessage(ProtocolError):
    """A control message sent outside the freshness window (a replay, or a clock far off)."""

    reason = "stale_message"


class ReplayedMessage(ProtocolError):
    """A control message whose sequence number was already passed: a replay or a duplicate."""

    reason = "replayed_message"


class UnexpectedMessage(ProtocolError):
    """A well-formed message that does not fit: unknown session, transfer or type."""

    reason = "unexpected_message"


class FeatureInputError(MlmuleError):
    """Sensor history the feature extractor cannot use: unsorted or non-finite times, a bad grid."""

    reason = "feature_input"


class CorruptStateFile(MlmuleError):
    """A state file of ours (e.g. the replay guard) that no longer parses; never reset silently."""

    reason = "state_corrupt"


class UnsupportedOperatorUsageError(UnsupportedOperatorError):
    """An operator the executor implements, used in a way it does not (e.g. Cast to STRING)."""

    def __init__(self, op_type: str, detail: str, domain: str = "") -> None:
        super().__init__(op_type, domain)
        self.args = (f"ONNX operator {op_type!r} is supported, but not {detail}",)
        self.detail = detail


class UnsupportedOpsetError(OnnxError):
    """The model's opset is outside the range whose operator semantics the executor implements."""

    reason = "onnx_unsupported_opset"


class OnnxInputError(OnnxError):
    """Inference inputs that do not match the model's declared inputs (name, dtype, shape)."""

    reason = "onnx_bad_input"


class OnnxRunError(OnnxError):
    """A node failed during inference (shapes that do not fit, an index out of range, ...)."""

    reason = "onnx_run_failed"


class ReplayClockError(MlmuleError):
    """A replay clock setting is not a finite origin with a scale >= 1."""

    reason = "replay_clock"


class WrongPayload(IncompatibleSnapshot):
    """A container that carries something else than the reader expects: knowledge handed to
    the weights reader (`snapshot.unpack`) or a model handed to the knowledge reader."""

    reason = "wrong_payload"


class WrongProxySet(IncompatibleSnapshot):
    """Knowledge computed on another proxy set than this peer's for the context key, so its
    predictions cannot be compared row by row with ours."""

    reason = "wrong_proxy_set"
