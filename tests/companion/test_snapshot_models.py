"""ONNX models built with the real `onnx.helper`, for the snapshot tests, and checks that they are
what they claim: valid for the ONNX checker and runnable in onnxruntime."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from mlmule_core import families
from mlmule_core.features import FeatureSchema
from mlmule_core.onnx import save_model
from onnx import TensorProto, helper, numpy_helper

OCCUPANCY_SHAPE = (32, 32, 16, 1)
ACTIVITY_SHAPE = (96, 64, 32, 8)


def mlp(
    sizes: Sequence[int] = OCCUPANCY_SHAPE,
    *,
    seed: int = 0,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """An MLP shaped like ours: Gemm(transB=1)+Relu per hidden layer, then a sigmoid (one
    output) or a softmax head, with weights `[out, in]` and biases."""
    rng = np.random.default_rng(seed)
    nodes = []
    initializers = []
    previous = "features"
    for index, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layer = f"body.{index}" if index < len(sizes) - 2 else "head"
        weight = rng.normal(0, 1 / np.sqrt(n_in), (n_out, n_in)).astype(np.float32)
        bias = rng.normal(0, 0.1, n_out).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"{layer}.weight"),
            numpy_helper.from_array(bias, f"{layer}.bias"),
        ]
        output = f"{layer}.linear"
        nodes.append(
            helper.make_node(
                "Gemm", [previous, f"{layer}.weight", f"{layer}.bias"], [output], transB=1
            )
        )
        if layer != "head":
            nodes.append(helper.make_node("Relu", [output], [f"{layer}.relu"]))
            previous = f"{layer}.relu"
    if sizes[-1] == 1:
        nodes.append(helper.make_node("Sigmoid", ["head.linear"], ["probability"]))
    else:
        nodes.append(helper.make_node("Softmax", ["head.linear"], ["probability"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if metadata:
        helper.set_model_props(model, dict(metadata))
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass(frozen=True)
class Canonical:
    """A canonical model of a family, as mlmule exports it, with what a header says about it."""

    onnx_bytes: bytes
    task: str
    context_key: str
    arch_hash: str
    schema_hash: str


def canonical(sizes: Sequence[int] = OCCUPANCY_SHAPE, *, seed: int = 0) -> Canonical:
    """The canonical family model of an MLP shape: occupancy when it has one output, else
    activity, with a feature schema whose normalisation is not the identity."""
    n_inputs, *hidden, n_outputs = sizes
    if n_outputs == 1:
        spec = families.FamilySpec(
            families.OCCUPANCY_MLP, "occupancy", n_inputs, tuple(hidden), 1, ("clear", "occupied")
        )
        context_key = "occupancy/bedroom"
    else:
        labels = tuple(f"activity_{i}" for i in range(n_outputs))
        spec = families.FamilySpec(
            families.ACTIVITY_MLP, "activity", n_inputs, tuple(hidden), n_outputs, labels
        )
        context_key = "activity/kitchen"
    # The schema (and so the architecture) depends on the shape only; the weights on the seed.
    statistics = np.random.default_rng(n_inputs)
    schema = FeatureSchema(
        name=f"test-{n_inputs}",
        features=tuple(f"sensor_{i}" for i in range(n_inputs)),
        mean=tuple(statistics.normal(0, 3, n_inputs).tolist()),
        std=tuple(statistics.uniform(0.5, 2, n_inputs).tolist()),
    )
    rng = np.random.default_rng(seed)
    weights = families.init_weights(spec, rng, schema)
    for name in weights:
        if name.endswith(".bias"):  # trained models have non-zero biases
            weights[name] = rng.normal(0, 0.1, weights[name].shape).astype(np.float32)
    model = families.build_onnx(spec, weights, schema)
    return Canonical(
        save_model(model),
        spec.task,
        context_key,
        families.arch_hash(spec, schema),
        schema.schema_hash(),
    )


def run(onnx_bytes: bytes, features: np.ndarray) -> np.ndarray:
    """The model's output for `features`, computed by onnxruntime."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"features": features.astype(np.float32)})
    return np.asarray(output)


def initializers_of(onnx_bytes: bytes) -> dict[str, np.ndarray]:
    model = onnx.load_from_string(onnx_bytes)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_the_models_pass_the_onnx_checker_and_run() -> None:
    for sizes in (OCCUPANCY_SHAPE, ACTIVITY_SHAPE):
        for data in (mlp(sizes, metadata={"k": "v"}), canonical(sizes).onnx_bytes):
            onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
            out = run(data, np.ones((5, sizes[0]), np.float32))
            assert out.shape == (5, sizes[-1])
            assert np.all((out > 0) & (out < 1))
    assert mlp(seed=1) != mlp(seed=2)
    assert canonical(seed=1).arch_hash == canonical(seed=2).arch_hash
    assert canonical(seed=1).onnx_bytes != canonical(seed=2).onnx_bytes
