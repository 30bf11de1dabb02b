"""A space on a real HA core: entities, availability, actions, repairs and restarts."""

from __future__ import annotations

import base64
import sys
from dataclasses import replace
from typing import Any

import pytest
from homeassistant.config_entries import ConfigEntryState, ConfigSubentryDataWithId
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.mlmule.const import (
    CONF_ACTIVITY_LABEL,
    CONF_ADVANCED,
    CONF_EXCHANGE_MODE,
    CONF_HOLD_ONLY,
    CONF_HOME_NAME,
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
from custom_components.mlmule.core.identity import Identity, PairingCode
from custom_components.mlmule.core.onnx import reset_runtime_backend, save_model
from custom_components.mlmule.core.protocol import ExchangeMode, PayloadKind
from custom_components.mlmule.core.snapshot import pack, unpack
from custom_components.mlmule.diagnostics import async_get_config_entry_diagnostics
from tests.support.ha_fixtures import space_device
from tests.support.models import learned_elsewhere

SPACE_ID = "bedroom01"
INPUT_STATES: dict[str, tuple[str, dict[str, Any]]] = {
    "binary_sensor.bed_motion": ("off", {"device_class": "motion"}),
    "sensor.bed_co2": ("610", {"device_class": "carbon_dioxide", "unit_of_measurement": "ppm"}),
    "sensor.bed_tv_power": ("2.5", {"device_class": "power", "unit_of_measurement": "W"}),
}


def space_subentry(**changes: Any) -> ConfigSubentryDataWithId:
    data = {
        "name": "Bedroom",
        CONF_ROOM_KIND: "bedroom",
        CONF_TASKS: ["occupancy", "activity"],
        CONF_SHARING: "guests",
        CONF_INPUTS: list(INPUT_STATES),
        CONF_HOLD_ONLY: ["sensor.bed_tv_power"],
        CONF_OCCUPANCY_LABEL: ["sensor.alice_room"],
        CONF_OCCUPANCY_LABEL_STATE: "bedroom",
        CONF_ACTIVITY_LABEL: "input_select.alice_activity",
        CONF_ADVANCED: {
            "on_threshold": 0.6,
            "off_threshold": 0.4,
            "min_hold_seconds": 0,
            "max_unavailable_fraction": 0.5,
        },
    } | changes
    return ConfigSubentryDataWithId(
        data=data,
        subentry_type=SUBENTRY_SPACE,
        title="Bedroom",
        unique_id=None,
        subentry_id=SPACE_ID,
    )


@pytest.fixture
def hub(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> MockConfigEntry:
    for entity_id, (state, attributes) in INPUT_STATES.items():
        hass.states.async_set(entity_id, state, attributes)
    hass.states.async_set("sensor.alice_room", "kitchen")
    hass.states.async_set("input_select.alice_activity", "cooking")
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={CONF_HOME_NAME: "Maple", CONF_TOPIC_PREFIX: "mlmule"},
        subentries_data=[space_subentry()],
    )
    entry.add_to_hass(hass)
    return entry


async def setup(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    assert await hass.config_entries.async_setup(entry.entry_id)
    # the first training runs as soon as HA has started: let it finish
    await hass.async_block_till_done(wait_background_tasks=True)
    assert entry.state is ConfigEntryState.LOADED


def entity_id(hass: HomeAssistant, platform: str, key: str) -> str:
    found = er.async_get(hass).async_get_entity_id(platform, DOMAIN, f"{SPACE_ID}_{key}")
    assert found is not None, key
    return found


async def test_a_space_predicts_from_the_starter_model_at_once(
    hass: HomeAssistant, hub: MockConfigEntry
) -> None:
    await setup(hass, hub)
    occupancy = hass.states.get(entity_id(hass, "binary_sensor", "occupancy"))
    assert occupancy is not None
    assert occupancy.state in {"on", "off"}
    assert occupancy.attributes["device_class"] == "occupancy"
    assert 0.0 <= occupancy.attributes["probability"] <= 1.0
    assert occupancy.attributes["model_version"] == 1
    assert {item["input"] for item in occupancy.attributes["why"]} <= {"motion", "co2", "power"}
    probability = hass.states.get(entity_id(hass, "sensor", "occupancy_probability"))
    assert probability is not None
    assert 0.0 <= float(probability.state) <= 100.0
    activity = hass.states.get(entity_id(hass, "sensor", "activity"))
    assert activity is not None
    assert activity.state in activity.attributes["options"]
    assert hass.states.get(entity_id(hass, "sensor", "snapshots_merged")).state == "0"  # type: ignore[union-attr]
    device = space_device(hass, SPACE_ID)
    assert device is not None
    assert device.name == "Bedroom"


async def test_entities_go_unavailable_when_most_inputs_are(
    hass: HomeAssistant, hub: MockConfigEntry
) -> None:
    await setup(hass, hub)
    occupancy_id = entity_id(hass, "binary_sensor", "occupancy")
    for entity in ("binary_sensor.bed_motion", "sensor.bed_co2"):
        hass.states.async_set(entity, "unavailable", INPUT_STATES[entity][1])
    await hub.runtime_data.spaces[SPACE_ID].async_refresh()
    await hass.async_block_till_done()
    assert hass.states.get(occupancy_id).state == "unavailable"  # type: ignore[union-attr]
    merged_id = entity_id(hass, "sensor", "snapshots_merged")
    assert hass.states.get(merged_id).state == "0"  # type: ignore[union-attr]
    for entity in ("binary_sensor.bed_motion", "sensor.bed_co2"):
        hass.states.async_set(entity, INPUT_STATES[entity][0], INPUT_STATES[entity][1])
    await hub.runtime_data.spaces[SPACE_ID].async_refresh()
    await hass.async_block_till_done()
    assert hass.states.get(occupancy_id).state in {"on", "off"}  # type: ignore[union-attr]


async def test_pair_export_import_and_rollback(hass: HomeAssistant, hub: MockConfigEntry) -> None:
    await setup(hass, hub)
    device = space_device(hass, SPACE_ID)
    assert device is not None
    phone = Identity.generate(kind="mule", name="Alice's phone")

    paired = await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(phone).encode(), "role": "owner"},
        blocking=True,
        return_response=True,
    )
    assert paired is not None
    assert paired["mule_id"] == phone.id
    home = PairingCode.decode(str(paired["home_code"]))
    assert home.kind == "space"
    assert home.public_key == hub.runtime_data.identity.public_key_bytes

    exported = await hass.services.async_call(
        DOMAIN,
        "export_snapshot",
        {"device_id": device.id, "task": "occupancy"},
        blocking=True,
        return_response=True,
    )
    assert exported is not None
    data = base64.b64decode(str(exported["snapshot"]))
    snapshot = unpack(data, trust=hub.runtime_data.identity, expected_arch=None)
    assert snapshot.meta.context_key == "occupancy/bedroom"
    assert exported["version"] == snapshot.meta.version == 1

    # the phone trained on it elsewhere and signs it as its own newer version; the space merges it
    resigned = pack(
        save_model(learned_elsewhere(snapshot.model)),
        replace(snapshot.meta, version=7, samples=200, data_time=snapshot.meta.created_at),
        phone,
    )
    imported = await hass.services.async_call(
        DOMAIN,
        "import_snapshot",
        {"device_id": device.id, "data": base64.b64encode(resigned).decode()},
        blocking=True,
        return_response=True,
    )
    assert imported is not None
    assert imported["version"] == 2
    with pytest.raises(HomeAssistantError, match="replayed"):
        await hass.services.async_call(
            DOMAIN,
            "import_snapshot",
            {"device_id": device.id, "data": base64.b64encode(resigned).decode()},
            blocking=True,
            return_response=True,
        )
    assert hass.states.get(entity_id(hass, "sensor", "snapshots_merged")).state == "1"  # type: ignore[union-attr]

    rolled = await hass.services.async_call(
        DOMAIN,
        "rollback",
        {"device_id": device.id, "task": "occupancy"},
        blocking=True,
        return_response=True,
    )
    assert rolled == {"context_key": "occupancy/bedroom", "version": 1}

    await hass.services.async_call(DOMAIN, "unpair_mule", {"mule_id": phone.id}, blocking=True)
    with pytest.raises(ServiceValidationError):
        await hass.services.async_call(DOMAIN, "unpair_mule", {"mule_id": phone.id}, blocking=True)


