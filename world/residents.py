"""Residents: a time-varying Markov chain over activities, rooms and places.

Each person has a target profile: for every 5-minute slot of a kind of day (workday, free day,
shift days) the probability of each activity, built from their schedule (wake-up, work hours,
meals, showers, evening TV, errands, gym). The chain reproduces that profile exactly while
keeping each activity for a realistic time. This re-derives the approach of Richardson et al.
(2008) and Page et al. (2008), whose presence chain has `T01(t) = P(t+1) + P(t)(mu-1)/(mu+1)`,
for many states with activity-specific persistence:

    stay in a with probability 1 - lambda_a(t), where lambda_a = 1 / mean bout length,
        raised to 1 - pi_a(t+1) / pi_a(t) when the profile drops faster than that;
    on leaving, enter b with
        q_b(t) = (pi_b(t+1) - pi_b(t) (1 - lambda_b(t))) / sum_a pi_a(t) lambda_a(t).

Then `pi(t+1) = pi(t) T(t)` holds exactly. A household-wide shift of the day's clock gives
day-to-day variation that members share (they eat and sleep at about the same times). Rooms
follow from activities, places from the kind of trip.

Visits to friends are laid over the chain in two rounds, so that nobody visits an empty home:
first everyone plans visits to homes where a resident is up (by the residents' own chains),
then a planned visit happens only where a host is up *and* not planning a visit of their own.
Actual visits are a subset of planned ones, so a host who stays in really is at home.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from mlmule_core.context import RoomKind
from mlmule_core.features import ACTIVITIES, Activity

from .config import STEP_MINUTES, STEPS_PER_DAY, PlaceKind, ScheduleType, place_kind
from .homes import HomeSpec, PersonSpec, PersonTraits

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

# Chain states. AWAY is split by kind of trip (they last differently); VISIT is laid over later.
SLEEP, COOK, EAT, WORK, TV, BATH, OTHER, AWAY_WORK, AWAY_ERRAND, VISIT = range(10)
N_CHAIN = 9
STATE_ACTIVITY = np.array(
    [
        ACTIVITIES.index(a)
        for a in (
            Activity.SLEEPING,
            Activity.COOKING,
            Activity.EATING,
            Activity.WORKING,
            Activity.WATCHING_TV,
            Activity.BATHING,
            Activity.OTHER,
            Activity.AWAY,
            Activity.AWAY,
            Activity.VISITING,
        )
    ],
    dtype=np.int8,
)
MEAN_BOUT_MINUTES = np.array([300.0, 20.0, 20.0, 90.0, 50.0, 12.0, 25.0, 420.0, 60.0])
LEAVE_RATE = np.minimum(1.0, STEP_MINUTES / MEAN_BOUT_MINUTES)
OTHER_MOVES = 0.15  # chance per step that someone pottering about changes room

ELSEWHERE_CODE = -1  # place codes: home index >= 0, -1 elsewhere, -2 - j shared place j


def shared_code(index: int) -> int:
    return -2 - index


# kinds of day
WORKDAY, FREE_DAY, EARLY_SHIFT, LATE_SHIFT, NIGHT_FIRST, NIGHT_SHIFT, NIGHT_LAST = range(7)
DAY_OFF_CHANCE = 0.04  # a workday taken off (leave, illness)

Interval = tuple[float, float]


@dataclass(frozen=True)
class DayPlan:
    """The shape of one kind of day, in minutes after local midnight (may run past 0 or 1440)."""

    sleep: tuple[Interval, ...]
    away_work: tuple[Interval, ...]
    work_home: tuple[Interval, ...]
    meals: tuple[tuple[float, float], ...]  # (time, size 0..1)
    shower: float
    tv: tuple[Interval, ...]
    errands: float
    gym: float | None


@dataclass(frozen=True)
class StepTrack:
    """One person per 5-minute step: chain state, place code and room index (-1 if none)."""

    state: npt.NDArray[np.int8]
    place: npt.NDArray[np.int16]
    room: npt.NDArray[np.int16]
    sleepy: BoolArray  # the person's profile says asleep (night-time trips go to the bathroom)
    gym_time: BoolArray  # inside the person's gym window today


@dataclass(frozen=True)
class MinuteTrack:
    """One person per minute, with transitions spread inside the step and hallway transits."""

    activity: npt.NDArray[np.int8]  # index into ACTIVITIES
    state: npt.NDArray[np.int8]
    place: npt.NDArray[np.int16]
    room: npt.NDArray[np.int16]
    transit: BoolArray  # walking through the hallway or the front door this minute


@dataclass(frozen=True)
class StepClock:
    """Local calendar of the world's 5-minute steps."""

    slot: IntArray  # 5-minute slot of the local day
    day: IntArray  # local day number from the first local day
    weekday: IntArray  # of each local day, 0 = Monday
    day_start: IntArray  # first step of each local day


