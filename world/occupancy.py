"""From people's minute tracks to what each room of a home sees: headcounts, the dominant
activity, movement a PIR can pick up, and the loads that drive the room physics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from mlmule_core.features import ACTIVITIES, EMPTY_ROOM_ACTIVITY

from .residents import BATH, COOK, SLEEP, TV, WORK, MinuteTrack

FloatArray = npt.NDArray[np.float64]
Int16Array = npt.NDArray[np.int16]

# Per chain state (SLEEP .. VISIT): how much a person moves in PIR terms (chance a sensor with
# full coverage fires within the minute), CO2 exhaled (L/s, from metabolic rate: 0.8 met asleep
# to ~2 met cooking), water vapour (g/s), heat (W).
MOVEMENT = np.array([0.04, 0.9, 0.55, 0.35, 0.25, 0.85, 0.75, 0.0, 0.0, 0.6])
CO2_LPS = np.array([0.0035, 0.0075, 0.0052, 0.0048, 0.0045, 0.0065, 0.006, 0.0, 0.0, 0.0055])
VAPOUR_GPS = np.array([0.008, 0.014, 0.011, 0.011, 0.011, 0.013, 0.012, 0.0, 0.0, 0.011])
HEAT_W = np.array([70.0, 90.0, 80.0, 80.0, 75.0, 90.0, 85.0, 0.0, 0.0, 80.0])
TRANSIT_MOVEMENT = 0.98
TRANSIT_CO2_LPS = 0.008
COOKING_VAPOUR_GPS = 0.15  # boiling and frying
SHOWER_VAPOUR_GPS = 0.5


@dataclass(frozen=True)
class HomeOccupancy:
    """Per room and minute (`[R, M]`) for one home, guests included."""

    headcount: Int16Array
    awake: Int16Array  # present and not asleep
    activity: npt.NDArray[np.int8]  # dominant activity, EMPTY_ROOM_ACTIVITY when nobody is in
    movement: FloatArray  # chance a perfect PIR fires this minute
    co2: FloatArray  # m^3/s
    moisture: FloatArray  # g/s
    heat: FloatArray  # W from bodies
    cooking: Int16Array
    bathing: Int16Array
    watching: Int16Array
    working: Int16Array
    passages: Int16Array  # people entering or leaving the room
    front_door: Int16Array  # `[M]` arrivals and departures through the front door
    anyone_up: npt.NDArray[np.bool_]  # `[M]` someone at home and awake (drives the heating)


def aggregate(
    tracks: list[MinuteTrack], home_index: int, n_rooms: int, n_minutes: int
) -> HomeOccupancy:
    """Sum every person who is in this home (residents and visitors) into its rooms."""
    size = n_rooms * n_minutes
    flats, states, transits, activities, minutes_of = [], [], [], [], []
    front = np.zeros(n_minutes, dtype=np.int64)
    passages = np.zeros(size, dtype=np.int64)
    for track in tracks:
        here = track.place == home_index
        minutes = np.flatnonzero(here)
        if minutes.size == 0:
            continue
        flats.append(track.room[minutes].astype(np.int64) * n_minutes + minutes)
        states.append(track.state[minutes])
        transits.append(track.transit[minutes])
        activities.append(track.activity[minutes])
        minutes_of.append(minutes)
        previous_here = np.concatenate([[False], here[:-1]])
        next_here = np.concatenate([here[1:], [False]])
        arrivals = here & ~previous_here
        departures = here & ~next_here
        arrivals[0] = departures[-1] = False  # the world's edges are not doors
        front += arrivals.astype(np.int64) + departures.astype(np.int64)
        room_key = np.where(here, track.room.astype(np.int64), -1)
        changed = np.flatnonzero(room_key[1:] != room_key[:-1]) + 1
        for keys in (room_key[changed], room_key[changed - 1]):
            inside = keys >= 0
            passages += np.bincount(keys[inside] * n_minutes + changed[inside], minlength=size)
    flat = np.concatenate(flats) if flats else np.zeros(0, dtype=np.int64)
    state = np.concatenate(states) if states else np.zeros(0, dtype=np.int8)
    transit = np.concatenate(transits) if transits else np.zeros(0, dtype=bool)
    activity = np.concatenate(activities) if activities else np.zeros(0, dtype=np.int8)

    def total(weights: FloatArray | None) -> FloatArray:
        counts = np.bincount(flat, weights=weights, minlength=size)
        return counts.reshape(n_rooms, n_minutes).astype(np.float64)

    def per_state(table: FloatArray, transit_value: float | None = None) -> FloatArray:
        values = table[state]
        return values if transit_value is None else np.where(transit, transit_value, values)

    def count(wanted: int) -> Int16Array:
        return total(((state == wanted) & ~transit).astype(np.float64)).astype(np.int16)

    # a PIR misses the minute only if it misses every person: sum log(1 - movement)
    miss = total(np.log1p(-np.minimum(per_state(MOVEMENT, TRANSIT_MOVEMENT), 0.999)))
    cooking = count(COOK)
    bathing = count(BATH)
    moisture = total(per_state(VAPOUR_GPS))
    moisture += COOKING_VAPOUR_GPS * np.minimum(cooking, 1) + SHOWER_VAPOUR_GPS * np.minimum(
        bathing, 1
    )
    awake = total((state != SLEEP).astype(np.float64)).astype(np.int16)
    return HomeOccupancy(
        headcount=total(None).astype(np.int16),
        awake=awake,
        activity=_dominant_activity(flat, activity, n_rooms, n_minutes),
        movement=-np.expm1(miss),
        co2=total(per_state(CO2_LPS, TRANSIT_CO2_LPS)) / 1000.0,
        moisture=moisture,
        heat=total(per_state(HEAT_W)),
        cooking=cooking,
        bathing=bathing,
        watching=count(TV),
        working=count(WORK),
        passages=passages.reshape(n_rooms, n_minutes).astype(np.int16),
        front_door=front.astype(np.int16),
        anyone_up=awake.sum(axis=0) > 0,
    )


def _dominant_activity(
    flat: npt.NDArray[np.int64], activity: npt.NDArray[np.int8], n_rooms: int, n_minutes: int
) -> npt.NDArray[np.int8]:
    """The activity most people in the room are doing (ties: the lower ACTIVITIES index)."""
    n_classes = len(ACTIVITIES)
    result = np.full((n_rooms, n_minutes), EMPTY_ROOM_ACTIVITY, dtype=np.int8)
    room, minute = np.divmod(flat, n_minutes)
    for r in range(n_rooms):
        inside = room == r
        if not inside.any():
            continue
        keys = activity[inside].astype(np.int64) * n_minutes + minute[inside]
        counts = np.bincount(keys, minlength=n_classes * n_minutes).reshape(n_classes, n_minutes)
        occupied = counts.sum(axis=0) > 0
        result[r, occupied] = counts[:, occupied].argmax(axis=0)
    return result


def noisy_labels(
    truth: npt.NDArray[np.integer],
    n_classes: int,
    rate: float,
    rng: np.random.Generator,
    spell: float = 10.0,
) -> npt.NDArray[np.int8]:
    """Labels wrong for about `rate` of the time, in spells of about `spell` minutes, as when a
    user forgets to update an `input_select` or a phone's activity detector lags."""
    labels = truth.astype(np.int8).copy()
    n = labels.size
    if rate <= 0 or n == 0:
        return labels
    count = int(rng.poisson(rate * n / spell))
    starts = rng.integers(0, n, size=count)
    lengths = rng.geometric(1.0 / spell, size=count)
    shifts = rng.integers(1, n_classes, size=count)
    for start, length, shift in zip(
        starts.tolist(), lengths.tolist(), shifts.tolist(), strict=True
    ):
        end = min(n, start + length)
        wrong = (int(truth[start]) + shift) % n_classes
        labels[start:end] = wrong if n_classes > 2 else 1 - truth[start:end]
    return labels
