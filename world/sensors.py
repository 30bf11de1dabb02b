"""Sensors: from what happens in a room to the state changes Home Assistant would record.

Every entity becomes a `ChangeSeries` of the values HA would parse back from its state
strings: numbers are rounded to the sensor's display precision and a reading equal to the
previous one is not a change. Times are whole milliseconds, so the epoch seconds survive a
round trip through HA's datetimes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from mlmule_core.features import BINARY_ROLES, ChangeSeries, SensorRole

from .config import WorldConfig, stream
from .homes import HomeSpec, RoomSpec, SensorSpec
from .occupancy import HomeOccupancy
from .physics import RoomClimate

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MINUTE_MS = 60_000
DROPOUT_MINUTES = 40.0  # mean length of a sensor's unavailable spell
RESTARTS_PER_WEEK_PER_DROPOUT = 50.0  # HA restarts: 0.5 a week at sensor_dropout 0.01
FALSE_TRIGGERS_PER_DAY = 0.3
PET_TRIGGERS_PER_DAY = 6.0
LEFT_ON_MINUTES = 30.0
KETTLE_W, STOVE_W = 2000.0, 1800.0
TV_STANDBY_W, PC_SLEEP_W, STOVE_STANDBY_W = 0.8, 2.0, 0.4
FRONT_DOOR_CLOSED = 0.98  # chance the front door is shut behind someone


@dataclass(frozen=True)
class Entity:
    """One HA entity of the world and its recorded history."""

    entity_id: str
    room_id: str
    role: SensorRole
    series: ChangeSeries
    decimals: int = 0

    def state_strings(self) -> list[str]:
        """The HA state string of every change, as the recorder would store it."""
        values = self.series.values
        if self.role in BINARY_ROLES:
            on = "playing" if self.role is SensorRole.MEDIA else "on"
            return [
                "unavailable" if math.isnan(v) else (on if v == 1.0 else "off")
                for v in values.tolist()
            ]
        pattern = f"{{:.{self.decimals}f}}"
        return ["unavailable" if math.isnan(v) else pattern.format(v) for v in values.tolist()]


@dataclass(frozen=True)
class HomeDevices:
    """Device states per minute that other parts need (lamps light the lux sensors too)."""

    lamps: BoolArray  # [R, M]
    tv_on: BoolArray  # [M]


def home_entities(
    home: HomeSpec,
    occupancy: HomeOccupancy,
    climate: RoomClimate,
    config: WorldConfig,
    seed: int,
) -> tuple[tuple[Entity, ...], HomeDevices]:
    """Every entity of the home with its history from the world start to its end."""
    rng = stream(seed, "devices", home.index)
    start_ms = round(config.start_epoch * 1000)
    end_ms = start_ms + config.n_minutes * MINUTE_MS
    clock = _Clock(start_ms, end_ms, config.n_minutes)
    restarts = _spells(
        stream(seed, "restarts", home.index),
        clock,
        RESTARTS_PER_WEEK_PER_DROPOUT * config.sensor_dropout / (7 * 1440),
        2.0,
    )
    lamps = _lamps(home, occupancy, climate, rng)
    tv_room = home.room_index(home.household.tv_room)
    tv_on = _tv(occupancy.watching[tv_room] > 0, rng)
    devices = HomeDevices(lamps, tv_on)
    entities = []
    for r, room in enumerate(home.rooms):
        context = _Room(home, r, occupancy, climate, devices, clock)
        for sensor in room.sensors:
            sensor_rng = stream(seed, "sensor", home.index, sensor.entity_id)
            times, values = _HISTORIES[sensor.device](context, sensor, sensor_rng)
            own = _spells(
                sensor_rng, clock, config.sensor_dropout / DROPOUT_MINUTES, DROPOUT_MINUTES
            )
            spells = _merge_spells(np.concatenate([own, restarts]))
            times, values = _with_dropouts(
                times, values, spells, sensor.role in BINARY_ROLES, end_ms
            )
            entities.append(
                Entity(
                    sensor.entity_id,
                    room.room_id,
                    sensor.role,
                    ChangeSeries(times / 1000.0, values),
                    sensor.decimals,
                )
            )
    return tuple(entities), devices


@dataclass(frozen=True)
class _Clock:
    start_ms: int
    end_ms: int
    n_minutes: int

    def minute_starts(self, minutes: IntArray) -> IntArray:
        return self.start_ms + minutes * MINUTE_MS


@dataclass(frozen=True)
class _Room:
    """Everything a sensor in room `index` of a home can observe."""

    home: HomeSpec
    index: int
    occupancy: HomeOccupancy
    climate: RoomClimate
    devices: HomeDevices
    clock: _Clock

    @property
    def spec(self) -> RoomSpec:
        return self.home.rooms[self.index]


History = tuple[IntArray, FloatArray]  # (times in ms, values)


def _pir_history(room: _Room, sensor: SensorSpec, rng: np.random.Generator) -> History:
    pets = room.home.household.pets and room.spec.kind.value not in {"bedroom", "bathroom"}
    false_rate = (PET_TRIGGERS_PER_DAY if pets else FALSE_TRIGGERS_PER_DAY) / 1440.0
    chance = sensor.coverage * room.occupancy.movement[room.index] + false_rate
    return _pir(chance, sensor.hold, room.clock, rng)


def _front_door_history(room: _Room, sensor: SensorSpec, rng: np.random.Generator) -> History:
    return _door(room.occupancy.front_door, FRONT_DOOR_CLOSED, room.clock, rng)


def _contact_history(room: _Room, sensor: SensorSpec, rng: np.random.Generator) -> History:
    closes = room.home.household.doors_closed
    return _door(room.occupancy.passages[room.index], closes, room.clock, rng)


def _light_history(room: _Room, sensor: SensorSpec, rng: np.random.Generator) -> History:
    return _binary_from_minutes(room.devices.lamps[room.index], room.clock, rng, 20_000)


def _media_history(room: _Room, sensor: SensorSpec, rng: np.random.Generator) -> History:
    return _binary_from_minutes(room.devices.tv_on, room.clock, rng, 30_000)


def _lux_history(room: _Room, sensor: SensorSpec, rng: np.random.Generator) -> History:
    lamp = room.home.household.lamp_lux * room.devices.lamps[room.index]
    lux = room.climate.daylight[room.index] + lamp
    return _sampled(lux, sensor, room.clock, rng, relative=True, low=0.0)


def _co2_history(room: _Room, sensor: SensorSpec, rng: np.random.Generator) -> History:
    return _sampled(room.climate.co2[room.index], sensor, room.clock, rng, low=300.0)


def _temperature_history(room: _Room, sensor: SensorSpec, rng: np.random.Generator) -> History:
    return _sampled(room.climate.temperature[room.index], sensor, room.clock, rng)


def _humidity_history(room: _Room, sensor: SensorSpec, rng: np.random.Generator) -> History:
    humidity = room.climate.humidity[room.index]
    return _sampled(humidity, sensor, room.clock, rng, low=0.0, high=100.0)


def _plug_history(room: _Room, sensor: SensorSpec, rng: np.random.Generator) -> History:
    power = _appliance_power(sensor.device, room, rng)
    return _sampled(power, sensor, room.clock, rng, relative=True, low=0.0, noisy_above=5.0)


_HISTORIES: dict[str, Callable[[_Room, SensorSpec, np.random.Generator], History]] = {
    "pir": _pir_history,
    "front_door": _front_door_history,
    "contact": _contact_history,
    "light": _light_history,
    "media": _media_history,
    "lux": _lux_history,
    "co2": _co2_history,
    "temperature": _temperature_history,
    "humidity": _humidity_history,
    "kettle": _plug_history,
    "stove": _plug_history,
    "tv": _plug_history,
    "pc": _plug_history,
}


# ----------------------------------------------------------------------------- behaviour


def _lamps(
    home: HomeSpec, occupancy: HomeOccupancy, climate: RoomClimate, rng: np.random.Generator
) -> BoolArray:
    """A lamp is on while someone awake is in a room darker than the household likes; some
    households leave it on for a while after the room empties."""
    household = home.household
    wanted = (occupancy.awake > 0) & (climate.daylight < household.light_threshold)
    lamps = wanted.copy()
    n = wanted.shape[1]
    for r in range(len(home.rooms)):
        edges = np.diff(wanted[r].astype(np.int8))
        offs = np.flatnonzero(edges == -1) + 1
        ons = np.flatnonzero(edges == 1) + 1
        forgotten = rng.random(offs.size) < household.lights_left_on
        delay = rng.exponential(LEFT_ON_MINUTES, size=offs.size).astype(np.int64)
        following = np.searchsorted(ons, offs, side="right")
        next_on = np.append(ons, n)[following]
        stop = np.minimum(offs + np.where(forgotten, delay, 0), next_on)
        change = np.zeros(n + 1, dtype=np.int64)
        np.add.at(change, offs, 1)
        np.add.at(change, stop, -1)
        lamps[r] |= np.cumsum(change[:n]) > 0
    return lamps


def _tv(watching: BoolArray, rng: np.random.Generator) -> BoolArray:
    """The TV is on while someone watches and for a few minutes after they stop."""
    n = watching.size
    tv = watching.copy()
    offs = np.flatnonzero(np.diff(watching.astype(np.int8)) == -1) + 1
    linger = rng.integers(0, 6, size=offs.size)
    change = np.zeros(n + 1, dtype=np.int64)
    np.add.at(change, offs, 1)
    np.add.at(change, np.minimum(offs + linger, n), -1)
    return tv | (np.cumsum(change[:n]) > 0)


def _appliance_power(device: str, room: _Room, rng: np.random.Generator) -> FloatArray:
    """Watts per minute drawn by the appliance on this plug."""
    household = room.home.household
    occupancy = room.occupancy
    tv_on = room.devices.tv_on
    n = tv_on.size
    if device == "tv":
        return np.where(tv_on, household.tv_watts * rng.uniform(0.9, 1.1, n), TV_STANDBY_W)
    if device == "pc":
        active = occupancy.working[room.index] > 0
        idle = np.ones(n, dtype=bool) if household.pc_always_on else extend_after(active, 15)
        watts = np.where(idle, 0.3 * household.pc_watts, PC_SLEEP_W)
        return np.where(active, household.pc_watts * rng.uniform(0.7, 1.3, n), watts)
    cooking = occupancy.cooking[room.index] > 0
    if device == "stove":
        burning = cooking & (rng.random(n) < 0.65)
        return np.where(burning, STOVE_W * rng.uniform(0.3, 1.0, n), STOVE_STANDBY_W)
    # kettle: boiled at the start of some cooking bouts, for 2-4 minutes
    starts = np.flatnonzero(np.diff(cooking.astype(np.int8)) == 1) + 1
    used = starts[rng.random(starts.size) < household.kettle_use]
    watts = np.zeros(n)
    durations = rng.integers(2, 5, size=used.size)
    for start, minutes in zip(used.tolist(), durations.tolist(), strict=True):
        watts[start : start + minutes] = KETTLE_W * rng.uniform(0.95, 1.05)
    return watts


def extend_after(active: BoolArray, minutes: int) -> BoolArray:
    """True while active and for `minutes` after each active minute."""
    index = np.where(active, np.arange(active.size), -(10**9))
    last = np.maximum.accumulate(index)
    return np.asarray(np.arange(active.size) - last <= minutes)


# ----------------------------------------------------------------------------- devices


def _pir(
    chance: FloatArray, hold: float, clock: _Clock, rng: np.random.Generator
) -> tuple[IntArray, FloatArray]:
    """Motion: a trigger in a minute with the given chance at a random second; the sensor goes
    on at the first trigger and off `hold` seconds after the last of a run of triggers."""
    hits = np.flatnonzero(rng.random(chance.size) < chance)
    triggers = clock.minute_starts(hits) + rng.integers(0, MINUTE_MS, size=hits.size)
    hold_ms = round(hold * 1000)
    if triggers.size == 0:
        return np.array([clock.start_ms]), np.array([0.0])
    gap = np.diff(triggers) > hold_ms
    first = np.concatenate([[True], gap])
    last = np.concatenate([gap, [True]])
    times = np.concatenate([[clock.start_ms], triggers[first], triggers[last] + hold_ms])
    values = np.concatenate([[0.0], np.ones(int(first.sum())), np.zeros(int(last.sum()))])
    order = np.argsort(times, kind="stable")
    return times[order], values[order]


def _door(
    passages: npt.NDArray[np.int16], close_chance: float, clock: _Clock, rng: np.random.Generator
) -> tuple[IntArray, FloatArray]:
    """A contact opens when someone passes and is closed behind them a few seconds later,
    unless the household leaves it open until the next passage."""
    minutes = np.repeat(np.arange(passages.size), passages.astype(np.int64))
    opened = clock.minute_starts(minutes) + rng.integers(0, 50_000, size=minutes.size)
    opened.sort()
    closes = rng.random(opened.size) < close_chance
    closed = opened[closes] + rng.integers(3_000, 15_000, size=int(closes.sum()))
    times = np.concatenate([[clock.start_ms], opened, closed])
    values = np.concatenate([[0.0], np.ones(opened.size), np.zeros(closed.size)])
    order = np.argsort(times, kind="stable")
    return times[order], values[order]


def _binary_from_minutes(
    state: BoolArray, clock: _Clock, rng: np.random.Generator, jitter_ms: int
) -> tuple[IntArray, FloatArray]:
    changes = np.flatnonzero(state[1:] != state[:-1]) + 1
    times = clock.minute_starts(changes) + rng.integers(0, jitter_ms, size=changes.size)
    return (
        np.concatenate([[clock.start_ms], times]),
        np.concatenate([[float(state[0])], state[changes].astype(np.float64)]),
    )


def _sampled(
    truth: FloatArray,
    sensor: SensorSpec,
    clock: _Clock,
    rng: np.random.Generator,
    *,
    relative: bool = False,
    low: float | None = None,
    high: float | None = None,
    noisy_above: float | None = None,
) -> tuple[IntArray, FloatArray]:
    """Readings every `period` seconds (and one at the start): truth plus offset plus noise
    (relative to the value for lux and power), clipped, rounded to the display precision."""
    period_ms = sensor.period * 1000
    phase = int(rng.integers(0, period_ms))
    times = np.concatenate(
        [
            [clock.start_ms],
            np.arange(clock.start_ms + phase, clock.end_ms, period_ms, dtype=np.int64),
        ]
    )
    value = truth[np.minimum((times - clock.start_ms) // MINUTE_MS, truth.size - 1)]
    noise = rng.standard_normal(times.size) * sensor.noise
    if relative:
        jitter = value * noise
        if noisy_above is not None:
            jitter = np.where(value > noisy_above, jitter, 0.0)
        value = value + jitter
    else:
        value = value + sensor.offset + noise
    value = np.clip(value, low, high) if (low is not None or high is not None) else value
    return times, np.round(value, sensor.decimals) + 0.0  # + 0.0 turns -0.0 into 0.0


# ----------------------------------------------------------------------------- dropouts


def _spells(
    rng: np.random.Generator, clock: _Clock, starts_per_minute: float, mean_minutes: float
) -> IntArray:
    """Unavailable spells `[k, 2]` (start, end ms): Poisson starts, log-normal lengths."""
    count = int(rng.poisson(starts_per_minute * clock.n_minutes))
    starts = rng.integers(clock.start_ms, clock.end_ms, size=count)
    lengths = rng.lognormal(np.log(mean_minutes) - 0.5, 1.0, size=count) * MINUTE_MS
    return np.column_stack([starts, starts + np.maximum(lengths, 10_000).astype(np.int64)])


def _merge_spells(spells: IntArray) -> IntArray:
    if spells.shape[0] == 0:
        return spells.reshape(0, 2)
    ordered = spells[np.argsort(spells[:, 0], kind="stable")]
    merged = [ordered[0].tolist()]
    for start, end in ordered[1:].tolist():
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return np.array(merged, dtype=np.int64)


def _with_dropouts(
    times: IntArray, values: FloatArray, spells: IntArray, binary: bool, end_ms: int
) -> tuple[IntArray, FloatArray]:
    """Drop readings inside spells, mark each spell `unavailable`, and (for binary sensors,
    whose state HA re-reads on reconnect) restore the current state when it ends. Keeps only
    real changes before the world ends."""
    starts, ends = spells[:, 0], spells[:, 1]
    index = np.searchsorted(starts, times, side="right") - 1
    inside = (index >= 0) & (times < np.append(ends, 0)[index])
    parts_t = [times[~inside], starts]
    parts_v = [values[~inside], np.full(starts.size, np.nan)]
    if binary:
        restored = np.searchsorted(times, ends, side="right") - 1
        parts_t.append(ends)
        parts_v.append(values[np.maximum(restored, 0)])
    all_t = np.concatenate(parts_t)
    all_v = np.concatenate(parts_v)
    order = np.argsort(all_t, kind="stable")
    all_t, all_v = all_t[order], all_v[order]
    keep = all_t < end_ms
    all_t, all_v = all_t[keep], all_v[keep]
    same = (all_v[1:] == all_v[:-1]) | (np.isnan(all_v[1:]) & np.isnan(all_v[:-1]))
    changed = np.concatenate([[True], ~same])
    return all_t[changed], all_v[changed]
