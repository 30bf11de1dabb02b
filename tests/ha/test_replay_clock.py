"""The replay clock in Home Assistant: a home replayed at x60 gives the spaces the same frames as
the same home recorded in real time, and the demo's own component (not shipped) puts the clock
where every space reads it."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import voluptuous as vol
from freezegun.api import FrozenDateTimeFactory
from homeassistant import loader
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
from mlmule_world import WorldConfig, generate_world
from pytest_homeassistant_custom_component.components.recorder.common import (
    async_wait_recording_done,
)
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

import custom_components
from custom_components.mlmule import CONFIG_SCHEMA
from custom_components.mlmule.const import DOMAIN
from custom_components.mlmule.core.clock import ReplayClock
from custom_components.mlmule.core.features import extract_room_frames
from custom_components.mlmule.core.space import SpaceInputs, room_series
from custom_components.mlmule.history import async_state_changes
from tests.support.ha_fixtures import replayed_room_hub
from tests.support.world_replay import WORLD_START, replay_end, room_replay

DEMO = str(Path(__file__).resolve().parents[2] / "demo" / "custom_components")
CLOCK = "mlmule_replay_clock"
DAY = 86400.0
SCALE = 60.0


async def test_a_scaled_replay_gives_the_frames_of_the_unscaled_one(
    hass: HomeAssistant, freezer: FrozenDateTimeFactory
) -> None:
    # two days of a bedroom: the first recorded as it happened, the second replayed at x60
    world = generate_world(WorldConfig(n_homes=1, days=2, visit_rate=0.0, start=WORLD_START), 3)
    freezer.move_to(replay_end(world, 2.5))
    replay = room_replay(world, 0, "bedroom")
    await hass.config.async_set_time_zone(replay.tz)
    clock = ReplayClock(origin=world.start + DAY, scale=SCALE)
    for t, entity, state in replay.events:
        hass.states.async_set(entity, state, timestamp=clock.to_wall(t))
    await async_wait_recording_done(hass)
    assert clock.to_wall(world.end) < dt_util.utcnow().timestamp()  # all of it in the past

    inputs = SpaceInputs(roles=replay.roles, occupancy_labels=replay.presence, tz=replay.tz)
    # from a minute before the world begins: the recorder's start-time state is the one before
    recorded = await async_state_changes(
        hass,
        inputs.entities,
        dt_util.utc_from_timestamp(world.start - 60),
        dt_util.utc_from_timestamp(world.end),
        clock=clock,
    )
    assert recorded == replay.changes()
    # an hour either side of the origin, and both days
    origin = world.start + DAY
    for start, end in [(origin - 3600, origin + 3600), (world.start, world.end)]:
        expected = extract_room_frames(
            room_series(inputs, replay.changes()), start, end, 60, replay.tz
        )
        seen = extract_room_frames(room_series(inputs, recorded), start, end, 60, replay.tz)
        np.testing.assert_allclose(seen, expected, rtol=1e-6, atol=1e-4, equal_nan=True)
    # read on the wall clock instead, the replayed day would be squeezed into 24 minutes
    unscaled = await async_state_changes(
        hass,
        inputs.entities,
        dt_util.utc_from_timestamp(world.start),
        dt_util.utc_from_timestamp(world.end),
    )
    assert max(t for changes in unscaled.values() for t, _ in changes) < world.start + DAY + 1500


@pytest.fixture
def demo_components(hass: HomeAssistant, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let Home Assistant find the demo's own components (demo/custom_components), as the demo's
    configuration directory does; HACS installs none of them."""
    monkeypatch.setattr(custom_components, "__path__", [*custom_components.__path__, DEMO])
    hass.data.pop(loader.DATA_CUSTOM_COMPONENTS, None)


async def test_the_demo_clock_accepts_only_an_origin_and_a_scale(demo_components: None) -> None:
    replay_clock_component = import_module(f"custom_components.{CLOCK}")
    config = replay_clock_component.CONFIG_SCHEMA({CLOCK: {"origin": 1.78e9, "scale": 60}})
    assert config[CLOCK] == {"origin": 1.78e9, "scale": 60.0}
    for bad in ({"origin": 1.78e9, "scale": 0.5}, {"origin": 1.78e9}, {"spaces": []}):
        with pytest.raises(vol.Invalid):
            replay_clock_component.CONFIG_SCHEMA({CLOCK: bad})


def test_the_shipped_integration_has_no_clock_option(caplog: pytest.LogCaptureFixture) -> None:
    CONFIG_SCHEMA({DOMAIN: {"replay_clock": {"origin": 1.78e9, "scale": 60}}})
    assert "mlmule integration does not support YAML setup" in caplog.text


async def test_every_space_runs_on_the_configured_clock(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, demo_components: None
) -> None:
    origin = dt_util.utcnow().timestamp() - 10.0
    assert await async_setup_component(hass, CLOCK, {CLOCK: {"origin": origin, "scale": SCALE}})
    world = generate_world(WorldConfig(n_homes=1, days=1, visit_rate=0.0), 3)
    entry = replayed_room_hub(room_replay(world, 0, "bedroom"))
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    space = entry.runtime_data.spaces["bedroom"]
    assert space.clock == ReplayClock(origin=origin, scale=SCALE)
    # the starter's data time is "now" on the scene clock: ten wall seconds are ten scene minutes
    data_time = space.host.slot("occupancy/bedroom").meta.data_time
    assert data_time >= origin + 10.0 * SCALE - 1.0
    await hass.async_block_till_done(wait_background_tasks=True)  # its start-up training


async def test_the_demo_clock_refuses_to_come_after_the_hub(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, demo_components: None
) -> None:
    world = generate_world(WorldConfig(n_homes=1, days=1, visit_rate=0.0), 3)
    entry = replayed_room_hub(room_replay(world, 0, "bedroom"))
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)
    origin = dt_util.utcnow().timestamp()
    assert not await async_setup_component(hass, CLOCK, {CLOCK: {"origin": origin, "scale": SCALE}})
    assert entry.runtime_data.spaces["bedroom"].clock == ReplayClock()
