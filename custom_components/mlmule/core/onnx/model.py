"""ONNX models as plain Python values: read, validate, rewrite weights, write.

`load_model` turns untrusted bytes into an `OnnxModel` or raises a typed error; it checks the
structure (names, types, limits, an acyclic graph whose every input is produced) but not whether
each operator can be run, because reading a model we cannot run is harmless (the executor
refuses it). `save_model` writes a file the ONNX checker and onnxruntime accept.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError  # type: ignore[import-untyped,unused-ignore]

from ..errors import GraphError, OnnxDecodeError, OnnxError
from .proto import AttributeType, DataLocation, DataType, ModelProto

AttributeValue = int | float | str | bytes | list[int] | list[float] | list[str] | np.ndarray

DEFAULT_DOMAIN = ""
_DEFAULT_DOMAIN_ALIASES = frozenset({"", "ai.onnx"})
MIN_IR_VERSION = 3  # the first IR with opset imports
TOO_LARGE = "onnx_too_large"  # the `reason` of every limit overrun


@dataclass(frozen=True)
class OnnxLimits:
    """Bounds on what `load_model` accepts, so a hostile file cannot exhaust memory or time."""

    max_bytes: int = 16 * 2**20
    max_nodes: int = 512
    max_initializers: int = 256
    max_tensor_elements: int = 4 * 2**20
    max_depth: int = 256  # nodes on the longest path through the graph
    # Largest value the numpy executor lets an operator create from smaller ones (Expand,
    # Tile, broadcasting, ...), so a hostile graph cannot make it allocate without bound.
    max_value_elements: int = 64 * 2**20


DEFAULT_LIMITS = OnnxLimits()


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: a tensor of element type `elem_type` (a TensorProto.DataType)
    and known rank. A `str` dimension is symbolic ("batch"); "" is an unnamed unknown one."""

    name: str
    elem_type: int = DataType.FLOAT
    shape: tuple[int | str, ...] = ()


@dataclass(frozen=True)
class Node:
    op_type: str
    inputs: tuple[str, ...]  # "" marks an omitted optional input
    outputs: tuple[str, ...]
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    name: str = ""
    domain: str = ""


@dataclass(frozen=True)
class OnnxModel:
    """A whole model. Initializer arrays read from a file are read-only: copy before editing,
    or use `with_initializers`."""

    nodes: tuple[Node, ...]
    inputs: tuple[ValueInfo, ...]
    outputs: tuple[ValueInfo, ...]
    initializers: Mapping[str, np.ndarray]
    opset: int = 17  # of the default (ai.onnx) domain
    ir_version: int = 8
    metadata: Mapping[str, str] = field(default_factory=dict)
    graph_name: str = "mlmule"
    producer_name: str = "mlmule"
    producer_version: str = ""
    doc_string: str = ""
    # Opset versions of other operator domains the nodes use (e.g. "ai.onnx.ml"), kept so
    # that such a model survives a read-write round trip; the numpy executor runs none of them.
    extra_opsets: Mapping[str, int] = field(default_factory=dict)


# Element types a tensor may have here, their numpy types, and the typed field that holds them
# when a writer did not use raw_data (FLOAT16 travels as its bit pattern in int32_data).
NUMPY_DTYPES: Mapping[int, np.dtype[Any]] = {
    DataType.FLOAT: np.dtype(np.float32),
    DataType.FLOAT16: np.dtype(np.float16),
    DataType.DOUBLE: np.dtype(np.float64),
    DataType.INT8: np.dtype(np.int8),
    DataType.UINT8: np.dtype(np.uint8),
    DataType.INT32: np.dtype(np.int32),
    DataType.INT64: np.dtype(np.int64),
    DataType.BOOL: np.dtype(np.bool_),
}
_DATA_TYPES: Mapping[np.dtype[Any], int] = {dtype: code for code, dtype in NUMPY_DTYPES.items()}
_TYPED_FIELDS: Mapping[int, str] = {
    DataType.FLOAT: "float_data",
    DataType.FLOAT16: "int32_data",
    DataType.DOUBLE: "double_data",
    DataType.INT8: "int32_data",
    DataType.UINT8: "int32_data",
    DataType.INT32: "int32_data",
    DataType.INT64: "int64_data",
    DataType.BOOL: "int32_data",
}
_ALL_TYPED_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)
# Valid int32_data values for the narrow types (FLOAT16 bit patterns may come signed or not).
_INT32_DATA_RANGES: Mapping[int, tuple[int, int]] = {
    DataType.FLOAT16: (-(2**15), 2**16 - 1),
    DataType.INT8: (-(2**7), 2**7 - 1),
    DataType.UINT8: (0, 2**8 - 1),
    DataType.BOOL: (0, 1),
}


