"""What the demo replays: two homes of the seeded world, their entities and their timeline.

The world (`core/world`) simulates homes minute by minute. The demo takes a two-home world,
names its homes, people and entities, and chooses the seed and the homes' time zone so that a
phone of one household walks into the other home within the first scene hour of the live part:
visits happen in the evening, so the zone is one where it is evening now. Scene time is world
time shifted by less than five minutes (the world starts on its 5-minute grid, the live part
starts when the demo is ready).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
from mlmule_core.features import (
    ACTIVITIES,
    PHONE_FEATURES,
    PhoneSignal,
    SensorRole,
)
from mlmule_world import World, WorldConfig, generate_world

DAY = 86_400.0
GRID = 300.0  # the world starts on its 5-minute step grid
HOME_NAMES = ("Maple", "Birch")
PEOPLE_NAMES = ("Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jun")
# spaces each home gets: room kind -> tasks (the predicted activity needs a label source)
SPACES: dict[str, tuple[str, ...]] = {
    "bedroom": ("occupancy",),
    "kitchen": ("occupancy", "activity"),
    "living_room": ("occupancy", "activity"),
}
# time zones tried in order, for one where a visit starts soon (evenings) at the demo's start
ZONES = (
    "Europe/Berlin",
    "Europe/London",
    "Atlantic/Azores",
    "America/Sao_Paulo",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Pacific/Honolulu",
    "Pacific/Auckland",
    "Australia/Sydney",
    "Asia/Tokyo",
    "Asia/Shanghai",
    "Asia/Bangkok",
    "Asia/Dhaka",
    "Asia/Kolkata",
    "Asia/Dubai",
    "Europe/Moscow",
    "Europe/Athens",
)
SEEDS_PER_ZONE = 12
VISIT_RATE = 3.0  # visits per person per week: neighbours who see each other often
GUEST_WINDOW = (5 * 60.0, 60 * 60.0)  # the first guest visit starts within this scene span
# The relay space: at the shared place (office, gym, cafe, shop) where the companions are most in
# the first scene hours of the live part (then over the whole live part), in the home visited by
# the guest (both companions are paired with it); it relays the models the demo's spaces serve.
RELAY_WINDOW = 3 * 3600.0
RELAY_TASKS = ("occupancy", "activity", "phone_activity")
AWAY = "away"
# entities MQTT cannot publish (it has no media_player platform); the TV's power stays
UNPUBLISHED_DOMAINS = frozenset({"media_player"})

ROLE_DISCOVERY: dict[SensorRole, tuple[str, str | None, str | None]] = {
    # role -> (MQTT component, device class, unit)
    SensorRole.MOTION: ("binary_sensor", "motion", None),
    SensorRole.DOOR: ("binary_sensor", "door", None),
    SensorRole.LIGHT: ("light", None, None),
    SensorRole.ILLUMINANCE: ("sensor", "illuminance", "lx"),
    SensorRole.CO2: ("sensor", "carbon_dioxide", "ppm"),
    SensorRole.TEMPERATURE: ("sensor", "temperature", "°C"),
    SensorRole.HUMIDITY: ("sensor", "humidity", "%"),
    SensorRole.POWER: ("sensor", "power", "W"),
}


@dataclass(frozen=True)
class DemoEntity:
    """One entity the demo publishes through MQTT discovery."""

    entity_id: str
    component: str
    name: str
    device: str  # the device's key; rooms' sensors share their room's device
    device_name: str
    area: str | None
    device_class: str | None = None
    unit: str | None = None

    @property
    def object_id(self) -> str:
        return self.entity_id.split(".", 1)[1]

    def attributes(self) -> dict[str, str]:
        """The attributes HA shows for it, for the history written before HA runs."""
        attributes = {"friendly_name": f"{self.device_name} {self.name}"}
        if self.device_class:
            attributes["device_class"] = self.device_class
        if self.unit:
            attributes["unit_of_measurement"] = self.unit
        if self.component == "sensor" and self.unit:
            attributes["state_class"] = "measurement"
        return attributes


@dataclass(frozen=True)
class SpacePlan:
    """A learning space the demo adds to a home, over one room of the world."""

    room_id: str
    kind: str
    title: str
    tasks: tuple[str, ...]
    inputs: dict[str, SensorRole]
    truth: str  # the demo's "true occupancy" binary sensor
    activity_label: str | None
    model_age: str  # the demo's "model age" sensor: scene minutes since the model's data


@dataclass(frozen=True)
class RelayPlan:
    """The relay space the demo adds, at a shared place of the world."""

    place: str  # the world's shared place, and the phones' place sensors' state there
    title: str
    home_index: int  # the home whose Home Assistant hosts it
    tasks: tuple[str, ...]
    room_kinds: tuple[str, ...]
    # each companion's arrivals there in the live part: (scene time, person id)
    arrivals: tuple[tuple[float, str], ...]


@dataclass(frozen=True)
class Person:
    person_id: str
    name: str
    home_index: int

    @property
    def slug(self) -> str:
        return self.name.lower()

    @property
    def presence_entity(self) -> str:
        return f"sensor.{self.slug}_phone_room"

    @property
    def place_entity(self) -> str:
        """Where the phone is (a zone, as a device tracker reports it): a home, a shared
        place, or away; published in the relay's home, its presence trigger there."""
        return f"sensor.{self.slug}_phone_place"


