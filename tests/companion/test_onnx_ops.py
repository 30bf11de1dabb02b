"""Every operator of the numpy executor against onnxruntime, one node at a time.

Each case is a one-node model built with the real `onnx.helper`, checked by the ONNX checker,
run by onnxruntime and, after going through our reader, by the numpy executor. The versions
each operator claims to implement are checked against the `onnx` package's schemas.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnx.defs
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlmule_core.errors import (
    OnnxRunError,
    UnsupportedOperatorError,
    UnsupportedOperatorUsageError,
    UnsupportedOpsetError,
)
from mlmule_core.onnx import (
    MAX_OPSET,
    MIN_OPSET,
    OP_VERSIONS,
    SUPPORTED_OPS,
    Node,
    NumpyExecutor,
    OnnxLimits,
    OnnxModel,
    ValueInfo,
    load_model,
)
from onnx import helper

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
INT64_MAX = np.iinfo(np.int64).max
rng = np.random.default_rng(20250113)


def floats(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def positive(*shape: int) -> np.ndarray:
    return rng.uniform(0.1, 4.0, shape).astype(np.float32)


def ints(values: Any) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def one_node_model(
    op_type: str,
    inputs: list[np.ndarray | None],
    attributes: dict[str, Any],
    opset: int,
    outputs: int,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The node as a model whose outputs are typed from what onnxruntime computes."""
    names = ["" if value is None else f"in{index}" for index, value in enumerate(inputs)]
    feeds = {
        name: np.asarray(value)
        for name, value in zip(names, inputs, strict=True)
        if value is not None
    }
    node = helper.make_node(op_type, names, [f"out{i}" for i in range(outputs)], **attributes)
    graph_inputs = [
        helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape
        )
        for name, value in feeds.items()
    ]

    def model(graph_outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph([node], "case", graph_inputs, graph_outputs)
        return helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10
        )

    untyped = model([helper.make_value_info(f"out{i}", onnx.TypeProto()) for i in range(outputs)])
    computed = ort.InferenceSession(untyped.SerializeToString()).run(None, feeds)
    typed = model(
        [
            helper.make_tensor_value_info(
                f"out{i}", helper.np_dtype_to_tensor_dtype(value.dtype), value.shape
            )
            for i, value in enumerate(computed)
        ]
    )
    onnx.checker.check_model(typed, full_check=True)
    return typed, feeds


def assert_parity(
    op_type: str,
    inputs: list[np.ndarray | None],
    attributes: dict[str, Any] | None = None,
    opset: int = 17,
    outputs: int = 1,
) -> None:
    model, feeds = one_node_model(op_type, inputs, attributes or {}, opset, outputs)
    data = model.SerializeToString()
    expected = ort.InferenceSession(data).run(None, feeds)
    actual = NumpyExecutor(load_model(data)).run(feeds)
    for index, want in enumerate(expected):
        got = actual[f"out{index}"]
        assert got.dtype == want.dtype, (op_type, index)
        assert got.shape == want.shape, (op_type, index)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, **TOLERANCE)
        else:
            np.testing.assert_array_equal(got, want)


UNARY_INPUTS = {
    "Abs": floats(3, 4),
    "Ceil": floats(3, 4, scale=3),
    "Erf": floats(4, 5, scale=2),
    "Exp": floats(3, 4, scale=3),
    "Floor": floats(3, 4, scale=3),
    "HardSwish": floats(3, 4, scale=4),
    "Log": positive(3, 4),
    "Neg": floats(3, 4),
    "Not": rng.random((3, 4)) < 0.5,
    "Reciprocal": positive(3, 4),
    "Relu": floats(3, 4),
    "Sigmoid": np.concatenate([floats(3, 4, scale=5), np.float32([[-100, 100, 0, 1e-3]])]),
    "Sign": np.float32([[-2, 0, 3.5, -0.0]]),
    "Softplus": np.concatenate([floats(3, 4, scale=5), np.float32([[-100, 100, 0, 30]])]),
    "Sqrt": positive(3, 4),
    "Tanh": floats(3, 4, scale=3),
}