# ----------------------------------------------------------------------------- day plans


def _sleep_window(wake: float, hours: float) -> tuple[Interval, Interval]:
    bed = wake + 1440.0 - 60.0 * hours
    return (bed - 1440.0, wake), (bed, wake + 1440.0)


def day_plan(person: PersonSpec, kind: int, gym_today: bool) -> DayPlan:
    t = person.traits
    gym = t.gym_time if gym_today else None
    if kind == FREE_DAY:
        wake = t.wake + t.lie_in
        sleep = _sleep_window(wake, t.sleep_hours + t.lie_in / 60.0 - 0.75)
        return DayPlan(
            sleep=sleep,
            away_work=(),
            work_home=(),
            meals=((wake + 30.0, 0.8), (13.0 * 60, 0.6), (t.dinner + 15.0, 1.0)),
            shower=wake + 20.0 if t.morning_shower else sleep[1][0] - 60.0,
            tv=((14.0 * 60, 17.5 * 60), (t.dinner + 60.0, sleep[1][0] - 15.0)),
            errands=0.6 * t.errands,
            gym=gym,
        )
    if person.schedule is ScheduleType.SHIFT_WORKER:
        return _shift_plan(t, kind, gym)
    sleep = _sleep_window(t.wake, t.sleep_hours)
    shower = t.wake + 10.0 if t.morning_shower else sleep[1][0] - 60.0
    evening_tv = ((t.dinner + 45.0, sleep[1][0] - 20.0),)
    if person.schedule is ScheduleType.WORK_FROM_HOME:
        return DayPlan(
            sleep=sleep,
            away_work=(),
            work_home=((t.wake + 75.0, 12.0 * 60), (13.0 * 60, 17.5 * 60)),
            meals=((t.wake + 25.0, 0.6), (12.5 * 60, 0.8), (t.dinner, 1.0)),
            shower=shower,
            tv=evening_tv,
            errands=0.3 * t.errands,
            gym=gym,
        )
    hours_away = {ScheduleType.EARLY_RISER: 8.5, ScheduleType.LATE_RISER: 9.0}.get(
        person.schedule, 9.5
    )
    leave = t.wake + 55.0
    return DayPlan(
        sleep=sleep,
        away_work=((leave, leave + 60.0 * hours_away),),
        work_home=(),
        meals=((t.wake + 25.0, 0.6), (t.dinner, 1.0)),
        shower=shower,
        tv=evening_tv,
        errands=0.25 * t.errands,
        gym=gym,
    )


def _shift_plan(t: PersonTraits, kind: int, gym: float | None) -> DayPlan:
    if kind == EARLY_SHIFT:
        sleep = _sleep_window(4.75 * 60, 7.0)
        return DayPlan(
            sleep,
            ((5.5 * 60, 14.5 * 60),),
            (),
            ((15.0 * 60, 0.7), (18.0 * 60, 1.0)),
            15.25 * 60,
            ((19.0 * 60, sleep[1][0] - 15.0),),
            0.3 * t.errands,
            gym,
        )
    if kind == LATE_SHIFT:
        sleep = _sleep_window(9.0 * 60, 8.0)
        return DayPlan(
            sleep,
            ((13.0 * 60, 23.0 * 60),),
            (),
            ((9.5 * 60, 0.7), (12.25 * 60, 1.0)),
            9.25 * 60,
            ((10.5 * 60, 12.0 * 60),),
            0.4 * t.errands,
            None,
        )
    if kind == NIGHT_FIRST:
        return DayPlan(
            ((-60.0, 8.0 * 60), (14.0 * 60, 16.0 * 60)),
            ((21.25 * 60, 1500.0),),
            (),
            ((8.5 * 60, 0.6), (13.0 * 60, 0.6), (19.0 * 60, 1.0)),
            8.25 * 60,
            ((17.0 * 60, 21.0 * 60),),
            0.4 * t.errands,
            None,
        )
    if kind == NIGHT_SHIFT:
        return DayPlan(
            ((7.0 * 60, 14.5 * 60),),
            ((-60.0, 6.5 * 60), (21.25 * 60, 1500.0)),
            (),
            ((6.75 * 60, 0.4), (15.0 * 60, 1.0), (20.0 * 60, 0.6)),
            6.9 * 60,
            ((16.0 * 60, 21.0 * 60),),
            0.3 * t.errands,
            None,
        )
    # NIGHT_LAST: home in the morning, sleep, back to a normal evening
    return DayPlan(
        ((7.0 * 60, 13.0 * 60), (23.5 * 60, 1440.0 + 8.0 * 60)),
        ((-60.0, 6.5 * 60),),
        (),
        ((6.75 * 60, 0.4), (13.5 * 60, 0.8), (19.0 * 60, 1.0)),
        6.9 * 60,
        ((15.0 * 60, 23.0 * 60),),
        0.5 * t.errands,
        gym,
    )


