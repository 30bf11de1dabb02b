"""Relay spaces on a real Home Assistant core: the subentry flow, phones walking in over HA's
MQTT (the scripted phone of test_exchange runs the real mule protocol), rejections, reloads."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from homeassistant.config_entries import SOURCE_RECONFIGURE, SOURCE_USER, ConfigSubentry
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
)
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator, MqttMockHAClient
from test_exchange import KEY, ScriptedMule, make_mule

from custom_components.mlmule.const import (
    CONF_HOME_NAME,
    CONF_PRESENCE,
    CONF_ROOM_KINDS,
    CONF_SHARING,
    CONF_TASKS,
    CONF_TOPIC_PREFIX,
    DOMAIN,
    SUBENTRY_RELAY,
)
from custom_components.mlmule.coordinator import PHONE_ACTIVITY
from custom_components.mlmule.core import families
from custom_components.mlmule.core.identity import Identity, PairingCode
from custom_components.mlmule.core.onnx import load_model
from custom_components.mlmule.core.protocol import Deliver, Mode
from custom_components.mlmule.core.starter import load_starter
from custom_components.mlmule.relay import RelayCoordinator
from tests.support.ha_fixtures import space_device
from tests.support.models import learned_elsewhere

RELAY_ID = "office01"
TRACKERS = {"alice-phone": "device_tracker.alice_phone", "bob-phone": "device_tracker.bob_phone"}


@pytest.fixture
def hub(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> MockConfigEntry:
    for tracker in TRACKERS.values():
        hass.states.async_set(tracker, "not_home")
    entry = MockConfigEntry(
        domain=DOMAIN, data={CONF_HOME_NAME: "Acme office", CONF_TOPIC_PREFIX: "mlmule"}
    )
    entry.add_to_hass(hass)
    return entry


async def pair(hass: HomeAssistant, phone: Identity, role: str) -> None:
    await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(phone).encode(), "role": role, "label": phone.name},
        blocking=True,
        return_response=True,
    )


async def settle(hass: HomeAssistant) -> None:
    """Let an encounter run to its end (each MQTT message is a background task)."""
    for _ in range(20):
        await hass.async_block_till_done(wait_background_tasks=True)


async def start_relay(
    hass: HomeAssistant,
    hub: MockConfigEntry,
    tmp_path: Path,
    phones: dict[str, bool],
    *,
    running: bool = True,
    tasks: tuple[str, ...] = ("occupancy",),
    kinds: tuple[str, ...] = ("bedroom",),
) -> dict[str, ScriptedMule]:
    """Set up the hub, pair each phone as a guest (carrying a learned model or the bare
    starter), then add the office's relay space with each phone's tracker as its presence.
    Unless `running`, the phones' companions are not connected: nothing answers the relay."""
    assert await hass.config_entries.async_setup(hub.entry_id)
    await hass.async_block_till_done()
    mules = {
        name: make_mule(hass, tmp_path, hub.runtime_data.identity, name, learned=learned)
        for name, learned in phones.items()
    }
    for mule in mules.values():
        await pair(hass, mule.identity, "guest")
    hass.config_entries.async_add_subentry(
        hub,
        ConfigSubentry(
            data={
                "name": "Office",
                CONF_TASKS: list(tasks),
                CONF_ROOM_KINDS: list(kinds),
                CONF_SHARING: "guests",
                CONF_PRESENCE: {
                    mule.identity.id: {"entity": TRACKERS[name], "state": "Office"}
                    for name, mule in mules.items()
                },
            },
            subentry_type=SUBENTRY_RELAY,
            title="Office",
            unique_id=None,
            subentry_id=RELAY_ID,
        ),
    )
    await hass.async_block_till_done(wait_background_tasks=True)
    for mule in mules.values() if running else ():
        await mule.attach()
    await hass.async_block_till_done()
    return mules


