"""Loading and unloading the hub in a real Home Assistant core."""

from __future__ import annotations

import stat
from pathlib import Path

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.mlmule.const import CONF_HOME_NAME, CONF_TOPIC_PREFIX, DOMAIN


async def test_setup_creates_the_home_identity_and_unloads(
    hass: HomeAssistant,
    mqtt_mock: MqttMockHAClient,
    isolated_config_dir: Path,
    issue_registry: ir.IssueRegistry,
) -> None:
    ir.async_create_issue(
        hass,
        DOMAIN,
        "mqtt_not_configured",
        is_fixable=False,
        severity=ir.IssueSeverity.ERROR,
        translation_key="mqtt_not_configured",
    )
    entry = MockConfigEntry(
        domain=DOMAIN, data={CONF_HOME_NAME: "Maple Street", CONF_TOPIC_PREFIX: "mlmule"}
    )
    entry.add_to_hass(hass)

    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.LOADED
    data = entry.runtime_data
    assert (data.home_name, data.topic_prefix, data.spaces) == ("Maple Street", "mlmule", {})
    key_file = isolated_config_dir / DOMAIN / "identity.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # the hub listens on its home's inbox through HA's MQTT client: a forged message arrives
    # and is dropped by the protocol
    assert data.exchange is not None
    async_fire_mqtt_message(hass, f"mlmule/{data.identity.id}/room1/mule/abc", b"\x00forged")
    # the protocol reads it in an executor, in one of the entry's background tasks
    await hass.async_block_till_done(wait_background_tasks=True)
    assert data.exchange.endpoint.stats.messages_rejected == 1
    # setting the hub up clears the "MQTT missing" repair
    assert issue_registry.async_get_issue(DOMAIN, "mqtt_not_configured") is None

    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED

    # the identity is kept: the same home after a restart
    first = data.identity.id
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.runtime_data.identity.id == first
