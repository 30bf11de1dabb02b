"""Homes, households and residents: who lives where, in which rooms, with which sensors.

Each home is drawn from its own random stream. `non_iid` moves every trait away from the
typical household (two commuters in a five-room flat with the full sensor kit): 0 keeps all
homes alike, 1 varies size, schedules, habits, room volumes, ventilation and the sensor set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mlmule_core.context import RoomKind
from mlmule_core.features import PhoneSignal, SensorRole

from .config import (
    PlaceKind,
    ScheduleType,
    WorldConfig,
    lerp_trait,
    maybe,
    place_kind,
    scale_trait,
    stream,
)
from .errors import WorldConfigError


@dataclass(frozen=True)
class SensorSpec:
    """One HA entity in a room. Numeric sensors read every `period` seconds; HA keeps a new
    state only when the displayed value (at `decimals`) changes."""

    entity_id: str
    role: SensorRole
    device: str  # pir, contact, front_door, light, lux, co2, temperature, humidity, kettle, ...
    offset: float = 0.0  # calibration error, in the sensor's unit
    noise: float = 0.0  # reading noise (standard deviation, or relative for lux and power)
    period: int = 60
    decimals: int = 0
    coverage: float = 1.0  # PIR: share of a person's movement the sensor can see
    hold: float = 60.0  # PIR: seconds it stays on after the last trigger


@dataclass(frozen=True)
class RoomSpec:
    room_id: str
    kind: RoomKind
    volume: float  # m^3
    ach: float  # air changes per hour with windows closed
    window_area: float  # m^2 of glazing (solar gain)
    daylight_factor: float  # indoor / outdoor illuminance
    ua: float  # heat loss coefficient, W/K
    tau_hours: float  # thermal time constant of the room and its contents
    setpoint_offset: float  # this room's thermostat valve relative to the home's comfort level
    sensors: tuple[SensorSpec, ...]
    neighbours: tuple[str, ...]  # rooms a BLE tracker can confuse it with


@dataclass(frozen=True)
class Household:
    """Habits of a household: they shape its sensor data and make homes non-IID."""

    comfort_temperature: float
    setback_temperature: float
    dining_room: str
    tv_room: str
    social_room: str  # where guests sit
    light_threshold: float  # lx below which an occupied room gets its lamp on
    lamp_lux: float
    lights_left_on: float  # chance a light stays on after the room empties
    doors_closed: float  # chance a door is closed behind someone
    airing: float  # chance the bedroom window is opened in the morning
    pets: bool
    bathroom_fan: bool
    cooker_hood: bool
    pc_always_on: bool
    kettle_use: float  # chance a cooking bout starts with the kettle
    tv_watts: float
    pc_watts: float
    ble_confusion: float  # share of minutes BLE reports a neighbouring room
    ble_dropout: float  # share of minutes BLE sees nothing
    day_jitter: float  # std (5-min steps) of the household's daily schedule shift


@dataclass(frozen=True)
class PersonTraits:
    wake: float  # weekday wake-up, minutes after local midnight
    sleep_hours: float
    lie_in: float  # minutes later on free days
    dinner: float  # minutes after local midnight
    tv: float  # relative appetite for TV
    cooking: float  # relative appetite for cooking
    morning_shower: bool
    errands: float  # relative rate of errands
    gym_days: tuple[int, ...]  # weekdays (0 = Monday) with a gym session
    gym_time: float
    carry: float  # chance the phone is on the person while at home
    phone_bias: tuple[float, ...]  # multiplicative bias per PhoneSignal


@dataclass(frozen=True)
class PersonSpec:
    person_id: str
    phone_id: str
    home_id: str
    home_index: int
    index: int  # within the household
    schedule: ScheduleType
    bedroom: str | None
    workplace: str | None  # a shared office, or None (works at home or elsewhere)
    traits: PersonTraits


@dataclass(frozen=True)
class HomeSpec:
    home_id: str
    index: int
    group: int  # affinity group: visits mostly stay inside it
    tz: str
    rooms: tuple[RoomSpec, ...]
    residents: tuple[str, ...]
    household: Household

    def room_index(self, room_id: str) -> int:
        for index, room in enumerate(self.rooms):
            if room.room_id == room_id:
                return index
        raise WorldConfigError(f"{self.home_id} has no room {room_id!r}")

    def first_room(self, *kinds: RoomKind) -> int:
        """The index of the first room of the first kind present; -1 if none is."""
        for kind in kinds:
            for index, room in enumerate(self.rooms):
                if room.kind is kind:
                    return index
        return -1


def home_id(index: int) -> str:
    return f"home_{index:03d}"


# Heat loss per m^3 of room, W/K: the envelope plus the walls to neighbouring rooms, which we
# do not model room by room (their air sits near the home's setpoint).
UA_PER_M3 = 3.0
# typical volume m^3, glazing m^2, daylight factor, thermostat offset K
_ROOM_PHYSICS: dict[RoomKind, tuple[float, float, float, float]] = {
    RoomKind.BEDROOM: (35.0, 2.0, 0.015, -2.0),
    RoomKind.KITCHEN: (28.0, 1.5, 0.015, 0.0),
    RoomKind.LIVING_ROOM: (60.0, 4.0, 0.025, 0.0),
    RoomKind.OFFICE: (25.0, 1.5, 0.02, 0.0),
    RoomKind.BATHROOM: (14.0, 0.5, 0.008, 1.5),
    RoomKind.HALLWAY: (18.0, 0.3, 0.004, -1.0),
}
_ROOM_ORDER = (
    RoomKind.HALLWAY,
    RoomKind.LIVING_ROOM,
    RoomKind.KITCHEN,
    RoomKind.BATHROOM,
    RoomKind.BEDROOM,
    RoomKind.OFFICE,
)
_SCHEDULE_CHANCES = {
    ScheduleType.COMMUTER: 0.35,
    ScheduleType.EARLY_RISER: 0.15,
    ScheduleType.LATE_RISER: 0.15,
    ScheduleType.WORK_FROM_HOME: 0.2,
    ScheduleType.SHIFT_WORKER: 0.15,
}
# weekday wake-up and evening meal of each schedule, minutes after midnight
_SCHEDULE_TIMES = {
    ScheduleType.COMMUTER: (6 * 60 + 45, 19 * 60),
    ScheduleType.EARLY_RISER: (5 * 60 + 30, 18 * 60),
    ScheduleType.LATE_RISER: (8 * 60 + 30, 20 * 60),
    ScheduleType.WORK_FROM_HOME: (7 * 60 + 15, 19 * 60),
    ScheduleType.SHIFT_WORKER: (6 * 60 + 45, 19 * 60),
}


def build_home(
    config: WorldConfig, seed: int, index: int
) -> tuple[HomeSpec, tuple[PersonSpec, ...]]:
    """Home `index` and its residents, from the home's own random stream."""
    rng = stream(seed, "home", index)
    u = config.non_iid
    ident = home_id(index)
    low, high = config.residents_range
    size = int(rng.integers(low, high + 1)) if rng.random() < u else min(max(2, low), high)
    schedules = [_draw_schedule(rng, u) for _ in range(size)]

    if config.rooms is not None:
        kinds = list(config.rooms)
    else:
        n_bedrooms = 1 if size <= 2 else size - 1
        kinds = [RoomKind.LIVING_ROOM, RoomKind.KITCHEN, RoomKind.BATHROOM]
        kinds += [RoomKind.BEDROOM] * n_bedrooms
        if maybe(True, 0.7, u, rng):
            kinds.append(RoomKind.HALLWAY)
        if ScheduleType.WORK_FROM_HOME in schedules or maybe(False, 0.4, u, rng):
            kinds.append(RoomKind.OFFICE)
        kinds.sort(key=_ROOM_ORDER.index)
    room_ids = _room_ids(kinds)

    def first(*wanted: RoomKind) -> str:
        for kind in wanted:
            if kind in kinds:
                return room_ids[kinds.index(kind)]
        return room_ids[0]

    comfort = lerp_trait(21.0, 1.2, u, rng)
    eats_in_living_room = maybe(False, 0.4, u, rng)
    household = Household(
        comfort_temperature=comfort,
        setback_temperature=comfort - max(0.0, lerp_trait(3.0, 1.5, u, rng)),
        dining_room=first(RoomKind.LIVING_ROOM, RoomKind.KITCHEN)
        if eats_in_living_room
        else first(RoomKind.KITCHEN, RoomKind.LIVING_ROOM),
        tv_room=first(RoomKind.LIVING_ROOM, RoomKind.BEDROOM),
        social_room=first(RoomKind.LIVING_ROOM, RoomKind.KITCHEN),
        light_threshold=max(20.0, lerp_trait(120.0, 60.0, u, rng)),
        lamp_lux=scale_trait(250.0, 0.3, u, rng),
        lights_left_on=float(np.clip(lerp_trait(0.1, 0.2, u, rng), 0.0, 0.8)),
        doors_closed=float(np.clip(lerp_trait(0.6, 0.3, u, rng), 0.05, 0.95)),
        airing=float(np.clip(lerp_trait(0.4, 0.3, u, rng), 0.0, 1.0)),
        pets=maybe(False, 0.35, u, rng),
        bathroom_fan=maybe(True, 0.5, u, rng),
        cooker_hood=maybe(True, 0.5, u, rng),
        pc_always_on=maybe(False, 0.3, u, rng),
        kettle_use=float(np.clip(lerp_trait(0.5, 0.3, u, rng), 0.0, 1.0)),
        tv_watts=scale_trait(100.0, 0.3, u, rng),
        pc_watts=scale_trait(120.0, 0.3, u, rng),
        ble_confusion=float(np.clip(scale_trait(0.05, 0.6, u, rng), 0.0, 0.3)),
        ble_dropout=float(np.clip(scale_trait(0.01, 0.7, u, rng), 0.0, 0.2)),
        day_jitter=max(0.5, lerp_trait(2.0, 1.0, u, rng)),
    )

    leakiness = scale_trait(0.5, 0.5, u, rng)
    insulation = scale_trait(1.0, 0.35, u, rng)
    tau = scale_trait(4.0, 0.3, u, rng)
    rooms = []
    for kind, room_id in zip(kinds, room_ids, strict=True):
        volume, glazing, daylight, offset = _ROOM_PHYSICS[kind]
        volume = scale_trait(volume, 0.35, u, rng)
        ventilation = {RoomKind.BATHROOM: 1.5, RoomKind.KITCHEN: 1.2}.get(kind, 1.0)
        rooms.append(
            RoomSpec(
                room_id=room_id,
                kind=kind,
                volume=volume,
                ach=leakiness * ventilation * scale_trait(1.0, 0.2, u, rng),
                window_area=scale_trait(glazing, 0.3, u, rng),
                daylight_factor=scale_trait(daylight, 0.4, u, rng),
                ua=UA_PER_M3 * volume * insulation,
                tau_hours=tau * scale_trait(1.0, 0.15, u, rng),
                setpoint_offset=offset,
                sensors=_room_sensors(
                    ident, room_id, kind, kinds=kinds, household=household, rng=rng, u=u
                ),
                neighbours=_neighbours(room_id, kind, kinds, room_ids),
            )
        )

    people = []
    bedrooms = [
        room_id for kind, room_id in zip(kinds, room_ids, strict=True) if kind is RoomKind.BEDROOM
    ]
    offices = [p for p in config.shared_places if place_kind(p) is PlaceKind.OFFICE]
    group = index // config.group_size
    for resident, schedule in enumerate(schedules):
        person = f"{ident}_p{resident}"
        bedroom = bedrooms[max(0, resident - 1) % len(bedrooms)] if bedrooms else None
        person_rng = stream(seed, "person", index, resident)
        people.append(
            PersonSpec(
                person_id=person,
                phone_id=f"{person}_phone",
                home_id=ident,
                home_index=index,
                index=resident,
                schedule=schedule,
                bedroom=bedroom,
                workplace=_workplace(schedule, offices, group, person_rng),
                traits=_person_traits(schedule, person_rng, u),
            )
        )
    home = HomeSpec(
        home_id=ident,
        index=index,
        group=group,
        tz=config.tz,
        rooms=tuple(rooms),
        residents=tuple(p.person_id for p in people),
        household=household,
    )
    return home, tuple(people)