@dataclass
class TrainingPhone(ScriptedMule):
    """A phone in mobile-data mode: it takes the relay's model (the companion would merge it
    into its own), trains it on what it sensed there (here: moves it as training would) and
    answers with the result."""

    answered: list[str] = field(default_factory=list)

    def _run(self, actions: list[Any]) -> None:
        for action in actions:
            if not (isinstance(action, Deliver) and action.mode is Mode.MOBILE):
                super()._run([action])
                continue
            taken = self.host.adopt(action.payload)
            assert taken.accepted, taken.detail
            self._run(
                self.endpoint.settle(
                    action.ref.session, action.transfer, accepted=True, reason="ok", now=time.time()
                )
            )
            key = action.snapshot.context_key
            model = load_model(self.host.slot(key).snapshot.onnx_bytes)
            self.host.install(
                learned_elsewhere(model, seed=11),
                context_key=key,
                samples=300,
                data_time=time.time(),
                replace=True,
            )
            slot = self.host.slot(key)
            self.answered.append(slot.snapshot.sha256)
            self._run(
                self.endpoint.reply(
                    action.ref.session,
                    slot.offer(),
                    slot.container,
                    in_reply_to=action.snapshot.sha256,
                    now=time.time(),
                )
            )


def relay(hub: MockConfigEntry) -> RelayCoordinator:
    return hub.runtime_data.relays[RELAY_ID]


def state(hass: HomeAssistant, entity_id: str) -> Any:
    current = hass.states.get(entity_id)
    assert current is not None, entity_id
    return current


async def walk_in(hass: HomeAssistant, phone: str) -> None:
    hass.states.async_set(TRACKERS[phone], "office")  # presence compares without case
    await settle(hass)


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[name] - b[name]).astype(np.float64) ** 2) for name in a)))


async def test_flow_creates_a_relay_with_its_keys_sharing_and_presence(
    hass: HomeAssistant, hub: MockConfigEntry, entity_registry: er.EntityRegistry
) -> None:
    assert await hass.config_entries.async_setup(hub.entry_id)
    await hass.async_block_till_done()
    alice, bob = (Identity.generate(kind="mule", name=name) for name in ("Alice", "Bob"))
    await pair(hass, alice, "owner")
    await pair(hass, bob, "guest")
    result: Any = await hass.config_entries.subentries.async_init(
        (hub.entry_id, SUBENTRY_RELAY), context={"source": SOURCE_USER}
    )
    assert result["step_id"] == "user"
    relay_input = {
        "name": "Office",
        CONF_TASKS: ["occupancy", "phone_activity"],
        CONF_ROOM_KINDS: ["office", "kitchen"],
        CONF_SHARING: "guests",
    }
    for changes, name, error in (
        ({CONF_TASKS: []}, CONF_TASKS, "no_task"),
        ({CONF_ROOM_KINDS: []}, CONF_ROOM_KINDS, "no_room_kind"),
        # no starter model predicts activity for a whole home
        ({CONF_TASKS: ["activity"], CONF_ROOM_KINDS: ["home"]}, CONF_TASKS, "no_starter_model"),
    ):
        result = await hass.config_entries.subentries.async_configure(
            result["flow_id"], {**relay_input, **changes}
        )
        assert result["type"] is FlowResultType.FORM
        assert result["errors"] == {name: error}
    result = await hass.config_entries.subentries.async_configure(result["flow_id"], relay_input)
    # guests may use it: one presence form per paired phone, owners and guests
    assert result["step_id"] == "presence"
    assert result["description_placeholders"] == {"mule": "Alice", "role": "owner"}
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {"entity": "device_tracker.alice_phone", "state": "Office"}
    )
    assert result["description_placeholders"] == {"mule": "Bob", "role": "guest"}
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {"entity": "device_tracker.bob_phone", "state": "Office"}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done(wait_background_tasks=True)

    (subentry,) = hub.subentries.values()
    assert subentry.subentry_type == SUBENTRY_RELAY
    assert subentry.data[CONF_PRESENCE] == {
        alice.id: {"entity": "device_tracker.alice_phone", "state": "Office"},
        bob.id: {"entity": "device_tracker.bob_phone", "state": "Office"},
    }
    office = hub.runtime_data.relays[subentry.subentry_id]
    keys = [
        "occupancy/office",
        "occupancy/kitchen",
        "phone_activity/office",
        "phone_activity/kitchen",
    ]
    assert list(office.settings.context_keys) == keys
    assert office.settings.guests_allowed
    # each key starts from its starter model, and none is trained or predicted with
    for key in keys:
        slot = office.host.slot(key)
        assert slot.version == 1
        _, _, starter = families.from_onnx(load_model(load_starter(key).onnx_bytes))
        for name, value in starter.items():
            np.testing.assert_array_equal(slot.weights[name], value)
    assert office.host.counters["trained"] == 0
    assert {str(mode) for mode in office.exchanged_keys().values()} == {"fixed", "mobile"}
    assert subentry.subentry_id not in hub.runtime_data.spaces
    device = space_device(hass, subentry.subentry_id)
    assert device is not None
    assert device.model == "Relay space"
    entities = er.async_entries_for_device(entity_registry, device.id)
    assert sorted(entity.translation_key or "" for entity in entities) == [
        "knowledge_cache",
        "knowledge_rejected",
        "phones_seen",
        "snapshots_merged",
        "snapshots_rejected",
    ]
    assert state(hass, "sensor.office_snapshots_merged").state == "0"
    assert state(hass, "sensor.office_phones_seen").state == "0"

    # reconfigured for owners only: only Alice is asked about, and the relay reloads with it
    result = await hass.config_entries.subentries.async_init(
        (hub.entry_id, SUBENTRY_RELAY),
        context={"source": SOURCE_RECONFIGURE, "subentry_id": subentry.subentry_id},
    )
    assert result["step_id"] == "reconfigure"
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {**relay_input, CONF_SHARING: "owners"}
    )
    assert result["description_placeholders"] == {"mule": "Alice", "role": "owner"}
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {"entity": "device_tracker.alice_phone", "state": "Office"}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    await hass.async_block_till_done(wait_background_tasks=True)
    assert not hub.runtime_data.relays[subentry.subentry_id].settings.guests_allowed