CASES: list[Any] = [
    *(pytest.param(op, [value], {}, 17, 1, id=op) for op, value in UNARY_INPUTS.items()),
    pytest.param("Identity", [ints([[1, -2]])], {}, 17, 1, id="Identity-int"),
    pytest.param("LeakyRelu", [floats(3, 4)], {"alpha": 0.2}, 17, 1, id="LeakyRelu"),
    pytest.param("Elu", [floats(3, 4, scale=3)], {"alpha": 0.7}, 17, 1, id="Elu"),
    pytest.param("Selu", [floats(3, 4, scale=3)], {}, 17, 1, id="Selu"),
    pytest.param("HardSigmoid", [floats(3, 4, scale=4)], {"alpha": 0.3}, 17, 1, id="HardSigm"),
    pytest.param("Gelu", [floats(5, 6, scale=3)], {}, 20, 1, id="Gelu-erf"),
    pytest.param("Gelu", [floats(5, 6, scale=3)], {"approximate": "tanh"}, 20, 1, id="Gelu-tanh"),
    pytest.param(
        "Clip", [floats(4, 5), np.float32(-0.5), np.float32(0.5)], {}, 17, 1, id="Clip-both"
    ),
    pytest.param("Clip", [floats(4, 5), None, np.float32(0.2)], {}, 17, 1, id="Clip-max"),
    pytest.param("Clip", [floats(4, 5)], {}, 17, 1, id="Clip-none"),
    pytest.param("Clip", [ints([3, -9, 7]), ints(-2), ints(5)], {}, 17, 1, id="Clip-int"),
    pytest.param("Clip", [floats(6), np.float32(1), np.float32(-1)], {}, 17, 1, id="Clip-crossed"),
    pytest.param("Add", [floats(3, 1, 4), floats(2, 4)], {}, 17, 1, id="Add-broadcast"),
    pytest.param("Sub", [floats(2, 4), floats(4)], {}, 17, 1, id="Sub"),
    pytest.param("Mul", [floats(2, 1), floats(1, 5)], {}, 17, 1, id="Mul"),
    pytest.param("Div", [floats(2, 3), positive(3)], {}, 17, 1, id="Div"),
    pytest.param(
        "Div", [ints([7, -7, 7, -7, 6]), ints([2, 2, -2, -2, 3])], {}, 17, 1, id="Div-int"
    ),
    pytest.param("Pow", [positive(2, 3), floats(3)], {}, 17, 1, id="Pow"),
    pytest.param("Pow", [floats(2, 3), ints([2, 3, 0])], {}, 17, 1, id="Pow-int-exponent"),
    pytest.param("Equal", [ints([1, 2, 3]), ints([[1], [3]])], {}, 17, 1, id="Equal"),
    pytest.param("Less", [floats(3, 4), floats(4)], {}, 17, 1, id="Less"),
    pytest.param("LessOrEqual", [ints([1, 2, 3]), ints(2)], {}, 17, 1, id="LessOrEqual"),
    pytest.param("Greater", [floats(3, 4), floats(3, 1)], {}, 17, 1, id="Greater"),
    pytest.param("GreaterOrEqual", [ints([1, 2, 3]), ints(2)], {}, 17, 1, id="GreaterOrEq"),
    pytest.param("And", [rng.random((3, 4)) < 0.5, rng.random(4) < 0.5], {}, 17, 1, id="And"),
    pytest.param("Or", [rng.random((3, 4)) < 0.5, rng.random(4) < 0.5], {}, 17, 1, id="Or"),
    pytest.param("Xor", [rng.random((3, 4)) < 0.5, rng.random(4) < 0.5], {}, 17, 1, id="Xor"),
    pytest.param("PRelu", [floats(3, 4), floats(4)], {}, 17, 1, id="PRelu"),
    pytest.param("Max", [floats(3, 4), floats(4), floats(3, 1)], {}, 17, 1, id="Max"),
    pytest.param("Min", [floats(3, 4), floats(4), floats(3, 1)], {}, 17, 1, id="Min"),
    pytest.param("Sum", [floats(3, 4), floats(4), floats(3, 1)], {}, 17, 1, id="Sum"),
    pytest.param("Mean", [floats(3, 4), floats(4), floats(3, 1)], {}, 17, 1, id="Mean"),
    pytest.param("Sum", [floats(3, 4)], {}, 17, 1, id="Sum-single"),
    pytest.param(
        "Where", [rng.random((3, 4)) < 0.5, floats(3, 4), floats(4)], {}, 17, 1, id="Where"
    ),
    pytest.param("MatMul", [floats(5, 3), floats(3, 4)], {}, 17, 1, id="MatMul"),
    pytest.param("MatMul", [floats(2, 5, 3), floats(3, 4)], {}, 17, 1, id="MatMul-batched"),
    pytest.param("MatMul", [floats(3), floats(3, 4)], {}, 17, 1, id="MatMul-vector"),
    pytest.param("Gemm", [floats(5, 3), floats(3, 4), floats(4)], {}, 17, 1, id="Gemm"),
    pytest.param(
        "Gemm",
        [floats(3, 5), floats(4, 3), floats(1, 4)],
        {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0},
        17,
        1,
        id="Gemm-transposed",
    ),
    pytest.param("Gemm", [floats(5, 3), floats(3, 4)], {"alpha": 3.0}, 17, 1, id="Gemm-no-C"),
    pytest.param("Gemm", [floats(5, 3), floats(3, 4), floats(5, 4)], {}, 17, 1, id="Gemm-full-C"),
    pytest.param("Softmax", [floats(2, 3, 4, scale=5)], {}, 17, 1, id="Softmax"),
    pytest.param("Softmax", [floats(2, 3, 4)], {"axis": 1}, 13, 1, id="Softmax-axis1"),
    pytest.param("LogSoftmax", [floats(2, 3, 4, scale=5)], {"axis": 0}, 17, 1, id="LogSoftmax"),
    pytest.param(
        "LayerNormalization", [floats(4, 6), floats(6), floats(6)], {}, 17, 1, id="LayerNorm"
    ),
    pytest.param(
        "LayerNormalization",
        [floats(2, 3, 4, scale=3), floats(3, 4)],
        {"axis": 1, "epsilon": 1e-3},
        17,
        3,
        id="LayerNorm-stats",
    ),
    pytest.param(
        "BatchNormalization",
        [floats(4, 3), floats(3), floats(3), floats(3), positive(3)],
        {"epsilon": 1e-3},
        13,
        1,
        id="BatchNorm-9",
    ),
    pytest.param(
        "BatchNormalization",
        [floats(4, 3, 5), floats(3), floats(3), floats(3), positive(3)],
        {},
        15,
        1,
        id="BatchNorm-15",
    ),
    pytest.param("Conv", [floats(5, 7, 4), floats(6, 7, 2), floats(6)], {}, 17, 1, id="Conv-1d"),
    pytest.param(
        "Conv",
        [floats(2, 4, 6, 5), floats(6, 2, 3, 2)],
        {"group": 2, "strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 2, 1]},
        17,
        1,
        id="Conv-2d-group",
    ),
    pytest.param(
        "Conv",
        [floats(2, 3, 7), floats(4, 3, 4), floats(4)],
        {"auto_pad": "SAME_UPPER", "strides": [2], "kernel_shape": [4]},
        13,
        1,
        id="Conv-same-upper",
    ),
    pytest.param(
        "Conv",
        [floats(2, 3, 6), floats(4, 3, 4)],
        {"auto_pad": "SAME_LOWER"},
        22,
        1,
        id="Conv-same-lower-22",
    ),
    pytest.param(
        "Conv", [floats(1, 2, 5), floats(3, 2, 5)], {"auto_pad": "VALID"}, 17, 1, id="Conv-valid"
    ),
    pytest.param("ReduceMean", [floats(3, 4, 5)], {"axes": [1]}, 17, 1, id="ReduceMean-attr"),
    pytest.param(
        "ReduceMean", [floats(3, 4, 5), ints([0, -1])], {"keepdims": 0}, 18, 1, id="ReduceMean-18"
    ),
    pytest.param("ReduceMax", [floats(3, 4)], {"keepdims": 0}, 17, 1, id="ReduceMax-all"),
    pytest.param("ReduceMax", [floats(3, 4), ints([1])], {}, 20, 1, id="ReduceMax-20"),
    pytest.param("ReduceMin", [floats(3, 4), ints([0])], {}, 18, 1, id="ReduceMin"),
    pytest.param("ReduceProd", [floats(3, 4)], {"axes": [0]}, 17, 1, id="ReduceProd"),
    pytest.param("ReduceSum", [floats(3, 4, 2), ints([1])], {}, 17, 1, id="ReduceSum"),
    pytest.param("ReduceSum", [floats(3, 4)], {"keepdims": 0}, 13, 1, id="ReduceSum-all"),
    pytest.param(
        "ReduceSum",
        [floats(3, 4), ints([])],
        {"noop_with_empty_axes": 1},
        17,
        1,
        id="ReduceSum-noop",
    ),
    pytest.param("ArgMax", [floats(3, 4)], {"axis": 1, "keepdims": 0}, 17, 1, id="ArgMax"),
    pytest.param(
        "ArgMax", [ints([[1, 3, 3], [2, 2, 0]])], {"select_last_index": 1}, 17, 1, id="ArgMax-last"
    ),
    pytest.param("ArgMin", [ints([[1, 0, 0], [2, 2, 5]])], {"axis": -1}, 17, 1, id="ArgMin"),
    pytest.param("Reshape", [floats(2, 3, 4), ints([0, -1])], {}, 17, 1, id="Reshape"),
    pytest.param("Reshape", [floats(2, 3, 4), ints([4, 1, 6])], {}, 13, 1, id="Reshape-13"),
    pytest.param(
        "Reshape",
        [np.zeros((0, 4), np.float32), ints([0, 2, 2])],
        {"allowzero": 1},
        14,
        1,
        id="Reshape-allowzero",
    ),
    pytest.param("Flatten", [floats(2, 3, 4)], {}, 17, 1, id="Flatten"),
    pytest.param("Flatten", [floats(2, 3, 4)], {"axis": 0}, 17, 1, id="Flatten-0"),
    pytest.param("Flatten", [floats(2, 3, 4)], {"axis": -1}, 17, 1, id="Flatten-neg"),
    pytest.param("Transpose", [floats(2, 3, 4)], {}, 17, 1, id="Transpose"),
    pytest.param("Transpose", [floats(2, 3, 4)], {"perm": [1, 2, 0]}, 17, 1, id="Transpose-perm"),
    pytest.param("Concat", [floats(2, 3), floats(2, 1)], {"axis": -1}, 17, 1, id="Concat"),
    pytest.param("Concat", [ints([1]), ints([2, 3])], {"axis": 0}, 17, 1, id="Concat-shape"),
    pytest.param("Squeeze", [floats(1, 3, 1), ints([-1])], {}, 17, 1, id="Squeeze"),
    pytest.param("Squeeze", [floats(1, 3, 1)], {}, 17, 1, id="Squeeze-all"),
    pytest.param("Unsqueeze", [floats(3, 4), ints([0, -1])], {}, 17, 1, id="Unsqueeze"),
    pytest.param("Shape", [floats(2, 3, 4)], {}, 13, 1, id="Shape"),
    pytest.param("Shape", [floats(2, 3, 4)], {"start": 1, "end": -1}, 15, 1, id="Shape-slice"),
    pytest.param("Shape", [floats(2, 3, 4)], {"start": -9, "end": 9}, 19, 1, id="Shape-clamp"),
    pytest.param("Size", [floats(2, 3, 4)], {}, 17, 1, id="Size"),
    pytest.param("Gather", [floats(3, 4), ints([[0, -1], [2, 1]])], {"axis": 1}, 17, 1, id="Gath"),
    pytest.param("Gather", [floats(3, 4), ints(-2)], {}, 17, 1, id="Gather-scalar"),
    pytest.param(
        "Slice", [floats(5, 6), ints([1, -4]), ints([INT64_MAX, 5])], {}, 17, 1, id="Slice"
    ),
    pytest.param(
        "Slice",
        [floats(5, 6), ints([-1, 4]), ints([-INT64_MAX, 0]), ints([0, 1]), ints([-2, -1])],
        {},
        17,
        1,
        id="Slice-backwards",
    ),
    pytest.param(
        "Slice",
        [floats(5, 6), ints([1]), ints([10]), ints([-1]), ints([2])],
        {},
        17,
        1,
        id="Slice-axis",
    ),
    pytest.param("Expand", [floats(3, 1), ints([2, 1, 4])], {}, 17, 1, id="Expand"),
    pytest.param("Tile", [floats(2, 3), ints([2, 3])], {}, 17, 1, id="Tile"),
    pytest.param("Split", [floats(6, 2), ints([1, 5])], {}, 13, 2, id="Split-sizes"),
    pytest.param("Split", [floats(6, 3)], {"axis": -1}, 13, 3, id="Split-equal"),
    pytest.param("Split", [floats(7, 2)], {"num_outputs": 3}, 18, 3, id="Split-num-outputs"),
    pytest.param("Range", [ints(-3), ints(10), ints(4)], {}, 17, 1, id="Range-int"),
    pytest.param(
        "Range", [np.float32(1), np.float32(-2), np.float32(-0.3)], {}, 17, 1, id="Range-float"
    ),
    pytest.param("ConstantOfShape", [ints([2, 3])], {}, 17, 1, id="ConstantOfShape"),
    pytest.param(
        "ConstantOfShape",
        [ints([3])],
        {"value": helper.make_tensor("v", onnx.TensorProto.INT64, [1], [7])},
        20,
        1,
        id="ConstantOfShape-int",
    ),
    *(
        pytest.param("Cast", [value], {"to": int(to)}, opset, 1, id=f"Cast-{value.dtype}-{to}")
        for value, to, opset in [
            (floats(3, 4, scale=50), onnx.TensorProto.INT64, 17),
            (floats(3, 4, scale=50), onnx.TensorProto.INT8, 17),
            (np.abs(floats(3, 4, scale=50)), onnx.TensorProto.UINT8, 17),
            (floats(3, 4), onnx.TensorProto.FLOAT16, 19),
            (np.float32([0, -0.0, 1e-9, np.nan]), onnx.TensorProto.BOOL, 21),
            (ints([[1, -5]]), onnx.TensorProto.FLOAT, 17),
            (ints([[1, -5]]), onnx.TensorProto.INT32, 17),
            (floats(3, 4).astype(np.float64), onnx.TensorProto.FLOAT, 17),
            (np.array([True, False]), onnx.TensorProto.FLOAT, 17),
        ]
    ),
    pytest.param("CastLike", [floats(3), ints([0])], {}, 17, 1, id="CastLike"),
    pytest.param(
        "Constant",
        [],
        {"value": helper.make_tensor("v", onnx.TensorProto.FLOAT, [2], [1.5, -2])},
        17,
        1,
        id="Constant-tensor",
    ),
    pytest.param("Constant", [], {"value_float": 0.25}, 17, 1, id="Constant-float"),
    pytest.param("Constant", [], {"value_ints": [3, 1, 4]}, 17, 1, id="Constant-ints"),
    pytest.param(
        "Dropout", [floats(3, 4), np.float32(0.4), np.array(False)], {}, 17, 2, id="Dropout"
    ),
    pytest.param("Dropout", [floats(3, 4)], {}, 22, 1, id="Dropout-22"),
]


@pytest.mark.parametrize(("op_type", "inputs", "attributes", "opset", "outputs"), CASES)
def test_operator_matches_onnxruntime(
    op_type: str,
    inputs: list[np.ndarray | None],
    attributes: dict[str, Any],
    opset: int,
    outputs: int,
) -> None:
    assert_parity(op_type, inputs, attributes, opset, outputs)


def test_every_supported_operator_has_a_parity_case() -> None:
    assert {case.values[0] for case in CASES} == SUPPORTED_OPS


@pytest.mark.parametrize("op_type", sorted(SUPPORTED_OPS))
def test_implemented_versions_cover_every_specification_version(op_type: str) -> None:
    """Between MIN_OPSET and MAX_OPSET the operator may only resolve to versions we implement,
    so a semantic change in a newer version cannot be run with the old semantics."""
    versions = OP_VERSIONS[op_type]
    for opset in range(MIN_OPSET, MAX_OPSET + 1):
        try:
            schema = onnx.defs.get_schema(op_type, opset)
        except onnx.defs.SchemaError:
            assert opset < versions[0]
            continue
        assert schema.since_version in versions, (op_type, opset)
        assert opset >= versions[0]


@pytest.mark.parametrize("op_type", ["ConvTranspose", "Hardmax", "NonMaxSuppression"])
def test_an_unsupported_operator_is_refused_by_name(op_type: str) -> None:
    model, _ = one_node_model("Relu", [floats(2)], {}, 17, 1)
    model.graph.node[0].op_type = op_type
    loaded = load_model(model.SerializeToString())  # reading it is fine
    with pytest.raises(UnsupportedOperatorError, match=op_type) as caught:
        NumpyExecutor(loaded)
    assert caught.value.op_type == op_type
    assert caught.value.reason == "onnx_unsupported_op"


def test_an_operator_newer_than_the_opset_is_refused() -> None:
    model, _ = one_node_model("Relu", [floats(2)], {}, 20, 1)
    model.graph.node[0].op_type = "Gelu"
    model.opset_import[0].version = 19  # Gelu appears in opset 20
    with pytest.raises(UnsupportedOperatorError, match="Gelu"):
        NumpyExecutor(load_model(model.SerializeToString()))


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, MAX_OPSET + 1])
def test_opsets_outside_the_implemented_range_are_refused(opset: int) -> None:
    model, _ = one_node_model("Relu", [floats(2)], {}, 17, 1)
    model.opset_import[0].version = opset
    with pytest.raises(UnsupportedOpsetError):
        NumpyExecutor(load_model(model.SerializeToString()))


