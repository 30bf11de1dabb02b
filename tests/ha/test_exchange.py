"""The encounter over HA's MQTT integration, with a scripted mule running the real mule protocol.

HA's MQTT client is the harness's mock, which hands every published message to the subscribers
in the same HA: the mule subscribes to its inbox there, and answers with `async_fire_mqtt_message`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigSubentry
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import ServiceValidationError
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.mlmule.const import (
    CONF_ADVANCED,
    CONF_HOME_NAME,
    CONF_INPUTS,
    CONF_OCCUPANCY_LABEL,
    CONF_OCCUPANCY_LABEL_STATE,
    CONF_PRESENCE,
    CONF_ROOM_KIND,
    CONF_SHARING,
    CONF_TASKS,
    CONF_TOPIC_PREFIX,
    DOMAIN,
    SUBENTRY_SPACE,
)
from custom_components.mlmule.core.errors import ProtocolError
from custom_components.mlmule.core.host import ModelHost
from custom_components.mlmule.core.identity import Identity, PairingCode, TrustEntry, TrustStore
from custom_components.mlmule.core.onnx import load_model, save_model, with_initializers
from custom_components.mlmule.core.protocol import (
    Completed,
    Deliver,
    Mode,
    MuleEndpoint,
    ProtocolConfig,
    Publish,
)
from custom_components.mlmule.core.snapshot import inspect, unpack
from custom_components.mlmule.core.starter import load_starter
from tests.support.forge import resigned
from tests.support.ha_fixtures import space_device
from tests.support.models import learned_elsewhere

SPACE_ID = "bedroom01"
KEY = "occupancy/bedroom"


@dataclass
class ScriptedMule:
    """A phone: the real `MuleEndpoint` and a `ModelHost`, over HA's (mocked) MQTT client."""

    hass: HomeAssistant
    identity: Identity
    host: ModelHost
    endpoint: MuleEndpoint
    completed: list[Completed] = field(default_factory=list)
    adopted: list[Any] = field(default_factory=list)

    async def attach(self) -> None:
        for topic in self.endpoint.subscriptions():
            await mqtt.async_subscribe(self.hass, topic, self._message, qos=1, encoding=None)

    def carry(self, data: bytes) -> None:
        """Offer `data` as what the phone carries (its header read, nothing verified)."""
        header = inspect(data)["header"]
        assert isinstance(header, dict)
        info = replace(
            self.host.slot(KEY).offer(),
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            version=int(header["version"]),
            data_time=int(header["data_time"]),
        )
        self.endpoint.carry(info, data)

    @callback
    def _message(self, message: mqtt.ReceiveMessage) -> None:
        try:
            actions = self.endpoint.receive(message.topic, message.payload, time.time())  # type: ignore[arg-type]
        except ProtocolError:
            return
        self._run(actions)

    def _run(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                async_fire_mqtt_message(self.hass, action.topic, action.payload, qos=1)
            elif isinstance(action, Deliver):
                # fixed-data mode: take the space's merged, trained model as it is; this
                # scripted phone does not train, so it declines mobile-data models
                if action.mode is Mode.FIXED:
                    outcome = self.host.adopt(action.payload)
                    self.adopted.append(outcome)
                    accepted, reason = outcome.accepted, outcome.reason
                else:
                    accepted, reason = False, "not_training"
                self._run(
                    self.endpoint.settle(
                        action.ref.session,
                        action.transfer,
                        accepted=accepted,
                        reason=reason,
                        now=time.time(),
                    )
                )
            elif isinstance(action, Completed):
                self.completed.append(action)


def make_mule(
    hass: HomeAssistant, tmp_path: Path, home: Identity, name: str, *, learned: bool = True
) -> ScriptedMule:
    identity = Identity.generate(kind="mule", name=name)
    trust = TrustStore()
    trust.add(
        TrustEntry.for_key(
            home.public_key_bytes, kind="space", role="owner", label="home", paired_at=time.time()
        )
    )
    host = ModelHost(tmp_path / name, identity, trust)
    starter = load_starter(KEY)
    model = load_model(starter.onnx_bytes)
    host.install(
        learned_elsewhere(model) if learned else model,
        context_key=KEY,
        samples=400,
        data_time=time.time(),
    )
    endpoint = MuleEndpoint(identity, trust, config=ProtocolConfig(prefix="mlmule"))
    mule = ScriptedMule(hass, identity, host, endpoint)
    mule.carry(host.export(KEY))
    return mule


@pytest.fixture
def hub(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> MockConfigEntry:
    hass.states.async_set("binary_sensor.bed_motion", "off", {"device_class": "motion"})
    hass.states.async_set("sensor.alice_room", "kitchen")
    entry = MockConfigEntry(
        domain=DOMAIN,
        data={CONF_HOME_NAME: "Maple", CONF_TOPIC_PREFIX: "mlmule"},
        subentries_data=[],
    )
    entry.add_to_hass(hass)
    return entry


async def start(
    hass: HomeAssistant,
    hub: MockConfigEntry,
    tmp_path: Path,
    role: str = "owner",
    *,
    learned: bool = True,
) -> ScriptedMule:
    """Set up the hub, pair a phone, then add the space with the phone's presence trigger."""
    assert await hass.config_entries.async_setup(hub.entry_id)
    await hass.async_block_till_done()
    mule = make_mule(hass, tmp_path, hub.runtime_data.identity, "alice-phone", learned=learned)
    await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(mule.identity).encode(), "role": role},
        blocking=True,
        return_response=True,
    )
    hass.config_entries.async_add_subentry(
        hub,
        _subentry(mule.identity.id),
    )
    await hass.async_block_till_done(wait_background_tasks=True)
    assert SPACE_ID in hub.runtime_data.spaces
    await mule.attach()
    await hass.async_block_till_done()
    return mule


