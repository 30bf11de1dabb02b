"""Adding and reconfiguring a space subentry through the real config-subentry flow."""

from __future__ import annotations

from typing import Any

import pytest
from homeassistant.config_entries import SOURCE_RECONFIGURE, SOURCE_USER
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType, InvalidData
from homeassistant.helpers import area_registry as ar
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.mlmule.const import (
    CONF_ACTIVITY_LABEL,
    CONF_ADVANCED,
    CONF_AREA,
    CONF_EXCHANGE_MODE,
    CONF_HOLD_ONLY,
    CONF_HOME_NAME,
    CONF_INPUT_ROLES,
    CONF_INPUTS,
    CONF_MAX_UNAVAILABLE,
    CONF_MIN_HOLD,
    CONF_MODEL_SIZE,
    CONF_OCCUPANCY_LABEL,
    CONF_OCCUPANCY_LABEL_STATE,
    CONF_OFF_THRESHOLD,
    CONF_ON_THRESHOLD,
    CONF_PRESENCE,
    CONF_ROOM_KIND,
    CONF_SHARING,
    CONF_TASKS,
    CONF_TOPIC_PREFIX,
    DOMAIN,
    SUBENTRY_SPACE,
)
from custom_components.mlmule.core.identity import Identity, PairingCode

ADVANCED = {
    CONF_ON_THRESHOLD: 0.6,
    CONF_OFF_THRESHOLD: 0.4,
    CONF_MIN_HOLD: 120,
    CONF_MAX_UNAVAILABLE: 0.5,
}


@pytest.fixture
def hub(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> MockConfigEntry:
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={CONF_HOME_NAME: "Maple", CONF_TOPIC_PREFIX: "mlmule"},
    )
    entry.add_to_hass(hass)
    return entry


@pytest.fixture
def bedroom(hass: HomeAssistant, entity_registry: er.EntityRegistry) -> str:
    """An area with a motion sensor, a CO2 sensor and an unrelated switch."""
    area = ar.async_get(hass).async_create("Bedroom")
    for domain, unique_id, device_class in (
        ("binary_sensor", "bed_motion", "motion"),
        ("sensor", "bed_co2", "carbon_dioxide"),
        ("switch", "bed_fan", None),
    ):
        entry = entity_registry.async_get_or_create(
            domain,
            "test",
            unique_id,
            suggested_object_id=unique_id,
            original_device_class=device_class,
        )
        entity_registry.async_update_entity(entry.entity_id, area_id=area.id)
    hass.states.async_set("sensor.phone_room", "bedroom")
    hass.states.async_set("input_select.activity", "sleeping")
    return area.id


async def start_space_flow(hass: HomeAssistant, hub: MockConfigEntry) -> dict[str, Any]:
    result = await hass.config_entries.subentries.async_init(
        (hub.entry_id, SUBENTRY_SPACE), context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"
    return dict(result)


async def test_add_space_suggests_area_inputs_and_creates_subentry(
    hass: HomeAssistant, hub: MockConfigEntry, bedroom: str
) -> None:
    result = await start_space_flow(hass, hub)
    result = dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"],
            {
                "name": "Bedroom",
                CONF_AREA: bedroom,
                CONF_ROOM_KIND: "bedroom",
                CONF_TASKS: ["occupancy"],
                CONF_SHARING: "owners",
            },
        )
    )
    assert result["step_id"] == "inputs"
    suggested = {
        str(key): key.description["suggested_value"]
        for key in result["data_schema"].schema
        if key.description and "suggested_value" in key.description
    }
    assert suggested[CONF_INPUTS] == ["binary_sensor.bed_motion", "sensor.bed_co2"]

    result = dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"],
            {
                CONF_INPUTS: ["binary_sensor.bed_motion", "sensor.bed_co2"],
                CONF_HOLD_ONLY: ["sensor.bed_co2"],
                CONF_OCCUPANCY_LABEL: ["sensor.phone_room"],
                CONF_ADVANCED: ADVANCED,
            },
        )
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    (subentry,) = hub.subentries.values()
    assert subentry.title == "Bedroom"
    assert subentry.subentry_type == SUBENTRY_SPACE
    assert subentry.data[CONF_ROOM_KIND] == "bedroom"
    assert subentry.data[CONF_HOLD_ONLY] == ["sensor.bed_co2"]