def test_unsupported_uses_of_supported_operators_are_named() -> None:
    model, _ = one_node_model("Cast", [floats(2)], {"to": int(onnx.TensorProto.FLOAT)}, 17, 1)
    model.graph.node[0].attribute[0].i = onnx.TensorProto.STRING
    with pytest.raises(UnsupportedOperatorUsageError, match=r"'Cast'.*STRING") as caught:
        NumpyExecutor(load_model(model.SerializeToString()))
    assert caught.value.reason == "onnx_unsupported_op"


def test_dropout_in_training_mode_is_refused_when_run() -> None:
    model, feeds = one_node_model(
        "Dropout", [floats(3), np.float32(0.5), np.array(False)], {}, 17, 1
    )
    executor = NumpyExecutor(load_model(model.SerializeToString()))
    with pytest.raises(UnsupportedOperatorUsageError, match="training"):
        executor.run({**feeds, "in2": np.array(True)})


def test_a_node_that_fails_at_run_time_raises_a_typed_error() -> None:
    model, feeds = one_node_model("Reshape", [floats(2, 3), ints([3, 2])], {}, 17, 1)
    executor = NumpyExecutor(load_model(model.SerializeToString()))
    with pytest.raises(OnnxRunError, match="Reshape"):
        executor.run({**feeds, "in1": ints([4, 2])})


