"""Portable ONNX: read, rewrite and write models, and run them with or without onnxruntime.

Needs only numpy and protobuf (pure-Python protobuf is enough), so it works on HA OS where
neither onnx nor onnxruntime can be installed. See `model`, `executor` and `runtime`.
"""

from __future__ import annotations

from .executor import MAX_OPSET, MIN_OPSET, OP_VERSIONS, SUPPORTED_OPS, NumpyExecutor
from .model import (
    DEFAULT_LIMITS,
    AttributeValue,
    Node,
    OnnxLimits,
    OnnxModel,
    ValueInfo,
    load_model,
    save_model,
    topological_order,
    with_initializers,
)
from .proto import DataType
from .runtime import (
    Session,
    create_session,
    reset_runtime_backend,
    runtime_backend,
    runtime_diagnostics,
)

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_OPSET",
    "MIN_OPSET",
    "OP_VERSIONS",
    "SUPPORTED_OPS",
    "AttributeValue",
    "DataType",
    "Node",
    "NumpyExecutor",
    "OnnxLimits",
    "OnnxModel",
    "Session",
    "ValueInfo",
    "create_session",
    "load_model",
    "reset_runtime_backend",
    "runtime_backend",
    "runtime_diagnostics",
    "save_model",
    "topological_order",
    "with_initializers",
]
