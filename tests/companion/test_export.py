"""Export: torch's own exporter and our canonical builder compute the same function, and numpy,
our ONNX executor, onnxruntime and torch agree on every family within 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlmule_core.errors import NonCanonicalModel
from mlmule_core.families import FamilySpec, forward, from_onnx, init_weights
from mlmule_core.features import ACTIVITIES, FeatureSchema, phone_schema, room_schema
from mlmule_core.onnx import create_session, load_model
from mlmule_models.export import canonical_export, torch_export
from mlmule_models.families import FamilyModule


def normalised(schema: FeatureSchema, seed: int) -> FeatureSchema:
    frames = np.random.default_rng(seed).gamma(2.0, 3.0, size=(100, len(schema.features)))
    return schema.with_normalisation(frames)


ROOM = normalised(room_schema(window=(0, 5, 15)), 0)
PHONE = normalised(phone_schema(window=(0, 2)), 1)
CASES = {
    "occupancy": (
        FamilySpec(
            "occupancy-mlp", "occupancy", ROOM.n_inputs, (32, 16), 1, ("vacant", "occupied")
        ),
        ROOM,
    ),
    "activity": (
        FamilySpec("activity-mlp", "activity", ROOM.n_inputs, (48,), len(ACTIVITIES), ACTIVITIES),
        ROOM,
    ),
    "phone_activity": (
        FamilySpec(
            "activity-mlp",
            "phone_activity",
            PHONE.n_inputs,
            (16, 16, 8),
            len(ACTIVITIES),
            ACTIVITIES,
        ),
        PHONE,
    ),
}


def model_and_batch(
    name: str,
) -> tuple[FamilySpec, FeatureSchema, dict[str, np.ndarray], np.ndarray]:
    spec, schema = CASES[name]
    rng = np.random.default_rng(len(name))
    weights = init_weights(spec, rng, schema)
    for key in weights:
        if key.endswith(".bias"):
            weights[key] = rng.normal(scale=0.3, size=weights[key].shape).astype(np.float32)
    if spec.binary:
        weights["calib.scale"] = np.array([1.4], np.float32)
        weights["calib.bias"] = np.array([-0.2], np.float32)
    mean, std = np.tile(schema.mean, len(schema.window)), np.tile(schema.std, len(schema.window))
    x = (mean + std * rng.normal(scale=1.5, size=(257, spec.n_inputs))).astype(np.float32)
    return spec, schema, weights, x


@pytest.mark.parametrize("name", CASES)
def test_numpy_executor_onnxruntime_and_torch_agree(name: str) -> None:
    spec, schema, weights, x = model_and_batch(name)
    data = canonical_export(spec, weights, schema)
    reference = forward(spec, weights, x)
    with torch.no_grad():
        from_torch = FamilyModule.from_weights(spec, weights)(torch.from_numpy(x)).numpy()
    outputs = {"torch": from_torch}
    for backend in ("numpy", "onnxruntime"):
        session = create_session(data, backend=backend)
        assert session.backend == backend
        outputs[backend] = session.run({"features": x})["probability"]
    for source, output in outputs.items():
        assert output.shape == (257, spec.n_classes), source
        np.testing.assert_allclose(output, reference, atol=1e-5, err_msg=source)
    # Not a degenerate model: the probabilities actually vary across the batch.
    assert float(reference.std(axis=0).max()) > 0.05


@pytest.mark.parametrize("name", CASES)
def test_torch_onnx_export_runs_like_the_canonical_graph(name: str) -> None:
    spec, schema, weights, x = model_and_batch(name)
    exported = torch_export(FamilyModule.from_weights(spec, weights))
    model = load_model(exported)
    assert [value.name for value in model.inputs] == ["features"]
    assert [value.name for value in model.outputs] == ["probability"]
    canonical = canonical_export(spec, weights, schema)
    expected = create_session(canonical, backend="onnxruntime").run({"features": x})["probability"]
    for backend in ("numpy", "onnxruntime"):
        got = create_session(model, backend=backend).run({"features": x})["probability"]
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=backend)
    # Torch's graph carries no family metadata, so it can never be merged as a snapshot.
    with pytest.raises(NonCanonicalModel):
        from_onnx(model)


def test_canonical_export_is_deterministic_and_reads_back() -> None:
    spec, schema, weights, _ = model_and_batch("occupancy")
    first = canonical_export(spec, weights, schema, {"mlmule.note": "x"})
    assert canonical_export(spec, weights, schema, {"mlmule.note": "x"}) == first
    got_spec, got_schema, got_weights = from_onnx(load_model(first))
    assert (got_spec, got_schema) == (spec, schema)
    assert all(np.array_equal(got_weights[k], weights[k]) for k in weights)
