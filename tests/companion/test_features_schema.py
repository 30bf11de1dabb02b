"""The feature schema that travels with every model: JSON, hash, validation, normalisation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
from mlmule_core.errors import FeatureSchemaMismatch
from mlmule_core.features import (
    PHONE_FEATURES,
    ROOM_FEATURES,
    FeatureSchema,
    normalise,
    phone_schema,
    room_schema,
    window_frames,
)


def trained_schema() -> FeatureSchema:
    rng = np.random.default_rng(0)
    frames = rng.normal(3.0, 2.0, size=(500, len(ROOM_FEATURES))).astype(np.float32)
    return room_schema(window=(0, 5, 15)).with_normalisation(frames)


def test_json_round_trip_is_exact_and_the_hash_stable() -> None:
    schema = trained_schema()
    text = schema.to_json()
    again = FeatureSchema.from_json(text)
    assert again == schema
    assert again.to_json() == text
    assert again.schema_hash() == schema.schema_hash()
    assert schema.schema_hash() == hashlib.sha256(text.encode()).hexdigest()
    assert FeatureSchema.from_json(text.encode()) == schema
    # canonical: sorted keys, no spaces
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def test_a_schema_with_other_inputs_or_normalisation_has_another_hash() -> None:
    base = trained_schema()
    variants = [
        replace(base, features=(*base.features[:-1], "something_else")),
        replace(base, mean=(base.mean[0] + 1e-9, *base.mean[1:])),
        replace(base, std=(*base.std[:-1], base.std[-1] * 2)),
        replace(base, window=(0, 5)),
        replace(base, step_seconds=300),
        replace(base, name="room-v2"),
    ]
    hashes = {base.schema_hash(), *(v.schema_hash() for v in variants)}
    assert len(hashes) == len(variants) + 1


def test_starter_schemas_list_the_extractor_features() -> None:
    assert room_schema().features == ROOM_FEATURES
    assert phone_schema().features == PHONE_FEATURES
    assert room_schema(window=(0, 5, 15)).n_inputs == 3 * len(ROOM_FEATURES)
    assert room_schema().schema_hash() != phone_schema().schema_hash()


GOOD = json.loads(room_schema().to_json())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"name": "room-v1"}',
        json.dumps({**GOOD, "extra": 1}),
        json.dumps({**GOOD, "name": ""}),
        json.dumps({**GOOD, "name": 5}),
        json.dumps({**GOOD, "features": "co2"}),
        json.dumps({**GOOD, "features": [*GOOD["features"][:-1], GOOD["features"][0]]}),
        json.dumps({**GOOD, "mean": GOOD["mean"][:-1]}),
        json.dumps({**GOOD, "mean": [True] * len(GOOD["mean"])}),
        json.dumps({**GOOD, "std": [0.0] * len(GOOD["std"])}),
        json.dumps({**GOOD, "std": ["1"] * len(GOOD["std"])}),
        json.dumps({**GOOD, "window": []}),
        json.dumps({**GOOD, "window": [5, 0]}),
        json.dumps({**GOOD, "window": [0, 0]}),
        json.dumps({**GOOD, "window": [True]}),
        json.dumps({**GOOD, "window": [0.0]}),
        json.dumps({**GOOD, "window": [100_000]}),
        json.dumps({**GOOD, "step_seconds": 7}),
        json.dumps({**GOOD, "step_seconds": 60.0}),
        room_schema().to_json().replace('"mean":[0.0', '"mean":[NaN'),
        room_schema().to_json().replace('"std":[1.0', '"std":[Infinity'),
        " " * (1 << 21),
    ],
)
def test_from_json_rejects_anything_but_a_well_formed_schema(text: str) -> None:
    with pytest.raises(FeatureSchemaMismatch) as err:
        FeatureSchema.from_json(text)
    assert err.value.reason == "schema_mismatch"


def test_normalisation_standardises_the_training_frames() -> None:
    rng = np.random.default_rng(1)
    frames = rng.normal(5.0, 3.0, size=(2000, len(ROOM_FEATURES))).astype(np.float32)
    frames[:, 7] = 1.0  # a flag that never changes in this home
    schema = room_schema(window=(0, 5)).with_normalisation(frames)
    assert schema.std[7] == 1.0
    base = normalise(schema, frames)
    varying = np.arange(frames.shape[1]) != 7
    np.testing.assert_allclose(base[:, varying].mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(base[:, varying].std(axis=0), 1.0, atol=1e-4)
    assert (base[:, 7] == 0.0).all()
    windowed = normalise(schema, window_frames(frames, schema.window))
    np.testing.assert_allclose(windowed[:, : frames.shape[1]], base, atol=1e-6)
    np.testing.assert_allclose(windowed[10:, frames.shape[1] :], base[5:-5], atol=1e-6)


def test_normalise_refuses_inputs_of_another_width() -> None:
    schema = room_schema(window=(0, 5))
    with pytest.raises(FeatureSchemaMismatch):
        normalise(schema, np.zeros((3, len(ROOM_FEATURES) + 1), dtype=np.float32))
    with pytest.raises(FeatureSchemaMismatch):
        schema.with_normalisation(np.zeros((3, 4), dtype=np.float32))