def day_kinds(person: PersonSpec, weekdays: IntArray, rng: np.random.Generator) -> IntArray:
    """The kind of each local day for one person (rotating weekly shifts for shift workers)."""
    n = weekdays.size
    kinds = np.full(n, FREE_DAY, dtype=np.int64)
    day_off = rng.random(n) < DAY_OFF_CHANCE
    workday = weekdays < 5
    if person.schedule is not ScheduleType.SHIFT_WORKER:
        kinds[workday & ~day_off] = WORKDAY
        return kinds
    # week number of each day, counted from the first Monday on or before day 0
    week = (np.arange(n) + int(weekdays[0])) // 7 + int(rng.integers(3))
    rotation = week % 3
    kinds[workday & (rotation == 0)] = EARLY_SHIFT
    kinds[workday & (rotation == 1)] = LATE_SHIFT
    night = rotation == 2
    kinds[night & (weekdays == 0)] = NIGHT_FIRST
    kinds[night & (weekdays >= 1) & (weekdays <= 4)] = NIGHT_SHIFT
    kinds[night & (weekdays == 5)] = NIGHT_LAST
    kinds[day_off & (kinds != FREE_DAY) & (kinds != NIGHT_LAST)] = FREE_DAY
    return kinds


# ----------------------------------------------------------------------------- profiles

_SLOT_CENTRES: FloatArray = (np.arange(STEPS_PER_DAY, dtype=np.float64) + 0.5) * STEP_MINUTES


def _sigmoid(x: FloatArray) -> FloatArray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


def _soft_box(intervals: tuple[Interval, ...], width: float) -> FloatArray:
    """Close to 1 inside any interval, 0 outside, with edges `width` minutes soft; wraps days."""
    out = np.zeros(STEPS_PER_DAY)
    for start, end in intervals:
        for shift in (-1440.0, 0.0, 1440.0):
            c: FloatArray = _SLOT_CENTRES + shift
            out = np.maximum(out, _sigmoid((c - start) / width) * _sigmoid((end - c) / width))
    return out


def _bump(centre: float, length: float) -> FloatArray:
    return _soft_box(((centre - length / 2.0, centre + length / 2.0),), min(8.0, length / 4.0))


def profile(plan: DayPlan, traits: PersonTraits) -> FloatArray:
    """`[288, N_CHAIN]` probability of each chain state per 5-minute slot."""
    sleep = _soft_box(plan.sleep, 12.0)
    away = _soft_box(plan.away_work, 10.0) * (1.0 - sleep) * 0.97
    home = np.clip(1.0 - sleep - away, 0.0, 1.0)
    cook = np.zeros(STEPS_PER_DAY)
    eat = np.zeros(STEPS_PER_DAY)
    for time, size in plan.meals:
        cook_len, eat_len = 10.0 + 25.0 * size, 10.0 + 20.0 * size
        cook += _bump(time - 5.0 - cook_len / 2.0, cook_len) * 3.0 * size * traits.cooking
        eat += _bump(time + eat_len / 2.0, eat_len) * 5.0 * size
    work = _soft_box(plan.work_home, 8.0) * 10.0
    tv = _soft_box(plan.tv, 10.0) * 2.5 * traits.tv
    bath = _bump(plan.shower, 15.0) * 6.0
    other = np.ones(STEPS_PER_DAY)
    errand = _soft_box(((9.0 * 60, 19.5 * 60),), 20.0) * plan.errands
    if plan.gym is not None:
        errand = errand + _bump(plan.gym, 90.0) * 8.0
    weights = np.stack([cook, eat, work, tv, bath, other, errand], axis=1)
    shares = weights / weights.sum(axis=1, keepdims=True) * home[:, None]
    pi = np.column_stack([sleep, shares[:, :6], away, shares[:, 6]])
    pi = np.maximum(pi, 1e-4)
    return np.asarray(pi / pi.sum(axis=1, keepdims=True), dtype=np.float64)