def _draw_schedule(rng: np.random.Generator, non_iid: float) -> ScheduleType:
    if rng.random() >= non_iid:
        return ScheduleType.COMMUTER
    kinds = list(_SCHEDULE_CHANCES)
    chances = np.array([_SCHEDULE_CHANCES[k] for k in kinds])
    return kinds[int(rng.choice(len(kinds), p=chances / chances.sum()))]


def _room_ids(kinds: list[RoomKind]) -> list[str]:
    seen: dict[RoomKind, int] = {}
    ids = []
    for kind in kinds:
        seen[kind] = seen.get(kind, 0) + 1
        ids.append(kind.value if seen[kind] == 1 else f"{kind.value}_{seen[kind]}")
    return ids


def _neighbours(
    own_id: str, kind: RoomKind, kinds: list[RoomKind], room_ids: list[str]
) -> tuple[str, ...]:
    """Rooms next to this one: the hallway joins everything, bedrooms adjoin each other and the
    bathroom, the kitchen the living room. Without a hallway the living room is the hub."""
    hub = RoomKind.HALLWAY if RoomKind.HALLWAY in kinds else RoomKind.LIVING_ROOM
    walls = {
        frozenset({RoomKind.BEDROOM, RoomKind.BATHROOM}),
        frozenset({RoomKind.KITCHEN, RoomKind.LIVING_ROOM}),
        frozenset({RoomKind.BEDROOM}),
    }
    return tuple(
        other_id
        for other_kind, other_id in zip(kinds, room_ids, strict=True)
        if other_id != own_id
        and (hub in {kind, other_kind} or frozenset({kind, other_kind}) in walls)
    )