def test_operators_refuse_to_allocate_past_the_limit() -> None:
    model, feeds = one_node_model("Expand", [floats(1), ints([8, 8])], {}, 17, 1)
    model_limits = OnnxLimits(max_value_elements=63)
    executor = NumpyExecutor(load_model(model.SerializeToString()), model_limits)
    with pytest.raises(OnnxRunError) as caught:
        executor.run({**feeds, "in1": ints([64, 2**20])})
    assert caught.value.reason == "onnx_too_large"


def test_conv_refuses_to_allocate_past_the_limit_and_bad_operands() -> None:
    model, feeds = one_node_model("Conv", [floats(2, 3, 8), floats(4, 3, 2)], {}, 17, 1)
    limited = NumpyExecutor(
        load_model(model.SerializeToString()), OnnxLimits(max_value_elements=50)
    )
    with pytest.raises(OnnxRunError) as caught:
        limited.run(feeds)
    assert caught.value.reason == "onnx_too_large"
    for w_shape in [(4, 3, 9), (4, 2, 2)]:  # a kernel longer than the input; other channels
        bad = OnnxModel(
            nodes=(Node("Conv", ("x", "w"), ("y",), {}),),
            inputs=(ValueInfo("x", shape=(2, 3, 8)),),
            outputs=(ValueInfo("y", shape=("n", "c", "l")),),
            initializers={"w": floats(*w_shape)},
            opset=17,
        )
        with pytest.raises(OnnxRunError, match="Conv"):
            NumpyExecutor(bad).run({"x": feeds["in0"]})


