"""The HA-free space logic: labels from presence, training sets, live rows, holds and 'why'."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlmule_core.features import ROOM_FEATURES, SensorRole, room_schema
from mlmule_core.space import (
    SpaceConfigError,
    SpaceInputs,
    activity_value,
    current_features,
    explain,
    held,
    occupancy_labels_at,
    occupancy_value,
    training_set,
    unavailable_fraction,
)

T0 = 1_790_000_040.0  # on the minute grid
INPUTS = SpaceInputs(
    roles={"binary_sensor.motion": SensorRole.MOTION, "sensor.tv_power": SensorRole.POWER},
    occupancy_labels=("sensor.alice_room", "sensor.bob_room"),
    occupancy_label_state="Bedroom",
    activity_label="input_select.activity",
    hold_only=frozenset({"sensor.tv_power"}),
)


def test_label_state_values() -> None:
    assert occupancy_value("bedroom", "Bedroom") == 1.0
    assert occupancy_value("kitchen", "Bedroom") == 0.0
    assert occupancy_value("home", None) == 1.0
    assert occupancy_value("not_home", None) == 0.0
    assert math.isnan(occupancy_value("unavailable", "Bedroom"))
    assert activity_value("Watching TV") == 4.0
    assert math.isnan(activity_value("dancing"))


def test_any_present_source_means_occupied_and_unknown_stays_unknown() -> None:
    changes = {
        "sensor.alice_room": [(T0, "kitchen"), (T0 + 600, "bedroom")],
        "sensor.bob_room": [(T0, "unavailable"), (T0 + 300, "office")],
    }
    times = np.array([T0 - 1, T0 + 100, T0 + 400, T0 + 700])
    labels = occupancy_labels_at(INPUTS, changes, times)
    assert math.isnan(labels[0])  # before any state
    assert math.isnan(labels[1])  # alice away from it, bob unknown
    assert labels[2] == 0.0  # both known, neither here
    assert labels[3] == 1.0  # alice here


def test_training_set_drops_unlabelled_frames_and_learns_from_motion() -> None:
    motion = []
    alice = [(T0 - 3600, "kitchen")]
    for hour in range(24):
        start = T0 + hour * 3600
        if hour % 2:
            alice.append((start, "bedroom"))
            motion += [(start + m * 60, "on" if m % 4 == 0 else "off") for m in range(60)]
        else:
            alice.append((start, "kitchen"))
            motion.append((start, "off"))
    changes = {
        "binary_sensor.motion": motion,
        "sensor.alice_room": alice,
        "sensor.bob_room": [(T0 - 3600, "office")],
        "sensor.tv_power": [(T0 - 3600, "3.0")],
    }
    data = training_set(
        INPUTS, changes, task="occupancy", schema=room_schema(), start=T0, end=T0 + 24 * 3600
    )
    assert data.x.shape == (24 * 60, len(ROOM_FEATURES))
    assert data.y.mean() == pytest.approx(0.5, abs=0.01)
    counts = data.x[:, ROOM_FEATURES.index("motion_count_15m")]
    assert counts[data.y == 1].mean() > counts[data.y == 0].mean() + 1
    assert data.data_time == T0 + 24 * 3600
    # the activity label source never said anything: no frames
    assert (
        training_set(
            INPUTS, changes, task="activity", schema=room_schema(), start=T0, end=T0 + 3600
        ).y.size
        == 0
    )


def test_current_features_is_the_last_training_row() -> None:
    changes = {
        "binary_sensor.motion": [(T0 + 60 * m, "on" if m % 3 else "off") for m in range(120)]
    }
    schema = room_schema(window=(0, 5, 15))
    now = T0 + 7200 + 17  # mid-minute: the last whole frame ends at T0 + 7200
    row = current_features(INPUTS, changes, schema=schema, now=now)
    assert row.shape == (1, schema.n_inputs)
    inputs = SpaceInputs(roles=INPUTS.roles, occupancy_labels=("sensor.x",))
    full = training_set(
        inputs,
        {**changes, "sensor.x": [(T0 - 10, "on")]},
        task="occupancy",
        schema=schema,
        start=T0 + 3600,
        end=T0 + 7200,
    )
    np.testing.assert_array_equal(row[0], full.x[-1])


def test_hold_and_unavailable_fraction() -> None:
    assert held(INPUTS, {"sensor.tv_power": "85.5"})
    assert not held(INPUTS, {"sensor.tv_power": "2.0", "binary_sensor.motion": "on"})
    assert not held(INPUTS, {"sensor.tv_power": "unavailable"})
    assert unavailable_fraction(INPUTS, {"binary_sensor.motion": "on"}) == 0.5
    assert (
        unavailable_fraction(INPUTS, {"binary_sensor.motion": "on", "sensor.tv_power": "4"}) == 0.0
    )


def test_bad_space_configurations_are_refused() -> None:
    with pytest.raises(SpaceConfigError):
        SpaceInputs(roles={})
    with pytest.raises(SpaceConfigError):
        SpaceInputs(roles={"a.b": SensorRole.MOTION}, hold_only=frozenset({"c.d"}))


def test_explain_ranks_the_role_the_model_reads() -> None:
    schema = room_schema()
    motion_columns = [i for i, n in enumerate(schema.features) if n.startswith("motion_")]

    def predict(x: np.ndarray) -> np.ndarray:
        return (1 / (1 + np.exp(-x[:, motion_columns].sum(axis=1, keepdims=True)))).astype(
            np.float32
        )

    x = np.zeros((1, schema.n_inputs), dtype=np.float32)
    x[0, motion_columns] = 2.0
    ranked = explain(predict, schema, INPUTS, x)
    assert ranked[0][0] == "motion"
    assert ranked[0][1] > 0.4
    assert dict(ranked)["power"] == 0.0
