"""The simulated homes, live: their entities through MQTT discovery, their states on the clock.

Each entity is announced once (retained discovery config), with a retained state topic and an
availability topic (a sensor's dropout is "offline", as a real sensor's would be). The live part
publishes every world change when the replay clock shows its scene time.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from mlmule_core.clock import ReplayClock
from paho.mqtt.enums import CallbackAPIVersion

from .broker import BrokerAddress
from .scenario import DemoEntity, Scenario

DISCOVERY = "homeassistant"
UNAVAILABLE = frozenset({"unavailable", "unknown"})


def state_topic(home: str, entity: DemoEntity) -> str:
    return f"mlmule-demo/{home}/{entity.object_id}"


def discovery_message(home: str, entity: DemoEntity) -> tuple[str, dict[str, object]]:
    topic = state_topic(home, entity)
    config: dict[str, object] = {
        "name": entity.name,
        "unique_id": f"mlmule_demo_{home}_{entity.object_id}",
        "default_entity_id": entity.entity_id,
        "state_topic": topic,
        "availability_topic": f"{topic}/availability",
        "device": {
            "identifiers": [f"mlmule_demo_{entity.device}"],
            "name": entity.device_name,
            "manufacturer": "mlmule demo",
            "model": "Simulated by the seeded world",
            **({"suggested_area": entity.area} if entity.area else {}),
        },
    }
    if entity.device_class:
        config["device_class"] = entity.device_class
    if entity.unit:
        config["unit_of_measurement"] = entity.unit
        config["state_class"] = "measurement"
    if entity.component in ("binary_sensor", "light"):
        config["payload_on"] = "on"
        config["payload_off"] = "off"
    if entity.component == "light":
        config["command_topic"] = f"{topic}/set"  # required; the demo ignores commands
    return f"{DISCOVERY}/{entity.component}/{home}/{entity.object_id}/config", config


@dataclass
class Counters:
    published: int = 0
    late: float = 0.0  # the most a change was published after its scene time, wall seconds


class Publisher:
    """A paho client (its network loop on its own thread) that publishes the homes."""

    def __init__(self, broker: BrokerAddress, client_id: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True
        )
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(15):
            raise RuntimeError(f"could not connect to the MQTT broker {broker.host}:{broker.port}")
        self.counters = Counters()
        self._entities: dict[tuple[str, str], DemoEntity] = {}
        self._available: dict[tuple[str, str], bool] = {}

    def _on_connect(self, *_args: object) -> None:
        self._connected.set()

    def announce(self, home: str, entities: Iterable[DemoEntity]) -> None:
        for entity in entities:
            topic, config = discovery_message(home, entity)
            self.client.publish(topic, json.dumps(config), qos=1, retain=True)
            self._entities[home, entity.entity_id] = entity

    def set_state(self, home: str, entity_id: str, state: str) -> None:
        entity = self._entities[home, entity_id]
        topic = state_topic(home, entity)
        available = state.lower() not in UNAVAILABLE
        if self._available.get((home, entity_id)) != available:
            self._available[home, entity_id] = available
            self.client.publish(
                f"{topic}/availability", "online" if available else "offline", qos=1, retain=True
            )
        if available:
            self.client.publish(topic, state, qos=1, retain=True)
        self.counters.published += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def current_states(scenario: Scenario, index: int, at: float) -> dict[str, str]:
    """Each entity's state at scene time `at` (its last change before it)."""
    states: dict[str, str] = {}
    for t, entity_id, state in scenario.events(index):
        if t >= at:
            break
        states[entity_id] = state
    return states


class ReplaySchedule:
    """The replay clock of the live part: real time until the demo picks the origin (when the
    set-up is nearly done), then `scale` times faster from that origin on."""

    def __init__(self) -> None:
        self.clock = ReplayClock()
        self.chosen = asyncio.Event()

    def choose(self, origin: float, scale: float) -> ReplayClock:
        self.clock = ReplayClock(origin=origin, scale=scale)
        self.chosen.set()
        return self.clock


async def run_live(
    publisher: Publisher,
    scenario: Scenario,
    schedule: ReplaySchedule,
    start: float,
    stop: asyncio.Event,
) -> None:
    """Publish both homes' changes from `start` on, each when the clock shows its time (in
    real time until the origin, sped up after it)."""
    events = sorted(
        (
            (t, scenario.home_slug(index), entity_id, state)
            for index in range(2)
            for t, entity_id, state in scenario.events(index)
            if t >= start
        ),
        key=lambda event: event[0],
    )
    for scene_time, home, entity_id, state in events:
        while (delay := schedule.clock.to_wall(scene_time) - time.time()) > 0:
            # a wait begun on real time ends early when the clock is chosen
            wakers = (
                [stop.wait()] if schedule.chosen.is_set() else [stop.wait(), schedule.chosen.wait()]
            )
            await _first(wakers, delay)
            if stop.is_set():
                return
        if stop.is_set():
            return
        publisher.counters.late = max(publisher.counters.late, -delay)
        publisher.set_state(home, entity_id, state)
    stop.set()  # the world's days are over


async def _first(waits: list[Coroutine[Any, Any, Any]], seconds: float) -> None:
    """Until the first of `waits` ends or `seconds` pass; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