async def test_action_errors_are_clear(hass: HomeAssistant, hub: MockConfigEntry) -> None:
    await setup(hass, hub)
    device = space_device(hass, SPACE_ID)
    assert device is not None
    with pytest.raises(ServiceValidationError, match="not an ML Mule space"):
        await hass.services.async_call(DOMAIN, "train", {"device_id": "nope"}, blocking=True)
    with pytest.raises(ServiceValidationError, match="not valid"):
        await hass.services.async_call(
            DOMAIN, "pair_mule", {"code": "MLMULE-XXXX"}, blocking=True, return_response=True
        )
    home_code = PairingCode.for_identity(hub.runtime_data.identity).encode()
    with pytest.raises(ServiceValidationError, match="home's pairing code"):
        await hass.services.async_call(
            DOMAIN, "pair_mule", {"code": home_code}, blocking=True, return_response=True
        )
    with pytest.raises(ServiceValidationError, match="may access"):
        await hass.services.async_call(
            DOMAIN,
            "export_snapshot",
            {"device_id": device.id, "path": "/etc/x.mlms"},
            blocking=True,
            return_response=True,
        )
    with pytest.raises(HomeAssistantError, match="rejected"):
        await hass.services.async_call(
            DOMAIN,
            "import_snapshot",
            {"device_id": device.id, "data": base64.b64encode(b"junk").decode()},
            blocking=True,
            return_response=True,
        )
    with pytest.raises(ServiceValidationError, match="no older version"):
        await hass.services.async_call(
            DOMAIN, "rollback", {"device_id": device.id}, blocking=True, return_response=True
        )