def _room_sensors(
    home: str,
    room_id: str,
    kind: RoomKind,
    *,
    kinds: list[RoomKind],
    household: Household,
    rng: np.random.Generator,
    u: float,
) -> tuple[SensorSpec, ...]:
    prefix = f"{home}_{room_id}"
    sensors = [_pir(f"binary_sensor.{prefix}_motion", rng, u)]
    if kind is RoomKind.LIVING_ROOM and maybe(False, 0.5, u, rng):
        sensors.append(_pir(f"binary_sensor.{prefix}_motion_2", rng, u))
    front = RoomKind.HALLWAY if RoomKind.HALLWAY in kinds else RoomKind.LIVING_ROOM
    if kind is front:
        sensors.append(
            SensorSpec(f"binary_sensor.{prefix}_front_door", SensorRole.DOOR, "front_door")
        )
    if kind is RoomKind.BATHROOM or (kind is RoomKind.BEDROOM and maybe(False, 0.5, u, rng)):
        sensors.append(SensorSpec(f"binary_sensor.{prefix}_door", SensorRole.DOOR, "contact"))
    if maybe(True, 0.8, u, rng):
        sensors.append(SensorSpec(f"light.{prefix}", SensorRole.LIGHT, "light"))
    lux_typical = kind not in {RoomKind.HALLWAY, RoomKind.BATHROOM}
    if maybe(lux_typical, 0.6, u, rng):
        sensors.append(
            SensorSpec(
                f"sensor.{prefix}_illuminance",
                SensorRole.ILLUMINANCE,
                "lux",
                noise=scale_trait(0.05, 0.4, u, rng),
                period=_period((120, 60, 300, 600), rng, u),
            )
        )
    co2_typical = kind in {RoomKind.BEDROOM, RoomKind.LIVING_ROOM, RoomKind.OFFICE}
    if maybe(co2_typical, 0.5, u, rng):
        sensors.append(
            SensorSpec(
                f"sensor.{prefix}_co2",
                SensorRole.CO2,
                "co2",
                offset=lerp_trait(0.0, 40.0, u, rng),
                noise=scale_trait(12.0, 0.5, u, rng),
                period=_period((60, 120, 300), rng, u),
            )
        )
    if maybe(kind is not RoomKind.HALLWAY, 0.75, u, rng):
        period = _period((120, 60, 300, 600), rng, u)
        sensors.append(
            SensorSpec(
                f"sensor.{prefix}_temperature",
                SensorRole.TEMPERATURE,
                "temperature",
                offset=lerp_trait(0.0, 0.5, u, rng),
                noise=scale_trait(0.06, 0.4, u, rng),
                period=period,
                decimals=1,
            )
        )
        sensors.append(
            SensorSpec(
                f"sensor.{prefix}_humidity",
                SensorRole.HUMIDITY,
                "humidity",
                offset=lerp_trait(0.0, 3.0, u, rng),
                noise=scale_trait(0.5, 0.4, u, rng),
                period=period,
                decimals=1,
            )
        )
    for device, where, typical_chance in (
        ("kettle", RoomKind.KITCHEN, 0.7),
        ("stove", RoomKind.KITCHEN, 0.6),
        ("pc", RoomKind.OFFICE, 0.8),
    ):
        if kind is where and maybe(True, typical_chance, u, rng):
            sensors.append(_plug(f"sensor.{prefix}_{device}_power", device))
    if room_id == household.tv_room:
        if maybe(True, 0.8, u, rng):
            sensors.append(_plug(f"sensor.{prefix}_tv_power", "tv"))
        if maybe(True, 0.8, u, rng):
            sensors.append(SensorSpec(f"media_player.{prefix}_tv", SensorRole.MEDIA, "media"))
    return tuple(sensors)


