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
