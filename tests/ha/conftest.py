"""Fixtures for the Home Assistant tests."""

from collections.abc import AsyncIterator, Iterator
from unittest.mock import Mock

import pytest
from homeassistant.components.mqtt.models import DATA_MQTT
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.syrupy import HomeAssistantSnapshotExtension
from pytest_homeassistant_custom_component.typing import MqttMockHAClient, MqttMockPahoClient
from syrupy.assertion import SnapshotAssertion

from custom_components.mlmule.const import DOMAIN

# single_core first: the world must build on the integration's own copy of the core
pytest_plugins = ["tests.support.single_core", "tests.support.ha_fixtures"]


@pytest.fixture
def snapshot(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    """Snapshots with Home Assistant's extension, as HA core's conftest does: the harness and
    syrupy both define `snapshot`, and which one wins otherwise depends on plugin load order."""
    return snapshot.use_extension(HomeAssistantSnapshotExtension)


@pytest.fixture
def mqtt_client_mock(mqtt_client_mock: MqttMockPahoClient) -> Iterator[MqttMockPahoClient]:
    """The harness's fake MQTT client opens a fake socket on connect, which starts the MQTT
    integration's 1-second timer, and never closes it; close it as a real disconnect would, so
    that no timer outlives the test (the harness fails a test on a lingering timer)."""
    yield mqtt_client_mock
    mqtt_client_mock.on_socket_close(mqtt_client_mock, None, Mock(fileno=Mock(return_value=-1)))


@pytest.fixture
async def mqtt_mock(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient
) -> AsyncIterator[MqttMockHAClient]:
    """The MQTT client batches (un)subscriptions behind a cooldown timer, which a test that ends
    within the cooldown leaves pending: unload mlmule (it unsubscribes), then stop the client as
    Home Assistant's shutdown does, which flushes the batch."""
    yield mqtt_mock
    for entry in hass.config_entries.async_entries(DOMAIN):
        if entry.state is ConfigEntryState.LOADED:
            await hass.config_entries.async_unload(entry.entry_id)
    if (mqtt_data := hass.data.get(DATA_MQTT)) is not None:
        await mqtt_data.client.async_disconnect()
