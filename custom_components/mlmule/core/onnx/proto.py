"""The subset of the ONNX protobuf messages mlmule reads and writes, built at import time.

The message classes come from a `FileDescriptorProto` assembled here with the field numbers and
types of the ONNX specification (onnx.proto3), so there is no generated `_pb2` module and no
hand-written wire encoding: protobuf parses and serialises. Only the fields mlmule uses are
declared; protobuf keeps any other field of an input as an unknown field and ignores it.

The descriptors live in a private pool under the package `mlmule.onnx_subset`, so they never
clash with the real `onnx` package's `onnx.*` descriptors when both are loaded (the companion).
"""

from __future__ import annotations

import enum
from typing import Any

from google.protobuf import (  # type: ignore[import-untyped,unused-ignore]
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)

PACKAGE = "mlmule.onnx_subset"

_FieldProto = descriptor_pb2.FieldDescriptorProto
_OPTIONAL = _FieldProto.LABEL_OPTIONAL
_REPEATED = _FieldProto.LABEL_REPEATED

# (name, number, label, type, message type name or "") per message, as in onnx.proto3.
_Field = tuple[str, int, int, int, str]
_MESSAGES: dict[str, list[_Field]] = {
    "StringStringEntryProto": [
        ("key", 1, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("value", 2, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
    ],
    "OperatorSetIdProto": [
        ("domain", 1, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("version", 2, _OPTIONAL, _FieldProto.TYPE_INT64, ""),
    ],
    "TensorProto": [
        ("dims", 1, _REPEATED, _FieldProto.TYPE_INT64, ""),
        ("data_type", 2, _OPTIONAL, _FieldProto.TYPE_INT32, ""),
        ("float_data", 4, _REPEATED, _FieldProto.TYPE_FLOAT, ""),
        ("int32_data", 5, _REPEATED, _FieldProto.TYPE_INT32, ""),
        ("string_data", 6, _REPEATED, _FieldProto.TYPE_BYTES, ""),
        ("int64_data", 7, _REPEATED, _FieldProto.TYPE_INT64, ""),
        ("name", 8, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("raw_data", 9, _OPTIONAL, _FieldProto.TYPE_BYTES, ""),
        ("double_data", 10, _REPEATED, _FieldProto.TYPE_DOUBLE, ""),
        ("uint64_data", 11, _REPEATED, _FieldProto.TYPE_UINT64, ""),
        ("doc_string", 12, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("external_data", 13, _REPEATED, _FieldProto.TYPE_MESSAGE, "StringStringEntryProto"),
        ("data_location", 14, _OPTIONAL, _FieldProto.TYPE_ENUM, "TensorProto.DataLocation"),
    ],
    # Declared only so that a model using sparse initializers is recognised and refused.
    "SparseTensorProto": [
        ("values", 1, _OPTIONAL, _FieldProto.TYPE_MESSAGE, "TensorProto"),
        ("indices", 2, _OPTIONAL, _FieldProto.TYPE_MESSAGE, "TensorProto"),
        ("dims", 3, _REPEATED, _FieldProto.TYPE_INT64, ""),
    ],
    "AttributeProto": [
        ("name", 1, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("f", 2, _OPTIONAL, _FieldProto.TYPE_FLOAT, ""),
        ("i", 3, _OPTIONAL, _FieldProto.TYPE_INT64, ""),
        ("s", 4, _OPTIONAL, _FieldProto.TYPE_BYTES, ""),
        ("t", 5, _OPTIONAL, _FieldProto.TYPE_MESSAGE, "TensorProto"),
        ("floats", 7, _REPEATED, _FieldProto.TYPE_FLOAT, ""),
        ("ints", 8, _REPEATED, _FieldProto.TYPE_INT64, ""),
        ("strings", 9, _REPEATED, _FieldProto.TYPE_BYTES, ""),
        ("doc_string", 13, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("type", 20, _OPTIONAL, _FieldProto.TYPE_ENUM, "AttributeProto.AttributeType"),
    ],
    "NodeProto": [
        ("input", 1, _REPEATED, _FieldProto.TYPE_STRING, ""),
        ("output", 2, _REPEATED, _FieldProto.TYPE_STRING, ""),
        ("name", 3, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("op_type", 4, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("attribute", 5, _REPEATED, _FieldProto.TYPE_MESSAGE, "AttributeProto"),
        ("doc_string", 6, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("domain", 7, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
    ],
    "TensorShapeProto": [
        ("dim", 1, _REPEATED, _FieldProto.TYPE_MESSAGE, "TensorShapeProto.Dimension"),
    ],
    "TensorShapeProto.Dimension": [
        ("dim_value", 1, _OPTIONAL, _FieldProto.TYPE_INT64, ""),
        ("dim_param", 2, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
    ],
    "TypeProto": [
        ("tensor_type", 1, _OPTIONAL, _FieldProto.TYPE_MESSAGE, "TypeProto.Tensor"),
    ],
    "TypeProto.Tensor": [
        ("elem_type", 1, _OPTIONAL, _FieldProto.TYPE_INT32, ""),
        ("shape", 2, _OPTIONAL, _FieldProto.TYPE_MESSAGE, "TensorShapeProto"),
    ],
    "ValueInfoProto": [
        ("name", 1, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("type", 2, _OPTIONAL, _FieldProto.TYPE_MESSAGE, "TypeProto"),
        ("doc_string", 3, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
    ],
    "GraphProto": [
        ("node", 1, _REPEATED, _FieldProto.TYPE_MESSAGE, "NodeProto"),
        ("name", 2, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("initializer", 5, _REPEATED, _FieldProto.TYPE_MESSAGE, "TensorProto"),
        ("doc_string", 10, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("input", 11, _REPEATED, _FieldProto.TYPE_MESSAGE, "ValueInfoProto"),
        ("output", 12, _REPEATED, _FieldProto.TYPE_MESSAGE, "ValueInfoProto"),
        ("sparse_initializer", 15, _REPEATED, _FieldProto.TYPE_MESSAGE, "SparseTensorProto"),
    ],
    "ModelProto": [
        ("ir_version", 1, _OPTIONAL, _FieldProto.TYPE_INT64, ""),
        ("producer_name", 2, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("producer_version", 3, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("domain", 4, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("model_version", 5, _OPTIONAL, _FieldProto.TYPE_INT64, ""),
        ("doc_string", 6, _OPTIONAL, _FieldProto.TYPE_STRING, ""),
        ("graph", 7, _OPTIONAL, _FieldProto.TYPE_MESSAGE, "GraphProto"),
        ("opset_import", 8, _REPEATED, _FieldProto.TYPE_MESSAGE, "OperatorSetIdProto"),
        ("metadata_props", 14, _REPEATED, _FieldProto.TYPE_MESSAGE, "StringStringEntryProto"),
        # Model-local functions: their bodies are not read, their presence is refused.
        ("functions", 25, _REPEATED, _FieldProto.TYPE_BYTES, ""),
    ],
}
# Messages with a oneof: (message, oneof name, member fields).
_ONEOFS = {
    "TensorShapeProto.Dimension": ("value", ("dim_value", "dim_param")),
    "TypeProto": ("value", ("tensor_type",)),
}


class DataType(enum.IntEnum):
    """TensorProto.DataType (an int32 field in the specification, not an enum field)."""

    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16


class DataLocation(enum.IntEnum):
    DEFAULT = 0
    EXTERNAL = 1


class AttributeType(enum.IntEnum):
    UNDEFINED = 0
    FLOAT = 1
    INT = 2
    STRING = 3
    TENSOR = 4
    GRAPH = 5
    FLOATS = 6
    INTS = 7
    STRINGS = 8
    TENSORS = 9
    GRAPHS = 10
    SPARSE_TENSOR = 11
    SPARSE_TENSORS = 12
    TYPE_PROTO = 13
    TYPE_PROTOS = 14


# Enum fields: message -> the enum nested in it.
_ENUMS: dict[str, type[enum.IntEnum]] = {
    "TensorProto": DataLocation,
    "AttributeProto": AttributeType,
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The whole subset as one proto3 file; nested messages are spelled `Outer.Inner`."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="mlmule/onnx_subset.proto", package=PACKAGE, syntax="proto3"
    )
    built: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full_name, fields in _MESSAGES.items():
        outer, _, inner = full_name.rpartition(".")
        message = (built[outer].nested_type if outer else file_proto.message_type).add()
        message.name = inner
        built[full_name] = message
        if full_name in _ENUMS:
            nested_enum = _ENUMS[full_name]
            enum_proto = message.enum_type.add(name=nested_enum.__name__)
            for member in nested_enum:
                enum_proto.value.add(name=member.name, number=member.value)
        oneof_name, oneof_members = _ONEOFS.get(full_name, ("", ()))
        if oneof_name:
            message.oneof_decl.add(name=oneof_name)
        for name, number, label, field_type, type_name in fields:
            field = message.field.add(name=name, number=number, label=label, type=field_type)
            if type_name:
                field.type_name = f".{PACKAGE}.{type_name}"
            if name in oneof_members:
                field.oneof_index = 0
    return file_proto


def _message_classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in _MESSAGES
    }


# Message classes built at runtime are untyped for mypy: their fields are reached dynamically.
_CLASSES = _message_classes()
ModelProto: Any = _CLASSES["ModelProto"]
GraphProto: Any = _CLASSES["GraphProto"]
NodeProto: Any = _CLASSES["NodeProto"]
AttributeProto: Any = _CLASSES["AttributeProto"]
TensorProto: Any = _CLASSES["TensorProto"]
ValueInfoProto: Any = _CLASSES["ValueInfoProto"]
TypeProto: Any = _CLASSES["TypeProto"]
TensorShapeProto: Any = _CLASSES["TensorShapeProto"]
OperatorSetIdProto: Any = _CLASSES["OperatorSetIdProto"]
StringStringEntryProto: Any = _CLASSES["StringStringEntryProto"]