async def test_a_guests_snapshot_is_merged_within_the_guest_bounds_and_handed_back(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path
) -> None:
    mules = await start_relay(hass, hub, tmp_path, {"alice-phone": True, "bob-phone": False})
    alice, bob = mules["alice-phone"], mules["bob-phone"]
    office = relay(hub)
    starter = office.host.slot(KEY).weights
    brought = alice.host.slot(KEY).weights

    await walk_in(hass, "alice-phone")

    assert office.host.counters["merged"] == 1
    assert office.host.counters["trained"] == 0  # a relay has no labels: it never trains
    merged = office.host.slot(KEY)
    assert merged.version == 2
    assert alice.identity.id in merged.meta.lineage
    # a guest's share is capped at a half (and its update clipped), whatever it claims
    moved = distance(merged.weights, starter) / distance(brought, starter)
    assert 0.0 < moved <= 0.5 + 1e-4
    decision = office.host.decisions[KEY]
    assert decision.verdict == "undecided_no_window"
    # Alice's snapshot was accepted, and she took the relay's merge back as it is
    assert [c.accepted for c in alice.completed] == [True]
    (taken,) = alice.adopted
    assert taken.accepted, taken.detail
    for name, value in merged.weights.items():
        np.testing.assert_array_equal(alice.host.slot(KEY).weights[name], value)

    # Bob brings only the starter, which the relay held before: he is handed what Alice left
    await walk_in(hass, "bob-phone")
    assert office.host.counters["held_before"] == 1
    assert office.host.counters["merged"] == 1
    (handed,) = bob.adopted
    assert handed.accepted, handed.detail
    for name, value in merged.weights.items():
        np.testing.assert_array_equal(bob.host.slot(KEY).weights[name], value)

    assert state(hass, "sensor.office_snapshots_merged").state == "1"
    assert state(hass, "sensor.office_snapshots_rejected").state == "0"
    assert state(hass, "sensor.office_phones_seen").state == "2"
    attributes = state(hass, "sensor.office_snapshots_merged").attributes
    assert attributes["versions"] == {KEY: 2}
    assert attributes["last_model_change"][KEY]["reason"] == "undecided_no_window"


async def test_a_phone_counts_as_seen_only_once_it_exchanges(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path
) -> None:
    await start_relay(hass, hub, tmp_path, {"alice-phone": True}, running=False)
    # its tracker says it is here, but its companion is not running: the offer goes unanswered
    await walk_in(hass, "alice-phone")
    assert relay(hub).phones == set()
    assert state(hass, "sensor.office_phones_seen").state == "0"


async def test_a_bad_snapshot_is_rejected_counted_and_changes_nothing(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path
) -> None:
    mules = await start_relay(hass, hub, tmp_path, {"alice-phone": True})
    alice = mules["alice-phone"]
    bad = bytearray(alice.host.export(KEY))
    bad[-10] ^= 0xFF
    alice.carry(bytes(bad))
    office = relay(hub)
    before = office.host.slot(KEY).container

    await walk_in(hass, "alice-phone")

    assert [(c.accepted, c.reason) for c in alice.completed] == [(False, "bad_signature")]
    assert office.host.slot(KEY).container == before
    assert office.host.counters["merged"] == 0
    rejected = state(hass, "sensor.office_snapshots_rejected")
    assert rejected.state == "1"
    assert rejected.attributes["reasons"] == {"bad_signature": 1}
    assert state(hass, "sensor.office_phones_seen").state == "1"