def _subentry(mule_id: str) -> ConfigSubentry:
    return ConfigSubentry(
        data={
            "name": "Bedroom",
            CONF_ROOM_KIND: "bedroom",
            CONF_TASKS: ["occupancy"],
            CONF_SHARING: "owners",
            CONF_INPUTS: ["binary_sensor.bed_motion"],
            CONF_OCCUPANCY_LABEL: ["sensor.alice_room"],
            CONF_OCCUPANCY_LABEL_STATE: "bedroom",
            CONF_PRESENCE: {mule_id: {"entity": "sensor.alice_room", "state": "bedroom"}},
            CONF_ADVANCED: {
                "on_threshold": 0.6,
                "off_threshold": 0.4,
                "min_hold_seconds": 0,
                "max_unavailable_fraction": 0.5,
            },
        },
        subentry_type=SUBENTRY_SPACE,
        title="Bedroom",
        unique_id=None,
        subentry_id=SPACE_ID,
    )


async def walk_in(hass: HomeAssistant) -> None:
    """Alice's phone reports the bedroom: presence fires and the encounter runs to its end."""
    hass.states.async_set("sensor.alice_room", "bedroom")
    for _ in range(20):
        await hass.async_block_till_done(wait_background_tasks=True)


async def test_the_spaces_own_model_coming_back_is_settled_unchanged(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path
) -> None:
    # the phone carries the bare starter, which the space also started from
    mule = await start(hass, hub, tmp_path, learned=False)
    space = hub.runtime_data.spaces[SPACE_ID]
    await walk_in(hass)

    assert space.host.counters["unchanged"] == 1
    assert space.host.counters["merged"] == space.host.counters["trained"] == 0
    assert space.host.slot(KEY).version == 1
    # accepted (nothing to refuse), and nothing sent back: the phone holds this model already
    assert [c.accepted for c in mule.completed] == [True]
    assert mule.adopted == []


async def test_fixed_data_encounter_merges_trains_and_returns(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path
) -> None:
    mule = await start(hass, hub, tmp_path)
    space = hub.runtime_data.spaces[SPACE_ID]
    assert space.host.slot(KEY).version == 1
    await walk_in(hass)

    assert space.host.counters["merged"] == 1
    slot = space.host.slot(KEY)
    assert slot.version >= 2
    assert slot.meta.lineage[-1] == mule.identity.id or mule.identity.id in slot.meta.lineage
    # the mule's snapshot was accepted, and it took the space's merge back
    assert [c.accepted for c in mule.completed] == [True]
    assert len(mule.adopted) == 1
    assert mule.adopted[0].accepted, mule.adopted[0].detail
    carried = mule.host.slot(KEY)
    for name, value in slot.weights.items():
        np.testing.assert_array_equal(carried.weights[name], value)
    assert hub.runtime_data.exchange is not None
    assert hub.runtime_data.exchange.bytes_sent > slot.snapshot.size