async def test_missing_inputs_and_labels_raise_repairs(
    hass: HomeAssistant, hub: MockConfigEntry, issue_registry: ir.IssueRegistry
) -> None:
    hass.states.async_remove("sensor.alice_room")
    hass.states.async_remove("sensor.bed_co2")
    await setup(hass, hub)
    issue = issue_registry.async_get_issue(DOMAIN, f"input_missing_{SPACE_ID}")
    assert issue is not None
    assert issue.translation_placeholders == {"space": "Bedroom", "entities": "sensor.bed_co2"}
    assert issue_registry.async_get_issue(DOMAIN, f"label_source_missing_{SPACE_ID}") is not None
    hass.states.async_set("sensor.alice_room", "bedroom")
    hass.states.async_set("sensor.bed_co2", "600", INPUT_STATES["sensor.bed_co2"][1])
    hub.runtime_data.spaces[SPACE_ID].async_check_entities()
    assert issue_registry.async_get_issue(DOMAIN, f"input_missing_{SPACE_ID}") is None
    assert issue_registry.async_get_issue(DOMAIN, f"label_source_missing_{SPACE_ID}") is None


async def test_models_survive_a_restart(hass: HomeAssistant, hub: MockConfigEntry) -> None:
    await setup(hass, hub)
    space = hub.runtime_data.spaces[SPACE_ID]
    identity = hub.runtime_data.identity.id
    before = space.host.slot("occupancy/bedroom").snapshot.sha256
    assert await hass.config_entries.async_unload(hub.entry_id)
    await hass.async_block_till_done()
    await setup(hass, hub)
    again = hub.runtime_data.spaces[SPACE_ID]
    assert again is not space
    assert hub.runtime_data.identity.id == identity
    assert again.host.slot("occupancy/bedroom").snapshot.sha256 == before


