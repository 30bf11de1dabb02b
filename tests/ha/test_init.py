"""Loading and unloading the integration in a real Home Assistant core."""

from __future__ import annotations

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.mlmule import MlmuleRuntime
from custom_components.mlmule.const import CONF_HOME_NAME, CONF_TOPIC_PREFIX, DOMAIN


async def test_setup_and_unload(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    entry = MockConfigEntry(
        domain=DOMAIN, data={CONF_HOME_NAME: "Maple Street", CONF_TOPIC_PREFIX: "mlmule"}
    )
    entry.add_to_hass(hass)

    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    assert entry.runtime_data == MlmuleRuntime(home_name="Maple Street", topic_prefix="mlmule")

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED
