"""The automation blueprints on a real HA core, against the entities of real mlmule spaces.

Each blueprint goes through HA's own blueprint schema, then runs as an automation
(`use_blueprint:`) against a space set up like in the other HA tests and real target entities:
template lights and generic thermostats over input_booleans, HA's persistent notifications.

The occupancy probability and activity a space predicts come from its model; a test scripts
the model's output (as the hysteresis test of test_space_runtime does), and everything after
it is the integration's own path: the coordinator, the hysteresis, the entities' states and
attributes. Rejected snapshots are real imports of a broken snapshot, and the accuracy is that
of a real training on a replayed history.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.automation.config import AUTOMATION_BLUEPRINT_SCHEMA
from homeassistant.components.blueprint.models import Blueprint
from homeassistant.components.persistent_notification import (
    Notification,
    UpdateType,
    async_register_callback,
)
from homeassistant.config_entries import ConfigEntryState, ConfigSubentryDataWithId
from homeassistant.core import HomeAssistant, State, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import entity_registry as er
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
from homeassistant.util import yaml as yaml_util
from mlmule_world import WorldConfig, generate_world
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.mlmule.const import (
    CONF_ACTIVITY_LABEL,
    CONF_ADVANCED,
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
from custom_components.mlmule.coordinator import SpaceCoordinator
from tests.support.ha_fixtures import async_replay_room, replayed_room_hub, space_device
from tests.support.world_replay import WORLD_START, replay_end, room_replay

BLUEPRINTS = Path(__file__).parents[2] / "blueprints" / "automation" / "mlmule"
BLUEPRINT_FILES = sorted(path.name for path in BLUEPRINTS.glob("*.yaml"))
SOURCE_URL = "https://github.com/mlmule/mlmule/blob/main/blueprints/automation/mlmule/{}"

SPACE_ID = "kitchen01"
LOOP_TURNS = 20
INPUT_STATES: dict[str, tuple[str, dict[str, Any]]] = {
    "binary_sensor.kitchen_motion": ("off", {"device_class": "motion"}),
    "sensor.kitchen_co2": ("640", {"device_class": "carbon_dioxide", "unit_of_measurement": "ppm"}),
    "sensor.kitchen_power": ("35", {"device_class": "power", "unit_of_measurement": "W"}),
}


async def async_settle(hass: HomeAssistant, *, runs_wait: bool = False) -> None:
    """Let every consequence of a change happen.

    A state change reaches its listeners one loop turn later (`call_soon`), which
    async_block_till_done returns before when no task is left at that moment: an automation's
    action on a template light lands a turn after its tasks. While an automation run waits (in
    model_health's window), async_block_till_done would wait for it too: then the loop turns a
    fixed number of times instead, enough for the chains here, which do no I/O.
    """
    if runs_wait:
        for _ in range(LOOP_TURNS):
            await asyncio.sleep(0)
    else:
        await hass.async_block_till_done()
        await hass.async_block_till_done()


# ---- a space whose model says what the test wants


class ScriptedKitchen:
    """A kitchen space whose models answer with scripted outputs; everything downstream of the
    model (hysteresis, entities, attributes) is the integration's own path."""

    def __init__(
        self, hass: HomeAssistant, space: SpaceCoordinator, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self._hass = hass
        self._space = space
        self._occupancy = 0.5
        self._activity = ("other", 0.5)
        occupancy = space.host.slot("occupancy/kitchen")
        activity = space.host.slot("activity/kitchen")
        self.labels = list(activity.spec.labels)
        monkeypatch.setattr(occupancy, "predict", self._scripted(occupancy.predict, self._occ))
        monkeypatch.setattr(activity, "predict", self._scripted(activity.predict, self._act))

    @staticmethod
    def _scripted(
        model: Callable[[npt.ArrayLike], npt.NDArray[np.float32]],
        answer: Callable[[npt.NDArray[np.float32]], None],
    ) -> Callable[[npt.ArrayLike], npt.NDArray[np.float32]]:
        def predict(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
            out = model(x)  # the real model still runs: shapes stay honest
            answer(out)
            return out

        return predict

    def _occ(self, out: npt.NDArray[np.float32]) -> None:
        out[:, 0] = self._occupancy

    def _act(self, out: npt.NDArray[np.float32]) -> None:
        label, probability = self._activity
        out[:] = (1.0 - probability) / (len(self.labels) - 1)
        out[:, self.labels.index(label)] = probability

    async def predict(
        self, *, occupancy: float | None = None, activity: tuple[str, float] | None = None
    ) -> None:
        """Let the space predict now, with these model outputs."""
        if occupancy is not None:
            self._occupancy = occupancy
        if activity is not None:
            self._activity = activity
        await self._space.async_refresh()
        await async_settle(self._hass)


def kitchen_entry() -> MockConfigEntry:
    space = {
        "name": "Kitchen",
        CONF_ROOM_KIND: "kitchen",
        CONF_TASKS: ["occupancy", "activity"],
        CONF_SHARING: "owners",
        CONF_INPUTS: list(INPUT_STATES),
        CONF_OCCUPANCY_LABEL: ["sensor.alice_room"],
        CONF_OCCUPANCY_LABEL_STATE: "kitchen",
        CONF_ACTIVITY_LABEL: "input_select.kitchen_activity",
        CONF_ADVANCED: {
            "on_threshold": 0.6,
            "off_threshold": 0.4,
            "min_hold_seconds": 0,
            "max_unavailable_fraction": 0.5,
        },
    }
    return MockConfigEntry(
        domain=DOMAIN,
        data={CONF_HOME_NAME: "Maple", CONF_TOPIC_PREFIX: "mlmule"},
        subentries_data=[
            ConfigSubentryDataWithId(
                data=space,
                subentry_type=SUBENTRY_SPACE,
                title="Kitchen",
                unique_id=None,
                subentry_id=SPACE_ID,
            )
        ],
    )


@pytest.fixture
def blueprints(hass: HomeAssistant) -> None:
    """Install the blueprints where HA looks for them: <config>/blueprints/automation/."""
    shutil.copytree(BLUEPRINTS, Path(hass.config.path("blueprints", "automation", "mlmule")))


@pytest.fixture
async def kitchen(
    hass: HomeAssistant,
    mqtt_mock: MqttMockHAClient,
    blueprints: None,
    monkeypatch: pytest.MonkeyPatch,
    freezer: FrozenDateTimeFactory,
) -> ScriptedKitchen:
    # A fixed local noon at the harness's home (San Diego): the sun is up, and no outcome
    # depends on the day the test runs. The clock moves before the space exists (a jump later
    # would fire its daily training).
    freezer.move_to(datetime(2026, 6, 1, 12, tzinfo=dt_util.get_default_time_zone()))
    for entity_id, (value, attributes) in INPUT_STATES.items():
        hass.states.async_set(entity_id, value, attributes)
    hass.states.async_set("sensor.alice_room", "kitchen")
    hass.states.async_set("input_select.kitchen_activity", "cooking")
    entry = kitchen_entry()
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id), entry.reason
    await hass.async_block_till_done(wait_background_tasks=True)
    assert entry.state is ConfigEntryState.LOADED
    return ScriptedKitchen(hass, entry.runtime_data.spaces[SPACE_ID], monkeypatch)


def entity(hass: HomeAssistant, platform: str, key: str, space_id: str = SPACE_ID) -> str:
    found = er.async_get(hass).async_get_entity_id(platform, DOMAIN, f"{space_id}_{key}")
    assert found is not None, key
    return found


def state(hass: HomeAssistant, entity_id: str) -> State:
    found = hass.states.get(entity_id)
    assert found is not None, entity_id
    return found


async def async_automate(hass: HomeAssistant, **automations: tuple[str, dict[str, Any]]) -> None:
    """Create one automation per keyword from a blueprint file and its inputs."""
    config = [
        {
            "id": name,
            "alias": name,
            "use_blueprint": {"path": f"mlmule/{blueprint}", "input": inputs},
        }
        for name, (blueprint, inputs) in automations.items()
    ]
    assert await async_setup_component(hass, "automation", {"automation": config})
    await async_settle(hass)
    for name in automations:  # an automation whose config is invalid would be unavailable
        assert state(hass, f"automation.{name}").state == "on"


async def async_switches(hass: HomeAssistant, *names: str) -> None:
    """input_booleans, switched on: real entities for the automations to act on."""
    config = {name: {"initial": True} for name in names}
    assert await async_setup_component(hass, "input_boolean", {"input_boolean": config})


async def async_lights(hass: HomeAssistant, *names: str) -> list[str]:
    """Template lights, each switching an input_boolean: real light entities, on."""
    await async_switches(hass, *(f"{name}_power" for name in names))

    def light(name: str) -> dict[str, Any]:
        power = f"input_boolean.{name}_power"
        return {
            "name": name,
            "state": f"{{{{ is_state('{power}', 'on') }}}}",
            "turn_on": {"action": "input_boolean.turn_on", "target": {"entity_id": power}},
            "turn_off": {"action": "input_boolean.turn_off", "target": {"entity_id": power}},
        }

    lights = [light(name) for name in names]
    assert await async_setup_component(hass, "template", {"template": [{"light": lights}]})
    await async_settle(hass)
    ids = [f"light.{name}" for name in names]
    assert [state(hass, light).state for light in ids] == ["on"] * len(ids)
    return ids


async def async_later(
    hass: HomeAssistant, freezer: FrozenDateTimeFactory, *, runs_wait: bool = False, **delta: float
) -> None:
    freezer.tick(timedelta(**delta))
    async_fire_time_changed(hass)
    await async_settle(hass, runs_wait=runs_wait)


class NotificationLog:
    """Every persistent notification created while the test runs, as the user sees them: one
    created again under an id already shown counts again (HA 2026.2 reports it as ADDED,
    2026.10 as UPDATED)."""

    def __init__(self, hass: HomeAssistant) -> None:
        self.created: list[Notification] = []
        self.unsubscribe = async_register_callback(hass, self._updated)

    @callback
    def _updated(self, kind: UpdateType, notifications: dict[str, Notification]) -> None:
        if kind in (UpdateType.ADDED, UpdateType.UPDATED):
            self.created.extend(notifications.values())


@pytest.fixture
async def notifications(hass: HomeAssistant) -> AsyncIterator[NotificationLog]:
    assert await async_setup_component(hass, "persistent_notification", {})
    assert await async_setup_component(hass, "notify", {})
    log = NotificationLog(hass)
    yield log
    log.unsubscribe()


# ---- the blueprints as HA reads them


def _keys(node: Any) -> Iterator[str]:
    """Every mapping key in a YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item)


@pytest.mark.parametrize("filename", BLUEPRINT_FILES)
def test_every_blueprint_passes_home_assistants_schema(filename: str) -> None:
    blueprint = Blueprint(
        yaml_util.load_yaml_dict(BLUEPRINTS / filename),
        path=filename,
        expected_domain="automation",
        schema=AUTOMATION_BLUEPRINT_SCHEMA,
    )
    assert blueprint.validate() is None  # this HA meets its min_version
    metadata = blueprint.metadata
    assert metadata["source_url"] == SOURCE_URL.format(filename)
    assert metadata["homeassistant"]["min_version"] == "2024.10.0"
    assert len(metadata["description"]) > 200
    # every input is grouped in a section and explains itself
    assert all("input" in section for section in metadata["input"].values())
    for name, spec in blueprint.inputs.items():
        assert spec["name"], name
        assert spec["description"], name
    # the space's entities are picked among mlmule's only
    filters = [
        selector_filter
        for spec in blueprint.inputs.values()
        for selector_filter in spec["selector"].get("entity", {}).get("filter", [])
    ]
    assert any(f.get("integration") == DOMAIN for f in filters)
    # today's syntax: `trigger:`/`action:`, never `platform:`/`service:`
    keys = set(_keys(blueprint.data))
    assert {"triggers", "actions"} <= keys
    assert not {"platform", "service", "trigger_platform"} & keys


REQUIRED_INPUTS: dict[str, dict[str, Any]] = {
    "act_on_activity.yaml": {
        "activity_sensor": "sensor.kitchen_activity",
        "start_actions": [
            {"action": "input_boolean.turn_on", "target": {"entity_id": "input_boolean.hood"}}
        ],
    },
    "comfort_ahead.yaml": {
        "probability_sensor": "sensor.kitchen_occupancy_probability",
        "thermostat": "climate.kitchen",
    },
    "lights_off_when_empty.yaml": {
        "occupancy_sensor": "binary_sensor.kitchen_occupancy",
        "lights": {"entity_id": "light.kitchen"},
    },
    "model_health.yaml": {"rejected_sensor": "sensor.kitchen_snapshots_rejected"},
}


async def test_every_blueprint_makes_a_valid_automation_from_its_required_inputs(
    hass: HomeAssistant, blueprints: None
) -> None:
    """Every default works: an input left out takes it, and the automation still validates."""
    for filename, inputs in REQUIRED_INPUTS.items():
        spec = yaml_util.load_yaml_dict(BLUEPRINTS / filename)["blueprint"]["input"]
        required = {
            name
            for section in spec.values()
            for name, field in section["input"].items()
            if "default" not in field
        }
        assert set(inputs) == required, filename
    await async_automate(
        hass,
        **{
            filename.removesuffix(".yaml"): (filename, inputs)
            for filename, inputs in REQUIRED_INPUTS.items()
        },
    )


def test_there_are_the_four_blueprints() -> None:
    assert BLUEPRINT_FILES == [
        "act_on_activity.yaml",
        "comfort_ahead.yaml",
        "lights_off_when_empty.yaml",
        "model_health.yaml",
    ]


# ---- lights off when a room is predicted empty


def lights_off(hass: HomeAssistant, lights: list[str], **inputs: Any) -> tuple[str, dict[str, Any]]:
    return "lights_off_when_empty.yaml", {
        "occupancy_sensor": entity(hass, "binary_sensor", "occupancy"),
        "lights": {"entity_id": lights},
        "probability_threshold": 20,
        "hold_time": {"minutes": 5},
        **inputs,
    }


async def test_lights_go_off_once_the_room_was_predicted_empty_for_the_hold_time(
    hass: HomeAssistant, kitchen: ScriptedKitchen, freezer: FrozenDateTimeFactory
) -> None:
    [light] = await async_lights(hass, "kitchen_light")
    await kitchen.predict(occupancy=0.9)
    await async_automate(hass, lights=lights_off(hass, [light]))
    occupancy = entity(hass, "binary_sensor", "occupancy")

    await kitchen.predict(occupancy=0.1)
    assert state(hass, occupancy).state == "off"
    await async_later(hass, freezer, minutes=4)
    assert state(hass, light).state == "on"  # not yet: the hold time has not passed

    await kitchen.predict(occupancy=0.8)  # somebody after all: the hold starts over
    await kitchen.predict(occupancy=0.1)
    await async_later(hass, freezer, minutes=4)
    assert state(hass, light).state == "on"

    await async_later(hass, freezer, minutes=1, seconds=1)
    assert state(hass, light).state == "off"


async def test_lights_wait_for_the_chance_to_fall_below_the_threshold(
    hass: HomeAssistant, kitchen: ScriptedKitchen, freezer: FrozenDateTimeFactory
) -> None:
    [light] = await async_lights(hass, "kitchen_light")
    await kitchen.predict(occupancy=0.9)
    await async_automate(hass, lights=lights_off(hass, [light]))
    occupancy = entity(hass, "binary_sensor", "occupancy")

    await kitchen.predict(occupancy=0.3)  # below the sensor's off threshold, above 20%
    assert state(hass, occupancy).state == "off"
    assert state(hass, occupancy).attributes["probability"] == 0.3
    await async_later(hass, freezer, minutes=6)
    assert state(hass, light).state == "on"

    await kitchen.predict(occupancy=0.15)  # empty for long enough, and now sure enough
    assert state(hass, light).state == "off"


async def test_lights_respect_the_time_of_day_and_the_daylight(
    hass: HomeAssistant, kitchen: ScriptedKitchen, freezer: FrozenDateTimeFactory
) -> None:
    night_only, bright, dim = await async_lights(hass, "night_only", "bright", "dim")
    daylight = "sensor.kitchen_window_illuminance"
    hass.states.async_set(daylight, "550", {"device_class": "illuminance"})
    hass.states.async_set("sensor.hall_illuminance", "40", {"device_class": "illuminance"})
    await kitchen.predict(occupancy=0.9)
    await async_automate(
        hass,
        night_only=lights_off(hass, [night_only], sun="night"),
        bright=lights_off(hass, [bright], sun="day", illuminance_sensor=daylight),
        dim=lights_off(hass, [dim], illuminance_sensor="sensor.hall_illuminance"),
    )

    await kitchen.predict(occupancy=0.1)
    await async_later(hass, freezer, minutes=5, seconds=1)
    assert state(hass, night_only).state == "on"  # noon
    assert state(hass, bright).state == "off"  # day, and 550 lx >= 200 lx
    assert state(hass, dim).state == "on"  # 40 lx < 200 lx


# ---- comfort ahead of occupancy


async def async_thermostats(hass: HomeAssistant) -> tuple[str, str]:
    """Generic thermostats over input_boolean heaters: one with presets, one without."""
    # they switch their heaters with homeassistant.turn_on/turn_off
    assert await async_setup_component(hass, "homeassistant", {})
    await async_switches(hass, "heater", "radiator")
    hass.states.async_set(
        "sensor.kitchen_temperature",
        "18.5",
        {"device_class": "temperature", "unit_of_measurement": "°C"},
    )
    common = {"platform": "generic_thermostat", "target_sensor": "sensor.kitchen_temperature"}
    thermostats = [
        common
        | {
            "name": "Presets",
            "heater": "input_boolean.heater",
            "initial_hvac_mode": "heat",
            "target_temp": 19,
            "comfort_temp": 21,
            "eco_temp": 17,
            "away_temp": 15,
        },
        common
        | {
            "name": "Plain",
            "heater": "input_boolean.radiator",
            "initial_hvac_mode": "heat",
            "target_temp": 19,
        },
    ]
    assert await async_setup_component(hass, "climate", {"climate": thermostats})
    await async_settle(hass)
    return "climate.presets", "climate.plain"


async def test_comfort_when_someone_is_expected_and_eco_when_not(
    hass: HomeAssistant, kitchen: ScriptedKitchen, freezer: FrozenDateTimeFactory
) -> None:
    thermostat, _ = await async_thermostats(hass)
    await kitchen.predict(occupancy=0.5)
    inputs = {
        "probability_sensor": entity(hass, "sensor", "occupancy_probability"),
        "thermostat": thermostat,
        "comfort_threshold": 60,
        "eco_threshold": 30,
        "eco_after": {"minutes": 10},
    }
    await async_automate(hass, comfort=("comfort_ahead.yaml", inputs))
    assert state(hass, thermostat).attributes["preset_mode"] == "none"

    await kitchen.predict(occupancy=0.7)
    assert state(hass, thermostat).attributes["preset_mode"] == "comfort"
    assert state(hass, thermostat).attributes["temperature"] == 21

    await kitchen.predict(occupancy=0.45)  # between the thresholds: no change
    await kitchen.predict(occupancy=0.2)
    await async_later(hass, freezer, minutes=9)
    assert state(hass, thermostat).attributes["preset_mode"] == "comfort"
    await async_later(hass, freezer, minutes=1, seconds=1)
    assert state(hass, thermostat).attributes["preset_mode"] == "eco"
    assert state(hass, thermostat).attributes["temperature"] == 17


async def test_comfort_temperatures_without_presets_and_an_off_thermostat_is_left_alone(
    hass: HomeAssistant, kitchen: ScriptedKitchen, freezer: FrozenDateTimeFactory
) -> None:
    _, thermostat = await async_thermostats(hass)
    await kitchen.predict(occupancy=0.5)
    inputs = {
        "probability_sensor": entity(hass, "sensor", "occupancy_probability"),
        "thermostat": thermostat,
        "eco_after": {"minutes": 10},
        "comfort_preset": "",
        "comfort_temperature": 22.5,
        "eco_preset": "",
        "eco_temperature": 16,
    }
    await async_automate(hass, comfort=("comfort_ahead.yaml", inputs))

    await kitchen.predict(occupancy=0.75)
    assert state(hass, thermostat).attributes["temperature"] == 22.5
    await kitchen.predict(occupancy=0.1)
    await async_later(hass, freezer, minutes=10, seconds=1)
    assert state(hass, thermostat).attributes["temperature"] == 16

    await hass.services.async_call(
        "climate", "set_hvac_mode", {"entity_id": thermostat, "hvac_mode": "off"}, blocking=True
    )
    await kitchen.predict(occupancy=0.9)
    assert state(hass, thermostat).state == "off"
    assert state(hass, thermostat).attributes["temperature"] == 16


# ---- act on a predicted activity


async def test_actions_run_once_when_the_activity_starts_and_end_after_it(
    hass: HomeAssistant, kitchen: ScriptedKitchen, freezer: FrozenDateTimeFactory
) -> None:
    await async_switches(hass, "cooker_hood")
    hood = "input_boolean.cooker_hood"
    await hass.services.async_call("input_boolean", "turn_off", {"entity_id": hood}, blocking=True)
    await kitchen.predict(activity=("other", 0.8))
    inputs = {
        "activity_sensor": entity(hass, "sensor", "activity"),
        "activity": "cooking",
        "min_probability": 70,
        "settle_time": {"minutes": 1},
        "start_actions": [{"action": "input_boolean.turn_on", "target": {"entity_id": hood}}],
        "end_delay": {"minutes": 5},
        "end_actions": [{"action": "input_boolean.turn_off", "target": {"entity_id": hood}}],
    }
    await async_automate(hass, hood=("act_on_activity.yaml", inputs))
    activity = entity(hass, "sensor", "activity")

    async def hood_is(expected: str, *, after: float) -> None:
        await async_later(hass, freezer, seconds=after)
        assert state(hass, hood).state == expected

    async def switch_hood(service: str) -> None:  # what the homeowner does by hand
        await hass.services.async_call("input_boolean", service, {"entity_id": hood}, blocking=True)

    await kitchen.predict(activity=("cooking", 0.6))  # not sure enough
    assert state(hass, activity).attributes["probability"] == 60.0
    await hood_is("off", after=120)
    await kitchen.predict(activity=("cooking", 0.8))
    await hood_is("off", after=30)  # not lasted a minute yet
    await hood_is("on", after=31)

    # a wavering prediction within the same stretch of cooking does not start it again
    await switch_hood("turn_off")
    await kitchen.predict(activity=("cooking", 0.65))
    await kitchen.predict(activity=("cooking", 0.9))
    await hood_is("off", after=120)

    # cooking ended: the hood goes off five minutes later
    await switch_hood("turn_on")
    await kitchen.predict(activity=("eating", 0.9))
    await hood_is("on", after=240)
    await hood_is("off", after=61)

    # a stretch of cooking that never was sure enough ends without the "ended" actions
    await switch_hood("turn_on")
    await hood_is("on", after=60)
    await kitchen.predict(activity=("cooking", 0.5))
    await kitchen.predict(activity=("eating", 0.9))
    await hood_is("on", after=360)

    # other activities, however sure, do nothing; a new stretch of cooking starts it again
    await switch_hood("turn_off")
    await kitchen.predict(activity=("sleeping", 0.95))
    await hood_is("off", after=120)
    await kitchen.predict(activity=("cooking", 0.9))
    await hood_is("on", after=61)


# ---- model health


def junk_snapshot() -> dict[str, str]:
    return {"data": base64.b64encode(b"not a snapshot").decode()}


async def async_reject_snapshots(hass: HomeAssistant, count: int) -> None:
    """Import broken snapshots with the integration's own action: each is rejected and counted."""
    device = space_device(hass, SPACE_ID)
    assert device is not None
    for _ in range(count):
        with pytest.raises(HomeAssistantError, match="rejected"):
            await hass.services.async_call(
                DOMAIN,
                "import_snapshot",
                {"device_id": device.id, **junk_snapshot()},
                blocking=True,
            )
        await async_settle(hass, runs_wait=True)


async def test_repeated_rejections_within_the_window_notify_once(
    hass: HomeAssistant,
    kitchen: ScriptedKitchen,
    notifications: NotificationLog,
    freezer: FrozenDateTimeFactory,
) -> None:
    rejected = entity(hass, "sensor", "snapshots_rejected")
    inputs = {"rejected_sensor": rejected, "max_rejections": 3, "window": {"minutes": 10}}
    await async_automate(hass, health=("model_health.yaml", inputs))

    await async_reject_snapshots(hass, 2)
    await async_later(hass, freezer, minutes=11, runs_wait=True)  # the window closes with two
    await async_reject_snapshots(hass, 1)
    await async_later(hass, freezer, minutes=5, runs_wait=True)
    assert notifications.created == []
    assert state(hass, rejected).state == "3"

    await async_reject_snapshots(hass, 2)  # three within ten minutes of the first
    [notification] = notifications.created
    assert notification["notification_id"] == "automation.health_rejected"
    assert notification["title"] == "ML Mule: Kitchen keeps rejecting models"
    message = notification["message"]
    assert "Kitchen rejected 3 model snapshots within 10 minutes" in message
    reasons = state(hass, rejected).attributes["reasons"]
    assert reasons
    assert all(f"{reason}: {count}" in message for reason, count in reasons.items())

    await async_reject_snapshots(hass, 4)  # the same window: no second message
    assert len(notifications.created) == 1
    await async_later(hass, freezer, minutes=6, runs_wait=True)
    await async_reject_snapshots(hass, 3)  # a new window
    assert len(notifications.created) == 2


async def test_a_chosen_notify_action_gets_the_message(
    hass: HomeAssistant, kitchen: ScriptedKitchen, notifications: NotificationLog
) -> None:
    inputs = {
        "rejected_sensor": entity(hass, "sensor", "snapshots_rejected"),
        "max_rejections": 1,
        "notify_action": "notify.persistent_notification",
    }
    await async_automate(hass, health=("model_health.yaml", inputs))
    await async_reject_snapshots(hass, 1)
    [notification] = notifications.created
    # notify.persistent_notification gives it an id of its own, not the blueprint's
    assert notification["notification_id"] != "automation.health_rejected"
    assert notification["title"] == "ML Mule: Kitchen keeps rejecting models"
    assert "Kitchen rejected 1 model snapshot within 60 minutes" in notification["message"]


async def test_an_accuracy_below_the_threshold_notifies(
    hass: HomeAssistant,
    mqtt_mock: MqttMockHAClient,
    blueprints: None,
    notifications: NotificationLog,
    freezer: FrozenDateTimeFactory,
) -> None:
    """A real training on two days of a replayed room sets the accuracy; the automations exist
    before the space does, as after a restart."""
    world = generate_world(WorldConfig(n_homes=1, days=2, start=WORLD_START), 3)
    freezer.move_to(replay_end(world, 2))
    replay = room_replay(world, 0, "bedroom")
    await async_replay_room(hass, replay, world.start + 2 * 86400.0)
    # entity ids follow the device ("Bedroom") and the translated names
    accuracy = "sensor.bedroom_occupancy_model_accuracy"
    inputs = {
        "rejected_sensor": "sensor.bedroom_snapshots_rejected",
        "accuracy_sensors": [accuracy],
    }
    await async_automate(
        hass,
        strict=("model_health.yaml", inputs | {"min_accuracy": 100}),
        lenient=("model_health.yaml", inputs | {"min_accuracy": 1}),
    )

    entry = replayed_room_hub(replay)
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert entity(hass, "sensor", "occupancy_accuracy", "bedroom") == accuracy
    assert entity(hass, "sensor", "snapshots_rejected", "bedroom") == inputs["rejected_sensor"]
    value = float(state(hass, accuracy).state)  # trained just now
    assert 1.0 < value < 100.0

    [notification] = notifications.created  # the strict one only
    assert notification["notification_id"] == "automation.strict_accuracy"
    assert notification["title"] == "ML Mule: a model of Bedroom predicts worse"
    assert (
        f"Bedroom Occupancy model accuracy dropped to {state(hass, accuracy).state}%"
        in (notification["message"])
    )