def _pir(entity_id: str, rng: np.random.Generator, u: float) -> SensorSpec:
    return SensorSpec(
        entity_id,
        SensorRole.MOTION,
        "pir",
        coverage=float(np.clip(scale_trait(0.85, 0.25, u, rng), 0.4, 0.98)),
        hold=float(np.clip(lerp_trait(90.0, 25.0, u, rng), 30.0, 120.0)),
    )


def _plug(entity_id: str, device: str) -> SensorSpec:
    return SensorSpec(entity_id, SensorRole.POWER, device, noise=0.01, period=60, decimals=1)


def _period(choices: tuple[int, ...], rng: np.random.Generator, u: float) -> int:
    """The typical reporting period (first choice), or with chance `u` any of them."""
    if rng.random() < u:
        return int(choices[int(rng.integers(len(choices)))])
    return choices[0]


def _workplace(
    schedule: ScheduleType, offices: list[str], group: int, rng: np.random.Generator
) -> str | None:
    """Commuters work at a shared office: mostly their group's, so colleagues are neighbours."""
    if schedule is ScheduleType.WORK_FROM_HOME or not offices:
        return None
    if rng.random() < 0.7:
        return offices[group % len(offices)]
    return offices[int(rng.integers(len(offices)))]


def _person_traits(schedule: ScheduleType, rng: np.random.Generator, u: float) -> PersonTraits:
    wake, dinner = _SCHEDULE_TIMES[schedule]
    gym = maybe(False, 0.4, u, rng)
    gym_days = tuple(sorted(int(d) for d in rng.choice(7, size=2, replace=False))) if gym else ()
    bias_spread = 0.05 + 0.3 * u
    return PersonTraits(
        wake=wake + lerp_trait(0.0, 40.0, u, rng),
        sleep_hours=float(np.clip(lerp_trait(7.5, 0.7, u, rng), 5.5, 9.5)),
        lie_in=max(0.0, lerp_trait(75.0, 45.0, u, rng)),
        dinner=dinner + lerp_trait(0.0, 40.0, u, rng),
        tv=scale_trait(1.0, 0.5, u, rng),
        cooking=scale_trait(1.0, 0.4, u, rng),
        morning_shower=maybe(True, 0.6, u, rng),
        errands=scale_trait(1.0, 0.5, u, rng),
        gym_days=gym_days,
        gym_time=18.5 * 60 if rng.random() < 0.7 else 7.0 * 60,
        carry=float(np.clip(lerp_trait(0.7, 0.15, u, rng), 0.3, 0.98)),
        phone_bias=tuple(
            float(np.exp(bias_spread * np.clip(rng.standard_normal(), -2.5, 2.5)))
            for _ in PhoneSignal
        ),
    )


def visit_weights(config: WorldConfig, seed: int) -> np.ndarray:
    """Who visits whom: `[n_homes, n_homes]` relative weights, rows summing to 1 (0 if alone).

    Friends live in the same affinity group; neighbouring groups get `cross_group_visits` of
    the weight. Each pair's weight comes from the pair's own stream, so adding homes never
    changes existing pairs.
    """
    n, size = config.n_homes, config.group_size
    weights = np.zeros((n, n))
    for i in range(n):
        group = i // size
        for j in range(max(0, (group - 1) * size), min(n, (group + 2) * size)):
            gap = abs(group - j // size)
            if i == j:
                continue
            pair = stream(seed, "friendship", min(i, j), max(i, j))
            strength = float(pair.gamma(2.0, 0.5))
            weights[i, j] = strength * (1.0 if gap == 0 else config.cross_group_visits)
    totals = weights.sum(axis=1, keepdims=True)
    return np.asarray(
        np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0), dtype=np.float64
    )