def test_erf_is_accurate_to_float32() -> None:
    grid = np.linspace(-6, 6, 24001, dtype=np.float32)
    model, _ = one_node_model("Erf", [grid], {}, 17, 1)
    ours = NumpyExecutor(load_model(model.SerializeToString())).run({"in0": grid})["out0"]
    exact = np.array([math.erf(float(value)) for value in grid])
    assert np.max(np.abs(ours - exact) / np.maximum(np.abs(exact), 1e-30)) < 3e-7


# ----------------------------------------------------------------------------- generated cases

dims = st.integers(min_value=1, max_value=4)
shapes = st.lists(dims, min_size=0, max_size=4).map(tuple)


@st.composite
def broadcastable_pairs(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two shapes that broadcast: each dimension of the shorter is 1 or equal."""
    left = draw(shapes)
    suffix = left[len(left) - draw(st.integers(0, len(left))) :]
    right = tuple(draw(st.sampled_from([dim, 1])) for dim in suffix)
    return (left, right) if draw(st.booleans()) else (right, left)


@settings(max_examples=25, deadline=None)
@given(pair=broadcastable_pairs(), op_type=st.sampled_from(["Add", "Sub", "Mul", "Div", "Pow"]))
def test_broadcasting_matches_onnxruntime(
    pair: tuple[tuple[int, ...], tuple[int, ...]], op_type: str
) -> None:
    left = positive(*pair[0]) if op_type == "Pow" else floats(*pair[0])
    assert_parity(op_type, [left, positive(*pair[1])])


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    transposed=st.tuples(st.booleans(), st.booleans()),
    bias=st.sampled_from(["none", "row", "full", "scalar"]),
    scales=st.tuples(st.sampled_from([1.0, 0.5, -2.0]), st.sampled_from([1.0, 0.0, 3.0])),
)
def test_gemm_matches_onnxruntime(
    sizes: tuple[int, int, int],
    transposed: tuple[bool, bool],
    bias: str,
    scales: tuple[float, float],
) -> None:
    rows, inner, columns = sizes
    trans_a, trans_b = transposed
    a = floats(inner, rows) if trans_a else floats(rows, inner)
    b = floats(columns, inner) if trans_b else floats(inner, columns)
    c = {"none": None, "row": floats(columns), "full": floats(rows, columns), "scalar": floats(1)}
    inputs = [a, b] if bias == "none" else [a, b, c[bias]]
    attributes = {
        "transA": int(trans_a),
        "transB": int(trans_b),
        "alpha": scales[0],
        "beta": scales[1],
    }
    assert_parity("Gemm", inputs, attributes)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
    data=st.data(),
)
def test_slice_matches_onnxruntime(shape: tuple[int, ...], data: st.DataObject) -> None:
    axes = data.draw(st.permutations(range(len(shape))).map(lambda p: p[: len(p) // 2 + 1]))
    bound = st.integers(-8, 8) | st.sampled_from([INT64_MAX, -INT64_MAX, 2**31 - 1])
    starts = [data.draw(bound) for _ in axes]
    ends = [data.draw(bound) for _ in axes]
    steps = [data.draw(st.sampled_from([1, 2, 3, -1, -2])) for _ in axes]
    negative_axes = [axis - len(shape) if data.draw(st.booleans()) else axis for axis in axes]
    inputs = [floats(*shape), ints(starts), ints(ends), ints(negative_axes), ints(steps)]
    assert_parity("Slice", inputs)


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple), data=st.data())
def test_softmax_and_reductions_match_onnxruntime_on_any_axis(
    shape: tuple[int, ...], data: st.DataObject
) -> None:
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    op_type = data.draw(st.sampled_from(["Softmax", "LogSoftmax", "ReduceMean", "ReduceMax"]))
    if op_type.startswith("Reduce"):
        assert_parity(op_type, [floats(*shape), ints([axis])], {}, opset=18)
    else:
        assert_parity(op_type, [floats(*shape, scale=4)], {"axis": axis})
