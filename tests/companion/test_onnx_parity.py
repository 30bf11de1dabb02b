"""Whole models: the numpy executor predicts what onnxruntime predicts.

Random MLP-shaped graphs are described once and written twice, with the real `onnx.helper`
and with our own writer; both files must pass the ONNX checker and run the same in the numpy
executor and onnxruntime, at batch sizes 1 and 257.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from mlmule_core.onnx import (
    Node,
    NumpyExecutor,
    OnnxModel,
    ValueInfo,
    create_session,
    load_model,
    save_model,
)
from onnx import TensorProto, helper, numpy_helper

BATCH_SIZES = (1, 257)
ACTIVATIONS = ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "Gelu", "Softplus", "Elu", "HardSwish"]


@dataclass
class Graph:
    """A graph described once, to be written by both writers."""

    n_inputs: int
    opset: int
    nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    output_width: int = 0
    last: str = "x"

    def add(self, op_type: str, inputs: list[str], **attributes: Any) -> str:
        output = f"v{len(self.nodes)}"
        self.nodes.append((op_type, inputs, [output], attributes))
        self.last = output
        return output

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers[name] = value
        return name

    def with_onnx_helper(self) -> bytes:
        nodes = [
            helper.make_node(op, inputs, outputs, name=f"n{i}", **attributes)
            for i, (op, inputs, outputs, attributes) in enumerate(self.nodes)
        ]
        graph = helper.make_graph(
            nodes,
            "parity",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", self.n_inputs])],
            [helper.make_tensor_value_info(self.last, TensorProto.FLOAT, ["batch", self.width])],
            initializer=[numpy_helper.from_array(v, n) for n, v in self.initializers.items()],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=9
        )
        onnx.checker.check_model(model, full_check=True)
        return model.SerializeToString()

    def with_our_writer(self) -> OnnxModel:
        return OnnxModel(
            nodes=tuple(
                Node(op, tuple(inputs), tuple(outputs), attributes, name=f"n{i}")
                for i, (op, inputs, outputs, attributes) in enumerate(self.nodes)
            ),
            inputs=(ValueInfo("x", shape=("batch", self.n_inputs)),),
            outputs=(ValueInfo(self.last, shape=("batch", self.width)),),
            initializers=dict(self.initializers),
            opset=self.opset,
            ir_version=9,
        )

    @property
    def width(self) -> int:
        return self.output_width


@st.composite
def mlps(draw: st.DrawFn) -> Graph:
    """MLP families like ours: optional input scaling, dense layers with activations and
    optional layer norm, written as Gemm or MatMul+Add, and a sigmoid/softmax/linear head."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_inputs = draw(st.integers(1, 40))
    opset = draw(st.sampled_from([17, 18, 20]))
    graph = Graph(n_inputs=n_inputs, opset=opset)
    if draw(st.booleans()):
        mean = graph.constant("mean", rng.standard_normal(n_inputs).astype(np.float32))
        std = graph.constant("std", rng.uniform(0.5, 3, n_inputs).astype(np.float32))
        graph.add("Div", [graph.add("Sub", ["x", mean]), std])
    width = n_inputs
    sizes = draw(st.lists(st.integers(1, 64), min_size=0, max_size=3))
    n_outputs = draw(st.integers(1, 8))
    for layer, size in enumerate([*sizes, n_outputs]):
        weight = (rng.standard_normal((size, width)) / np.sqrt(width)).astype(np.float32)
        b = graph.constant(f"b{layer}", (rng.standard_normal(size) * 0.1).astype(np.float32))
        if draw(st.booleans()):
            graph.add("Gemm", [graph.last, graph.constant(f"w{layer}", weight), b], transB=1)
        else:
            w_t = graph.constant(f"w{layer}_t", np.ascontiguousarray(weight.T))
            graph.add("Add", [graph.add("MatMul", [graph.last, w_t]), b])
        width = size
        if layer == len(sizes):
            break
        if draw(st.booleans()):
            scale = graph.constant(f"ln{layer}_scale", rng.uniform(0.5, 2, size).astype(np.float32))
            shift = graph.constant(f"ln{layer}_bias", rng.standard_normal(size).astype(np.float32))
            graph.add("LayerNormalization", [graph.last, scale, shift], axis=-1)
        activation = draw(st.sampled_from(ACTIVATIONS if opset >= 20 else ACTIVATIONS[:4]))
        graph.add(activation, [graph.last])
    head = draw(st.sampled_from(["Sigmoid", "Softmax", "LogSoftmax", "linear"]))
    if head in ("Softmax", "LogSoftmax"):
        graph.add(head, [graph.last], axis=1)
    elif head == "Sigmoid":
        graph.add("Sigmoid", [graph.last])
    graph.output_width = width
    return graph


def assert_same_predictions(data: bytes, model: OnnxModel, n_inputs: int) -> None:
    reference = ort.InferenceSession(data)
    executor = NumpyExecutor(model)
    output = model.outputs[0].name
    rng = np.random.default_rng(n_inputs)
    for batch in BATCH_SIZES:
        x = (rng.standard_normal((batch, n_inputs)) * 2).astype(np.float32)
        expected = reference.run(None, {"x": x})[0]
        actual = executor.run({"x": x})[output]
        assert actual.dtype == expected.dtype == np.float32
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(graph=mlps())
def test_models_built_with_onnx_helper_predict_like_onnxruntime(graph: Graph) -> None:
    data = graph.with_onnx_helper()
    assert_same_predictions(data, load_model(data), graph.n_inputs)


@settings(max_examples=30, deadline=None)
@given(graph=mlps())
def test_models_built_with_our_writer_predict_like_onnxruntime(graph: Graph) -> None:
    model = graph.with_our_writer()
    data = save_model(model)
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    assert_same_predictions(data, model, graph.n_inputs)


def test_sessions_of_both_backends_agree_on_a_family_sized_model() -> None:
    """96 -> 64 -> 32 -> 8 softmax, the largest shape the zoo uses, through create_session."""
    rng = np.random.default_rng(11)
    graph = Graph(n_inputs=96, opset=17)
    width = 96
    for layer, size in enumerate([64, 32, 8]):
        if layer:
            graph.add("Relu", [graph.last])
        w = graph.constant(f"w{layer}", rng.standard_normal((size, width)).astype(np.float32))
        b = graph.constant(f"b{layer}", rng.standard_normal(size).astype(np.float32))
        graph.add("Gemm", [graph.last, w, b], transB=1)
        width = size
    graph.add("Softmax", [graph.last], axis=1)
    graph.output_width = width
    data = save_model(graph.with_our_writer())
    sessions = [create_session(data, backend) for backend in ("numpy", "onnxruntime")]
    assert [s.backend for s in sessions] == ["numpy", "onnxruntime"]
    for batch in BATCH_SIZES:
        x = rng.standard_normal((batch, 96)).astype(np.float32)
        numpy_out, ort_out = (s.run({"x": x})[graph.last] for s in sessions)
        np.testing.assert_allclose(numpy_out, ort_out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(numpy_out.sum(axis=1), 1.0, rtol=1e-5)