@pytest.mark.parametrize(
    ("changes", "field", "error"),
    [
        ({CONF_INPUTS: []}, CONF_INPUTS, "no_inputs"),
        ({CONF_INPUTS: ["switch.bed_fan"]}, CONF_INPUTS, "unsupported_input"),
        ({CONF_HOLD_ONLY: ["sensor.bed_co2"]}, CONF_HOLD_ONLY, "hold_only_not_input"),
        (
            {CONF_ADVANCED: {**ADVANCED, CONF_OFF_THRESHOLD: 0.7}},
            CONF_ADVANCED,
            "thresholds_inverted",
        ),
    ],
)
async def test_inputs_step_errors(
    hass: HomeAssistant,
    hub: MockConfigEntry,
    bedroom: str,
    changes: dict[str, Any],
    field: str,
    error: str,
) -> None:
    result = await start_space_flow(hass, hub)
    result = dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"],
            {
                "name": "Bedroom",
                CONF_AREA: bedroom,
                CONF_ROOM_KIND: "bedroom",
                CONF_TASKS: ["occupancy"],
                CONF_SHARING: "owners",
            },
        )
    )
    base = {
        CONF_INPUTS: ["binary_sensor.bed_motion"],
        CONF_OCCUPANCY_LABEL: ["sensor.phone_room"],
        CONF_ADVANCED: ADVANCED,
    }
    result = dict(
        await hass.config_entries.subentries.async_configure(result["flow_id"], {**base, **changes})
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {field: error}


async def test_activity_task_needs_a_label_and_no_task_is_an_error(
    hass: HomeAssistant, hub: MockConfigEntry, bedroom: str
) -> None:
    result = await start_space_flow(hass, hub)
    space = {
        "name": "Bedroom",
        CONF_AREA: bedroom,
        CONF_ROOM_KIND: "bedroom",
        CONF_SHARING: "owners",
    }
    result = dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"], {**space, CONF_TASKS: []}
        )
    )
    assert result["errors"] == {CONF_TASKS: "no_task"}
    # no starter model predicts a whole home's activity: refused before it could fail to load
    whole_home = {**space, CONF_ROOM_KIND: "home", CONF_TASKS: ["occupancy", "activity"]}
    result = dict(
        await hass.config_entries.subentries.async_configure(result["flow_id"], whole_home)
    )
    assert result["errors"] == {CONF_TASKS: "no_starter_model"}
    result = dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"], {**space, CONF_TASKS: ["occupancy", "activity"]}
        )
    )
    inputs = {
        CONF_INPUTS: ["binary_sensor.bed_motion"],
        CONF_OCCUPANCY_LABEL: ["sensor.phone_room"],
        CONF_ADVANCED: ADVANCED,
    }
    result = dict(await hass.config_entries.subentries.async_configure(result["flow_id"], inputs))
    assert result["errors"] == {CONF_ACTIVITY_LABEL: "activity_label_required"}
    result = dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"], {**inputs, CONF_ACTIVITY_LABEL: "input_select.activity"}
        )
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_reconfigure_changes_the_space(
    hass: HomeAssistant, hub: MockConfigEntry, bedroom: str
) -> None:
    result = await start_space_flow(hass, hub)
    space = {
        "name": "Bedroom",
        CONF_AREA: bedroom,
        CONF_ROOM_KIND: "bedroom",
        CONF_TASKS: ["occupancy"],
        CONF_SHARING: "owners",
    }
    inputs = {
        CONF_INPUTS: ["binary_sensor.bed_motion"],
        CONF_OCCUPANCY_LABEL: ["sensor.phone_room"],
        CONF_ADVANCED: ADVANCED,
    }
    result = dict(await hass.config_entries.subentries.async_configure(result["flow_id"], space))
    await hass.config_entries.subentries.async_configure(result["flow_id"], inputs)
    (subentry_id,) = hub.subentries

    result = dict(
        await hass.config_entries.subentries.async_init(
            (hub.entry_id, SUBENTRY_SPACE),
            context={"source": SOURCE_RECONFIGURE, "subentry_id": subentry_id},
        )
    )
    assert result["step_id"] == "reconfigure"
    result = dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"], {**space, "name": "Guest room", CONF_SHARING: "guests"}
        )
    )
    assert result["step_id"] == "inputs"
    result = dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"],
            {**inputs, CONF_INPUTS: ["binary_sensor.bed_motion", "sensor.bed_co2"]},
        )
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    subentry = hub.subentries[subentry_id]
    assert subentry.title == "Guest room"
    assert subentry.data[CONF_SHARING] == "guests"
    assert subentry.data[CONF_INPUTS] == ["binary_sensor.bed_motion", "sensor.bed_co2"]


