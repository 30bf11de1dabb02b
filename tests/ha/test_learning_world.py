"""A space learns from its own recorder history, and never serves a model worse than the one it
replaces: 14 simulated days of a world home, replayed into a real HA recorder, judged on the
following held-out days against ground truth.

The world starts on a fixed date and HA's clock is frozen at the end of the replayed days, so
the outcome is the same on any day the test runs.
"""

from __future__ import annotations

import base64
from pathlib import Path

import freezegun.api
import numpy as np
import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from mlmule_world import World, WorldConfig, generate_world
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.mlmule.const import DOMAIN
from custom_components.mlmule.coordinator import SpaceCoordinator
from custom_components.mlmule.core import families
from custom_components.mlmule.core.features import extract_room_frames
from custom_components.mlmule.core.metrics import balanced_accuracy
from custom_components.mlmule.core.onnx import OnnxModel, load_model
from custom_components.mlmule.core.space import SpaceInputs, model_inputs, room_series
from custom_components.mlmule.core.starter import load_starter
from custom_components.mlmule.core.weights import Weights
from tests.support.ha_fixtures import (
    async_paired_phone,
    async_replay_room,
    replayed_room_hub,
    space_device,
)
from tests.support.world_replay import WORLD_START, RoomReplay, replay_end, room_replay

DAY = 86400.0
TRAIN_DAYS = 14
TEST_DAYS = 3
SEED = 11
KEY = "occupancy/bedroom"
ACCURACY_SENSOR = "sensor.bedroom_occupancy_model_accuracy"


@pytest.fixture
def frozen(
    freezer: FrozenDateTimeFactory, monkeypatch: pytest.MonkeyPatch
) -> FrozenDateTimeFactory:
    """HA's clock, frozen for every thread: freezegun lets a call made within a few frames of
    `threading` (a short executor job, such as a training commit) see the real time, which
    would date its snapshots by the day the test runs."""
    monkeypatch.setattr(freezegun.api, "ignore_lists", [*freezegun.api.ignore_lists[:-1], ()])
    return freezer


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(
        WorldConfig(n_homes=3, days=TRAIN_DAYS + TEST_DAYS, start=WORLD_START), SEED
    )


async def async_learning_space(
    hass: HomeAssistant, freezer: FrozenDateTimeFactory, world: World
) -> tuple[MockConfigEntry, SpaceCoordinator, RoomReplay]:
    """The bedroom's two weeks in HA's recorder, HA's clock at their end, the space set up (it
    trains on them at setup)."""
    replay = room_replay(world, 0, "bedroom")
    freezer.move_to(replay_end(world, TRAIN_DAYS))
    # HA runs in the home's time zone: time of day is a feature
    await async_replay_room(hass, replay, world.start + TRAIN_DAYS * DAY)
    entry = replayed_room_hub(replay)
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)
    return entry, entry.runtime_data.spaces["bedroom"], replay


def held_out_days_score(world: World, replay: RoomReplay, weights: Weights) -> float:
    """Balanced accuracy over the days after the replayed ones, against ground truth (with the
    extractor HA uses)."""
    home = world.homes[0]
    inputs = SpaceInputs(roles=replay.roles, occupancy_labels=replay.presence, tz=home.tz)
    start = world.start + TRAIN_DAYS * DAY
    frames = extract_room_frames(
        room_series(inputs, replay.changes()), start, start + TEST_DAYS * DAY, 60, home.tz
    )
    spec, schema = load_starter(KEY).spec, load_starter(KEY).schema
    x = model_inputs(schema, frames)
    truth = world.room_data(home.home_id, replay.room_id).occupancy[
        TRAIN_DAYS * 1440 : (TRAIN_DAYS + TEST_DAYS) * 1440
    ]
    predicted = families.predict_classes(spec, families.forward(spec, weights, x))
    return balanced_accuracy(truth, predicted)


