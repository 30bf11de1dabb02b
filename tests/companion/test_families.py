"""Model families: specs, the canonical parameter layout, the numpy forward and the arch hash."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from mlmule_core.errors import FamilyError
from mlmule_core.families import (
    FamilySpec,
    arch_hash,
    build_onnx,
    check_weights,
    forward,
    init_weights,
    input_normalisation,
    logits,
    parameter_shapes,
    predict_classes,
    shared_names,
    sigmoid,
    trainable_names,
)
from mlmule_core.features import ACTIVITIES, phone_schema, room_schema
from mlmule_models.families import FamilyModule

ROOM = room_schema(window=(0, 5, 15))
OCCUPANCY = FamilySpec(
    "occupancy-mlp", "occupancy", ROOM.n_inputs, (32, 16), 1, ("vacant", "occupied")
)
ACTIVITY = FamilySpec("activity-mlp", "activity", ROOM.n_inputs, (48,), len(ACTIVITIES), ACTIVITIES)
PHONE = phone_schema()
PHONE_ACTIVITY = FamilySpec(
    "activity-mlp", "phone_activity", PHONE.n_inputs, (), len(ACTIVITIES), ACTIVITIES
)


def normalised_schema(seed: int = 0) -> object:
    rng = np.random.default_rng(seed)
    frames = rng.normal(5.0, 2.0, size=(50, len(ROOM.features))).astype(np.float32)
    return ROOM.with_normalisation(frames)


def test_spec_json_round_trip() -> None:
    for spec in (
        OCCUPANCY,
        ACTIVITY,
        PHONE_ACTIVITY,
        dataclasses.replace(OCCUPANCY, personal_head=True),
    ):
        assert FamilySpec.from_json(spec.to_json()) == spec


INVALID_SPECS = {
    "unknown family": {"family": "cnn"},
    "task of another family": {"task": "activity"},
    "zero inputs": {"n_inputs": 0},
    "too many inputs": {"n_inputs": 10**6},
    "boolean inputs": {"n_inputs": True},
    "list hidden": {"hidden": [8]},
    "zero width": {"hidden": (8, 0)},
    "huge width": {"hidden": (10**5,)},
    "too deep": {"hidden": (4,) * 20},
    "binary with classes": {"n_classes": 2},
    "one label": {"labels": ("occupied",)},
    "repeated labels": {"labels": ("x", "x")},
    "empty label": {"labels": ("", "x")},
    "personal head not bool": {"personal_head": 1},
}


@pytest.mark.parametrize("changes", INVALID_SPECS.values(), ids=INVALID_SPECS.keys())
def test_invalid_specs_are_refused(changes: dict[str, object]) -> None:
    fields = dataclasses.asdict(OCCUPANCY) | changes
    with pytest.raises(FamilyError):
        FamilySpec(**fields)  # type: ignore[arg-type]


def test_multiclass_needs_matching_labels() -> None:
    with pytest.raises(FamilyError):
        dataclasses.replace(ACTIVITY, n_classes=1)
    with pytest.raises(FamilyError):
        dataclasses.replace(ACTIVITY, labels=ACTIVITIES[:-1])


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"family": "occupancy-mlp"}),
        OCCUPANCY.to_json().replace('"hidden":[32,16]', '"hidden":"32"'),
        OCCUPANCY.to_json().replace("}", ',"extra":1}'),
        OCCUPANCY.to_json().replace('"hidden":[32,16]', '"hidden":[32.5]'),
        " " * 20_000,
    ],
    ids=["garbage", "array", "missing keys", "string hidden", "extra key", "float width", "huge"],
)
def test_malformed_spec_json_is_refused(text: str) -> None:
    with pytest.raises(FamilyError):
        FamilySpec.from_json(text)


@pytest.mark.parametrize("spec", [OCCUPANCY, ACTIVITY, PHONE_ACTIVITY], ids=lambda s: s.task)
def test_layout_is_the_torch_state_dict(spec: FamilySpec) -> None:
    state = FamilyModule(spec).state_dict()
    shapes = parameter_shapes(spec)
    assert list(state) == list(shapes)
    assert {name: tuple(value.shape) for name, value in state.items()} == shapes
    assert set(trainable_names(spec)) == {name for name, _ in FamilyModule(spec).named_parameters()}


def test_shared_names_leave_out_frozen_calibration_and_personal_head() -> None:
    assert shared_names(OCCUPANCY) == {
        "body.0.weight",
        "body.0.bias",
        "body.1.weight",
        "body.1.bias",
        "head.weight",
        "head.bias",
    }
    personal = dataclasses.replace(OCCUPANCY, personal_head=True)
    assert shared_names(personal) == {
        "body.0.weight",
        "body.0.bias",
        "body.1.weight",
        "body.1.bias",
    }
    assert trainable_names(personal) == trainable_names(OCCUPANCY)
    # A head-only model with a personal head shares nothing: all it has is personal.
    assert shared_names(dataclasses.replace(PHONE_ACTIVITY, personal_head=True)) == frozenset()


def test_init_weights_takes_the_schema_normalisation_per_lag() -> None:
    schema = normalised_schema()
    weights = init_weights(OCCUPANCY, np.random.default_rng(3), schema)
    check_weights(OCCUPANCY, weights)
    n = len(schema.features)
    for lag in range(3):
        np.testing.assert_array_equal(
            weights["input.mean"][lag * n : (lag + 1) * n], np.float32(schema.mean)
        )
    _, std = input_normalisation(schema)
    np.testing.assert_array_equal(weights["input.std"], std)
    assert weights["calib.scale"][0] == 1.0
    assert weights["calib.bias"][0] == 0.0
    again = init_weights(OCCUPANCY, np.random.default_rng(3), schema)
    assert all(np.array_equal(weights[name], again[name]) for name in weights)
    other = init_weights(OCCUPANCY, np.random.default_rng(4), schema)
    assert not np.array_equal(weights["body.0.weight"], other["body.0.weight"])


def test_init_scale_keeps_activations_alive() -> None:
    rng = np.random.default_rng(0)
    deep = FamilySpec("occupancy-mlp", "occupancy", 64, (64, 64, 64, 64), 1, ("n", "y"))
    weights = init_weights(deep, rng)
    x = rng.normal(size=(2000, 64)).astype(np.float32)
    raw = logits(deep, weights, x, calibrated=False)
    # He initialisation: the output neither vanishes nor explodes through four ReLU layers.
    assert 0.2 < float(raw.std()) < 5.0


def test_check_weights_refuses_bad_layouts() -> None:
    good = init_weights(OCCUPANCY, np.random.default_rng(0))
    reordered = dict(reversed(list(good.items())))
    wrong_dtype = good | {"head.bias": good["head.bias"].astype(np.float64)}
    wrong_shape = good | {"head.weight": good["head.weight"].T.copy()}
    non_finite = good | {"body.0.bias": np.full_like(good["body.0.bias"], np.nan)}
    zero_std = good | {"input.std": np.zeros_like(good["input.std"])}
    missing = {name: value for name, value in good.items() if name != "calib.bias"}
    for bad, reason in [
        (reordered, "weights_layout"),
        (wrong_dtype, "weights_layout"),
        (wrong_shape, "weights_layout"),
        (non_finite, "weights_non_finite"),
        (zero_std, "weights_layout"),
        (missing, "weights_layout"),
    ]:
        with pytest.raises(FamilyError) as caught:
            check_weights(OCCUPANCY, bad)
        assert caught.value.reason == reason


@pytest.mark.parametrize("spec", [OCCUPANCY, ACTIVITY, PHONE_ACTIVITY], ids=lambda s: s.task)
def test_numpy_forward_equals_torch(spec: FamilySpec) -> None:
    rng = np.random.default_rng(1)
    weights = init_weights(spec, rng)
    weights["input.mean"] = rng.normal(size=spec.n_inputs).astype(np.float32)
    weights["input.std"] = rng.uniform(0.5, 3, size=spec.n_inputs).astype(np.float32)
    if spec.binary:
        weights["calib.scale"] = np.array([0.7], np.float32)
        weights["calib.bias"] = np.array([0.4], np.float32)
    x = rng.normal(scale=3.0, size=(64, spec.n_inputs)).astype(np.float32)
    ours = forward(spec, weights, x)
    with torch.no_grad():
        theirs = FamilyModule.from_weights(spec, weights)(torch.from_numpy(x)).numpy()
    assert ours.shape == (64, spec.n_classes)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    if not spec.binary:
        np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-6)


def test_binary_probability_is_platt_scaled() -> None:
    rng = np.random.default_rng(2)
    weights = init_weights(OCCUPANCY, rng)
    x = rng.normal(size=(10, OCCUPANCY.n_inputs)).astype(np.float32)
    raw = logits(OCCUPANCY, weights, x, calibrated=False)
    weights["calib.scale"] = np.array([2.0], np.float32)
    weights["calib.bias"] = np.array([-1.0], np.float32)
    expected = 1.0 / (1.0 + np.exp(-(2.0 * raw - 1.0)))
    np.testing.assert_allclose(forward(OCCUPANCY, weights, x), expected, rtol=1e-5)
    predicted = predict_classes(OCCUPANCY, forward(OCCUPANCY, weights, x))
    np.testing.assert_array_equal(predicted, (2.0 * raw[:, 0] - 1.0 >= 0).astype(np.int64))


def test_sigmoid_is_stable_at_extremes() -> None:
    values = sigmoid(np.array([[-1e4], [-50.0], [0.0], [50.0], [1e4]], np.float32))
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values[:, 0], [0.0, 1.9287e-22, 0.5, 1.0, 1.0], rtol=1e-4)


def test_forward_refuses_wrong_feature_width() -> None:
    weights = init_weights(OCCUPANCY, np.random.default_rng(0))
    with pytest.raises(FamilyError) as caught:
        forward(OCCUPANCY, weights, np.zeros((3, OCCUPANCY.n_inputs + 1), np.float32))
    assert caught.value.reason == "bad_input_shape"


def test_arch_hash_follows_structure_not_values() -> None:
    schema = normalised_schema()
    base = arch_hash(OCCUPANCY, schema)
    assert len(base) == 64
    assert arch_hash(OCCUPANCY, schema) == base
    # The personal head changes what is shared, not what is computed.
    assert arch_hash(dataclasses.replace(OCCUPANCY, personal_head=True), schema) == base
    different = {
        arch_hash(dataclasses.replace(OCCUPANCY, hidden=(32, 8)), schema),
        arch_hash(dataclasses.replace(OCCUPANCY, labels=("empty", "occupied")), schema),
        arch_hash(OCCUPANCY, normalised_schema(seed=1)),
        arch_hash(ACTIVITY, schema),
    }
    assert base not in different
    assert len(different) == 4
    with pytest.raises(FamilyError) as caught:
        arch_hash(PHONE_ACTIVITY, schema)
    assert caught.value.reason == "schema_mismatch"


def test_build_refuses_inconsistent_inputs() -> None:
    schema = normalised_schema()
    weights = init_weights(OCCUPANCY, np.random.default_rng(0), schema)
    identity = init_weights(OCCUPANCY, np.random.default_rng(0))
    with pytest.raises(FamilyError) as caught:
        build_onnx(OCCUPANCY, identity, schema)
    assert caught.value.reason == "schema_mismatch"
    with pytest.raises(FamilyError) as caught:
        build_onnx(OCCUPANCY, weights, schema, {"mlmule.arch_hash": "forged"})
    assert caught.value.reason == "metadata"
    with pytest.raises(FamilyError):
        build_onnx(ACTIVITY, weights, schema)
