"""Phones: where each resident's phone is, which room HA's BLE presence reports for it, and
the per-minute motion features it computes (the data of mobile-data mode).

A phone is not always on its owner: it rests on the nightstand, by the shower, on the sofa.
It then stays where it was put down, and its motion features go flat whatever the owner does.
BLE presence reports the phone's room with a minute of lag now and then, confuses it with a
neighbouring room in short spells, and sometimes sees nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from mlmule_core.features import PHONE_SIGNAL_RANGES, ChangeSeries, PhoneSignal

from .config import PlaceKind
from .homes import HomeSpec, PersonSpec
from .residents import AWAY_ERRAND, MinuteTrack

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Motion contexts beyond the chain states (0..9).
TRANSIT, GYM, STILL = 10, 11, 12
# Mean per context of (accel mean m/s^2, accel std m/s^2, steps/min, gyro (rad/s)^2,
# screen-on fraction, orientation flips/min) for a phone on its owner.
MOTION_MEANS = np.array(
    [
        [0.02, 0.02, 0.0, 0.01, 0.03, 0.05],  # sleeping (phone in bed)
        [0.45, 0.35, 12.0, 0.25, 0.10, 0.8],  # cooking
        [0.12, 0.10, 1.5, 0.10, 0.35, 0.6],  # eating
        [0.06, 0.05, 1.0, 0.05, 0.30, 0.3],  # working at a desk
        [0.05, 0.05, 0.5, 0.06, 0.40, 0.4],  # watching TV
        [0.30, 0.25, 4.0, 0.20, 0.05, 0.5],  # bathing
        [0.35, 0.30, 18.0, 0.20, 0.25, 0.8],  # other, around the house
        [0.08, 0.07, 3.0, 0.06, 0.30, 0.3],  # at the office
        [0.60, 0.45, 45.0, 0.30, 0.20, 1.0],  # errands: shop, cafe, out
        [0.15, 0.12, 4.0, 0.12, 0.25, 0.6],  # visiting friends
        [1.10, 0.70, 95.0, 0.50, 0.25, 1.2],  # walking: hallway, commute
        [2.20, 1.60, 90.0, 1.20, 0.05, 3.0],  # gym
        [0.005, 0.003, 0.0, 0.001, 0.0, 0.0],  # lying still, not carried
    ]
)
# Chance the phone moves with its owner, per chain state (asleep: onto the nightstand), before
# the owner's own habit.
CARRY = np.array([0.8, 0.6, 0.7, 0.6, 0.8, 0.2, 0.8, 1.0, 1.0, 0.9])
COMMUTE_MINUTES = 15
BLE_LAG = 0.3  # share of minutes BLE still reports the previous minute's room
CONFUSION_SPELL = 3.0  # minutes
UNSEEN_SPELL = 5.0


@dataclass(frozen=True)
class PhoneTrack:
    carried: BoolArray
    place: npt.NDArray[np.int16]  # the phone's place code (it never leaves without its owner)
    room: npt.NDArray[np.int16]  # the room it is really in (-1 when not in a home)
    reported_room: npt.NDArray[np.int16]  # what BLE presence reports (-1: nothing)
    signals: dict[PhoneSignal, ChangeSeries]


def simulate_phone(
    person: PersonSpec,
    track: MinuteTrack,
    *,
    home_of: Callable[[int], HomeSpec],
    place_kind_of: Callable[[int], PlaceKind | None],
    start: float,
    dropout: float,
    rng: np.random.Generator,
) -> PhoneTrack:
    n = track.state.size
    at_home_place = track.place >= 0
    carry_chance = np.where(at_home_place, CARRY[track.state] * person.traits.carry / 0.7, 1.0)
    # one decision per 5-minute step: people do not pick the phone up and put it down each minute
    per_step = rng.random((n + 4) // 5)
    carried = (np.repeat(per_step, 5)[:n] < carry_chance) | track.transit | ~at_home_place
    # The phone goes where its owner goes, into the first room after arriving too.
    changed_place = np.concatenate([[False], track.place[1:] != track.place[:-1]])
    carried |= changed_place | np.concatenate([[False], changed_place[:-1]])
    # It is put down in rooms, not in the hallway on the way through.
    anchor = carried & ~track.transit
    anchor[0] = True
    last_anchor = np.maximum.accumulate(np.where(anchor, np.arange(n), 0))
    place = track.place[last_anchor]
    room = np.where(place >= 0, track.room[last_anchor], -1).astype(np.int16)

    reported = _ble(place, room, home_of, rng)
    context = _motion_context(track, carried, place_kind_of)
    signals = _signals(context, person.traits.phone_bias, start, dropout, rng)
    return PhoneTrack(carried, place.astype(np.int16), room, reported, signals)


def _spell_mask(rate: FloatArray, spell: float, rng: np.random.Generator) -> BoolArray:
    """Minutes covered by spells starting with chance `rate / spell` (mean length `spell`)."""
    n = rate.size
    starts = np.flatnonzero(rng.random(n) < rate / spell)
    ends = np.minimum(starts + rng.geometric(1.0 / spell, size=starts.size), n)
    change = np.zeros(n + 1, dtype=np.int64)
    np.add.at(change, starts, 1)
    np.add.at(change, ends, -1)
    return np.asarray(np.cumsum(change[:n]) > 0)


def _ble(
    place: npt.NDArray[np.int16],
    room: npt.NDArray[np.int16],
    home_of: Callable[[int], HomeSpec],
    rng: np.random.Generator,
) -> npt.NDArray[np.int16]:
    n = place.size
    lagged = rng.random(n) < BLE_LAG
    previous = np.concatenate([[0], np.arange(n - 1)])
    same_place = place[previous] == place
    seen = np.where(lagged & same_place, room[previous], room).astype(np.int16)

    homes = np.unique(place[place >= 0]).tolist()
    confusion = np.zeros(n)
    unseen = np.zeros(n)
    for code in homes:
        household = home_of(int(code)).household
        confusion[place == code] = household.ble_confusion
        unseen[place == code] = household.ble_dropout
    confused = _spell_mask(confusion, CONFUSION_SPELL, rng) & (seen >= 0)
    pick = rng.random(n)
    for code in homes:
        home = home_of(int(code))
        for r, spec in enumerate(home.rooms):
            where = np.flatnonzero(confused & (place == code) & (seen == r))
            if where.size and spec.neighbours:
                choices = np.array([home.room_index(other) for other in spec.neighbours])
                seen[where] = choices[(pick[where] * choices.size).astype(np.int64)]
    seen[_spell_mask(unseen, UNSEEN_SPELL, rng)] = -1
    return seen


def _motion_context(
    track: MinuteTrack, carried: BoolArray, place_kind_of: Callable[[int], PlaceKind | None]
) -> npt.NDArray[np.int64]:
    context = track.state.astype(np.int64)
    out = track.place < 0
    # minutes since an outing started and until it ends: near either end the owner is walking
    n = out.size
    boundary = np.flatnonzero(np.diff(np.concatenate([[False], out, [False]]).astype(np.int8)))
    begins, ends = boundary[0::2], boundary[1::2]
    since = np.full(n, 10**6)
    until = np.full(n, 10**6)
    for begin, end in zip(begins.tolist(), ends.tolist(), strict=True):
        since[begin:end] = np.arange(end - begin)
        until[begin:end] = np.arange(end - begin)[::-1]
    gym_codes = [
        code
        for code in np.unique(track.place[out]).tolist()
        if place_kind_of(code) is PlaceKind.GYM
    ]
    context[out & np.isin(track.place, gym_codes) & (track.state == AWAY_ERRAND)] = GYM
    context[out & ((since < COMMUTE_MINUTES) | (until < COMMUTE_MINUTES))] = TRANSIT
    context[track.transit] = TRANSIT
    context[~carried] = STILL
    return context


def _signals(
    context: npt.NDArray[np.int64],
    bias: tuple[float, ...],
    start: float,
    dropout: float,
    rng: np.random.Generator,
) -> dict[PhoneSignal, ChangeSeries]:
    n = context.size
    mean = MOTION_MEANS[context] * np.asarray(bias)[None, :]
    spread = rng.lognormal(0.0, 0.35, size=mean.shape)
    values = mean * spread
    values[:, 2] = np.round(values[:, 2])  # whole steps
    values[:, 4] = mean[:, 4] + rng.normal(0.0, 0.12, n)
    values[:, 5] = rng.poisson(mean[:, 5])
    # within what a phone reports: the lognormal tail can pass it (a sprint near 400 steps/min)
    # and the screen-on noise can leave [0, 1]
    low, high = np.array([PHONE_SIGNAL_RANGES[signal] for signal in PhoneSignal]).T
    values = np.clip(values, low, high)
    # the app is not always running: no samples during those spells
    running = ~_spell_mask(np.full(n, dropout), 30.0, rng)
    times = start + 60.0 * np.flatnonzero(running).astype(np.float64)
    return {
        signal: ChangeSeries(times, np.round(values[running, column], 4))
        for column, signal in enumerate(PhoneSignal)
    }