@pytest.mark.parametrize("attack", ["bad_signature", "stale", "poisoned", "unknown_signer"])
async def test_bad_snapshots_are_rejected_and_change_nothing(
    hass: HomeAssistant,
    hub: MockConfigEntry,
    tmp_path: Path,
    issue_registry: ir.IssueRegistry,
    attack: str,
) -> None:
    mule = await start(hass, hub, tmp_path)
    good = mule.host.export(KEY)
    if attack == "bad_signature":
        bad = bytearray(good)
        bad[-10] ^= 0xFF
        data = bytes(bad)
    elif attack == "stale":
        data = resigned(
            good, lambda h: h.update(data_time=time.time() - 400 * 86400), signer=mule.identity
        )
    elif attack == "poisoned":
        model = load_model(unpack(good, trust=mule.identity, expected_arch=None).onnx_bytes)
        nan = {"body.0.bias": np.full_like(model.initializers["body.0.bias"], np.nan)}
        data = resigned(good, signer=mule.identity, body=save_model(with_initializers(model, nan)))
    else:
        data = resigned(good, signer=Identity.generate(kind="mule", name="mallory"))
    mule.carry(data)
    space = hub.runtime_data.spaces[SPACE_ID]
    before = space.host.slot(KEY).container

    await walk_in(hass)

    assert [(c.accepted, c.reason) for c in mule.completed] == [(False, attack)]
    assert space.host.slot(KEY).container == before
    assert space.host.rejections[attack] == 1
    assert mule.adopted == []
    state = hass.states.get("sensor.bedroom_snapshots_rejected")
    assert state is not None
    assert state.state == "1"
    assert state.attributes["reasons"] == {attack: 1}


async def test_an_unpaired_phone_gets_nothing(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path
) -> None:
    mule = await start(hass, hub, tmp_path)
    await hass.services.async_call(
        DOMAIN, "unpair_mule", {"mule_id": mule.identity.id}, blocking=True
    )
    await walk_in(hass)
    assert mule.completed == []
    assert mule.adopted == []
    assert hub.runtime_data.spaces[SPACE_ID].host.counters["received"] == 0


async def test_repeated_rejections_raise_a_repair(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path, issue_registry: ir.IssueRegistry
) -> None:
    await start(hass, hub, tmp_path)
    space = hub.runtime_data.spaces[SPACE_ID]
    for _ in range(5):
        await space.async_receive(b"junk", guest=False, mule="alice-phone")
    issue = issue_registry.async_get_issue(DOMAIN, "snapshots_rejected_alice-phone")
    assert issue is not None
    assert issue.translation_placeholders is not None
    assert issue.translation_placeholders["count"] == "5"
    # an accepted snapshot from the same phone clears it
    space.rejections.record("alice-phone", True, "merged")
    assert issue_registry.async_get_issue(DOMAIN, "snapshots_rejected_alice-phone") is None
    assert Mode.FIXED in space.exchanged_keys().values()


async def test_exchange_now_starts_an_encounter_without_presence(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path
) -> None:
    mule = await start(hass, hub, tmp_path)
    device = space_device(hass, SPACE_ID)
    assert device is not None
    response = await hass.services.async_call(
        DOMAIN,
        "exchange_now",
        {"device_id": device.id, "mule_id": mule.identity.id},
        blocking=True,
        return_response=True,
    )
    assert response == {"space": "Bedroom", "mule_id": mule.identity.id, "started": True}
    for _ in range(20):
        await hass.async_block_till_done(wait_background_tasks=True)
    assert [c.accepted for c in mule.completed] == [True]
    with pytest.raises(ServiceValidationError, match="No exchange"):
        await hass.services.async_call(
            DOMAIN,
            "exchange_now",
            {"device_id": device.id, "mule_id": "strangerphone001"},
            blocking=True,
            return_response=True,
        )
