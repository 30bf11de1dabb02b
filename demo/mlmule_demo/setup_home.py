"""Set up one demo home in its Home Assistant the way a user would, through the UI's APIs:
MQTT, the ML Mule hub and its options, pairing the phones, and one space per room."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlmule_core.identity import TrustRole

from .broker import BrokerAddress
from .companions import Phone
from .ha_instance import FlowError, HomeAssistantInstance, Json
from .scenario import RelayPlan, Scenario, SpacePlan

ENTITIES_TIMEOUT = 60.0
LOAD_TIMEOUT = 60.0
SETTLED = frozenset({"loaded", "setup_error", "failed_unload"})  # config entry states
# Home Assistant reloads an entry 30 s after one of its entities is enabled, then the spaces
# set up again and train on their history: what waiting for the enabled sensors allows for
RELOAD_TIMEOUT = 180.0
# the model's age: off by default (a diagnostic sensor); the dashboard and the table show it
FRESHNESS_KEYS = ("occupancy_model_freshness", "activity_model_freshness")
ADVANCED = {
    "on_threshold": 0.6,
    "off_threshold": 0.4,
    "min_hold_seconds": 120,
    "max_unavailable_fraction": 0.5,
}


@dataclass
class SpaceEntities:
    """A configured space and the entity ids Home Assistant gave its entities."""

    plan: SpacePlan
    subentry_id: str
    entities: dict[str, str] = field(default_factory=dict)  # key -> entity_id

    def get(self, key: str) -> str | None:
        return self.entities.get(key)


@dataclass
class RelayEntities:
    """The relay space and the entity ids Home Assistant gave its entities."""

    plan: RelayPlan
    subentry_id: str
    entities: dict[str, str] = field(default_factory=dict)  # key -> entity_id


@dataclass
class HomeSetup:
    index: int
    entry_id: str
    spaces: list[SpaceEntities]
    home_codes: dict[str, str]  # person id -> the home's code for that phone
    relay: RelayEntities | None = None  # in the home that hosts the demo's relay space


async def configure_mqtt(ha: HomeAssistantInstance, broker: BrokerAddress) -> None:
    form: Json = {"broker": broker.host, "port": broker.port}
    if broker.username:
        form["username"] = broker.username
        form["password"] = broker.password or ""
    result = await ha.config_flow("mqtt", form)
    if result["type"] != "create_entry":
        raise FlowError(f"MQTT was not set up: {result}")


async def wait_for_entities(
    ha: HomeAssistantInstance, entity_ids: set[str], seconds: float = ENTITIES_TIMEOUT
) -> None:
    """Until every entity exists (MQTT discovery created it, or its entry set it up)."""
    missing = set(entity_ids)
    try:
        async with asyncio.timeout(seconds):
            while True:
                missing = entity_ids - set(await ha.states())
                if not missing:
                    return
                await asyncio.sleep(0.5)
    except TimeoutError:
        raise RuntimeError(
            f"{ha.name}: entities never appeared: {sorted(missing)[:5]}..."
        ) from None


async def set_up_home(
    ha: HomeAssistantInstance,
    scenario: Scenario,
    index: int,
    phones: list[Phone],
    broker: BrokerAddress,
) -> HomeSetup:
    """The hub, its options, the phones paired (told the broker), and the spaces (each through
    its flows)."""
    prefix = scenario.prefix(index)
    hub = await ha.config_flow(
        "mlmule", {"home_name": scenario.home_name(index), "topic_prefix": prefix}
    )
    entry_id = hub["result"]["entry_id"]
    await ha.options_flow(
        entry_id,
        {
            "history_days": scenario.history_days,
            "strategy": "mlmule",
            "gate_epsilon": 0.02,
            "max_snapshot_mib": 4,
        },
    )
    await _wait_loaded(ha, entry_id)
    home_codes: dict[str, str] = {}
    labels: dict[str, Phone] = {}
    for phone in phones:
        own = phone.person.home_index == index
        response = await ha.call(
            "mlmule",
            "pair_mule",
            {
                "code": phone.pairing_code,
                "role": TrustRole.OWNER if own else TrustRole.GUEST,
                # where the phones reach the broker: the home code carries it
                "broker_host": broker.host,
                "broker_port": broker.port,
                **({"broker_username": broker.username} if broker.username else {}),
            },
            response=True,
        )
        home_codes[phone.person.person_id] = response["home_code"]
        labels[phone.label] = phone
    await _wait_loaded(ha, entry_id)
    # the areas MQTT discovery created from the devices' suggested areas
    areas = {
        area["name"].lower(): area["area_id"]
        for area in await ha.ws({"type": "config/area_registry/list"})
    }
    spaces = []
    for plan in scenario.spaces(index):
        subentry_id = await _add_space(
            ha, entry_id=entry_id, plan=plan, areas=areas, phones=labels, scenario=scenario
        )
        spaces.append(SpaceEntities(plan, subentry_id))
        await _wait_loaded(ha, entry_id)
    relay = None
    if scenario.relay.home_index == index:
        relay = RelayEntities(
            scenario.relay,
            await _add_relay(ha, entry_id=entry_id, plan=scenario.relay, phones=labels),
        )
        await _wait_loaded(ha, entry_id)
    await _resolve_entities(ha, spaces, relay)
    await _enable_freshness(ha, spaces)
    return HomeSetup(index, entry_id, spaces, home_codes, relay)


async def _enable_freshness(ha: HomeAssistantInstance, spaces: list[SpaceEntities]) -> None:
    """Enable each space's model freshness sensors, as a user would on the entity's settings
    page; Home Assistant adds them when it reloads the hub ~30 s later (`freshness_ready`)."""
    for space in spaces:
        for key in FRESHNESS_KEYS:
            entity_id = space.get(key)
            if entity_id is not None:
                await ha.ws(
                    {
                        "type": "config/entity_registry/update",
                        "entity_id": entity_id,
                        "disabled_by": None,
                    }
                )


async def freshness_ready(ha: HomeAssistantInstance, setup: HomeSetup) -> None:
    """Until the reloaded hub has added the enabled freshness sensors."""
    wanted = {
        entity_id
        for space in setup.spaces
        for key in FRESHNESS_KEYS
        if (entity_id := space.get(key)) is not None
    }
    await wait_for_entities(ha, wanted, RELOAD_TIMEOUT)
    await _wait_loaded(ha, setup.entry_id)


async def _add_space(
    ha: HomeAssistantInstance,
    *,
    entry_id: str,
    plan: SpacePlan,
    areas: dict[str, str],
    phones: dict[str, Phone],
    scenario: Scenario,
) -> str:
    """The "add space" flow: what it is, its inputs and labels, then each phone's presence."""
    inputs: Json = {
        "inputs": sorted(plan.inputs),
        "hold_only_inputs": [],
        "occupancy_label": sorted(p.presence_entity for p in scenario.people),
        "occupancy_label_state": plan.room_id,
        "advanced": ADVANCED,
    }
    if plan.activity_label:
        inputs["activity_label"] = plan.activity_label
    about: Json = {
        "name": plan.title,
        "area": areas[plan.title.lower()],
        "room_kind": plan.kind,
        "tasks": list(plan.tasks),
        "sharing": "guests",
    }
    return await _run_subentry_flow(
        ha,
        entry_id=entry_id,
        subentry_type="space",
        title=plan.title,
        steps=[about, inputs],
        presence=lambda phone: {"entity": phone.person.presence_entity, "state": plan.room_id},
        phones=phones,
    )