async def test_a_reload_keeps_the_relays_model_counters_and_phones_and_removal_its_device(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path
) -> None:
    await start_relay(hass, hub, tmp_path, {"alice-phone": True})
    await walk_in(hass, "alice-phone")
    kept = relay(hub).host.slot(KEY)
    assert kept.version == 2

    assert await hass.config_entries.async_reload(hub.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)

    office = relay(hub)
    assert office.host.slot(KEY).snapshot.sha256 == kept.snapshot.sha256
    assert office.host.slot(KEY).version == 2
    assert state(hass, "sensor.office_snapshots_merged").state == "1"
    assert state(hass, "sensor.office_phones_seen").state == "1"

    # removing the relay's subentry removes its device and entities
    assert hass.config_entries.async_remove_subentry(hub, RELAY_ID)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert hub.runtime_data.relays == {}
    assert space_device(hass, RELAY_ID) is None
    assert hass.states.get("sensor.office_snapshots_merged") is None


async def test_diagnostics_show_the_relay_without_naming_its_phones(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path, hass_client: ClientSessionGenerator
) -> None:
    mules = await start_relay(hass, hub, tmp_path, {"alice-phone": True})
    await walk_in(hass, "alice-phone")

    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, hub)

    office = diagnostics["relays"][RELAY_ID]
    assert office["settings"] == {"context_keys": [KEY], "guests_allowed": True}
    assert office["phones_seen"] == 1
    assert office["host"]["counters"]["merged"] == 1
    assert office["host"]["models"][KEY]["version"] == 2
    assert office["recent_outcomes"] == [{"accepted": True, "reason": "merged", "context_key": KEY}]
    assert mules["alice-phone"].identity.id not in json.dumps(diagnostics)


async def test_a_phone_paired_for_the_relay_only_exchanges_there_on_demand(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path
) -> None:
    mules = await start_relay(hass, hub, tmp_path, {"alice-phone": True})
    device = space_device(hass, RELAY_ID)
    assert device is not None
    carol = Identity.generate(kind="mule", name="Carol")
    response = await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(carol).encode(), "role": "guest", "spaces": [device.id]},
        blocking=True,
        return_response=True,
    )
    assert response is not None
    paired = hub.runtime_data.trust.get(str(response["mule_id"]))
    assert paired is not None
    assert paired.spaces == frozenset({RELAY_ID})

    alice = mules["alice-phone"]
    response = await hass.services.async_call(
        DOMAIN,
        "exchange_now",
        {"device_id": device.id, "mule_id": alice.identity.id},
        blocking=True,
        return_response=True,
    )
    assert response == {"space": "Office", "mule_id": alice.identity.id, "started": True}
    await settle(hass)
    assert relay(hub).host.counters["merged"] == 1
    assert len(alice.adopted) == 1


async def test_a_phones_trained_activity_model_is_merged_in_mobile_data_mode(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path
) -> None:
    mules = await start_relay(
        hass,
        hub,
        tmp_path,
        {"alice-phone": True},
        running=False,
        tasks=(PHONE_ACTIVITY,),
        kinds=("office",),
    )
    scripted = mules["alice-phone"]
    alice = TrainingPhone(scripted.hass, scripted.identity, scripted.host, scripted.endpoint)
    key = f"{PHONE_ACTIVITY}/office"
    # a phone in mobile-data mode holds its own activity model from the start
    alice.host.install(load_model(load_starter(key).onnx_bytes), context_key=key)
    await alice.attach()
    office = relay(hub)
    assert office.exchanged_keys() == {key: Mode.MOBILE}
    starter = office.host.slot(key).weights

    await walk_in(hass, "alice-phone")

    (answer,) = alice.answered
    trained = alice.host.slot(key).weights
    assert office.host.counters["merged"] == 1
    assert office.host.counters["trained"] == 0
    assert office.host.slot(key).version == 2
    assert office.host.last_outcomes[-1].sha256 == answer
    moved = distance(office.host.slot(key).weights, starter) / distance(trained, starter)
    assert 0.0 < moved <= 0.5 + 1e-4  # a guest's share, capped
    assert state(hass, "sensor.office_phones_seen").state == "1"