def data_type_name(code: int) -> str:
    try:
        return DataType(code).name
    except ValueError:
        return str(code)


def numpy_dtype(code: int) -> np.dtype[Any]:
    """The numpy type of an ONNX element type, or `OnnxError` when it is not supported here."""
    try:
        return NUMPY_DTYPES[code]
    except KeyError:
        raise OnnxError(
            f"element type {data_type_name(code)} is not supported",
            reason="onnx_unsupported_type",
        ) from None


def data_type_of(dtype: np.dtype[Any]) -> int:
    """The ONNX element type of a numpy type, or `OnnxError` when it is not supported here."""
    try:
        return _DATA_TYPES[np.dtype(dtype)]
    except KeyError:
        raise OnnxError(
            f"numpy type {dtype} has no supported ONNX element type",
            reason="onnx_unsupported_type",
        ) from None


def node_label(node: Node, index: int) -> str:
    """How errors name a node: its name, else its position and operator."""
    return repr(node.name) if node.name else f"#{index} ({node.op_type})"


# --------------------------------------------------------------------------- reading


def load_model(data: bytes, limits: OnnxLimits = DEFAULT_LIMITS) -> OnnxModel:
    """Parse and validate an ONNX file. Raises `OnnxDecodeError` or `GraphError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise OnnxDecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise OnnxDecodeError(
            f"model is {len(data)} bytes, over the limit of {limits.max_bytes}", reason=TOO_LARGE
        )
    try:
        proto = ModelProto.FromString(bytes(data))
    # The pure-Python protobuf reports invalid UTF-8 in a string field as UnicodeDecodeError.
    except (DecodeError, ValueError) as err:
        raise OnnxDecodeError(f"not an ONNX model: {err}") from err
    if not proto.HasField("graph"):
        raise OnnxDecodeError("not an ONNX model: no graph")
    if proto.ir_version < MIN_IR_VERSION:
        raise OnnxDecodeError(f"IR version {proto.ir_version} is missing or older than 3")
    if proto.functions:
        raise OnnxDecodeError("model-local functions are not supported")
    opset, extra_opsets = _read_opsets(proto.opset_import)
    graph = proto.graph
    if graph.sparse_initializer:
        raise OnnxDecodeError("sparse initializers are not supported")
    _check_count("nodes", len(graph.node), limits.max_nodes)
    _check_count("initializers", len(graph.initializer), limits.max_initializers)

    initializers: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        if not tensor.name or tensor.name in initializers:
            raise OnnxDecodeError(f"initializer name {tensor.name!r} is empty or repeated")
        initializers[tensor.name] = _read_tensor(tensor, limits, f"initializer {tensor.name!r}")
    nodes = tuple(_read_node(node, index, limits) for index, node in enumerate(graph.node))
    for node in nodes:
        if node.domain not in _DEFAULT_DOMAIN_ALIASES and node.domain not in extra_opsets:
            raise OnnxDecodeError(f"node {node.name!r} uses domain {node.domain!r} without opset")
    model = OnnxModel(
        nodes=nodes,
        inputs=_read_value_infos(graph.input, "input"),
        outputs=_read_value_infos(graph.output, "output"),
        initializers=initializers,
        opset=opset,
        ir_version=int(proto.ir_version),
        metadata=_read_metadata(proto.metadata_props),
        graph_name=str(graph.name),
        producer_name=str(proto.producer_name),
        producer_version=str(proto.producer_version),
        doc_string=str(proto.doc_string),
        extra_opsets=extra_opsets,
    )
    topological_order(model, limits.max_depth)
    return model


def _check_count(what: str, count: int, limit: int) -> None:
    if count > limit:
        raise OnnxDecodeError(f"{count} {what}, over the limit of {limit}", reason=TOO_LARGE)


def _read_opsets(opset_imports: Sequence[Any]) -> tuple[int, dict[str, int]]:
    default: int | None = None
    extra: dict[str, int] = {}
    for entry in opset_imports:
        domain, version = str(entry.domain), int(entry.version)
        if version < 1:
            raise OnnxDecodeError(f"opset version {version} of domain {domain!r} is invalid")
        if domain in _DEFAULT_DOMAIN_ALIASES:
            if default is not None:
                raise OnnxDecodeError("the default domain is imported twice")
            default = version
        elif domain in extra:
            raise OnnxDecodeError(f"domain {domain!r} is imported twice")
        else:
            extra[domain] = version
    if default is None:
        raise OnnxDecodeError("the model imports no opset of the default ONNX domain")
    return default, extra


def _read_metadata(entries: Sequence[Any]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for entry in entries:
        if entry.key in metadata:
            raise OnnxDecodeError(f"metadata key {entry.key!r} is repeated")
        metadata[str(entry.key)] = str(entry.value)
    return metadata


def _read_value_infos(protos: Sequence[Any], role: str) -> tuple[ValueInfo, ...]:
    infos: list[ValueInfo] = []
    seen: set[str] = set()
    for proto in protos:
        name = str(proto.name)
        if not name or name in seen:
            raise OnnxDecodeError(f"graph {role} name {name!r} is empty or repeated")
        seen.add(name)
        # Without a declared type and shape the value could not be checked or written back
        # faithfully (a ValueInfo has no "unknown rank"), so such graphs are refused.
        if not proto.type.HasField("tensor_type"):
            raise OnnxDecodeError(f"graph {role} {name!r} is not a typed tensor")
        tensor_type = proto.type.tensor_type
        if not tensor_type.HasField("shape"):
            raise OnnxDecodeError(f"graph {role} {name!r} declares no shape")
        shape: list[int | str] = []
        for dim in tensor_type.shape.dim:
            kind = dim.WhichOneof("value")
            if kind == "dim_value":
                if dim.dim_value < 0:
                    raise OnnxDecodeError(f"graph {role} {name!r} has a negative dimension")
                shape.append(int(dim.dim_value))
            else:
                shape.append(str(dim.dim_param))  # "" when neither is set: unknown, unnamed
        infos.append(ValueInfo(name, int(tensor_type.elem_type), tuple(shape)))
    return tuple(infos)


def _read_node(proto: Any, index: int, limits: OnnxLimits) -> Node:
    where = f"node {proto.name!r}" if proto.name else f"node #{index} ({proto.op_type})"
    if not proto.op_type:
        raise OnnxDecodeError(f"{where} has no operator type")
    attributes: dict[str, AttributeValue] = {}
    for attribute in proto.attribute:
        if not attribute.name or attribute.name in attributes:
            raise OnnxDecodeError(f"{where}: attribute name {attribute.name!r} empty or repeated")
        attributes[attribute.name] = _read_attribute(attribute, limits, where)
    return Node(
        op_type=str(proto.op_type),
        inputs=tuple(proto.input),
        outputs=tuple(proto.output),
        attributes=attributes,
        name=str(proto.name),
        domain=str(proto.domain),
    )


def _read_strings(proto: Any, limits: OnnxLimits, where: str) -> list[str]:
    try:
        return [bytes(value).decode("utf-8") for value in proto.strings]
    except UnicodeDecodeError:
        raise OnnxDecodeError(f"{where}: attribute {proto.name!r} is not UTF-8") from None


def _read_string(proto: Any, limits: OnnxLimits, where: str) -> str | bytes:
    raw = bytes(proto.s)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # a binary string attribute stays bytes


# AttributeType -> reader(attribute proto, limits, where); other kinds (graphs, lists of
# tensors, sparse tensors, type protos) cannot be held by an AttributeValue and are refused.
_ATTRIBUTE_READERS: Mapping[int, Callable[[Any, OnnxLimits, str], AttributeValue]] = {
    AttributeType.FLOAT: lambda proto, limits, where: float(proto.f),
    AttributeType.INT: lambda proto, limits, where: int(proto.i),
    AttributeType.STRING: _read_string,
    AttributeType.TENSOR: lambda proto, limits, where: _read_tensor(
        proto.t, limits, f"{where}: attribute {proto.name!r}"
    ),
    AttributeType.FLOATS: lambda proto, limits, where: [float(value) for value in proto.floats],
    AttributeType.INTS: lambda proto, limits, where: [int(value) for value in proto.ints],
    AttributeType.STRINGS: _read_strings,
}


def _read_attribute(proto: Any, limits: OnnxLimits, where: str) -> AttributeValue:
    reader = _ATTRIBUTE_READERS.get(proto.type)
    if reader is None:
        try:
            kind = AttributeType(proto.type).name
        except ValueError:
            kind = str(proto.type)
        raise OnnxDecodeError(f"{where}: attribute {proto.name!r} of type {kind} not supported")
    return reader(proto, limits, where)


def _read_tensor(proto: Any, limits: OnnxLimits, where: str) -> np.ndarray:
    if proto.data_location == DataLocation.EXTERNAL or proto.external_data:
        raise OnnxDecodeError(f"{where}: external tensor data is not supported")
    code = int(proto.data_type)
    dtype = NUMPY_DTYPES.get(code)
    if dtype is None:
        raise OnnxDecodeError(f"{where}: element type {data_type_name(code)} is not supported")
    shape = tuple(int(dim) for dim in proto.dims)
    if any(dim < 0 for dim in shape):
        raise OnnxDecodeError(f"{where}: negative dimension in {shape}")
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise OnnxDecodeError(
            f"{where}: {count} elements, over the limit of {limits.max_tensor_elements}",
            reason=TOO_LARGE,
        )
    typed_field = _TYPED_FIELDS[code]
    if any(len(getattr(proto, name)) for name in _ALL_TYPED_FIELDS if name != typed_field):
        raise OnnxDecodeError(f"{where}: data in a field that does not match its element type")
    typed = getattr(proto, typed_field)
    raw = bytes(proto.raw_data)
    if raw:
        if len(typed):
            raise OnnxDecodeError(f"{where}: both raw_data and {typed_field} are set")
        if len(raw) != count * dtype.itemsize:
            raise OnnxDecodeError(f"{where}: {len(raw)} bytes of raw_data for {count} elements")
        array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    else:
        if len(typed) != count:
            raise OnnxDecodeError(f"{where}: {len(typed)} values for {count} elements")
        array = _from_typed_field(typed, code, dtype, where)
    array = array.reshape(shape)
    array.flags.writeable = False
    return array


def _from_typed_field(
    values: Sequence[float | int], code: int, dtype: np.dtype[Any], where: str
) -> np.ndarray:
    if code not in _INT32_DATA_RANGES:
        return np.asarray(values, dtype=dtype)
    ints = np.asarray(values, dtype=np.int64)
    low, high = _INT32_DATA_RANGES[code]
    if ints.size and (ints.min() < low or ints.max() > high):
        raise OnnxDecodeError(f"{where}: int32_data value out of range for the element type")
    if code == DataType.FLOAT16:
        return ints.astype(np.uint16).view(np.float16)
    return ints.astype(dtype)


# --------------------------------------------------------------------------- structure


def topological_order(model: OnnxModel, max_depth: int | None = None) -> tuple[int, ...]:
    """Node indices in an order that computes every value before it is read.

    The file's own order is kept where it is valid (the smallest ready index goes first).
    Raises `GraphError` for a value produced twice, an input nothing produces, a cycle, a
    graph output nothing produces, or a path longer than `max_depth` nodes.
    """
    sources = set(model.initializers) | {info.name for info in model.inputs}
    producers = _producers(model.nodes, sources)
    dependents: list[list[int]] = [[] for _ in model.nodes]
    pending = [0] * len(model.nodes)
    for index, node in enumerate(model.nodes):
        for name in node.inputs:
            if not name or name in sources:
                continue
            producer = producers.get(name)
            if producer is None:
                label = node_label(node, index)
                raise GraphError(f"node {label} reads {name!r}, which nothing produces")
            dependents[producer].append(index)
            pending[index] += 1
    for info in model.outputs:
        if info.name not in producers and info.name not in sources:
            raise GraphError(f"graph output {info.name!r} is produced by nothing")
    ready = [index for index, count in enumerate(pending) if count == 0]
    heapq.heapify(ready)
    depth = [1] * len(model.nodes)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        if max_depth is not None and depth[index] > max_depth:
            raise GraphError(f"the graph is deeper than {max_depth} nodes")
        order.append(index)
        for dependent in dependents[index]:
            depth[dependent] = max(depth[dependent], depth[index] + 1)
            pending[dependent] -= 1
            if pending[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(order) < len(model.nodes):
        stuck = next(index for index, count in enumerate(pending) if count)
        label = node_label(model.nodes[stuck], stuck)
        raise GraphError(f"the graph has a cycle through node {label}")
    return tuple(order)


def _producers(nodes: Sequence[Node], sources: set[str]) -> dict[str, int]:
    """Which node computes each value; every value has one definition (SSA)."""
    producers: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in filter(None, node.outputs):
            if name in producers or name in sources:
                raise GraphError(f"value {name!r} is produced twice (SSA violation)")
            producers[name] = index
    return producers


def with_initializers(model: OnnxModel, weights: Mapping[str, np.ndarray]) -> OnnxModel:
    """A copy of `model` with some initializers' values replaced (e.g. merged weights).

    Every name must be an existing initializer and every array keep its shape and dtype.
    """
    updated = dict(model.initializers)
    for name, value in weights.items():
        current = updated.get(name)
        if current is None:
            raise OnnxError(f"the model has no initializer named {name!r}")
        array = np.asarray(value)
        if array.shape != current.shape or array.dtype != current.dtype:
            raise OnnxError(
                f"initializer {name!r} is {current.dtype}{list(current.shape)}, "
                f"got {array.dtype}{list(array.shape)}"
            )
        replacement = array.copy()
        replacement.flags.writeable = False
        updated[name] = replacement
    return dataclasses.replace(model, initializers=updated)


# --------------------------------------------------------------------------- writing


def save_model(model: OnnxModel) -> bytes:
    """Serialise `model` (tensors as little-endian raw_data). Raises `GraphError` for a
    structurally invalid graph and `OnnxError` for values ONNX cannot hold."""
    topological_order(model)
    proto = ModelProto(
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        doc_string=model.doc_string,
    )
    proto.opset_import.add(domain=DEFAULT_DOMAIN, version=model.opset)
    for domain, version in model.extra_opsets.items():
        proto.opset_import.add(domain=domain, version=version)
    for key, value in model.metadata.items():
        proto.metadata_props.add(key=key, value=value)
    graph = proto.graph
    graph.name = model.graph_name
    for node in model.nodes:
        node_proto = graph.node.add(
            op_type=node.op_type,
            input=node.inputs,
            output=node.outputs,
            name=node.name,
            domain=node.domain,
        )
        for attribute_name, attribute_value in node.attributes.items():
            _write_attribute(node_proto.attribute.add(name=attribute_name), attribute_value, node)
    for name, array in model.initializers.items():
        _write_tensor(graph.initializer.add(name=name), np.asarray(array))
    for info in model.inputs:
        _write_value_info(graph.input.add(name=info.name), info)
    for info in model.outputs:
        _write_value_info(graph.output.add(name=info.name), info)
    data: bytes = proto.SerializeToString(deterministic=True)
    return data


def _write_tensor(proto: Any, array: np.ndarray) -> None:
    proto.data_type = data_type_of(array.dtype)
    proto.dims.extend(array.shape)
    proto.raw_data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _write_value_info(proto: Any, info: ValueInfo) -> None:
    tensor_type = proto.type.tensor_type
    tensor_type.elem_type = info.elem_type
    tensor_type.shape.SetInParent()  # rank 0 is an empty shape, not a missing one
    for dim in info.shape:
        if isinstance(dim, str):
            entry = tensor_type.shape.dim.add()
            if dim:
                entry.dim_param = dim
        elif dim >= 0:
            tensor_type.shape.dim.add(dim_value=dim)
        else:
            raise OnnxError(f"value {info.name!r} has a negative dimension in {info.shape}")


def _write_attribute(proto: Any, value: object, node: Node) -> None:
    # bool is an int; numpy scalars are accepted as the Python numbers they stand for.
    if isinstance(value, np.ndarray):
        proto.type = AttributeType.TENSOR
        _write_tensor(proto.t, value)
    elif isinstance(value, bool | int | np.integer):
        proto.type, proto.i = AttributeType.INT, int(value)
    elif isinstance(value, float | np.floating):
        proto.type, proto.f = AttributeType.FLOAT, float(value)
    elif isinstance(value, str):
        proto.type, proto.s = AttributeType.STRING, value.encode("utf-8")
    elif isinstance(value, bytes):
        proto.type, proto.s = AttributeType.STRING, value
    elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value) and value:
        proto.type = AttributeType.STRINGS
        proto.strings.extend(item.encode("utf-8") for item in value)
    elif isinstance(value, list | tuple) and all(
        isinstance(item, bool | int | np.integer) for item in value
    ):
        proto.type = AttributeType.INTS  # an empty list too: the common case (axes=[])
        proto.ints.extend(int(item) for item in value)
    elif isinstance(value, list | tuple) and all(
        isinstance(item, bool | int | float | np.integer | np.floating) for item in value
    ):
        proto.type = AttributeType.FLOATS
        proto.floats.extend(float(item) for item in value)
    else:
        raise OnnxError(
            f"node {node.name or node.op_type!r}: attribute {proto.name!r} has a value ONNX "
            f"cannot hold ({type(value).__name__})"
        )