async def _add_relay(
    ha: HomeAssistantInstance,
    *,
    entry_id: str,
    plan: RelayPlan,
    phones: dict[str, Phone],
) -> str:
    """The "add relay space" flow: its models and who may use it, then each phone's presence
    (its place sensor showing the shared place)."""
    about: Json = {
        "name": plan.title,
        "tasks": list(plan.tasks),
        "room_kinds": list(plan.room_kinds),
        "sharing": "guests",  # the guest's phone too
    }
    return await _run_subentry_flow(
        ha,
        entry_id=entry_id,
        subentry_type="relay",
        title=plan.title,
        steps=[about],
        presence=lambda phone: {"entity": phone.person.place_entity, "state": plan.place},
        phones=phones,
    )


async def _run_subentry_flow(
    ha: HomeAssistantInstance,
    *,
    entry_id: str,
    subentry_type: str,
    title: str,
    steps: list[Json],
    presence: Callable[[Phone], Json],
    phones: dict[str, Phone],
) -> str:
    """A subentry flow through `steps`, then the presence step of each phone it asks about;
    the new subentry's id."""
    base = "/api/config/config_entries/subentries/flow"
    result: Json = await ha.post(base, {"handler": [entry_id, subentry_type]})
    flow = f"{base}/{result['flow_id']}"
    for step in steps:
        result = await ha.post(flow, step)
    while result.get("type") == "form" and result.get("step_id") == "presence":
        result = await ha.post(flow, presence(phones[result["description_placeholders"]["mule"]]))
    if result.get("type") != "create_entry":
        raise FlowError(f"adding the {subentry_type} {title}: {result}")
    subentries = await ha.ws({"type": "config_entries/subentries/list", "entry_id": entry_id})
    [subentry] = [
        s for s in subentries if s["title"] == title and s["subentry_type"] == subentry_type
    ]
    return str(subentry["subentry_id"])


async def _wait_loaded(ha: HomeAssistantInstance, entry_id: str) -> None:
    """Until the hub entry is loaded again (adding a space or options reloads it)."""
    state = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LOAD_TIMEOUT):
            while True:
                state = await _entry_state(ha, entry_id)
                if state in SETTLED:
                    break
                await asyncio.sleep(0.25)
    if state != "loaded":
        raise RuntimeError(f"{ha.name}: the ML Mule hub is {state}")


async def _entry_state(ha: HomeAssistantInstance, entry_id: str) -> str | None:
    entries = await ha.get("/api/config/config_entries/entry?domain=mlmule")
    return next((str(e["state"]) for e in entries if e["entry_id"] == entry_id), None)


async def _resolve_entities(
    ha: HomeAssistantInstance, spaces: list[SpaceEntities], relay: RelayEntities | None
) -> None:
    """Each space's (and the relay's) entities, by unique id (`<subentry id>_<key>`)."""
    deadline = time.monotonic() + ENTITIES_TIMEOUT
    while True:
        registry = await ha.ws({"type": "config/entity_registry/list"})
        found: list[SpaceEntities | RelayEntities] = [*spaces, *([relay] if relay else [])]
        for space in found:
            prefix = f"{space.subentry_id}_"
            space.entities = {
                entry["unique_id"].removeprefix(prefix): entry["entity_id"]
                for entry in registry
                if entry["platform"] == "mlmule" and entry["unique_id"].startswith(prefix)
            }
        if all("occupancy_probability" in space.entities for space in spaces) and (
            relay is None or "phones_seen" in relay.entities
        ):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ha.name}: the spaces' entities did not appear")
        await asyncio.sleep(0.5)
