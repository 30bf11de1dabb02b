"""Reading state changes back from the real recorder, in chunks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.components.recorder.common import (
    async_wait_recording_done,
)

from custom_components.mlmule.history import async_state_changes

START = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


async def test_changes_span_chunks_in_order_with_the_start_state(
    hass: HomeAssistant, freezer: FrozenDateTimeFactory
) -> None:
    freezer.move_to(START - timedelta(hours=1))
    hass.states.async_set("binary_sensor.motion", "off")
    hass.states.async_set("sensor.co2", "420")
    await async_wait_recording_done(hass)
    expected: list[tuple[float, str]] = []
    for minute, state in (
        (5, "on"),
        (6, "off"),
        (13 * 60, "unavailable"),
        (14 * 60, "on"),
        (30 * 60, "off"),
    ):
        freezer.move_to(START + timedelta(minutes=minute))
        hass.states.async_set("binary_sensor.motion", state)
        expected.append(((START + timedelta(minutes=minute)).timestamp(), state))
        await async_wait_recording_done(hass)

    changes = await async_state_changes(
        hass,
        ["sensor.co2", "binary_sensor.motion", "sensor.never_recorded"],
        START,
        START + timedelta(hours=36),
        chunk=timedelta(hours=12),
    )
    assert list(changes) == ["binary_sensor.motion", "sensor.co2", "sensor.never_recorded"]
    assert changes["binary_sensor.motion"][0] == (START.timestamp(), "off")
    assert changes["binary_sensor.motion"][1:] == expected
    assert changes["sensor.co2"] == [(START.timestamp(), "420")]
    assert changes["sensor.never_recorded"] == []
