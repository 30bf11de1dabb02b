"""The world: a lazily simulated, seeded set of homes, residents, phones and shared places.

`generate_world(config, seed)` only draws the homes and households. Trajectories, sensor
histories, frames and phone data are computed on first use and cached, home by home, so a test
touching one home pays for that home (and the friends who visit it) only.

A home's data depends on its own affinity group and the three groups on either side (its
visitors, their hosts, and those hosts' own visit plans), never on how many homes the world
has beyond them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt
from mlmule_core.context import RoomKind
from mlmule_core.features import (
    ACTIVITIES,
    ChangeSeries,
    SensorRole,
    extract_phone_frames,
    extract_room_frames,
    local_seconds,
)

from .config import ELSEWHERE, STEP_MINUTES, PlaceKind, WorldConfig, place_kind, stream
from .errors import WorldConfigError
from .homes import HomeSpec, PersonSpec, build_home, visit_weights
from .occupancy import HomeOccupancy, aggregate, noisy_labels
from .phones import PhoneTrack, simulate_phone
from .physics import (
    AIRING_ACH,
    FAN_ACH,
    HOOD_ACH,
    RoomClimate,
    RoomLoads,
    Weather,
    heating_setpoints,
    room_climate,
    weather,
)
from .residents import (
    ELSEWHERE_CODE,
    STATE_ACTIVITY,
    VISIT,
    MinuteTrack,
    PlaceBook,
    StepClock,
    StepTrack,
    base_track,
    overlay_visits,
    shared_code,
    to_minutes,
    up_at_home,
)
from .sensors import Entity, HomeDevices, extend_after, home_entities

FloatArray = npt.NDArray[np.float64]
Int8Array = npt.NDArray[np.int8]
Int16Array = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Trajectories:
    """Everyone per 5-minute step. Place codes: a home's index (>= 0), -1 elsewhere, -2 - j
    for shared place j; rooms index the rooms of the home at that place (-1 outside homes)."""

    times: FloatArray  # step start, epoch seconds
    person_ids: tuple[str, ...]
    place: Int16Array  # [P, S]
    room: Int16Array  # [P, S]
    activity: Int8Array  # [P, S], index into ACTIVITIES
    place_names: dict[int, str]

    def place_name(self, code: int) -> str:
        return self.place_names[int(code)]


@dataclass(frozen=True)
class RoomData:
    """One room per minute: model frames (from the extractor on the room's entities), ground
    truth, and the labels an HA space would have (noisy)."""

    home_id: str
    room_id: str
    kind: RoomKind
    times: FloatArray  # frame start, epoch seconds
    frames: npt.NDArray[np.float32]  # [T, len(ROOM_FEATURES)], unnormalised
    occupancy: Int8Array  # anyone in the room
    headcount: Int16Array
    activity: Int8Array  # dominant activity; EMPTY_ROOM_ACTIVITY ("away") when empty
    resident_activity: Int8Array  # [T, residents]: each resident's activity here, -1 elsewhere
    occupancy_label: Int8Array  # some phone's BLE presence reports this room, with label noise
    activity_label: Int8Array  # the activity as a user would label it, with label noise


@dataclass(frozen=True)
class PhoneData:
    """One phone per minute: its motion frames and where its owner and the phone are."""

    person_id: str
    phone_id: str
    home_id: str
    times: FloatArray
    frames: npt.NDArray[np.float32]  # [T, len(PHONE_FEATURES)], unnormalised
    place: Int16Array  # the owner's place code
    room: Int16Array  # the room BLE presence reports for the phone (-1: none)
    true_room: Int16Array  # the owner's room (-1 outside homes)
    carried: npt.NDArray[np.bool_]
    activity: Int8Array
    activity_label: Int8Array  # with label noise


@dataclass(frozen=True)
class Encounter:
    """A phone appearing in a room, as HA presence reports it: the trigger of an exchange."""

    time: float
    person_id: str
    phone_id: str
    home_id: str
    room_id: str


@dataclass(frozen=True)
class HomePhysics:
    climate: RoomClimate  # [R, M] true indoor values
    outdoor: Weather


@dataclass
class _HomeSimulation:
    occupancy: HomeOccupancy
    climate: RoomClimate
    entities: tuple[Entity, ...]
    devices: HomeDevices
    visitors: tuple[int, ...]  # people (world indexes) who are ever in this home


class World:
    """The synthetic world of one `(config, seed)`; every method is a pure function of those."""

    def __init__(self, config: WorldConfig, seed: int) -> None:
        stream(seed)  # validates the seed
        self.config = config
        self.seed = seed
        built = [build_home(config, seed, index) for index in range(config.n_homes)]
        self.homes: tuple[HomeSpec, ...] = tuple(home for home, _ in built)
        self.people: tuple[PersonSpec, ...] = tuple(p for _, people in built for p in people)
        self.shared_places: tuple[str, ...] = config.shared_places
        self.visit_graph: FloatArray = visit_weights(config, seed)
        self.start = config.start_epoch
        self.end = config.end_epoch
        self._home_index = {home.home_id: home.index for home in self.homes}
        self._person_index = {person.person_id: i for i, person in enumerate(self.people)}
        self._residents = [[self._person_index[p] for p in home.residents] for home in self.homes]
        self._places = PlaceBook.from_names(config.shared_places)
        self._base: dict[int, StepTrack] = {}
        self._final: dict[int, StepTrack] = {}
        self._minutes: dict[int, MinuteTrack] = {}
        self._planned: dict[int, StepTrack] = {}
        self._up: dict[int, npt.NDArray[np.bool_]] = {}
        self._free: dict[int, npt.NDArray[np.bool_]] = {}
        self._homes: dict[int, _HomeSimulation] = {}
        self._phones: dict[int, PhoneTrack] = {}

    # ------------------------------------------------------------------------- lookups

    def home(self, home_id: str) -> HomeSpec:
        if home_id not in self._home_index:
            raise WorldConfigError(f"no home {home_id!r} in this world")
        return self.homes[self._home_index[home_id]]

    def person(self, person_id: str) -> PersonSpec:
        if person_id not in self._person_index:
            raise WorldConfigError(f"no person {person_id!r} in this world")
        return self.people[self._person_index[person_id]]

    def place_name(self, code: int) -> str:
        if code >= 0:
            return self.homes[code].home_id
        if code == ELSEWHERE_CODE:
            return ELSEWHERE
        return self.shared_places[-2 - code]

    @cached_property
    def step_times(self) -> FloatArray:
        return self.start + STEP_MINUTES * 60.0 * np.arange(self.config.n_steps, dtype=np.float64)

    @cached_property
    def minute_times(self) -> FloatArray:
        return self.start + 60.0 * np.arange(self.config.n_minutes, dtype=np.float64)

    @cached_property
    def _clock(self) -> StepClock:
        local = local_seconds(self.step_times, self.config.tz)
        local_day = np.floor(local / 86400.0).astype(np.int64)
        day = local_day - local_day[0]
        n_days = int(day[-1]) + 1
        return StepClock(
            slot=(np.mod(local, 86400.0) // (STEP_MINUTES * 60)).astype(np.int64),
            day=day,
            weekday=(local_day[0] + np.arange(n_days) + 3) % 7,
            day_start=np.searchsorted(day, np.arange(n_days)),
        )

    @cached_property
    def _weather(self) -> Weather:
        return weather(self.config, self.seed, self.minute_times)

    # ------------------------------------------------------------------------- people

    def _base_track(self, person_index: int) -> StepTrack:
        if person_index not in self._base:
            person = self.people[person_index]
            home = self.homes[person.home_index]
            jitter = stream(self.seed, "days", home.index)
            shift = np.clip(
                np.round(jitter.normal(0.0, home.household.day_jitter, self._clock.weekday.size)),
                -6,
                6,
            ).astype(np.int64)
            workplace = (
                shared_code(self.shared_places.index(person.workplace))
                if person.workplace
                else ELSEWHERE_CODE
            )
            self._base[person_index] = base_track(
                person,
                home,
                self._clock,
                day_shift=shift,
                places=self._places,
                workplace_code=workplace,
                rng=stream(self.seed, "chain", home.index, person.index),
            )
        return self._base[person_index]

    def _visits(self, person_index: int, *, planned: bool) -> StepTrack:
        """Planned visits (hosts judged by their chains alone), or actual ones (hosts who are
        up and not planning a visit themselves, and only where this person planned one)."""
        person = self.people[person_index]
        base = self._base_track(person_index)
        allowed = None if planned else self._planned_track(person_index).state == VISIT
        return overlay_visits(
            base,
            host_weights=self.visit_graph[person.home_index],
            can_host=self._up_at_home if planned else self._free_to_host,
            social_room=lambda h: self.homes[h].room_index(self.homes[h].household.social_room),
            clock=self._clock,
            visit_rate=self.config.visit_rate,
            rng=stream(self.seed, "visits", person.home_index, person.index),
            allowed=allowed,
        )

    def _up_at_home(self, home_index: int) -> npt.NDArray[np.bool_]:
        if home_index not in self._up:
            base = [self._base_track(p) for p in self._residents[home_index]]
            self._up[home_index] = up_at_home(base, home_index)
        return self._up[home_index]

    def _free_to_host(self, home_index: int) -> npt.NDArray[np.bool_]:
        if home_index not in self._free:
            residents = self._residents[home_index]
            base = [self._base_track(p) for p in residents]
            planned = [self._planned_track(p) for p in residents]
            self._free[home_index] = up_at_home(base, home_index, planned)
        return self._free[home_index]

    def _planned_track(self, person_index: int) -> StepTrack:
        if person_index not in self._planned:
            self._planned[person_index] = self._visits(person_index, planned=True)
        return self._planned[person_index]

    def _final_track(self, person_index: int) -> StepTrack:
        if person_index not in self._final:
            self._final[person_index] = self._visits(person_index, planned=False)
        return self._final[person_index]

    def _minute_track(self, person_index: int) -> MinuteTrack:
        if person_index not in self._minutes:
            person = self.people[person_index]
            self._minutes[person_index] = to_minutes(
                self._final_track(person_index),
                lambda h: self.homes[h].first_room(RoomKind.HALLWAY),
                stream(self.seed, "minutes", person.home_index, person.index),
            )
        return self._minutes[person_index]

    def trajectories(self) -> Trajectories:
        """Every person's place, room and activity per 5-minute step (visits included)."""
        tracks = [self._final_track(i) for i in range(len(self.people))]
        names = {home.index: home.home_id for home in self.homes}
        names[ELSEWHERE_CODE] = ELSEWHERE
        names.update({shared_code(j): p for j, p in enumerate(self.shared_places)})
        return Trajectories(
            times=self.step_times,
            person_ids=tuple(p.person_id for p in self.people),
            place=np.stack([t.place for t in tracks]).astype(np.int16),
            room=np.stack([t.room for t in tracks]).astype(np.int16),
            activity=np.stack([STATE_ACTIVITY[t.state] for t in tracks]).astype(np.int8),
            place_names=names,
        )

    # ------------------------------------------------------------------------- homes

    def _possible_visitors(self, home_index: int) -> list[int]:
        """People whose friendship weights reach this home (its group and the neighbours)."""
        friends = np.flatnonzero(self.visit_graph[:, home_index] > 0).tolist()
        return [p for h in friends for p in self._residents[h]]

    def _simulate(self, home_index: int) -> _HomeSimulation:
        if home_index in self._homes:
            return self._homes[home_index]
        home = self.homes[home_index]
        residents = self._residents[home_index]
        guests = [
            p
            for p in self._possible_visitors(home_index)
            if bool(np.any(self._final_track(p).place == home_index))
        ]
        people = residents + guests
        tracks = [self._minute_track(p) for p in people]
        n_minutes = self.config.n_minutes
        occupancy = aggregate(tracks, home_index, len(home.rooms), n_minutes)
        outdoor = self._weather
        loads = self._loads(home, occupancy, outdoor)
        climate = room_climate(home.rooms, loads, outdoor)
        entities, devices = home_entities(home, occupancy, climate, self.config, self.seed)
        simulation = _HomeSimulation(occupancy, climate, entities, devices, tuple(people))
        self._homes[home_index] = simulation
        return simulation

    def _loads(self, home: HomeSpec, occupancy: HomeOccupancy, outdoor: Weather) -> RoomLoads:
        household = home.household
        n_minutes = self.config.n_minutes
        ach = np.repeat(np.array([[r.ach] for r in home.rooms]), n_minutes, axis=1)
        rng = stream(self.seed, "airing", home.index)
        # local midnight of each day, in minutes from the start (the first may be before it)
        clock = self._clock
        midnights = clock.day_start * STEP_MINUTES - clock.slot[clock.day_start] * STEP_MINUTES
        aired = rng.random(midnights.size) < household.airing
        opens = midnights + 7 * 60 + rng.integers(0, 120, size=midnights.size)
        aired &= opens >= 0
        lengths = rng.integers(10, 26, size=midnights.size)
        for r, room in enumerate(home.rooms):
            if room.kind is RoomKind.BEDROOM:
                for start, length in zip(
                    opens[aired].tolist(), lengths[aired].tolist(), strict=True
                ):
                    ach[r, start : start + length] += AIRING_ACH
            if room.kind is RoomKind.BATHROOM and household.bathroom_fan:
                ach[r] += FAN_ACH * extend_after(occupancy.bathing[r] > 0, 15)
            if room.kind is RoomKind.KITCHEN and household.cooker_hood:
                ach[r] += HOOD_ACH * (occupancy.cooking[r] > 0)
        heat = occupancy.heat.copy()
        kitchen = home.first_room(RoomKind.KITCHEN)
        bathroom = home.first_room(RoomKind.BATHROOM)
        office = home.first_room(RoomKind.OFFICE)
        tv_room = home.room_index(household.tv_room)
        if kitchen >= 0:
            heat[kitchen] += 500.0 * (occupancy.cooking[kitchen] > 0)
        if bathroom >= 0:
            heat[bathroom] += 400.0 * (occupancy.bathing[bathroom] > 0)
        if office >= 0:
            heat[office] += household.pc_watts * (occupancy.working[office] > 0)
        heat[tv_room] += household.tv_watts * (occupancy.watching[tv_room] > 0)
        setpoint = heating_setpoints(
            occupancy.anyone_up,
            household.comfort_temperature,
            household.setback_temperature,
            np.array([r.setpoint_offset for r in home.rooms]),
            outdoor.daily_temperature,
        )
        return RoomLoads(
            co2=occupancy.co2, moisture=occupancy.moisture, heat=heat, ach=ach, setpoint=setpoint
        )

    def entity_roles(self, home_id: str) -> dict[str, tuple[str, SensorRole]]:
        """Every entity of the home: `entity_id -> (room_id, role)`."""
        home = self.home(home_id)
        return {s.entity_id: (r.room_id, s.role) for r in home.rooms for s in r.sensors}

    def entity_series(self, home_id: str) -> dict[str, ChangeSeries]:
        """Every entity's history as the numbers HA would parse from its states."""
        simulation = self._simulate(self._home_index_of(home_id))
        return {entity.entity_id: entity.series for entity in simulation.entities}

    def events(self, home_id: str) -> Iterator[tuple[float, str, str]]:
        """`(epoch seconds, entity_id, HA state string)` for every state change of the home's
        entities, in time order (ties in entity order), starting with each entity's state at
        the world's start."""
        simulation = self._simulate(self._home_index_of(home_id))

        def one(order: int, entity: Entity) -> Iterator[tuple[float, int, str, str]]:
            for t, state in zip(entity.series.times.tolist(), entity.state_strings(), strict=True):
                yield t, order, entity.entity_id, state

        merged = heapq.merge(*(one(i, e) for i, e in enumerate(simulation.entities)))
        for t, _, entity_id, state in merged:
            yield t, entity_id, state

    def physics(self, home_id: str) -> HomePhysics:
        """The true (noise-free) indoor climate of every room and the weather outside."""
        simulation = self._simulate(self._home_index_of(home_id))
        return HomePhysics(simulation.climate, self._weather)

    def room_data(self, home_id: str, room_id: str) -> RoomData:
        index = self._home_index_of(home_id)
        home = self.homes[index]
        r = home.room_index(room_id)
        simulation = self._simulate(index)
        inputs: dict[SensorRole, list[ChangeSeries]] = {}
        for entity in simulation.entities:
            if entity.room_id == room_id:
                inputs.setdefault(entity.role, []).append(entity.series)
        frames = extract_room_frames(inputs, self.start, self.end, 60, home.tz)
        occupancy = simulation.occupancy
        residents = [self._minute_track(p) for p in self._residents[index]]
        resident_activity = np.stack(
            [np.where((t.place == index) & (t.room == r), t.activity, -1) for t in residents],
            axis=1,
        ).astype(np.int8)
        reported = np.zeros(self.config.n_minutes, dtype=bool)
        for person in simulation.visitors:
            phone = self._phone(person)
            reported |= (phone.place == index) & (phone.reported_room == r)
        rng = stream(self.seed, "labels", index, room_id)
        noise = self.config.label_noise
        return RoomData(
            home_id=home_id,
            room_id=room_id,
            kind=home.rooms[r].kind,
            times=self.minute_times,
            frames=frames,
            occupancy=(occupancy.headcount[r] > 0).astype(np.int8),
            headcount=occupancy.headcount[r].copy(),
            activity=occupancy.activity[r].copy(),
            resident_activity=resident_activity,
            occupancy_label=noisy_labels(reported.astype(np.int8), 2, noise, rng),
            activity_label=noisy_labels(occupancy.activity[r], len(ACTIVITIES), noise, rng),
        )

    def _home_index_of(self, home_id: str) -> int:
        return self.home(home_id).index

    # ------------------------------------------------------------------------- phones

    def _phone(self, person_index: int) -> PhoneTrack:
        if person_index not in self._phones:
            person = self.people[person_index]
            self._phones[person_index] = simulate_phone(
                person,
                self._minute_track(person_index),
                home_of=lambda h: self.homes[h],
                place_kind_of=self._place_kind,
                start=self.start,
                dropout=self.config.sensor_dropout,
                rng=stream(self.seed, "phone", person.home_index, person.index),
            )
        return self._phones[person_index]

    def _place_kind(self, code: int) -> PlaceKind | None:
        return place_kind(self.shared_places[-2 - code]) if code <= -2 else None

    def phone_data(self, person_id: str) -> PhoneData:
        person = self.person(person_id)
        index = self._person_index[person_id]
        track = self._minute_track(index)
        phone = self._phone(index)
        frames = extract_phone_frames(
            phone.signals, self.start, self.end, 60, self.homes[person.home_index].tz
        )
        rng = stream(self.seed, "phone-labels", person.home_index, person.index)
        return PhoneData(
            person_id=person_id,
            phone_id=person.phone_id,
            home_id=person.home_id,
            times=self.minute_times,
            frames=frames,
            place=track.place.copy(),
            room=phone.reported_room.copy(),
            true_room=np.where(track.place >= 0, track.room, -1).astype(np.int16),
            carried=phone.carried.copy(),
            activity=track.activity.copy(),
            activity_label=noisy_labels(
                track.activity, len(ACTIVITIES), self.config.label_noise, rng
            ),
        )

    def encounters(self) -> list[Encounter]:
        """Every time some phone's reported room changes to a room of a home, in time order."""
        found: list[Encounter] = []
        for index, person in enumerate(self.people):
            phone = self._phone(index)
            key = np.where(
                phone.reported_room >= 0,
                phone.place.astype(np.int64) * 64 + phone.reported_room,
                -1,
            )
            entered = np.flatnonzero((key >= 0) & (key != np.concatenate([[-1], key[:-1]])))
            for minute in entered.tolist():
                home = self.homes[int(phone.place[minute])]
                found.append(
                    Encounter(
                        time=float(self.minute_times[minute]),
                        person_id=person.person_id,
                        phone_id=person.phone_id,
                        home_id=home.home_id,
                        room_id=home.rooms[int(phone.reported_room[minute])].room_id,
                    )
                )
        found.sort(key=lambda e: (e.time, e.person_id))
        return found


def generate_world(config: WorldConfig, seed: int) -> World:
    """The world of `(config, seed)`. Cheap: homes are simulated when first asked for."""
    return World(config, seed)


def time_split(
    times: FloatArray, train_days: float, test_days: float, gap_days: float = 0.0
) -> tuple[slice, slice]:
    """Train on the first `train_days` of `times`, test on the `test_days` after a gap.

    `times` are ascending epoch seconds (frame starts); the test period must fit in the data.
    """
    if times.size == 0 or train_days <= 0 or test_days <= 0 or gap_days < 0:
        raise WorldConfigError("time_split needs data and positive train and test periods")
    first = float(times[0])
    step = float(times[1] - times[0]) if times.size > 1 else 0.0
    bounds = np.array([train_days, train_days + gap_days, train_days + gap_days + test_days])
    edges = np.searchsorted(times, first + bounds * 86400.0, side="left")
    if float(times[-1]) + step < first + bounds[-1] * 86400.0 - 1e-6:
        raise WorldConfigError(
            f"the data covers {(float(times[-1]) + step - first) / 86400.0:.2f} days, "
            f"fewer than the {bounds[-1]:g} the split needs"
        )
    return slice(0, int(edges[0])), slice(int(edges[1]), int(edges[2]))
