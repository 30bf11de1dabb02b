"""Fixtures for the Home Assistant tests."""

from collections.abc import Iterator
from unittest.mock import Mock

import pytest
from pytest_homeassistant_custom_component.syrupy import HomeAssistantSnapshotExtension
from pytest_homeassistant_custom_component.typing import MqttMockPahoClient
from syrupy.assertion import SnapshotAssertion

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
