"""The ONNX reader and writer against the real onnx package: round trips, validity, refusals."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlmule_core.errors import GraphError, OnnxDecodeError, OnnxError, UnsupportedOperatorError
from mlmule_core.onnx import (
    DEFAULT_LIMITS,
    Node,
    NumpyExecutor,
    OnnxLimits,
    OnnxModel,
    ValueInfo,
    load_model,
    save_model,
    with_initializers,
)
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(7)

# Every supported element type, stored both as raw_data and in the typed field.
SAMPLES = {
    TensorProto.FLOAT: rng.standard_normal((2, 3)).astype(np.float32),
    TensorProto.FLOAT16: np.array([1.5, -2, 65504, -0.0], np.float16),
    TensorProto.DOUBLE: rng.standard_normal(4),
    TensorProto.INT8: np.array([-128, 0, 127], np.int8),
    TensorProto.UINT8: np.array([[0, 200, 255]], np.uint8),
    TensorProto.INT32: np.array([-(2**31), 5, 2**31 - 1], np.int32),
    TensorProto.INT64: np.array([-(2**63), 5, 2**63 - 1], np.int64),
    TensorProto.BOOL: np.array([True, False, True]),
}


def typed_tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    """A tensor whose values are in float_data / int32_data / ... rather than raw_data."""
    code = helper.np_dtype_to_tensor_dtype(array.dtype)
    return helper.make_tensor(name, code, array.shape, array.ravel().tolist(), raw=False)


def reference_model() -> onnx.ModelProto:
    """A model with a bit of everything the reader handles, valid for the ONNX checker."""
    initializers = [
        numpy_helper.from_array(value, f"raw_{code}") for code, value in SAMPLES.items()
    ]
    initializers += [typed_tensor(f"typed_{code}", value) for code, value in SAMPLES.items()]
    weight = rng.standard_normal((3, 4)).astype(np.float32)
    initializers.append(numpy_helper.from_array(weight, "weight"))
    nodes = [
        helper.make_node("Gemm", ["x", "weight"], ["linear"], name="gemm", alpha=0.5, transB=0),
        helper.make_node("Gelu", ["linear"], ["gelu"], name="gelu", approximate="tanh"),
        helper.make_node("Constant", [], ["shift"], value_floats=[0.25, 0.5, 0.75, 1.0]),
        helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(weight[0])),
        helper.make_node("Constant", [], ["axes"], value_ints=[1]),
        helper.make_node("Add", ["gelu", "shift"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "scale"], ["scaled"]),
        helper.make_node("ReduceSum", ["scaled", "axes"], ["y"], keepdims=1),
        helper.make_node("Cast", ["y"], ["y16"], to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "reference",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("y16", TensorProto.FLOAT16, [None, 1]),
        ],
        initializer=initializers,
        doc_string="graph doc",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 20)],
        ir_version=10,
        producer_name="the tests",
        producer_version="1.2",
        doc_string="model doc",
    )
    helper.set_model_props(model, {"mlmule.schema": '{"features": 3}', "author": "ünïcode"})
    onnx.checker.check_model(model, full_check=True)
    return model


def attribute_values(node: onnx.NodeProto) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, onnx.TensorProto):
            array = numpy_helper.to_array(value)
            value = (array.dtype, array.shape, array.tobytes())
        values[attribute.name] = (attribute.type, value)
    return values


def assert_same_model(ours: onnx.ModelProto, original: onnx.ModelProto) -> None:
    assert ours.ir_version == original.ir_version
    assert [(o.domain, o.version) for o in ours.opset_import] == [
        (o.domain, o.version) for o in original.opset_import
    ]
    assert (ours.producer_name, ours.producer_version, ours.doc_string) == (
        original.producer_name,
        original.producer_version,
        original.doc_string,
    )
    assert [(p.key, p.value) for p in ours.metadata_props] == [
        (p.key, p.value) for p in original.metadata_props
    ]
    assert ours.graph.name == original.graph.name
    assert list(ours.graph.input) == list(original.graph.input)
    assert list(ours.graph.output) == list(original.graph.output)
    assert len(ours.graph.node) == len(original.graph.node)
    for mine, theirs in zip(ours.graph.node, original.graph.node, strict=True):
        assert (mine.op_type, mine.domain, mine.name) == (
            theirs.op_type,
            theirs.domain,
            theirs.name,
        )
        assert (list(mine.input), list(mine.output)) == (list(theirs.input), list(theirs.output))
        assert attribute_values(mine) == attribute_values(theirs)
    assert [t.name for t in ours.graph.initializer] == [t.name for t in original.graph.initializer]
    for mine, theirs in zip(ours.graph.initializer, original.graph.initializer, strict=True):
        a, b = numpy_helper.to_array(mine), numpy_helper.to_array(theirs)
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes())  # bit-exact


def test_round_trip_preserves_graph_initializers_and_metadata() -> None:
    original = reference_model()
    model = load_model(original.SerializeToString())
    written = save_model(model)
    ours = onnx.load_from_string(written)
    onnx.checker.check_model(ours, full_check=True)
    assert_same_model(ours, original)
    assert model.metadata == {"mlmule.schema": '{"features": 3}', "author": "ünïcode"}
    for code, value in SAMPLES.items():
        for stored in ("raw", "typed"):
            array = model.initializers[f"{stored}_{code}"]
            assert array.dtype == value.dtype
            assert array.tobytes() == value.tobytes()
    # Writing what we read is a fixed point.
    assert save_model(load_model(written)) == written


def test_written_reference_model_runs_the_same_in_onnxruntime() -> None:
    original = reference_model()
    written = save_model(load_model(original.SerializeToString()))
    feeds = {"x": rng.standard_normal((5, 3)).astype(np.float32)}
    expected = ort.InferenceSession(original.SerializeToString()).run(None, feeds)
    actual = ort.InferenceSession(written).run(None, feeds)
    numpy_result = NumpyExecutor(load_model(written)).run(feeds)
    for want, got, name in zip(expected, actual, ("y", "y16"), strict=True):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(numpy_result[name], want, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(numpy_result["y"], expected[0], rtol=1e-5, atol=1e-5)


def test_every_attribute_kind_and_other_domains_survive_a_round_trip() -> None:
    node = helper.make_node(
        "Anything",
        ["x", ""],
        ["y"],
        domain="example.custom",
        name="custom",
        count=3,
        ratio=0.125,
        label="ünï",
        blob=b"\xff\x00binary",
        sizes=[1, -2, 3],
        weights=[0.5, -1.25],
        words=["a", "β"],
        table=numpy_helper.from_array(np.arange(6, dtype=np.int64).reshape(2, 3)),
    )
    graph = helper.make_graph(
        [node],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    original = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 3)],
        ir_version=8,
    )
    model = load_model(original.SerializeToString())
    assert model.extra_opsets == {"example.custom": 3}
    attributes = model.nodes[0].attributes
    assert attributes["label"] == "ünï"
    assert attributes["blob"] == b"\xff\x00binary"
    assert attributes["words"] == ["a", "β"]
    assert model.nodes[0].inputs == ("x", "")
    assert_same_model(onnx.load_from_string(save_model(model)), original)
    # Reading a model we cannot run is fine; running it is refused, naming the operator.
    with pytest.raises(UnsupportedOperatorError, match=r"example\.custom::Anything"):
        NumpyExecutor(model)


def hand_built_model() -> OnnxModel:
    """The kind of graph the canonical family builder writes, built with our own types."""
    return OnnxModel(
        nodes=(
            Node("Sub", ("x", "mean"), ("centred",)),
            Node("Div", ("centred", "std"), ("normalised",)),
            Node("Gemm", ("normalised", "w1", "b1"), ("h1",), {"transB": 1}, name="layer1"),
            Node("Relu", ("h1",), ("a1",)),
            Node("Flatten", ("a1",), ("flat",), {"axis": 1}),
            Node("Reshape", ("flat", "shape"), ("reshaped",)),
            Node("Identity", ("reshaped",), ("same",)),
            Node("Concat", ("same", "a1"), ("both",), {"axis": 1}),
            Node("Gemm", ("both", "w2"), ("logits",), {"alpha": 1.0, "beta": 1.0}),
            Node("Mul", ("logits", "scale"), ("scaled",)),
            Node("Add", ("scaled", "bias"), ("shifted",)),
            Node("Softmax", ("shifted",), ("probabilities",), {"axis": 1}),
            Node("Sigmoid", ("shifted",), ("gates",)),
        ),
        inputs=(ValueInfo("x", shape=("batch", 5)),),
        outputs=(
            ValueInfo("probabilities", shape=("batch", 3)),
            ValueInfo("gates", shape=("batch", 3)),
        ),
        initializers={
            "mean": rng.standard_normal(5).astype(np.float32),
            "std": rng.uniform(0.5, 2, 5).astype(np.float32),
            "w1": rng.standard_normal((4, 5)).astype(np.float32),
            "b1": rng.standard_normal(4).astype(np.float32),
            "shape": np.array([0, -1], np.int64),
            "w2": rng.standard_normal((8, 3)).astype(np.float32),
            "scale": np.float32(1.5).reshape(()),
            "bias": rng.standard_normal(3).astype(np.float32),
        },
        metadata={"mlmule.arch": "abc123"},
        producer_version="0.1.0",
    )


def test_our_writer_produces_checked_files_onnxruntime_runs() -> None:
    model = hand_built_model()
    data = save_model(model)
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    assert (proto.ir_version, proto.opset_import[0].version) == (8, 17)
    assert {p.key: p.value for p in proto.metadata_props} == {"mlmule.arch": "abc123"}
    feeds = {"x": rng.standard_normal((257, 5)).astype(np.float32)}
    expected = ort.InferenceSession(data).run(None, feeds)
    actual = NumpyExecutor(model).run(feeds)
    for want, name in zip(expected, ("probabilities", "gates"), strict=True):
        np.testing.assert_allclose(actual[name], want, rtol=1e-5, atol=1e-5)


def test_with_initializers_replaces_values_only() -> None:
    model = load_model(save_model(hand_built_model()))
    new_w1 = np.ones((4, 5), np.float32)
    updated = with_initializers(model, {"w1": new_w1})
    new_w1[0, 0] = 99  # the caller's array is copied, not shared
    assert updated.initializers["w1"].tolist() == np.ones((4, 5)).tolist()
    assert not updated.initializers["w1"].flags.writeable
    assert list(updated.initializers) == list(model.initializers)
    assert model.initializers["w1"].tolist() != updated.initializers["w1"].tolist()
    assert updated.nodes == model.nodes
    assert save_model(with_initializers(updated, {"w1": model.initializers["w1"]})) == save_model(
        model
    )


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"nope": np.zeros(3, np.float32)}, "no initializer named 'nope'"),
        ({"w1": np.zeros((5, 4), np.float32)}, "w1"),
        ({"w1": np.zeros((4, 5), np.float64)}, "float64"),
    ],
)
def test_with_initializers_refuses_unknown_names_and_other_layouts(
    weights: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(OnnxError, match=message):
        with_initializers(hand_built_model(), weights)


def test_initializers_read_from_a_file_are_read_only() -> None:
    model = load_model(reference_model().SerializeToString())
    assert all(not array.flags.writeable for array in model.initializers.values())


def test_unknown_fields_are_ignored() -> None:
    model = reference_model()
    model.graph.value_info.append(helper.make_tensor_value_info("linear", TensorProto.FLOAT, None))
    model.graph.node[0].metadata_props.add(key="origin", value="torch")
    model.training_info.add()
    unknown_field = bytes([0xB8, 0x3E, 0x2A])  # field 999, varint 42: in no ONNX version
    loaded = load_model(model.SerializeToString() + unknown_field)
    assert [node.op_type for node in loaded.nodes][:2] == ["Gemm", "Gelu"]


# ----------------------------------------------------------------------------- refusals


def tiny_model(**graph_changes: Any) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.zeros(2, np.float32), "w")],
    )
    for name, value in graph_changes.items():
        graph.ClearField(name)
        getattr(graph, name).extend(value)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def chain(length: int) -> onnx.ModelProto:
    names = ["x", *(f"v{i}" for i in range(length - 1)), "y"]
    nodes = [helper.make_node("Relu", [a], [b]) for a, b in itertools.pairwise(names)]
    return tiny_model(node=nodes)


def external_tensor() -> onnx.TensorProto:
    tensor = numpy_helper.from_array(np.zeros(2, np.float32), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="weights.bin")
    return tensor


def mislabelled_tensor(data_type: int, **fields: Any) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name="w", dims=[2], data_type=data_type)
    for name, value in fields.items():
        if isinstance(value, bytes):
            setattr(tensor, name, value)
        else:
            getattr(tensor, name).extend(value)
    return tensor


def if_node() -> onnx.NodeProto:
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])],
        "branch",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )
    return helper.make_node("If", ["x"], ["y"], then_branch=branch, else_branch=branch)


def with_model_change(change: str) -> onnx.ModelProto:
    model = tiny_model()
    if change == "no graph":
        model.ClearField("graph")
    elif change == "no default opset":
        model.opset_import[0].domain = "ai.onnx.ml"
    elif change == "no ir version":
        model.ir_version = 0
    elif change == "functions":
        model.functions.add(name="f", domain="local")
    elif change == "sparse initializer":
        model.graph.sparse_initializer.add().dims.append(2)
    elif change == "sequence input":
        model.graph.input[0].type.CopyFrom(
            helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2]))
        )
    elif change == "no shape":
        model.graph.output[0].type.tensor_type.ClearField("shape")
    elif change == "duplicate metadata":
        model.metadata_props.add(key="k", value="1")
        model.metadata_props.add(key="k", value="2")
    return model


@pytest.mark.parametrize(
    ("model", "error", "reason"),
    [
        pytest.param(chain(DEFAULT_LIMITS.max_depth + 1), GraphError, "onnx_bad_graph", id="deep"),
        pytest.param(
            tiny_model(
                node=[
                    helper.make_node("Add", ["x", "b"], ["a"]),
                    helper.make_node("Relu", ["a"], ["b"]),
                    helper.make_node("Relu", ["a"], ["y"]),
                ]
            ),
            GraphError,
            "onnx_bad_graph",
            id="cycle",
        ),
        pytest.param(
            tiny_model(node=[helper.make_node("Add", ["x", "missing"], ["y"])]),
            GraphError,
            "onnx_bad_graph",
            id="dangling-input",
        ),
        pytest.param(
            tiny_model(node=[helper.make_node("Relu", ["x"], ["z"])]),
            GraphError,
            "onnx_bad_graph",
            id="output-not-produced",
        ),
        pytest.param(
            tiny_model(node=[helper.make_node("Relu", ["x"], ["y"])] * 2),
            GraphError,
            "onnx_bad_graph",
            id="produced-twice",
        ),
        pytest.param(
            tiny_model(node=[helper.make_node("Relu", ["x"], ["w"])]),
            GraphError,
            "onnx_bad_graph",
            id="overwrites-initializer",
        ),
        pytest.param(
            chain(DEFAULT_LIMITS.max_nodes + 1), OnnxDecodeError, "onnx_too_large", id="nodes"
        ),
        pytest.param(
            tiny_model(
                initializer=[
                    numpy_helper.from_array(np.zeros(1, np.float32), f"w{i}")
                    for i in range(DEFAULT_LIMITS.max_initializers + 1)
                ]
            ),
            OnnxDecodeError,
            "onnx_too_large",
            id="initializers",
        ),
        pytest.param(
            tiny_model(
                initializer=[
                    onnx.TensorProto(name="w", dims=[2**20, 2**20], data_type=TensorProto.FLOAT)
                ]
            ),
            OnnxDecodeError,
            "onnx_too_large",
            id="tensor-elements",
        ),
        pytest.param(
            tiny_model(initializer=[external_tensor()]),
            OnnxDecodeError,
            "onnx_malformed",
            id="external-data",
        ),
        pytest.param(
            tiny_model(initializer=[mislabelled_tensor(TensorProto.STRING, string_data=[b"a"])]),
            OnnxDecodeError,
            "onnx_malformed",
            id="string-tensor",
        ),
        pytest.param(
            tiny_model(initializer=[mislabelled_tensor(TensorProto.BFLOAT16, int32_data=[1, 2])]),
            OnnxDecodeError,
            "onnx_malformed",
            id="bfloat16-tensor",
        ),
        pytest.param(
            tiny_model(initializer=[mislabelled_tensor(TensorProto.FLOAT, raw_data=b"\0" * 7)]),
            OnnxDecodeError,
            "onnx_malformed",
            id="short-raw-data",
        ),
        pytest.param(
            tiny_model(initializer=[mislabelled_tensor(TensorProto.FLOAT, float_data=[1.0])]),
            OnnxDecodeError,
            "onnx_malformed",
            id="too-few-values",
        ),
        pytest.param(
            tiny_model(initializer=[mislabelled_tensor(TensorProto.FLOAT, int64_data=[1, 2])]),
            OnnxDecodeError,
            "onnx_malformed",
            id="wrong-typed-field",
        ),
        pytest.param(
            tiny_model(initializer=[mislabelled_tensor(TensorProto.UINT8, int32_data=[1, 256])]),
            OnnxDecodeError,
            "onnx_malformed",
            id="out-of-range-value",
        ),
        pytest.param(
            tiny_model(
                initializer=[
                    mislabelled_tensor(TensorProto.FLOAT, raw_data=b"\0" * 8, float_data=[1, 2])
                ]
            ),
            OnnxDecodeError,
            "onnx_malformed",
            id="raw-and-typed",
        ),
        pytest.param(
            tiny_model(node=[if_node()]), OnnxDecodeError, "onnx_malformed", id="graph-attribute"
        ),
        *(
            pytest.param(with_model_change(change), OnnxDecodeError, "onnx_malformed", id=change)
            for change in (
                "no graph",
                "no default opset",
                "no ir version",
                "functions",
                "sparse initializer",
                "sequence input",
                "no shape",
                "duplicate metadata",
            )
        ),
    ],
)
def test_bad_models_raise_typed_errors(
    model: onnx.ModelProto, error: type[OnnxError], reason: str
) -> None:
    with pytest.raises(error) as caught:
        load_model(model.SerializeToString())
    assert caught.value.reason == reason


def test_the_executor_checks_models_built_in_code_too() -> None:
    """Limits do not depend on having come through load_model."""
    names = ["x", *(f"v{i}" for i in range(DEFAULT_LIMITS.max_depth)), "y"]
    deep = OnnxModel(
        nodes=tuple(Node("Relu", (a,), (b,)) for a, b in itertools.pairwise(names)),
        inputs=(ValueInfo("x", shape=(2,)),),
        outputs=(ValueInfo("y", shape=(2,)),),
        initializers={},
    )
    with pytest.raises(GraphError, match="deeper"):
        NumpyExecutor(deep)
    ring = dataclasses.replace(deep, nodes=(Node("Add", ("x", "y"), ("v0",)), *deep.nodes[1:]))
    with pytest.raises(GraphError, match="cycle"):
        NumpyExecutor(ring)


def test_deep_graphs_load_under_a_higher_depth_limit() -> None:
    depth = DEFAULT_LIMITS.max_depth + 1
    model = load_model(chain(depth).SerializeToString(), OnnxLimits(max_depth=depth))
    assert len(model.nodes) == depth


def test_nodes_out_of_file_order_are_run_in_dependency_order() -> None:
    nodes = [helper.make_node("Neg", ["a"], ["y"]), helper.make_node("Exp", ["x"], ["a"])]
    model = load_model(tiny_model(node=nodes).SerializeToString())
    x = np.float32([0.5, -1])
    np.testing.assert_allclose(NumpyExecutor(model).run({"x": x})["y"], -np.exp(x), rtol=1e-6)


def test_oversized_bytes_are_refused_before_parsing() -> None:
    with pytest.raises(OnnxDecodeError) as caught:
        load_model(b"\0" * 101, OnnxLimits(max_bytes=100))
    assert caught.value.reason == "onnx_too_large"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage, not protobuf \xff\xff\xff",
        bytes(range(256)),
        b"\xa3\x06" * 5000 + b"\xa4\x06" * 5000,  # unknown groups nested 5000 deep
        "text",
    ],
)
def test_garbage_is_refused(data: Any) -> None:
    with pytest.raises(OnnxDecodeError):
        load_model(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_files_raise_only_typed_errors(data: st.DataObject) -> None:
    """Truncations, bit flips and splices of a valid file load or raise an OnnxError."""
    original = save_model(hand_built_model())
    mutation = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    position = data.draw(st.integers(0, len(original) - 1))
    if mutation == "truncate":
        corrupted = original[:position]
    elif mutation == "flip":
        bit = data.draw(st.integers(0, 7))
        corrupted = original[:position] + bytes([original[position] ^ (1 << bit)])
        corrupted += original[position + 1 :]
    else:
        corrupted = original[:position] + data.draw(st.binary(max_size=16)) + original[position:]
    try:
        model = load_model(corrupted)
    except OnnxError:
        return
    save_model(model)  # whatever loads can be written back


def test_saving_an_invalid_graph_or_value_is_refused() -> None:
    model = hand_built_model()
    dangling = dataclasses.replace(model, nodes=(*model.nodes, Node("Relu", ("nowhere",), ("z",))))
    with pytest.raises(GraphError, match="nowhere"):
        save_model(dangling)
    complex_weights = {**model.initializers, "mean": np.zeros(5, np.complex64)}
    with pytest.raises(OnnxError, match="complex64"):
        save_model(dataclasses.replace(model, initializers=complex_weights))
    odd_attribute = Node("Relu", ("x",), ("z",), {"bad": {"a": 1}})  # type: ignore[dict-item]
    with pytest.raises(OnnxError, match="bad"):
        save_model(dataclasses.replace(model, nodes=(*model.nodes, odd_attribute)))
