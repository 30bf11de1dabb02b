"""A space learns from its own recorder history: 14 simulated days of a world home, replayed
into a real HA recorder, then judged on the following held-out days against ground truth."""

from __future__ import annotations

import numpy as np
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.mlmule.const import (
    DOMAIN,
)
from custom_components.mlmule.core import families
from custom_components.mlmule.core.features import extract_room_frames
from custom_components.mlmule.core.metrics import balanced_accuracy
from custom_components.mlmule.core.space import SpaceInputs, model_inputs, room_series
from custom_components.mlmule.core.starter import load_starter
from custom_components.mlmule.core.world import WorldConfig, generate_world
from tests.support.ha_fixtures import async_replay_room, replayed_room_hub, space_device
from tests.support.world_replay import room_replay, start_days_before_now

DAY = 86400.0
TRAIN_DAYS = 14
TEST_DAYS = 3
SEED = 11


async def test_a_space_beats_its_starter_after_two_weeks_of_history(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient
) -> None:
    # the world's two weeks end now; the held-out days lie after it
    start = start_days_before_now(TRAIN_DAYS)
    world = generate_world(WorldConfig(n_homes=3, days=TRAIN_DAYS + TEST_DAYS, start=start), SEED)
    home = world.homes[0]
    replay = room_replay(world, 0, "bedroom")
    train_end = world.start + TRAIN_DAYS * DAY

    # HA runs in the home's time zone: time of day is a feature
    # the two weeks, replayed into HA's recorder with their own timestamps
    await async_replay_room(hass, replay, train_end)
    entry = replayed_room_hub(replay)
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)
    space = entry.runtime_data.spaces["bedroom"]
    summary = space.state.training["occupancy"]
    assert summary.frames > 9 * 24 * 60  # ~10 days of labelled minutes from the recorder
    assert space.host.slot("occupancy/bedroom").version == 2

    # the train action trains again, warm-started, and answers with the metrics
    device = space_device(hass, "bedroom")
    assert device is not None
    response = await hass.services.async_call(
        DOMAIN, "train", {"device_id": device.id}, blocking=True, return_response=True
    )
    assert response is not None
    assert response["tasks"]["occupancy"]["version"] == 3  # type: ignore[index]

    # held-out days: the following three, against ground truth (the same extractor as in HA)
    inputs = SpaceInputs(roles=replay.roles, occupancy_labels=replay.presence, tz=home.tz)
    changes = replay.changes()
    trained = space.host.slot("occupancy/bedroom")
    test_start = train_end
    frames = extract_room_frames(
        room_series(inputs, changes), test_start, test_start + TEST_DAYS * DAY, 60, home.tz
    )
    x = model_inputs(trained.schema, frames)
    truth = world.room_data(home.home_id, replay.room_id).occupancy[
        TRAIN_DAYS * 1440 : (TRAIN_DAYS + TEST_DAYS) * 1440
    ]
    starter = load_starter("occupancy/bedroom")
    starter_score = balanced_accuracy(
        truth,
        families.predict_classes(starter.spec, families.forward(starter.spec, starter.weights, x)),
    )
    trained_score = balanced_accuracy(
        truth,
        families.predict_classes(trained.spec, families.forward(trained.spec, trained.weights, x)),
    )
    print(
        f"held-out balanced accuracy over {TEST_DAYS} days: starter {starter_score:.4f}, "
        f"after {TRAIN_DAYS} days of in-house training {trained_score:.4f}"
    )
    assert trained_score > starter_score
    assert np.isfinite(trained_score)