def chain_tables(pi: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Leave rates `lambda[slot, state]` and cumulative entry distributions `[slot, state]`."""
    following = np.roll(pi, -1, axis=0)
    leave = np.clip(np.maximum(LEAVE_RATE[None, :], 1.0 - following / pi), 0.0, 1.0)
    flow = (pi * leave).sum(axis=1, keepdims=True)
    entry = np.clip(following - pi * (1.0 - leave), 0.0, None) / flow
    cumulative = np.cumsum(entry / entry.sum(axis=1, keepdims=True), axis=1)
    cumulative[:, -1] = 1.0
    return leave, cumulative


def run_chain(
    rows: list[tuple[list[float], list[float]]],
    row_of_step: IntArray,
    first: FloatArray,
    rng: np.random.Generator,
) -> npt.NDArray[np.int8]:
    """Walk the chain from a state drawn from `first` (the profile at step 0).

    `rows[row_of_step[i]]` holds the leave rates and cumulative entry distribution that carry
    step i's profile to the next slot's, so step i + 1 is drawn with step i's row. A plain
    loop over Python floats: the fastest way to run one sequential chain.
    """
    n = row_of_step.size
    leave_draws = rng.random(n).tolist()
    entry_draws = rng.random(n).tolist()
    state = min(int(np.searchsorted(np.cumsum(first), rng.random(), side="right")), N_CHAIN - 1)
    states = [state] * n
    for i, row in enumerate(row_of_step[:-1].tolist(), start=1):
        leave, cdf = rows[row]
        if leave_draws[i] < leave[state]:
            state = min(bisect.bisect_right(cdf, entry_draws[i]), N_CHAIN - 1)
        states[i] = state
    return np.array(states, dtype=np.int8)


# ----------------------------------------------------------------------------- one person


@dataclass(frozen=True)
class PlaceBook:
    """How chain states become places: shared place codes by kind."""

    by_kind: dict[PlaceKind, tuple[int, ...]]

    @classmethod
    def from_names(cls, shared_places: tuple[str, ...]) -> PlaceBook:
        by_kind: dict[PlaceKind, list[int]] = {}
        for index, name in enumerate(shared_places):
            kind = place_kind(name)
            if kind is not None:
                by_kind.setdefault(kind, []).append(shared_code(index))
        return cls({kind: tuple(codes) for kind, codes in by_kind.items()})


def base_track(
    person: PersonSpec,
    home: HomeSpec,
    clock: StepClock,
    *,
    day_shift: IntArray,
    places: PlaceBook,
    workplace_code: int,
    rng: np.random.Generator,
) -> StepTrack:
    """The person's steps without visits: chain states, then rooms and places."""
    kinds = day_kinds(person, clock.weekday, rng)
    gym_days = np.isin(clock.weekday, person.traits.gym_days)
    plan_keys = sorted({(int(k), bool(g)) for k, g in zip(kinds, gym_days, strict=True)})
    row_base = {key: i * STEPS_PER_DAY for i, key in enumerate(plan_keys)}
    rows: list[tuple[list[float], list[float]]] = []
    profiles, sleepy_table, gym_table = [], [], []
    for kind, gym in plan_keys:
        plan = day_plan(person, kind, gym)
        pi = profile(plan, person.traits)
        leave, cdf = chain_tables(pi)
        rows.extend(zip(leave.tolist(), cdf.tolist(), strict=True))
        profiles.append(pi)
        sleepy_table.append(pi[:, SLEEP] > 0.5)
        in_gym = (
            _bump(plan.gym, 90.0) > 0.5 if plan.gym is not None else np.zeros(STEPS_PER_DAY, bool)
        )
        gym_table.append(in_gym)
    day_row = np.array([row_base[(int(k), bool(g))] for k, g in zip(kinds, gym_days, strict=True)])
    slot = np.mod(clock.slot - day_shift[clock.day], STEPS_PER_DAY)
    row_of_step = day_row[clock.day] + slot
    state = run_chain(rows, row_of_step, np.concatenate(profiles)[row_of_step[0]], rng)
    sleepy = np.concatenate(sleepy_table)[row_of_step]
    gym_time = np.concatenate(gym_table)[row_of_step]
    room, place = _rooms_and_places(
        person,
        home,
        state,
        sleepy=sleepy,
        gym_time=gym_time,
        places=places,
        workplace_code=workplace_code,
        rng=rng,
    )
    return StepTrack(state, place, room, sleepy, gym_time)


def _room_for(home: HomeSpec, person: PersonSpec) -> dict[int, int]:
    """The room each at-home state happens in, for this person."""
    h = home.household
    social = home.room_index(h.social_room)
    bedroom = home.room_index(person.bedroom) if person.bedroom else social
    kitchen = home.first_room(RoomKind.KITCHEN)
    bathroom = home.first_room(RoomKind.BATHROOM)
    office = home.first_room(RoomKind.OFFICE)
    return {
        SLEEP: bedroom,
        COOK: kitchen if kitchen >= 0 else social,
        EAT: home.room_index(h.dining_room),
        WORK: office if office >= 0 else bedroom,
        TV: home.room_index(h.tv_room),
        BATH: bathroom if bathroom >= 0 else social,
    }


_OTHER_ROOM_WEIGHTS = {
    RoomKind.LIVING_ROOM: 0.35,
    RoomKind.KITCHEN: 0.2,
    RoomKind.BEDROOM: 0.25,
    RoomKind.HALLWAY: 0.0,  # passed through (a transit minute), not stayed in
    RoomKind.OFFICE: 0.05,
    RoomKind.BATHROOM: 0.1,
}


def _rooms_and_places(
    person: PersonSpec,
    home: HomeSpec,
    state: npt.NDArray[np.int8],
    *,
    sleepy: BoolArray,
    gym_time: BoolArray,
    places: PlaceBook,
    workplace_code: int,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    n = state.size
    moves = rng.random(n) < OTHER_MOVES
    starts = np.ones(n, dtype=bool)
    starts[1:] = (state[1:] != state[:-1]) | ((state[1:] == OTHER) & moves[1:])
    segment = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    seg_state = state[first]
    draws = rng.random(first.size)

    room_of = _room_for(home, person)
    seg_room = np.full(first.size, -1, dtype=np.int16)
    for chain_state, room in room_of.items():
        seg_room[seg_state == chain_state] = room
    # pottering about: a room by habit, the bathroom at night, the own bedroom rather than another
    weights = np.array(
        [
            0.0
            if (r.kind is RoomKind.BEDROOM and person.bedroom not in {None, r.room_id})
            else _OTHER_ROOM_WEIGHTS[r.kind]
            for r in home.rooms
        ]
    )
    if weights.sum() <= 0:  # a layout of only hallways: potter about anywhere
        weights = np.ones(len(home.rooms))
    cumulative = np.cumsum(weights / weights.sum())
    other = seg_state == OTHER
    seg_room[other] = np.minimum(
        np.searchsorted(cumulative, draws[other], side="right"), len(home.rooms) - 1
    )
    bathroom = home.first_room(RoomKind.BATHROOM)
    if bathroom >= 0:
        seg_room[other & sleepy[first]] = bathroom

    seg_place = np.full(first.size, home.index, dtype=np.int16)
    seg_place[seg_state == AWAY_WORK] = workplace_code
    errands = np.flatnonzero(seg_state == AWAY_ERRAND)
    for i, draw in zip(errands.tolist(), draws[errands].tolist(), strict=True):
        seg_place[i] = _errand_place(places, bool(gym_time[first[i]]), draw, rng)
    return seg_room[segment], seg_place[segment]


def _errand_place(places: PlaceBook, gym_time: bool, draw: float, rng: np.random.Generator) -> int:
    if gym_time and PlaceKind.GYM in places.by_kind:
        kind: PlaceKind | None = PlaceKind.GYM
    elif draw < 0.4:
        kind = PlaceKind.SHOP
    elif draw < 0.65:
        kind = PlaceKind.CAFE
    else:
        kind = None
    codes = places.by_kind.get(kind) if kind is not None else None
    if not codes:
        return ELSEWHERE_CODE
    return codes[int(rng.integers(len(codes)))]


# ----------------------------------------------------------------------------- visits


def overlay_visits(
    base: StepTrack,
    *,
    host_weights: FloatArray,
    can_host: Callable[[int], BoolArray],
    social_room: Callable[[int], int],
    clock: StepClock,
    visit_rate: float,
    rng: np.random.Generator,
    allowed: BoolArray | None = None,
) -> StepTrack:
    """The base track with visits to friends' homes laid over it.

    Visits start in the evening on weekdays and from late morning at weekends, when the
    visitor is neither asleep nor at work and `can_host(host)` says someone is up at home
    there; they end when the visitor would go to bed or nobody is left to host. `allowed`
    restricts visits to some steps. Every attempt draws the same numbers whether it happens or
    not, so the same stream gives the same attempts under any `can_host` and `allowed`.
    """
    state = base.state.copy()
    place = base.place.copy()
    room = base.room.copy()
    n_steps = state.size
    if host_weights.sum() <= 0 or visit_rate <= 0:
        return StepTrack(state, place, room, base.sleepy, base.gym_time)
    hosts = np.flatnonzero(host_weights > 0)
    host_p = host_weights[hosts] / host_weights[hosts].sum()
    free = np.ones(n_steps, dtype=bool) if allowed is None else allowed.copy()
    free &= (base.state != SLEEP) & (base.state != AWAY_WORK)
    for day, weekday in enumerate(clock.weekday.tolist()):
        weekend = weekday >= 5
        count = int(rng.poisson(visit_rate / 7.0 * (1.6 if weekend else 0.75)))
        for _ in range(count):
            start_minute = rng.uniform(11.0, 20.0) * 60 if weekend else rng.normal(19.0, 0.8) * 60
            length = float(np.clip(rng.lognormal(np.log(120.0), 0.45), 30.0, 300.0))
            host = int(hosts[int(rng.choice(hosts.size, p=host_p))])
            first = int(clock.day_start[day]) + round(start_minute / STEP_MINUTES)
            if not 0 <= first < n_steps or not free[first]:
                continue
            available = can_host(host)
            last = min(n_steps, first + max(1, round(length / STEP_MINUTES)))
            stop = first
            while stop < last and available[stop] and free[stop]:
                stop += 1
            free[first:stop] = False
            state[first:stop] = VISIT
            place[first:stop] = host
            room[first:stop] = social_room(host)
    return StepTrack(state, place, room, base.sleepy, base.gym_time)


def up_at_home(
    base: list[StepTrack], home_index: int, planned: list[StepTrack] | None = None
) -> BoolArray:
    """Steps when some resident is at home and awake (and, given their planned visits, not
    planning to be out visiting then)."""
    if not base:
        return np.zeros(0, dtype=bool)
    present = [(t.place == home_index) & (t.state != SLEEP) for t in base]
    if planned is not None:
        present = [p & (plan.state != VISIT) for p, plan in zip(present, planned, strict=True)]
    return np.asarray(np.logical_or.reduce(present), dtype=bool)


# ----------------------------------------------------------------------------- minutes


def to_minutes(
    track: StepTrack, hallways: Callable[[int], int], rng: np.random.Generator
) -> MinuteTrack:
    """Per-minute track: a change happens at a random minute of its step, and moving between
    rooms, arriving or leaving passes a minute in the hallway of that home (if it has one)."""
    n_steps = track.state.size
    delay = rng.integers(0, STEP_MINUTES, size=n_steps)
    minute = np.arange(n_steps * STEP_MINUTES)
    step = minute // STEP_MINUTES
    source = np.where(minute % STEP_MINUTES >= delay[step], step, np.maximum(step - 1, 0))
    state = track.state[source]
    place = track.place[source]
    room = track.room[source].copy()

    previous_place = np.concatenate([place[:1], place[:-1]])
    next_place = np.concatenate([place[1:], place[-1:]])
    previous_room = np.concatenate([room[:1], room[:-1]])
    at_home = place >= 0
    moved = at_home & (previous_place == place) & (previous_room != room)
    arrived = at_home & (previous_place != place)
    leaving = at_home & (next_place != place)
    transit = moved | arrived | leaving
    transit[0] = False
    hallway = np.full(place.shape, -1, dtype=np.int16)
    for code in np.unique(place[transit]).tolist():
        hallway[transit & (place == code)] = hallways(int(code))
    transit &= hallway >= 0
    room[transit] = hallway[transit]
    activity = STATE_ACTIVITY[state]
    activity = np.where(transit, np.int8(ACTIVITIES.index(Activity.OTHER)), activity).astype(
        np.int8
    )
    return MinuteTrack(activity, state, place, room, transit)
