"""A space learns from its own recorder history: 14 simulated days of a world home, replayed
into a real HA recorder, then judged on the following held-out days against ground truth."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import numpy as np
from homeassistant.config_entries import ConfigSubentryDataWithId
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.recorder.common import (
    async_wait_recording_done,
)
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.mlmule.const import (
    CONF_ADVANCED,
    CONF_HOME_NAME,
    CONF_INPUT_ROLES,
    CONF_INPUTS,
    CONF_OCCUPANCY_LABEL,
    CONF_OCCUPANCY_LABEL_STATE,
    CONF_ROOM_KIND,
    CONF_SHARING,
    CONF_TASKS,
    CONF_TOPIC_PREFIX,
    DOMAIN,
    SUBENTRY_SPACE,
)
from custom_components.mlmule.core import families
from custom_components.mlmule.core.features import extract_room_frames
from custom_components.mlmule.core.metrics import balanced_accuracy
from custom_components.mlmule.core.space import SpaceInputs, model_inputs, room_series
from custom_components.mlmule.core.starter import load_starter
from custom_components.mlmule.core.world import WorldConfig, generate_world

DAY = 86400.0
TRAIN_DAYS = 14
TEST_DAYS = 3
SEED = 11


def presence_events(world, home_index: int) -> list[tuple[float, str, str]]:  # type: ignore[no-untyped-def]
    """Each resident's phone room sensor as HA would see it (Bermuda-style: a room or away)."""
    home = world.homes[home_index]
    rooms = [room.room_id for room in home.rooms]
    events: list[tuple[float, str, str]] = []
    for person in home.residents:
        phone = world.phone_data(person)
        states = [
            rooms[room] if place == home_index and room >= 0 else "away"
            for place, room in zip(phone.place.tolist(), phone.room.tolist(), strict=True)
        ]
        previous = None
        for t, state in zip(phone.times.tolist(), states, strict=True):
            if state != previous:
                events.append((t, f"sensor.{person}_room", state))
                previous = state
    return events


async def test_a_space_beats_its_starter_after_two_weeks_of_history(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient
) -> None:
    # the world's two weeks end at midnight before now; the held-out days lie after it
    midnight = datetime.fromtimestamp(time.time() // DAY * DAY, UTC)
    start = (midnight - timedelta(days=TRAIN_DAYS)).isoformat()
    world = generate_world(WorldConfig(n_homes=3, days=TRAIN_DAYS + TEST_DAYS, start=start), SEED)
    home = world.homes[0]
    room = next(r for r in home.rooms if r.kind == "bedroom")
    roles = {
        entity: role
        for entity, (room_id, role) in world.entity_roles(home.home_id).items()
        if room_id == room.room_id
    }
    presence = presence_events(world, 0)
    labels = sorted({entity for _, entity, _ in presence})
    train_end = world.start + TRAIN_DAYS * DAY
    history = sorted([e for e in world.events(home.home_id) if e[1] in roles] + presence)

    # HA runs in the home's time zone: time of day is a feature
    await hass.config.async_set_time_zone(home.tz)
    # replay the two weeks into HA's recorder with their own timestamps
    for t, entity, state in history:
        if t < train_end:
            hass.states.async_set(entity, state, timestamp=t)
    await async_wait_recording_done(hass)

    entry = MockConfigEntry(
        domain=DOMAIN,
        data={CONF_HOME_NAME: "World home", CONF_TOPIC_PREFIX: "mlmule"},
        subentries_data=[
            ConfigSubentryDataWithId(
                data={
                    "name": "Bedroom",
                    CONF_ROOM_KIND: "bedroom",
                    CONF_TASKS: ["occupancy"],
                    CONF_SHARING: "owners",
                    CONF_INPUTS: sorted(roles),
                    CONF_INPUT_ROLES: {entity: role.value for entity, role in roles.items()},
                    CONF_OCCUPANCY_LABEL: labels,
                    CONF_OCCUPANCY_LABEL_STATE: room.room_id,
                    CONF_ADVANCED: {
                        "on_threshold": 0.6,
                        "off_threshold": 0.4,
                        "min_hold_seconds": 120,
                        "max_unavailable_fraction": 0.5,
                    },
                },
                subentry_type=SUBENTRY_SPACE,
                title="Bedroom",
                unique_id=None,
                subentry_id="bedroom",
            )
        ],
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)
    space = entry.runtime_data.spaces["bedroom"]
    summary = space.state.training["occupancy"]
    assert summary.frames > 9 * 24 * 60  # ~10 days of labelled minutes from the recorder
    assert space.host.slot("occupancy/bedroom").version == 2

    # the train action trains again, warm-started, and answers with the metrics
    device = dr.async_get(hass).async_get_device(identifiers={(DOMAIN, "bedroom")})
    assert device is not None
    response = await hass.services.async_call(
        DOMAIN, "train", {"device_id": device.id}, blocking=True, return_response=True
    )
    assert response is not None
    assert response["tasks"]["occupancy"]["version"] == 3  # type: ignore[index]

    # held-out days: the following three, against ground truth (the same extractor as in HA)
    inputs = SpaceInputs(roles=roles, occupancy_labels=tuple(labels), tz=home.tz)
    changes: dict[str, list[tuple[float, str]]] = {}
    for t, entity, state in history:
        changes.setdefault(entity, []).append((t, state))
    trained = space.host.slot("occupancy/bedroom")
    test_start = train_end
    frames = extract_room_frames(
        room_series(inputs, changes), test_start, test_start + TEST_DAYS * DAY, 60, home.tz
    )
    x = model_inputs(trained.schema, frames)
    truth = world.room_data(home.home_id, room.room_id).occupancy[
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