@dataclass(frozen=True)
class GuestVisit:
    scene_time: float
    person: Person
    home_index: int
    room_id: str


@dataclass
class Scenario:
    """The chosen world and everything named in it."""

    seed: int
    tz: str
    # the planned start of the live part: it aligns the world with the present; the replay
    # clock's origin is picked when the set-up is done (real time passes until then)
    origin: float
    history_days: int
    live_days: int
    world_start: float
    people: list[Person] = field(default_factory=list)
    companions: list[Person] = field(default_factory=list)
    first_guest_visit: GuestVisit | None = None

    @property
    def shift(self) -> float:
        """Scene time minus world time."""
        return self.origin - self.history_days * DAY - self.world_start

    @cached_property
    def world(self) -> World:
        return generate_world(self.config, self.seed)

    @property
    def config(self) -> WorldConfig:
        return world_config(self.world_start, self.history_days + self.live_days, self.tz)

    @property
    def scene_end(self) -> float:
        return self.world.end + self.shift

    def home_name(self, index: int) -> str:
        return HOME_NAMES[index]

    @cached_property
    def relay(self) -> RelayPlan:
        """The relay space: where the companions are most early in the live part."""
        world = self.world
        live = self.world.minute_times + self.shift >= self.origin
        early = live & (self.world.minute_times + self.shift < self.origin + RELAY_WINDOW)
        places = [world.phone_data(p.person_id).place for p in self.companions]

        def score(j: int) -> tuple[int, int, int]:
            code = -2 - j
            return (
                sum(int(np.count_nonzero((place == code) & early)) for place in places),
                sum(int(np.count_nonzero((place == code) & live)) for place in places),
                -j,
            )

        j = max(range(len(world.shared_places)), key=score)
        code = -2 - j
        arrivals = []
        for person, place in zip(self.companions, places, strict=True):
            there = place == code
            arrived = np.flatnonzero(there & ~np.concatenate([[False], there[:-1]]) & live)
            times = world.minute_times[arrived] + self.shift
            arrivals += [(float(t), person.person_id) for t in times.tolist()]
        visit = self.first_guest_visit
        return RelayPlan(
            place=world.shared_places[j],
            title=_label(world.shared_places[j]),
            home_index=0 if visit is None else visit.home_index,
            tasks=RELAY_TASKS,
            room_kinds=tuple(SPACES),
            arrivals=tuple(sorted(arrivals)),
        )

    def place_states(self) -> list[str]:
        """The states of the phones' place sensors, by place code: the homes, away, then the
        shared places."""
        return [*(self.home_slug(i) for i in range(2)), AWAY, *self.world.shared_places]

    def home_slug(self, index: int) -> str:
        return HOME_NAMES[index].lower()

    def prefix(self, index: int) -> str:
        return f"mlmule/{self.home_slug(index)}"

    def entity_id(self, index: int, world_entity: str) -> str:
        return world_entity.replace(self.world.homes[index].home_id, self.home_slug(index), 1)

    def entities(self, index: int) -> list[DemoEntity]:
        """Every entity of a home: its rooms' sensors, every phone's room, truth and labels."""
        home = self.world.homes[index]
        slug = self.home_slug(index)
        found: list[DemoEntity] = []
        for world_entity, (room_id, role) in self.world.entity_roles(home.home_id).items():
            if world_entity.split(".", 1)[0] in UNPUBLISHED_DOMAINS:
                continue
            component, device_class, unit = ROLE_DISCOVERY[role]
            entity_id = self.entity_id(index, world_entity)
            found.append(
                DemoEntity(
                    entity_id=entity_id,
                    component=component,
                    name=_label(
                        entity_id.split(".", 1)[1].removeprefix(f"{slug}_{room_id}"),
                        component,
                    ),
                    device=f"{slug}_{room_id}",
                    device_name=_label(room_id),
                    area=_label(room_id),
                    device_class=device_class,
                    unit=unit,
                )
            )
        for person in self.people:
            phone_sensors = {"room": person.presence_entity}
            if index == self.relay.home_index:
                phone_sensors["place"] = person.place_entity
            found.extend(
                DemoEntity(
                    entity_id=entity_id,
                    component="sensor",
                    name=name,
                    device=f"{person.slug}_phone",
                    device_name=f"{person.name}'s phone",
                    area=None,
                )
                for name, entity_id in phone_sensors.items()
            )
        for space in self.spaces(index):
            found.append(
                DemoEntity(
                    entity_id=space.truth,
                    component="binary_sensor",
                    name=f"{space.title} true occupancy",
                    device=f"{slug}_truth",
                    device_name="Demo",
                    area=None,
                    device_class="occupancy",
                )
            )
            found.append(
                DemoEntity(
                    entity_id=space.model_age,
                    component="sensor",
                    name=f"{space.title} model age",
                    device=f"{slug}_truth",
                    device_name="Demo",
                    area=None,
                    device_class="duration",
                    unit="min",
                )
            )
            if space.activity_label:
                found.append(
                    DemoEntity(
                        entity_id=space.activity_label,
                        component="sensor",
                        name=f"{space.title} activity label",
                        device=f"{slug}_truth",
                        device_name="Demo",
                        area=None,
                    )
                )
        return found

    def spaces(self, index: int) -> list[SpacePlan]:
        home = self.world.homes[index]
        slug = self.home_slug(index)
        roles = self.world.entity_roles(home.home_id)
        plans = []
        for kind, tasks in SPACES.items():
            room = next((r for r in home.rooms if r.kind == kind), None)
            if room is None:
                continue
            plans.append(
                SpacePlan(
                    room_id=room.room_id,
                    kind=kind,
                    title=_label(room.room_id),
                    tasks=tasks,
                    inputs={
                        self.entity_id(index, entity): role
                        for entity, (room_id, role) in roles.items()
                        if room_id == room.room_id
                        and entity.split(".", 1)[0] not in UNPUBLISHED_DOMAINS
                    },
                    truth=f"binary_sensor.{slug}_{room.room_id}_true_occupancy",
                    activity_label=f"sensor.{slug}_{room.room_id}_activity_label"
                    if "activity" in tasks
                    else None,
                    model_age=f"sensor.{slug}_{room.room_id}_model_age",
                )
            )
        return plans

    def history_entities(self, index: int) -> set[str]:
        """What the spaces read from the recorder (inputs and labels), and the truth the
        dashboard graphs; the other rooms' sensors start with the live part."""
        wanted = {person.presence_entity for person in self.people}
        for space in self.spaces(index):
            wanted |= {*space.inputs, space.truth}
            if space.activity_label:
                wanted.add(space.activity_label)
        return wanted

    def truth(self, index: int, room_id: str) -> npt.NDArray[np.int8]:
        """Whether anyone is in the room, per world minute."""
        return self.world.room_data(self.world.homes[index].home_id, room_id).occupancy

    def minute_of(self, scene_time: float) -> int:
        return int((scene_time - self.shift - self.world.start) // 60)

    def events(self, index: int) -> Iterator[tuple[float, str, str]]:
        """Every state change the demo publishes for a home, in scene time order."""
        home = self.world.homes[index]
        shift = self.shift
        streams: list[list[tuple[float, str, str]]] = []
        published = {e.entity_id for e in self.entities(index)}
        streams.append(
            [
                (t + shift, entity, state)
                for t, world_entity, state in self.world.events(home.home_id)
                if (entity := self.entity_id(index, world_entity)) in published
            ]
        )
        rooms = [room.room_id for room in home.rooms]
        times = self.world.minute_times + shift
        for person in self.people:
            phone = self.world.phone_data(person.person_id)
            states = np.where(
                (phone.place == index) & _room_known(phone.room, len(rooms)),
                np.clip(phone.room, 0, None),
                len(rooms),
            )
            streams.append(_changes(times, states, [*rooms, AWAY], person.presence_entity))
            if index == self.relay.home_index:
                # place codes: a home's index, -1 elsewhere, -2 - j shared place j
                place = phone.place.astype(np.int64)
                codes = np.where(place >= 0, place, 2 + (-1 - place))
                streams.append(_changes(times, codes, self.place_states(), person.place_entity))
        for space in self.spaces(index):
            data = self.world.room_data(home.home_id, space.room_id)
            streams.append(_changes(times, data.occupancy, ["off", "on"], space.truth))
            if space.activity_label:
                streams.append(
                    _changes(times, data.activity_label, list(ACTIVITIES), space.activity_label)
                )
        merged = [event for stream in streams for event in stream]
        merged.sort(key=lambda event: event[0])
        yield from merged

    def phone_log_rows(self, person: Person, until: float) -> Iterator[dict[str, str]]:
        """What a companion's phone sensed before `until` (scene time), as `log-data` rows."""
        phone = self.world.phone_data(person.person_id)
        signals = [signal.value for signal in PhoneSignal]
        columns = [PHONE_FEATURES.index(name) for name in signals]
        available = phone.frames[:, PHONE_FEATURES.index("phone_available")] > 0.5
        in_home = np.zeros(phone.place.size, dtype=bool)
        for index, home in enumerate(self.world.homes):
            in_home |= (phone.place == index) & _room_known(phone.room, len(home.rooms))
        for minute, start in enumerate((self.world.minute_times + self.shift).tolist()):
            if start + 60 > until:
                break
            place = int(phone.place[minute])
            row = {"time": f"{start:.0f}", "home": "", "room": ""}
            if in_home[minute]:
                row["home"] = self.home_name(place)
                row["room"] = self.world.homes[place].rooms[int(phone.room[minute])].room_id
            for name, column in zip(signals, columns, strict=True):
                row[name] = f"{phone.frames[minute, column]:.6g}" if available[minute] else ""
            row["activity"] = ACTIVITIES[int(phone.activity_label[minute])]
            yield row


def _room_known(room: npt.NDArray[np.int16], rooms: int) -> npt.NDArray[np.bool_]:
    """Where a phone's reported room is a room of the home it is in. The world's BLE model can
    report, in the minute a visitor arrives, a room index of the home they left (a bug to fix
    in core/world); the demo reports nothing then, as BLE presence does between rooms."""
    return (room >= 0) & (room < rooms)


def _label(text: str, default: str = "") -> str:
    label = text.strip("_").replace("_", " ")
    if label.lower() == "co2":
        return "CO2"
    return (label or default).capitalize()


def _changes(
    times: npt.NDArray[np.float64], values: npt.ArrayLike, names: list[str], entity: str
) -> list[tuple[float, str, str]]:
    codes = np.asarray(values)
    changed = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
    return [(float(times[i]), entity, names[int(codes[i])]) for i in changed.tolist()]


def world_config(start: float, days: int, tz: str) -> WorldConfig:
    return WorldConfig(
        n_homes=2,
        days=days,
        start=datetime.fromtimestamp(start, UTC).isoformat(),
        tz=tz,
        visit_rate=VISIT_RATE,
    )


def choose(origin: float, history_days: int, live_days: int) -> Scenario:
    """The first (zone, seed) whose world has a guest visit early in the live part."""
    world_start = math.floor((origin - history_days * DAY) / GRID) * GRID
    live_start = world_start + history_days * DAY
    for tz in ZONES:
        for seed in range(SEEDS_PER_ZONE):
            scenario = Scenario(seed, tz, origin, history_days, live_days, world_start)
            visit = _first_guest_visit(scenario, live_start)
            if visit is not None:
                _name_people(scenario, visit)
                return scenario
    # no early visit anywhere: still a demo, with the visits whenever they come
    scenario = Scenario(0, ZONES[0], origin, history_days, live_days, world_start)
    _name_people(scenario, None)
    return scenario


def _first_guest_visit(scenario: Scenario, live_start: float) -> GuestVisit | None:
    world = scenario.world
    trajectories = world.trajectories()
    first_step = int((live_start - world.start) // GRID)
    last_step = first_step + int(GUEST_WINDOW[1] // GRID)
    visiting = False
    for p, person in enumerate(world.people):
        place = trajectories.place[p, first_step:last_step]
        if np.any((place >= 0) & (place != person.home_index)):
            visiting = True
    if not visiting:
        return None
    space_rooms = {
        (home.home_id, room.room_id)
        for home in world.homes
        for room in home.rooms
        if room.kind in SPACES
    }
    people = {person.person_id: person for person in world.people}
    lo, hi = live_start + GUEST_WINDOW[0], live_start + GUEST_WINDOW[1]
    for encounter in world.encounters():
        if (
            not lo <= encounter.time <= hi
            or (encounter.home_id, encounter.room_id) not in space_rooms
        ):
            continue
        spec = people[encounter.person_id]
        host = world.home(encounter.home_id).index
        if host != spec.home_index:
            guest = Person(spec.person_id, "", spec.home_index)
            return GuestVisit(encounter.time + scenario.shift, guest, host, encounter.room_id)
    return None


def _name_people(scenario: Scenario, visit: GuestVisit | None) -> None:
    """Name everyone; the companions are the guest and a resident of the home visited (or the
    first resident of each home when no visit was found)."""
    world = scenario.world
    scenario.people = [
        Person(spec.person_id, PEOPLE_NAMES[i % len(PEOPLE_NAMES)], spec.home_index)
        for i, spec in enumerate(world.people)
    ]
    by_id = {person.person_id: person for person in scenario.people}
    if visit is None:
        scenario.companions = [
            next(p for p in scenario.people if p.home_index == index) for index in (0, 1)
        ]
        return
    guest = by_id[visit.person.person_id]
    host = next(p for p in scenario.people if p.home_index == visit.home_index)
    scenario.companions = sorted([guest, host], key=lambda p: p.home_index)
    scenario.first_guest_visit = GuestVisit(
        visit.scene_time, guest, visit.home_index, visit.room_id
    )


def local_time(scenario: Scenario, scene_time: float) -> str:
    return datetime.fromtimestamp(scene_time, ZoneInfo(scenario.tz)).strftime("%a %H:%M")


def dump_scenario(scenario: Scenario) -> dict[str, object]:
    """What a helper process needs to rebuild the same scenario (the world is seeded)."""
    visit = scenario.first_guest_visit
    return {
        "seed": scenario.seed,
        "tz": scenario.tz,
        "origin": scenario.origin,
        "history_days": scenario.history_days,
        "live_days": scenario.live_days,
        "world_start": scenario.world_start,
        "companions": [p.person_id for p in scenario.companions],
        "visit": None
        if visit is None
        else [visit.scene_time, visit.person.person_id, visit.home_index, visit.room_id],
    }


def load_scenario(data: dict[str, Any]) -> Scenario:
    scenario = Scenario(
        int(data["seed"]),
        str(data["tz"]),
        float(data["origin"]),
        int(data["history_days"]),
        int(data["live_days"]),
        float(data["world_start"]),
    )
    visit = data["visit"]
    _name_people(
        scenario,
        None
        if visit is None
        else GuestVisit(float(visit[0]), Person(visit[1], "", 0), int(visit[2]), str(visit[3])),
    )
    return scenario
