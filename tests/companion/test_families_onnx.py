"""The canonical ONNX graph: onnx and onnxruntime accept it, it reads back, tampering is refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlmule_core.errors import NonCanonicalModel
from mlmule_core.families import (
    META_ARCH_HASH,
    META_LABELS,
    META_SPEC,
    FamilySpec,
    build_onnx,
    forward,
    from_onnx,
    init_weights,
)
from mlmule_core.features import ACTIVITIES, FeatureSchema, phone_schema, room_schema
from mlmule_core.onnx import Node, OnnxModel, ValueInfo, load_model, save_model


def room(seed: int = 0) -> FeatureSchema:
    rng = np.random.default_rng(seed)
    base = room_schema(window=(0, 10))
    return base.with_normalisation(rng.normal(3.0, 2.0, size=(40, len(base.features))))


SCHEMA = room()
OCCUPANCY = FamilySpec(
    "occupancy-mlp", "occupancy", SCHEMA.n_inputs, (16, 8), 1, ("vacant", "occupied")
)
ACTIVITY = FamilySpec(
    "activity-mlp", "activity", SCHEMA.n_inputs, (24,), len(ACTIVITIES), ACTIVITIES
)


def trained_looking(
    spec: FamilySpec, schema: FeatureSchema, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = init_weights(spec, rng, schema)
    for name in weights:
        if name.endswith(".bias"):
            weights[name] = rng.normal(scale=0.2, size=weights[name].shape).astype(np.float32)
    if spec.binary:
        weights["calib.scale"] = np.array([1.3], np.float32)
    return weights


@pytest.mark.parametrize("spec", [OCCUPANCY, ACTIVITY], ids=["binary", "multi"])
def test_round_trip_through_bytes(spec: FamilySpec) -> None:
    weights = trained_looking(spec, SCHEMA)
    data = save_model(build_onnx(spec, weights, SCHEMA, {"mlmule.space": "kitchen-1"}))
    model = load_model(data)
    got_spec, got_schema, got_weights = from_onnx(model)
    assert got_spec == spec
    assert got_schema == SCHEMA
    assert list(got_weights) == list(weights)
    for name in weights:
        np.testing.assert_array_equal(got_weights[name], weights[name])
    assert model.metadata["mlmule.space"] == "kitchen-1"
    assert json.loads(model.metadata[META_LABELS]) == list(spec.labels)
    assert model.opset == 17


@pytest.mark.parametrize("spec", [OCCUPANCY, ACTIVITY], ids=["binary", "multi"])
def test_onnx_checker_and_onnxruntime_accept_the_graph(spec: FamilySpec) -> None:
    weights = trained_looking(spec, SCHEMA)
    data = save_model(build_onnx(spec, weights, SCHEMA))
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    output_dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in output_dims] == ["batch", spec.n_classes]
    x = np.random.default_rng(5).normal(3.0, 4.0, size=(17, spec.n_inputs)).astype(np.float32)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (result,) = session.run(["probability"], {"features": x})
    np.testing.assert_allclose(result, forward(spec, weights, x), atol=1e-6)


def test_phone_family_without_hidden_layers_exports() -> None:
    schema = phone_schema().with_normalisation(np.random.default_rng(1).uniform(size=(30, 12)))
    spec = FamilySpec("activity-mlp", "phone_activity", schema.n_inputs, (), 9, ACTIVITIES)
    weights = trained_looking(spec, schema)
    data = save_model(build_onnx(spec, weights, schema))
    assert from_onnx(load_model(data))[0] == spec
    x = np.random.default_rng(2).uniform(size=(4, spec.n_inputs)).astype(np.float32)
    (result,) = ort.InferenceSession(data).run(None, {"features": x})
    np.testing.assert_allclose(result, forward(spec, weights, x), atol=1e-6)


def canonical() -> OnnxModel:
    return build_onnx(OCCUPANCY, trained_looking(OCCUPANCY, SCHEMA), SCHEMA)


def replace_node(model: OnnxModel, index: int, **changes: object) -> OnnxModel:
    nodes = list(model.nodes)
    nodes[index] = dataclasses.replace(nodes[index], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(model, nodes=tuple(nodes))


def tampered() -> dict[str, OnnxModel]:
    model = canonical()
    metadata = dict(model.metadata)
    spec_json = json.loads(metadata[META_SPEC])
    wider = dict(spec_json, hidden=[16, 9])
    relu = next(i for i, node in enumerate(model.nodes) if node.op_type == "Relu")
    return {
        "relu became sigmoid": replace_node(model, relu, op_type="Sigmoid"),
        "normalisation skipped": replace_node(
            model, 2, inputs=("features", "body.0.weight", "body.0.bias")
        ),
        "extra attribute": replace_node(model, 2, attributes={"transB": 1, "alpha": 2.0}),
        "tensor attribute": replace_node(model, 2, attributes={"transB": np.ones(2, np.float32)}),
        "extra node": dataclasses.replace(
            model,
            nodes=(*model.nodes, Node("Identity", ("probability",), ("copy",), {})),
        ),
        "renamed output": dataclasses.replace(
            model, outputs=(ValueInfo("prob", shape=("batch", 1)),)
        ),
        "fixed batch": dataclasses.replace(
            model, inputs=(ValueInfo("features", shape=(1, OCCUPANCY.n_inputs)),)
        ),
        "other opset": dataclasses.replace(model, opset=13),
        "foreign opset": dataclasses.replace(model, extra_opsets={"com.microsoft": 1}),
        "no spec": dataclasses.replace(
            model, metadata={k: v for k, v in metadata.items() if k != META_SPEC}
        ),
        "forged hash": dataclasses.replace(model, metadata=metadata | {META_ARCH_HASH: "0" * 64}),
        "spec disagrees with shapes": dataclasses.replace(
            model, metadata=metadata | {META_SPEC: json.dumps(wider)}
        ),
        "labels disagree": dataclasses.replace(
            model, metadata=metadata | {META_LABELS: '["a","b"]'}
        ),
        "extra initializer": dataclasses.replace(
            model, initializers=dict(model.initializers) | {"spare": np.zeros(3, np.float32)}
        ),
        "float64 weights": dataclasses.replace(
            model,
            initializers=dict(model.initializers) | {"head.bias": np.zeros(1, np.float64)},
        ),
        "normalisation not the schema's": dataclasses.replace(
            model,
            initializers=dict(model.initializers)
            | {"input.mean": np.zeros(OCCUPANCY.n_inputs, np.float32)},
        ),
        "non-finite weights": dataclasses.replace(
            model,
            initializers=dict(model.initializers) | {"head.bias": np.array([np.inf], np.float32)},
        ),
    }


TAMPERED = tampered()


@pytest.mark.parametrize("name", TAMPERED)
def test_non_canonical_models_are_refused(name: str) -> None:
    with pytest.raises(NonCanonicalModel) as caught:
        from_onnx(TAMPERED[name])
    assert caught.value.reason == "non_canonical"


def test_the_unmodified_model_is_accepted() -> None:
    # The tampering fixtures start from this model, so their refusals are due to the change.
    assert from_onnx(canonical())[0] == OCCUPANCY