async def test_presence_step_asks_for_each_paired_phone(
    hass: HomeAssistant, hub: MockConfigEntry, bedroom: str
) -> None:
    assert await hass.config_entries.async_setup(hub.entry_id)
    await hass.async_block_till_done()
    phones = [Identity.generate(kind="mule", name=name) for name in ("Alice", "Bob")]
    for phone, role in zip(phones, ("owner", "guest"), strict=True):
        await hass.services.async_call(
            DOMAIN,
            "pair_mule",
            {"code": PairingCode.for_identity(phone).encode(), "role": role},
            blocking=True,
            return_response=True,
        )
    result = await start_space_flow(hass, hub)
    space = {
        "name": "Bedroom",
        CONF_AREA: bedroom,
        CONF_ROOM_KIND: "bedroom",
        CONF_TASKS: ["occupancy"],
        CONF_SHARING: "guests",
    }
    result = dict(await hass.config_entries.subentries.async_configure(result["flow_id"], space))
    inputs = {
        CONF_INPUTS: ["binary_sensor.bed_motion"],
        CONF_OCCUPANCY_LABEL: ["sensor.phone_room"],
        CONF_OCCUPANCY_LABEL_STATE: "bedroom",
        CONF_ADVANCED: ADVANCED,
    }
    result = dict(await hass.config_entries.subentries.async_configure(result["flow_id"], inputs))
    assert result["step_id"] == "presence"
    assert result["description_placeholders"] == {"mule": "Alice", "role": "owner"}
    result = dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"], {"entity": "sensor.phone_room", "state": "bedroom"}
        )
    )
    assert result["description_placeholders"] == {"mule": "Bob", "role": "guest"}
    result = dict(await hass.config_entries.subentries.async_configure(result["flow_id"], {}))
    assert result["type"] is FlowResultType.CREATE_ENTRY
    (subentry,) = hub.subentries.values()
    assert subentry.data[CONF_PRESENCE] == {
        phones[0].id: {"entity": "sensor.phone_room", "state": "bedroom"}
    }
    assert subentry.data[CONF_INPUT_ROLES] == {"binary_sensor.bed_motion": "motion"}
    # the update listener rebuilt the hub with the new space
    await hass.async_block_till_done(wait_background_tasks=True)
    assert subentry.subentry_id in hub.runtime_data.spaces


async def test_model_size_and_exchange_mode_default_and_reconfigure(
    hass: HomeAssistant, hub: MockConfigEntry, bedroom: str
) -> None:
    result = await start_space_flow(hass, hub)
    fields = {str(key): key for key in result["data_schema"].schema}
    # a new space runs compact models and exchanges weights and knowledge until told otherwise
    assert fields[CONF_MODEL_SIZE].default() == "compact"
    assert fields[CONF_EXCHANGE_MODE].default() == "both"
    space = {
        "name": "Bedroom",
        CONF_AREA: bedroom,
        CONF_ROOM_KIND: "bedroom",
        CONF_TASKS: ["occupancy"],
        CONF_SHARING: "owners",
    }
    inputs = {
        CONF_INPUTS: ["binary_sensor.bed_motion"],
        CONF_OCCUPANCY_LABEL: ["sensor.phone_room"],
        CONF_ADVANCED: ADVANCED,
    }
    result = dict(await hass.config_entries.subentries.async_configure(result["flow_id"], space))
    await hass.config_entries.subentries.async_configure(result["flow_id"], inputs)
    (subentry_id,) = hub.subentries
    assert hub.subentries[subentry_id].data[CONF_MODEL_SIZE] == "compact"
    assert hub.subentries[subentry_id].data[CONF_EXCHANGE_MODE] == "both"

    result = dict(
        await hass.config_entries.subentries.async_init(
            (hub.entry_id, SUBENTRY_SPACE),
            context={"source": SOURCE_RECONFIGURE, "subentry_id": subentry_id},
        )
    )
    suggested = {
        str(key): key.description["suggested_value"]
        for key in result["data_schema"].schema
        if key.description and "suggested_value" in key.description
    }
    assert suggested[CONF_EXCHANGE_MODE] == "both"
    result = dict(
        await hass.config_entries.subentries.async_configure(
            result["flow_id"], {**space, CONF_MODEL_SIZE: "large", CONF_EXCHANGE_MODE: "knowledge"}
        )
    )
    result = dict(await hass.config_entries.subentries.async_configure(result["flow_id"], inputs))
    assert result["reason"] == "reconfigure_successful"
    assert hub.subentries[subentry_id].data[CONF_MODEL_SIZE] == "large"
    assert hub.subentries[subentry_id].data[CONF_EXCHANGE_MODE] == "knowledge"
    # a size or mode the selector does not offer is refused by the form
    result = dict(
        await hass.config_entries.subentries.async_init(
            (hub.entry_id, SUBENTRY_SPACE), context={"source": SOURCE_USER}
        )
    )
    with pytest.raises(InvalidData):
        await hass.config_entries.subentries.async_configure(
            result["flow_id"], {**space, CONF_EXCHANGE_MODE: "gossip"}
        )
