"""Knowledge exchange on a real Home Assistant core over a real mosquitto: a scripted phone on
its own paho client walks into a space, and the space caches and distils what it carries, or
refuses it and changes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from homeassistant.config_entries import ConfigSubentry
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.mlmule.const import (
    CONF_ADVANCED,
    CONF_EXCHANGE_MODE,
    CONF_HOME_NAME,
    CONF_INPUTS,
    CONF_MODEL_SIZE,
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
from custom_components.mlmule.core.host import ModelHost
from custom_components.mlmule.core.identity import Identity, PairingCode, TrustEntry, TrustStore
from custom_components.mlmule.core.onnx import load_model
from custom_components.mlmule.core.protocol import MuleEndpoint, ProtocolConfig
from custom_components.mlmule.core.starter import load_starter
from tests.ha.broker_phone import BrokerPhone, mqtt_broker
from tests.support.broker import Broker
from tests.support.models import learned_elsewhere

__all__ = ["mqtt_broker"]

SPACE_ID = "bedroom01"
KEY = "occupancy/bedroom"


@pytest.fixture
def hub(hass: HomeAssistant, mqtt_broker: Broker) -> MockConfigEntry:
    hass.states.async_set("binary_sensor.bed_motion", "off", {"device_class": "motion"})
    hass.states.async_set("sensor.alice_room", "kitchen")
    entry = MockConfigEntry(
        domain=DOMAIN, data={CONF_HOME_NAME: "Maple", CONF_TOPIC_PREFIX: "mlmule"}
    )
    entry.add_to_hass(hass)
    return entry


def space_subentry(mule_id: str, exchange_mode: str) -> ConfigSubentry:
    return ConfigSubentry(
        data={
            "name": "Bedroom",
            CONF_ROOM_KIND: "bedroom",
            CONF_TASKS: ["occupancy"],
            CONF_SHARING: "owners",
            CONF_MODEL_SIZE: "compact",
            CONF_EXCHANGE_MODE: exchange_mode,
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


def make_phone(tmp_path: Path, home: Identity, broker: Broker) -> BrokerPhone:
    """A phone that trusts the home and carries a model learned elsewhere."""
    identity = Identity.generate(kind="mule", name="alice-phone")
    trust = TrustStore()
    trust.add(
        TrustEntry.for_key(
            home.public_key_bytes, kind="space", role="owner", label="home", paired_at=time.time()
        )
    )
    host = ModelHost(tmp_path / "phone", identity, trust)
    host.install(
        learned_elsewhere(load_model(load_starter(KEY).onnx_bytes)),
        context_key=KEY,
        samples=400,
        data_time=time.time(),
    )
    endpoint = MuleEndpoint(identity, trust, config=ProtocolConfig(prefix="mlmule"))
    slot = host.slot(KEY)
    endpoint.carry(slot.offer(), slot.container)
    return BrokerPhone(identity, host, endpoint, broker)


async def start(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path, broker: Broker, exchange_mode: str
) -> BrokerPhone:
    """Set up the hub, pair the phone, add the space with the phone's presence, connect it."""
    assert await hass.config_entries.async_setup(hub.entry_id)
    await hass.async_block_till_done()
    phone = make_phone(tmp_path, hub.runtime_data.identity, broker)
    await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(phone.identity).encode(), "role": "owner"},
        blocking=True,
        return_response=True,
    )
    hass.config_entries.async_add_subentry(hub, space_subentry(phone.identity.id, exchange_mode))
    await hass.async_block_till_done(wait_background_tasks=True)
    assert SPACE_ID in hub.runtime_data.spaces
    await hass.async_add_executor_job(phone.connect)
    return phone


async def walk_in(hass: HomeAssistant, phone: BrokerPhone, done: object) -> None:
    """The phone's presence fires; wait (off the event loop) until `done()` holds."""
    hass.states.async_set("sensor.alice_room", "bedroom")
    await hass.async_add_executor_job(phone.wait_for, done)
    await hass.async_block_till_done(wait_background_tasks=True)


async def test_weights_travel_over_a_real_broker(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path, mqtt_broker: Broker
) -> None:
    phone = await start(hass, hub, tmp_path, mqtt_broker, "weights")
    try:
        space = hub.runtime_data.spaces[SPACE_ID]
        await walk_in(hass, phone, lambda: bool(phone.completed) and len(phone.delivered) == 2)
    finally:
        await hass.async_add_executor_job(phone.stop)
    assert [c.accepted for c in phone.completed] == [True]
    assert space.host.counters["merged"] == 1
    # the phone took the space's merge back (and declined its phone-activity model)
    taken = {
        d.snapshot.context_key: (d, accepted, reason) for d, accepted, reason in phone.delivered
    }
    delivery, accepted, reason = taken[KEY]
    assert accepted, reason
    assert delivery.snapshot.sha256 == space.host.slot(KEY).snapshot.sha256