async def test_a_space_serves_its_training_only_when_it_is_no_worse_than_its_starter(
    hass: HomeAssistant,
    mqtt_mock: MqttMockHAClient,
    frozen: FrozenDateTimeFactory,
    world: World,
) -> None:
    _, space, replay = await async_learning_space(hass, frozen, world)
    summary = space.state.training["occupancy"]
    assert summary.frames > 9 * 24 * 60  # ~10 days of labelled minutes from the recorder

    # the first training beat the starter on the latest minutes it held out: served, and shown
    decision = space.host.decisions[KEY]
    assert decision.verdict == "promoted"
    assert decision.challenger_score is not None
    assert decision.current_score is not None
    assert decision.challenger_score >= decision.current_score
    assert space.host.slot(KEY).version == 2
    shown = hass.states.get(ACCURACY_SENSOR)
    assert shown is not None
    assert shown.attributes["last_model_change"]["reason"] == "promoted"
    assert shown.attributes["last_model_change"]["change"] == "training"
    assert shown.attributes["promotion"]["challenger_score"] == pytest.approx(
        decision.challenger_score, abs=1e-6
    )

    # the train action trains again, warm-started, and answers with the rule's verdict
    device = space_device(hass, "bedroom")
    assert device is not None
    response = await hass.services.async_call(
        DOMAIN, "train", {"device_id": device.id}, blocking=True, return_response=True
    )
    assert response is not None
    answered = response["tasks"]["occupancy"]  # type: ignore[index]
    again = space.host.decisions[KEY]
    assert answered["promotion"]["reason"] == again.verdict  # type: ignore[index]
    assert answered["version"] == (3 if again.served else 2)  # type: ignore[index]
    assert space.host.promotions["promoted"] + space.host.promotions["kept_current"] == 2

    # the held-out days: whatever the space serves never scores below its starter there
    starter_score = held_out_days_score(world, replay, load_starter(KEY).weights)
    served_score = held_out_days_score(world, replay, space.host.slot(KEY).weights)
    print(
        f"held-out balanced accuracy over {TEST_DAYS} days: starter {starter_score:.4f}, "
        f"served after {TRAIN_DAYS} days of in-house training {served_score:.4f}"
    )
    assert np.isfinite(served_score)
    assert served_score >= starter_score


async def test_a_worse_model_is_never_served_and_the_decision_is_shown(
    hass: HomeAssistant,
    mqtt_mock: MqttMockHAClient,
    frozen: FrozenDateTimeFactory,
    world: World,
    tmp_path: Path,
) -> None:
    entry, space, replay = await async_learning_space(hass, frozen, world)
    served = space.host.slot(KEY)
    # a paired phone's model that predicts the opposite of what the starter does, claiming a
    # million samples: merged as it claims, it would replace the space's model outright
    carried = await async_paired_phone(hass, entry, tmp_path / "phone")
    carried.install(
        inverted(load_model(load_starter(KEY).onnx_bytes)),
        context_key=KEY,
        samples=10**6,
        data_time=served.meta.data_time,
        now=served.meta.created_at,
    )
    device = space_device(hass, "bedroom")
    assert device is not None

    with pytest.raises(HomeAssistantError, match="kept_current"):
        await hass.services.async_call(
            DOMAIN,
            "import_snapshot",
            {"device_id": device.id, "data": base64.b64encode(carried.export(KEY)).decode()},
            blocking=True,
            return_response=True,
        )
    await hass.async_block_till_done()

    # the model served is the one before, bit for bit; the decision is logged, counted, shown
    assert space.host.slot(KEY).snapshot.sha256 == served.snapshot.sha256
    decision = space.host.decisions[KEY]
    assert (decision.change, decision.verdict) == ("merge", "kept_current")
    assert decision.challenger_score is not None
    assert decision.current_score is not None
    assert decision.challenger_score < decision.current_score
    assert space.host.promotions["kept_current"] == 1
    assert space.host.rejections["kept_current"] == 1
    space.async_update_listeners()
    await hass.async_block_till_done()
    shown = hass.states.get(ACCURACY_SENSOR)
    assert shown is not None
    assert shown.attributes["last_model_change"] == decision.as_dict()
    starter_score = held_out_days_score(world, replay, load_starter(KEY).weights)
    assert held_out_days_score(world, replay, space.host.slot(KEY).weights) >= starter_score

    # the next training also fine-tunes the refused merge, and judges it first: two weeks of
    # the bedroom's minutes turn it round, and it is served, no worse on the held-out minutes
    await hass.services.async_call(
        DOMAIN, "train", {"device_id": device.id}, blocking=True, return_response=True
    )
    await hass.async_block_till_done()
    decision = space.host.decisions[KEY]
    assert (decision.change, decision.verdict) == ("training", "promoted")
    assert space.host.counters["fine_tuned_merges"] == 1
    assert carried.identity.id in space.host.slot(KEY).meta.lineage
    assert held_out_days_score(world, replay, space.host.slot(KEY).weights) >= starter_score
    assert space.host.take_refused_merge(KEY) is None  # fine-tuned once


def inverted(model: OnnxModel) -> OnnxModel:
    """`model` with its output layer negated: it calls occupied what the original calls empty."""
    spec, schema, weights = families.from_onnx(model)
    flipped = {
        name: -value if name.startswith("head.") else value for name, value in weights.items()
    }
    return families.build_onnx(spec, flipped, schema)
