"""A real mosquitto under Home Assistant's real MQTT integration, and a scripted phone on its own
paho client: the phone's messages travel through the broker and are handled on the phone's
network thread, as another device's would be.

`mqtt_broker` replaces the harness's MQTT mock: the MQTT config entry points at a mosquitto on a
free loopback port (the harness allows sockets to 127.0.0.1 once `socket_enabled` is asked for).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from paho.mqtt.enums import CallbackAPIVersion
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.mlmule.const import DOMAIN
from custom_components.mlmule.core.errors import ProtocolError
from custom_components.mlmule.core.host import ModelHost
from custom_components.mlmule.core.identity import Identity
from custom_components.mlmule.core.protocol import (
    Action,
    Completed,
    Deliver,
    Mode,
    MuleEndpoint,
    Publish,
)
from tests.support.broker import Broker, start_broker

WAIT = 30.0


@pytest.fixture
async def mqtt_broker(
    hass: HomeAssistant, tmp_path: Path, socket_enabled: None
) -> AsyncIterator[Broker]:
    """Home Assistant's MQTT integration connected to a real mosquitto."""
    # the MQTT integration reads configuration.yaml for its YAML-configured entities
    (tmp_path / "configuration.yaml").write_text("")
    broker = start_broker(tmp_path / "mosquitto")
    entry = MockConfigEntry(
        domain=mqtt.DOMAIN,
        data={"broker": broker.host, "port": broker.port},
        version=1,
        minor_version=2,
    )
    entry.add_to_hass(hass)
    try:
        assert await hass.config_entries.async_setup(entry.entry_id)
        assert await mqtt.async_wait_for_mqtt_client(hass)
        yield broker
        for loaded in hass.config_entries.async_entries(DOMAIN):
            if loaded.state is ConfigEntryState.LOADED:
                await hass.config_entries.async_unload(loaded.entry_id)
        await hass.config_entries.async_unload(entry.entry_id)
        await hass.async_block_till_done()
    finally:
        broker.stop()


@dataclass
class BrokerPhone:
    """A phone: the real `MuleEndpoint` and a `ModelHost` behind a paho client of its own.

    `on_deliver` decides what the phone does with a snapshot it fetched: it returns whether the
    phone accepts it and the reason it gives; the default adopts a model (fixed-data mode).
    """

    identity: Identity
    host: ModelHost
    endpoint: MuleEndpoint
    broker: Broker
    on_deliver: Callable[[BrokerPhone, Deliver], tuple[bool, str]] | None = None
    completed: list[Completed] = field(default_factory=list)
    delivered: list[tuple[Deliver, bool, str]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.identity.id}")
        self.client.on_connect = lambda client, *_: client.subscribe(
            [(topic, 1) for topic in self.endpoint.subscriptions()]
        )
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def connect(self) -> None:
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT), "the phone could not subscribe"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if condition():
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; the phone saw {self.completed}")
            time.sleep(0.05)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: Any) -> None:
        with self.lock:
            try:
                actions = self.endpoint.receive(message.topic, bytes(message.payload), time.time())
            except ProtocolError:
                return
            self._carry_out(actions)

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.client.publish(action.topic, action.payload, qos=action.qos, retain=False)
            elif isinstance(action, Deliver):
                accepted, reason = (self.on_deliver or adopt)(self, action)
                self.delivered.append((action, accepted, reason))
                self._carry_out(
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


def adopt(phone: BrokerPhone, action: Deliver) -> tuple[bool, str]:
    """Take the space's model as it is in fixed-data mode; this phone does not train, so it
    declines mobile-data models."""
    if action.mode is not Mode.FIXED:
        return False, "not_training"
    outcome = phone.host.adopt(action.payload)
    return outcome.accepted, outcome.reason
