"""Fixtures every run on a real Home Assistant core uses: the tests and the benchmarks.

Loaded with `pytest_plugins = ["tests.support.ha_fixtures"]` from a conftest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from homeassistant.config_entries import ConfigSubentryDataWithId
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.recorder.common import (
    async_wait_recording_done,
)

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
from custom_components.mlmule.core.host import ModelHost
from custom_components.mlmule.core.identity import Identity, PairingCode, TrustEntry, TrustStore
from tests.support.world_replay import RoomReplay


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(recorder_mock: Any, enable_custom_integrations: None) -> None:
    """Let every test load custom_components/mlmule, with the recorder it depends on.

    `recorder_mock` must come before `enable_custom_integrations` (the harness requires it).
    """


@pytest.fixture(autouse=True, scope="session")
def quiet_sqlalchemy() -> None:
    """The recorder's engine logs every statement at INFO; keep test output readable."""
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def isolated_config_dir(hass: HomeAssistant, tmp_path: Path) -> Path:
    """Give each test its own config directory: the harness shares one inside site-packages,
    and mlmule keeps its keys and models under `<config>/mlmule/`."""
    hass.config.config_dir = str(tmp_path)
    return tmp_path


def space_device(hass: HomeAssistant, space_id: str) -> dr.DeviceEntry | None:
    """The device of a space (identifier `(DOMAIN, space id)`), among mlmule's entries' devices.

    `DeviceRegistry.async_get_device(identifiers=...)` is deprecated since Home Assistant 2026.8,
    and its replacements are newer than the oldest Home Assistant we test on.
    """
    registry = dr.async_get(hass)
    for entry in hass.config_entries.async_entries(DOMAIN):
        for device in dr.async_entries_for_config_entry(registry, entry.entry_id):
            if (DOMAIN, space_id) in device.identifiers:
                return device
    return None


async def async_replay_room(hass: HomeAssistant, replay: RoomReplay, end: float) -> None:
    """Write a replayed room's changes before `end` into HA's recorder, in the home's zone."""
    await hass.config.async_set_time_zone(replay.tz)
    for t, entity, state in replay.before(end):
        hass.states.async_set(entity, state, timestamp=t)
    await async_wait_recording_done(hass)


def replayed_room_hub(replay: RoomReplay, options: dict[str, Any] | None = None) -> MockConfigEntry:
    """A hub with one occupancy space (id "bedroom") over a replayed room, labelled by its
    phones' room presence."""
    data: dict[str, Any] = {
        "name": "Bedroom",
        CONF_ROOM_KIND: "bedroom",
        CONF_TASKS: ["occupancy"],
        CONF_SHARING: "owners",
        CONF_INPUTS: sorted(replay.roles),
        CONF_INPUT_ROLES: {entity: role.value for entity, role in replay.roles.items()},
        CONF_OCCUPANCY_LABEL: list(replay.presence),
        CONF_OCCUPANCY_LABEL_STATE: replay.room_id,
        CONF_ADVANCED: {
            "on_threshold": 0.6,
            "off_threshold": 0.4,
            "min_hold_seconds": 120,
            "max_unavailable_fraction": 0.5,
        },
    }
    return MockConfigEntry(
        domain=DOMAIN,
        data={CONF_HOME_NAME: "World home", CONF_TOPIC_PREFIX: "mlmule"},
        options=options or {},
        subentries_data=[
            ConfigSubentryDataWithId(
                data=data,
                subentry_type=SUBENTRY_SPACE,
                title="Bedroom",
                unique_id=None,
                subentry_id="bedroom",
            )
        ],
    )


async def async_paired_phone(hass: HomeAssistant, entry: MockConfigEntry, root: Path) -> ModelHost:
    """A phone paired with the hub `entry` as an owner (through `mlmule.pair_mule`), whose own
    host under `root` trusts the home back."""
    phone = Identity.generate(kind="mule", name="phone")
    await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(phone).encode(), "role": "owner"},
        blocking=True,
        return_response=True,
    )
    trust = TrustStore()
    trust.add(
        TrustEntry.for_key(
            entry.runtime_data.identity.public_key_bytes,
            kind="space",
            role="owner",
            label="home",
            paired_at=0.0,
        )
    )
    return ModelHost(root, phone, trust)