async def test_binary_sensor_follows_the_hysteresis(
    hass: HomeAssistant, hub: MockConfigEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On above 0.6, off below 0.4, no change in between (the model's output is scripted)."""
    await setup(hass, hub)
    space = hub.runtime_data.spaces[SPACE_ID]
    slot = space.host.slot("occupancy/bedroom")
    occupancy_id = entity_id(hass, "binary_sensor", "occupancy")
    current = [0.0]
    original = slot.predict

    def scripted(x: Any) -> Any:
        out = original(x)
        out[:, 0] = current[0]
        return out

    monkeypatch.setattr(slot, "predict", scripted)
    seen = []
    for probability in (0.3, 0.5, 0.65, 0.45, 0.39, 0.59, 0.61):
        current[0] = probability
        await space.async_refresh()
        await hass.async_block_till_done()
        state = hass.states.get(occupancy_id)
        assert state is not None
        seen.append((state.state, state.attributes["probability"]))
    assert [s for s, _ in seen] == ["off", "off", "on", "on", "off", "off", "on"]
    assert [p for _, p in seen] == [0.3, 0.5, 0.65, 0.45, 0.39, 0.59, 0.61]


async def test_removing_a_space_removes_its_device(
    hass: HomeAssistant, hub: MockConfigEntry
) -> None:
    await setup(hass, hub)
    assert space_device(hass, SPACE_ID) is not None
    assert hass.config_entries.async_remove_subentry(hub, SPACE_ID)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert hub.state is ConfigEntryState.LOADED
    assert hub.runtime_data.spaces == {}
    assert space_device(hass, SPACE_ID) is None
    assert (
        er.async_get(hass).async_get_entity_id("binary_sensor", DOMAIN, f"{SPACE_ID}_occupancy")
        is None
    )


async def test_without_onnxruntime_the_space_predicts_with_numpy(
    hass: HomeAssistant,
    hub: MockConfigEntry,
    monkeypatch: pytest.MonkeyPatch,
    issue_registry: ir.IssueRegistry,
) -> None:
    """HA OS (musl) has no onnxruntime: the integration still installs and predicts, and its
    diagnostics say which runtime runs the models (not a repair: nothing needs fixing)."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    reset_runtime_backend()
    try:
        await setup(hass, hub)
        space = hub.runtime_data.spaces[SPACE_ID]
        assert space.host.slot("occupancy/bedroom").session.backend == "numpy"
        state = hass.states.get(entity_id(hass, "binary_sensor", "occupancy"))
        assert state is not None
        assert state.state in {"on", "off"}
        assert 0.0 <= state.attributes["probability"] <= 1.0
        assert not [i for (domain, i) in issue_registry.issues if domain == DOMAIN]
        diagnostics = await async_get_config_entry_diagnostics(hass, hub)
        assert diagnostics["runtime"]["backend"] == "numpy"
        assert "onnxruntime" in diagnostics["runtime"]["onnxruntime_unavailable"]
    finally:
        reset_runtime_backend()


async def test_a_space_added_before_exchange_modes_keeps_swapping_weights(
    hass: HomeAssistant, hub: MockConfigEntry
) -> None:
    # the hub's space was stored without an exchange mode, as every space before there was one
    assert CONF_EXCHANGE_MODE not in hub.subentries[SPACE_ID].data
    await setup(hass, hub)
    space = hub.runtime_data.spaces[SPACE_ID]
    assert space.settings.exchange_mode is ExchangeMode.WEIGHTS
    assert space.exchange_kinds("occupancy/bedroom") == {PayloadKind.WEIGHTS}
    assert not space.exchanges_knowledge
    knowledge_cache = er.async_get(hass).async_get_entity_id(
        "sensor", DOMAIN, f"{SPACE_ID}_knowledge_cache"
    )
    assert knowledge_cache is None  # no knowledge entities for a weights-only space
