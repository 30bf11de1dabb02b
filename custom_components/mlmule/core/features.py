"""One feature extractor for Home Assistant history, live HA states and the synthetic world.

Every input is a per-entity `ChangeSeries`: the times an entity's state changed and the new
values, with `unknown`/`unavailable` as NaN. The extractor turns those into frames on a fixed
grid of `step` seconds. Frame `k` describes the interval `[t_k, t_k + step)`: states are read
just before the interval ends, event counts look back from that end, and the time encoding is
the local time at `t_k`. Nothing after the interval is used, so the same frame can be computed
live at `t_k + step`.

Frames are unnormalised float32 with no NaN: a role that is missing, unknown, unavailable or
stale gets a neutral value and its `available` flag is 0. A `FeatureSchema` travels with every
model and says which features, lags and normalisation the model was trained with.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from enum import StrEnum
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from .errors import FeatureInputError, FeatureSchemaMismatch

Float64Array = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
Columns = list[Float64Array]


class Activity(StrEnum):
    """What a person is doing. The order of `ACTIVITIES` is the class index of the labels."""

    SLEEPING = "sleeping"
    COOKING = "cooking"
    EATING = "eating"
    WORKING = "working"
    WATCHING_TV = "watching_tv"
    BATHING = "bathing"
    OTHER = "other"  # at home, doing something else
    AWAY = "away"  # not at home, not at another home
    VISITING = "visiting"  # at another home


ACTIVITIES: tuple[str, ...] = tuple(activity.value for activity in Activity)
# A room's `activity` label is the dominant activity of the people in it; nobody there is `away`.
EMPTY_ROOM_ACTIVITY = ACTIVITIES.index(Activity.AWAY)


class SensorRole(StrEnum):
    """What an input entity measures in a room."""

    MOTION = "motion"
    DOOR = "door"
    LIGHT = "light"
    ILLUMINANCE = "illuminance"
    CO2 = "co2"
    TEMPERATURE = "temperature"
    HUMIDITY = "humidity"
    POWER = "power"
    MEDIA = "media"


class PhoneSignal(StrEnum):
    """Per-minute motion features a phone computes from its own sensors."""

    ACCEL_MEAN = "accel_mean"  # mean dynamic acceleration magnitude, m/s^2
    ACCEL_STD = "accel_std"  # its standard deviation within the minute, m/s^2
    STEP_RATE = "step_rate"  # steps per minute
    GYRO_ENERGY = "gyro_energy"  # mean squared angular rate, (rad/s)^2
    SCREEN_ON = "screen_on"  # fraction of the minute with the screen on
    ORIENTATION_CHANGE = "orientation_change"  # orientation flips per minute


# Physically plausible ranges: a value outside is a unit mix-up or a broken sensor.
PHONE_SIGNAL_RANGES: Mapping[PhoneSignal, tuple[float, float]] = {
    PhoneSignal.ACCEL_MEAN: (0.0, 200.0),  # m/s^2
    PhoneSignal.ACCEL_STD: (0.0, 200.0),
    PhoneSignal.STEP_RATE: (0.0, 400.0),  # steps per minute
    PhoneSignal.GYRO_ENERGY: (0.0, 10_000.0),  # (rad/s)^2
    PhoneSignal.SCREEN_ON: (0.0, 1.0),  # fraction of the minute
    PhoneSignal.ORIENTATION_CHANGE: (0.0, 1000.0),  # per minute
}


BINARY_ROLES = frozenset({SensorRole.MOTION, SensorRole.DOOR, SensorRole.LIGHT, SensorRole.MEDIA})

# HA stores a numeric sensor only when its value changes, so a stable reading can sit for hours.
# Air sensors are noisy enough to change every few minutes, so a long silence means a dead sensor;
# darkness (0 lx) and standby power are legitimately constant, so those never go stale.
STALE_AFTER: Mapping[SensorRole, float] = {
    SensorRole.CO2: 3 * 3600.0,
    SensorRole.TEMPERATURE: 3 * 3600.0,
    SensorRole.HUMIDITY: 3 * 3600.0,
}

SINCE_CAP_SECONDS = 6 * 3600.0
EVENT_WINDOWS_MINUTES = (5, 15, 60)
SLOPE_SECONDS = 15 * 60.0  # slopes are differences over this span, expressed per hour
BASELINE_LOOKBACK_HOURS = 24
BASELINE_QUANTILE = 0.1
MAX_WINDOW_LAG = 24 * 60

_UNAVAILABLE_STATES = frozenset({"", "unknown", "unavailable", "none", "null", "nan"})
_ON_STATES: Mapping[SensorRole, frozenset[str]] = {
    SensorRole.MOTION: frozenset({"on", "detected", "true"}),
    SensorRole.DOOR: frozenset({"on", "open", "opening", "true"}),
    SensorRole.LIGHT: frozenset({"on", "true"}),
    SensorRole.MEDIA: frozenset({"playing", "buffering"}),
}
_OFF_STATES: Mapping[SensorRole, frozenset[str]] = {
    SensorRole.MOTION: frozenset({"off", "clear", "false"}),
    SensorRole.DOOR: frozenset({"off", "closed", "closing", "false"}),
    SensorRole.LIGHT: frozenset({"off", "false"}),
    SensorRole.MEDIA: frozenset({"off", "on", "idle", "paused", "standby"}),
}


# ----------------------------------------------------------------------------- change series


@dataclass(frozen=True)
class ChangeSeries:
    """One entity's history: the times its state changed and the values it changed to.

    `times` are epoch seconds in non-decreasing order; `values` are float64 with NaN for
    unknown or unavailable. Several changes at one time are allowed; the last one wins.
    """

    times: Float64Array
    values: Float64Array

    def __post_init__(self) -> None:
        times = np.ascontiguousarray(self.times, dtype=np.float64)
        values = np.ascontiguousarray(self.values, dtype=np.float64)
        if times.ndim != 1 or values.shape != times.shape:
            raise FeatureInputError(
                f"times and values must be 1-D of one length, got {times.shape} and {values.shape}"
            )
        if not np.isfinite(times).all():
            raise FeatureInputError("change times must be finite")
        if times.size > 1 and bool(np.any(np.diff(times) < 0)):
            raise FeatureInputError("change times must be in non-decreasing order")
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "values", values)

    def __len__(self) -> int:
        return int(self.times.size)


def parse_state(role: SensorRole, state: str) -> float:
    """The value of an HA state string for `role`; NaN when unknown, unavailable or unreadable.

    Binary roles give 1.0 for on/open/playing and 0.0 for off/closed/idle; numeric roles parse
    the number HA stores. Any other string is treated as unavailable: history can hold odd states
    (a renamed option, a restored attribute) and they must not stop training.
    """
    text = state.strip().lower()
    if text in _UNAVAILABLE_STATES:
        return math.nan
    if role in BINARY_ROLES:
        if text in _ON_STATES[role]:
            return 1.0
        if text in _OFF_STATES[role]:
            return 0.0
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def series_from_states(role: SensorRole, changes: Iterable[tuple[float, str]]) -> ChangeSeries:
    """A `ChangeSeries` from `(epoch seconds, HA state string)` pairs, sorted stably by time."""
    pairs = list(changes)
    times = np.fromiter((float(t) for t, _ in pairs), dtype=np.float64, count=len(pairs))
    values = np.fromiter(
        (parse_state(role, s) for _, s in pairs), dtype=np.float64, count=len(pairs)
    )
    if not np.isfinite(times).all():
        raise FeatureInputError("change times must be finite")
    order = np.argsort(times, kind="stable")
    return ChangeSeries(times[order], values[order])


# ----------------------------------------------------------------------------- local time


_OFFSET_PATTERN = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


def resolve_timezone(tz: str | tzinfo) -> tzinfo:
    """A tzinfo from an IANA name ("Europe/Berlin"), "UTC" or a fixed offset ("+01:00")."""
    if isinstance(tz, tzinfo):
        return tz
    if tz.upper() in {"UTC", "Z"}:
        return UTC
    match = _OFFSET_PATTERN.match(tz)
    if match:
        sign, hours, minutes = match.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        if delta >= timedelta(hours=24):
            raise FeatureInputError(f"timezone offset out of range: {tz!r}")
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise FeatureInputError(f"unknown timezone {tz!r}") from err


def _utc_offset(epoch: float, zone: tzinfo) -> float:
    offset = datetime.fromtimestamp(epoch, zone).utcoffset()
    return 0.0 if offset is None else offset.total_seconds()


def local_seconds(times: Float64Array, tz: str | tzinfo) -> Float64Array:
    """Epoch seconds shifted by the local UTC offset at each time (so `% 86400` is local time).

    Offsets are looked up once per hour; an hour whose offset differs at its two ends holds a
    transition and is resolved time by time.
    """
    zone = resolve_timezone(tz)
    times = np.asarray(times, dtype=np.float64)
    if times.size == 0:
        return times.copy()
    if isinstance(zone, timezone):
        return times + _utc_offset(0.0, zone)
    hours = np.floor(times / 3600.0).astype(np.int64)
    if bool(np.all(hours[1:] >= hours[:-1])):  # sorted, the usual case: group without sorting
        new_hour = np.concatenate([[True], hours[1:] != hours[:-1]])
        unique_hours = hours[new_hour]
        inverse = np.cumsum(new_hour) - 1
    else:
        unique_hours, inverse = np.unique(hours, return_inverse=True)
    at_start = np.array([_utc_offset(float(h) * 3600.0, zone) for h in unique_hours])
    at_end = np.array([_utc_offset(float(h + 1) * 3600.0, zone) for h in unique_hours])
    offsets = at_start[inverse]
    changing = (at_start != at_end)[inverse]
    for index in np.flatnonzero(changing):
        offsets[index] = _utc_offset(float(times[index]), zone)
    return np.asarray(times + offsets, dtype=np.float64)


def time_features(times: Float64Array, tz: str | tzinfo) -> Columns:
    """Time of day and day of week as sin/cos pairs, and a weekend flag, in local time."""
    local = local_seconds(times, tz)
    day_fraction = np.mod(local, 86400.0) / 86400.0
    weekday = np.mod(np.floor(local / 86400.0) + 3.0, 7.0)  # 1970-01-01 was a Thursday
    return [
        np.sin(2.0 * np.pi * day_fraction),
        np.cos(2.0 * np.pi * day_fraction),
        np.sin(2.0 * np.pi * weekday / 7.0),
        np.cos(2.0 * np.pi * weekday / 7.0),
        (weekday >= 5.0).astype(np.float64),
    ]


TIME_FEATURES = ("tod_sin", "tod_cos", "dow_sin", "dow_cos", "weekend")


# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Grid:
    """Regularly spaced times `first + step * k` for `k < count`.

    `search` finds where each grid time falls in a sorted array in O(n + count), instead of a
    binary search per grid time: the frames of a year are half a million of them.
    """

    first: float
    step: float
    count: int

    @cached_property
    def values(self) -> Float64Array:
        return self.first + self.step * np.arange(self.count, dtype=np.float64)

    def shifted(self, seconds: float) -> Grid:
        return Grid(self.first + seconds, self.step, self.count)

    def search(self, sorted_times: Float64Array) -> npt.NDArray[np.int64]:
        """`np.searchsorted(sorted_times, self.values, side="left")`: how many times precede
        each grid time."""
        if sorted_times.size == 0:
            return np.zeros(self.count, dtype=np.int64)
        # k = the first grid index whose time is above t; corrected by one either way because
        # the division can round across a grid point the grid arithmetic itself does not.
        k = np.floor((sorted_times - self.first) / self.step).astype(np.int64) + 1
        k = np.clip(k, 0, self.count)
        k -= (k > 0) & (sorted_times < self.first + self.step * (k - 1))
        k += (k < self.count) & (sorted_times >= self.first + self.step * k)
        return np.cumsum(np.bincount(k, minlength=self.count + 1))[: self.count]


def frame_grid(start: float, end: float, step: int = 60) -> Grid:
    """The frames starting in `[start, end)`; `start` must sit on the step grid."""
    if not (isinstance(step, int) and 0 < step <= 3600 and 3600 % step == 0):
        raise FeatureInputError(f"step must be a whole divisor of 3600 seconds, got {step!r}")
    if not (math.isfinite(start) and math.isfinite(end)):
        raise FeatureInputError("start and end must be finite")
    if start % step != 0:
        raise FeatureInputError(f"start {start} is not a multiple of the {step} s step")
    return Grid(float(start), float(step), max(0, math.ceil((end - start) / step)))


def _value_before(series: ChangeSeries, ends: Grid, stale_after: float | None) -> Float64Array:
    """The series' value just before each end time; NaN before its first change or when stale."""
    if len(series) == 0:
        return np.full(ends.count, np.nan)
    index = ends.search(series.times) - 1
    known = index >= 0
    safe = np.maximum(index, 0)
    values = np.where(known, series.values[safe], np.nan)
    if stale_after is not None:
        values[known & (ends.values - series.times[safe] > stale_after)] = np.nan
    return values


def _seconds_since(event_times: Float64Array, ends: Grid) -> Float64Array:
    """Seconds from the last event before each end; `SINCE_CAP_SECONDS` when there was none."""
    if event_times.size == 0:
        return np.full(ends.count, SINCE_CAP_SECONDS)
    index = ends.search(event_times) - 1
    elapsed = ends.values - event_times[np.maximum(index, 0)]
    return np.where(index >= 0, np.minimum(elapsed, SINCE_CAP_SECONDS), SINCE_CAP_SECONDS)


def _rising_edges(series: ChangeSeries) -> Float64Array:
    """Times a binary series turned on from anything else (the first change has no "from")."""
    v = series.values
    return np.asarray(series.times[1:][(v[1:] == 1.0) & (v[:-1] != 1.0)], dtype=np.float64)


def _falling_edges(series: ChangeSeries) -> Float64Array:
    v = series.values
    return np.asarray(series.times[1:][(v[:-1] == 1.0) & (v[1:] != 1.0)], dtype=np.float64)


def _state_flips(series: ChangeSeries) -> Float64Array:
    """Times a binary series changed between two known states (open->closed or closed->open)."""
    v = series.values
    known = ~np.isnan(v[1:]) & ~np.isnan(v[:-1])
    return np.asarray(series.times[1:][known & (v[1:] != v[:-1])], dtype=np.float64)


def _union(arrays: Iterable[Float64Array]) -> Float64Array:
    parts = list(arrays)
    if not parts:
        return np.zeros(0, dtype=np.float64)
    return np.sort(np.concatenate(parts), kind="stable")


def _any_on(samples: list[Float64Array], count: int) -> tuple[Float64Array, Float64Array]:
    """(available, on) over several binary entities: on when any available one is on."""
    if not samples:
        return np.zeros(count), np.zeros(count)
    stack = np.vstack(samples)
    available = (~np.isnan(stack)).any(axis=0)
    on = (stack == 1.0).any(axis=0)
    return np.asarray(available, dtype=np.float64), np.asarray(on, dtype=np.float64)


def _mean_known(samples: list[Float64Array], count: int) -> Float64Array:
    """The mean over available entities; NaN where none is available."""
    if not samples:
        return np.full(count, np.nan)
    if len(samples) == 1:
        return samples[0]
    stack = np.vstack(samples)
    known = ~np.isnan(stack)
    counts = known.sum(axis=0)
    total = np.where(known, stack, 0.0).sum(axis=0)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


# ----------------------------------------------------------------------------- room roles


def _event_block(
    series: Sequence[ChangeSeries],
    ends: Grid,
    events_of: Callable[[ChangeSeries], Float64Array],
    since: Float64Array,
) -> Columns:
    """available, on, log seconds since, and event counts over the look-back windows."""
    available, on = _any_on([_value_before(s, ends, None) for s in series], ends.count)
    events = _union(events_of(s) for s in series)
    upper = ends.search(events)
    counts = [
        (upper - ends.shifted(-60.0 * w).search(events)).astype(np.float64)
        for w in EVENT_WINDOWS_MINUTES
    ]
    return [available, on, np.log1p(since), *counts]


def _motion_block(series: Sequence[ChangeSeries], ends: Grid) -> Columns:
    # Motion was last seen when the sensor last went off (now, if it is still on); a sensor
    # that stays on through continuous activity must not look like one that fired long ago.
    since = np.full(ends.count, SINCE_CAP_SECONDS)
    for s in series:
        own = np.where(
            _value_before(s, ends, None) == 1.0, 0.0, _seconds_since(_falling_edges(s), ends)
        )
        since = np.minimum(since, own)
    return _event_block(series, ends, _rising_edges, since)


def _door_block(series: Sequence[ChangeSeries], ends: Grid) -> Columns:
    since = _seconds_since(_union(_state_flips(s) for s in series), ends)
    return _event_block(series, ends, _state_flips, since)


def _binary_block(series: Sequence[ChangeSeries], ends: Grid) -> Columns:
    available, on = _any_on([_value_before(s, ends, None) for s in series], ends.count)
    return [available, on]


def _level_block(role: SensorRole, neutral: float, with_slope: bool) -> _Block:
    stale = STALE_AFTER.get(role)

    def block(series: Sequence[ChangeSeries], ends: Grid) -> Columns:
        now = _mean_known([_value_before(s, ends, stale) for s in series], ends.count)
        available = ~np.isnan(now)
        if role is SensorRole.ILLUMINANCE:
            now = np.log1p(np.maximum(now, 0.0))
        columns = [available.astype(np.float64), np.where(available, now, neutral)]
        if with_slope:
            earlier = ends.shifted(-SLOPE_SECONDS)
            before = _mean_known([_value_before(s, earlier, stale) for s in series], ends.count)
            slope = (now - before) * (3600.0 / SLOPE_SECONDS)
            columns.append(np.where(np.isnan(slope), 0.0, slope))
        return columns

    return block


def _low_quantile_rows(blocks: Float64Array, quantile: float) -> Float64Array:
    """The `quantile` of the non-NaN values of each row (lower order statistic); NaN if none."""
    ordered = np.sort(np.where(np.isnan(blocks), np.inf, blocks), axis=1)
    known = (~np.isnan(blocks)).sum(axis=1)
    rank = np.floor(quantile * np.maximum(known - 1, 0)).astype(np.int64)
    picked = np.take_along_axis(ordered, rank[:, None], axis=1)[:, 0]
    return np.where(known > 0, picked, np.nan)


def _power_above_baseline(series: ChangeSeries, ends: Grid) -> Float64Array:
    """Power above a robust baseline: the lowest hourly low quantile over the previous 24 h.

    Hours are aligned to the epoch, so the same frame gets the same baseline whatever range is
    extracted, as long as the series holds the previous day. In an hour with no complete hour
    before it, the running minimum of that hour stands in.
    """
    step = ends.step
    per_hour = round(3600 / step)
    starts = ends.shifted(-step)
    first_hour = math.floor(starts.first / 3600.0) - BASELINE_LOOKBACK_HOURS
    last_hour = math.floor((starts.first + step * (starts.count - 1)) / 3600.0)
    n_hours = last_hour - first_hour + 1
    hourly_ends = Grid(first_hour * 3600.0 + step, step, n_hours * per_hour)
    hourly = _value_before(series, hourly_ends, None).reshape(n_hours, per_hour)
    low = _low_quantile_rows(hourly, BASELINE_QUANTILE)
    # previous[h] = lowest of the 24 hourly lows before hour h (fmin skips NaN)
    padded = np.concatenate([np.full(BASELINE_LOOKBACK_HOURS, np.nan), low])
    windows = np.lib.stride_tricks.sliding_window_view(padded[:-1], BASELINE_LOOKBACK_HOURS)
    previous = np.fmin.reduce(windows, axis=1)
    running = np.fmin.accumulate(np.where(np.isnan(hourly), np.inf, hourly), axis=1)
    running[np.isinf(running)] = np.nan
    # row of each frame in `hourly`: frames sit on the same step grid, hours on the epoch
    flat = np.round((starts.values - hourly_ends.first + step) / step).astype(np.int64)
    hour, slot = np.divmod(flat, per_hour)
    baseline = np.where(np.isnan(previous[hour]), running[hour, slot], previous[hour])
    now = hourly.ravel()[flat]
    return np.asarray(np.maximum(now - baseline, 0.0), dtype=np.float64)


def _power_block(series: Sequence[ChangeSeries], ends: Grid) -> Columns:
    if not series or ends.count == 0:
        return [np.zeros(ends.count), np.zeros(ends.count)]
    above = np.vstack([_power_above_baseline(s, ends) for s in series])
    known = ~np.isnan(above)
    total = np.where(known, above, 0.0).sum(axis=0)
    return [np.asarray(known.any(axis=0), dtype=np.float64), np.log1p(total)]


_Block = Callable[[Sequence[ChangeSeries], Grid], Columns]


def _event_names(prefix: str, state: str) -> tuple[str, ...]:
    windows = tuple(f"{prefix}_count_{w}m" for w in EVENT_WINDOWS_MINUTES)
    return (f"{prefix}_available", f"{prefix}_{state}", f"{prefix}_since_log", *windows)


# Role order, feature names and the function computing them: the single room feature definition.
_ROOM_BLOCKS: tuple[tuple[SensorRole, tuple[str, ...], _Block], ...] = (
    (SensorRole.MOTION, _event_names("motion", "on"), _motion_block),
    (SensorRole.DOOR, _event_names("door", "open"), _door_block),
    (SensorRole.LIGHT, ("light_available", "light_on"), _binary_block),
    (
        SensorRole.ILLUMINANCE,
        ("illuminance_available", "illuminance_log"),
        _level_block(SensorRole.ILLUMINANCE, math.log1p(50.0), with_slope=False),
    ),
    (
        SensorRole.CO2,
        ("co2_available", "co2_ppm", "co2_slope"),
        _level_block(SensorRole.CO2, 600.0, True),
    ),
    (
        SensorRole.TEMPERATURE,
        ("temperature_available", "temperature_c", "temperature_slope"),
        _level_block(SensorRole.TEMPERATURE, 20.0, True),
    ),
    (
        SensorRole.HUMIDITY,
        ("humidity_available", "humidity_pct", "humidity_slope"),
        _level_block(SensorRole.HUMIDITY, 45.0, True),
    ),
    (SensorRole.POWER, ("power_available", "power_above_baseline_log"), _power_block),
    (SensorRole.MEDIA, ("media_available", "media_playing"), _binary_block),
)

ROOM_FEATURES: tuple[str, ...] = TIME_FEATURES + tuple(
    name for _, names, _ in _ROOM_BLOCKS for name in names
)
PHONE_FEATURES: tuple[str, ...] = (
    *TIME_FEATURES,
    "phone_available",
    *(signal.value for signal in PhoneSignal),
)


def extract_room_frames(
    inputs: Mapping[SensorRole, Sequence[ChangeSeries]],
    start: float,
    end: float,
    step: int = 60,
    tz: str | tzinfo = "UTC",
) -> Float32Array:
    """Room frames `[T, len(ROOM_FEATURES)]` for the frames starting in `[start, end)`.

    `inputs` maps each role to the room's entities of that role (several motion sensors combine
    with "any", several air sensors average). Roles left out are reported as unavailable. Give
    the series a day of history before `start` so look-back features are complete.
    """
    unknown = set(inputs) - set(SensorRole)
    if unknown:
        raise FeatureInputError(f"unknown input roles: {sorted(map(str, unknown))}")
    starts = frame_grid(start, end, step)
    ends = starts.shifted(step)
    columns = time_features(starts.values, tz)
    for role, _names, block in _ROOM_BLOCKS:
        columns.extend(block(tuple(inputs.get(role, ())), ends))
    return _stack(columns, starts.count)


def extract_phone_frames(
    inputs: Mapping[PhoneSignal, ChangeSeries],
    start: float,
    end: float,
    step: int = 60,
    tz: str | tzinfo = "UTC",
) -> Float32Array:
    """Phone frames `[T, len(PHONE_FEATURES)]` from per-minute phone samples.

    A sample is timestamped at the start of the minute it summarises; a frame averages the
    samples inside its interval, and is unavailable (neutral zeros) when it holds none.
    """
    unknown = set(inputs) - set(PhoneSignal)
    if unknown:
        raise FeatureInputError(f"unknown phone signals: {sorted(map(str, unknown))}")
    starts = frame_grid(start, end, step)
    columns = time_features(starts.values, tz)
    means: Columns = []
    for signal in PhoneSignal:
        series = inputs.get(signal)
        if series is None:
            means.append(np.full(starts.count, np.nan))
            continue
        known = ~np.isnan(series.values)
        summed = np.concatenate([[0.0], np.cumsum(np.where(known, series.values, 0.0))])
        counted = np.concatenate([[0], np.cumsum(known)])
        lower = starts.search(series.times)
        upper = starts.shifted(step).search(series.times)
        n = counted[upper] - counted[lower]
        means.append(np.where(n > 0, (summed[upper] - summed[lower]) / np.maximum(n, 1), np.nan))
    available = ~np.isnan(np.vstack(means))
    columns.append(np.asarray(available.any(axis=0), dtype=np.float64))
    columns.extend(np.where(np.isnan(m), 0.0, m) for m in means)
    return _stack(columns, starts.count)


def _stack(columns: Columns, rows: int) -> Float32Array:
    """Columns into a row-major float32 matrix, a block of rows at a time (cache friendly)."""
    out = np.empty((rows, len(columns)), dtype=np.float32)
    for lo in range(0, rows, _STACK_BLOCK):
        out[lo : lo + _STACK_BLOCK] = np.stack([c[lo : lo + _STACK_BLOCK] for c in columns], axis=1)
    return out


_STACK_BLOCK = 4096


# ----------------------------------------------------------------------------- windows


def window_frames(frames: Float32Array, window: Sequence[int]) -> Float32Array:
    """Stack lagged copies of the frames: `[T, F * len(window)]`, lag-major.

    Column block `j` holds the frame `window[j]` steps earlier; lags before the first frame
    repeat the first frame.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 2:
        raise FeatureInputError(f"frames must be 2-D, got shape {frames.shape}")
    _check_window(tuple(window), FeatureInputError)
    rows = np.arange(frames.shape[0])
    return np.concatenate([frames[np.maximum(rows - lag, 0)] for lag in window], axis=1)


def _check_window(
    window: tuple[int, ...], error: type[FeatureInputError | FeatureSchemaMismatch]
) -> None:
    if not window or any(type(lag) is not int or not 0 <= lag <= MAX_WINDOW_LAG for lag in window):
        raise error(f"window must be non-empty lags in [0, {MAX_WINDOW_LAG}] steps, got {window!r}")
    if list(window) != sorted(set(window)):
        raise error(f"window lags must be distinct and ascending, got {window!r}")


# ----------------------------------------------------------------------------- schema

SCHEMA_KEYS = frozenset({"name", "features", "mean", "std", "window", "step_seconds"})
MAX_SCHEMA_FEATURES = 4096
MAX_SCHEMA_JSON = 1 << 20


@dataclass(frozen=True)
class FeatureSchema:
    """What a model's inputs are: feature names, lags, step and normalisation statistics.

    It travels with the model as JSON; `schema_hash` identifies it exactly, so a model whose
    inputs were built differently is refused rather than fed the wrong columns.
    """

    name: str
    features: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    window: tuple[int, ...] = (0,)
    step_seconds: int = 60

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 200:
            raise FeatureSchemaMismatch("schema name must be a non-empty string")
        features = tuple(self.features)
        if not 0 < len(features) <= MAX_SCHEMA_FEATURES:
            raise FeatureSchemaMismatch(f"a schema needs 1..{MAX_SCHEMA_FEATURES} features")
        if any(not isinstance(f, str) or not f for f in features) or len(set(features)) != len(
            features
        ):
            raise FeatureSchemaMismatch("feature names must be distinct non-empty strings")
        mean = _finite_tuple(self.mean, "mean", len(features))
        std = _finite_tuple(self.std, "std", len(features))
        if any(s <= 0.0 for s in std):
            raise FeatureSchemaMismatch("std must be positive")
        window = tuple(self.window)
        _check_window(window, FeatureSchemaMismatch)
        step = self.step_seconds
        if type(step) is not int or not 0 < step <= 3600 or 3600 % step:
            raise FeatureSchemaMismatch(f"step_seconds must divide 3600, got {step!r}")
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "window", window)

    @property
    def n_inputs(self) -> int:
        return len(self.features) * len(self.window)

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no spaces, floats in their shortest exact form."""
        # every snapshot a host writes or checks hashes its schema: the text is made once
        cached: str | None = self.__dict__.get("_json_text")
        if cached is None:
            cached = self._canonical_json()
            object.__setattr__(self, "_json_text", cached)
        return cached

    def _canonical_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "features": list(self.features),
                "mean": list(self.mean),
                "std": list(self.std),
                "window": list(self.window),
                "step_seconds": self.step_seconds,
            },
            sort_keys=True,
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureSchema:
        """Parse and validate; anything but an exact, well-formed schema is a mismatch."""
        if len(text) > MAX_SCHEMA_JSON:
            raise FeatureSchemaMismatch("feature schema JSON is too large")
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as err:
            raise FeatureSchemaMismatch(f"feature schema is not valid JSON: {err}") from err
        if not isinstance(data, dict) or set(data) != SCHEMA_KEYS:
            raise FeatureSchemaMismatch(
                f"feature schema must be an object with keys {sorted(SCHEMA_KEYS)}"
            )
        for key in ("features", "mean", "std", "window"):
            if not isinstance(data[key], list):
                raise FeatureSchemaMismatch(f"{key} must be a list")
        if any(
            isinstance(v, bool) or not isinstance(v, int | float)
            for v in data["mean"] + data["std"]
        ):
            raise FeatureSchemaMismatch("mean and std must hold numbers")
        return cls(
            name=data["name"],
            features=tuple(data["features"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            window=tuple(data["window"]),
            step_seconds=data["step_seconds"],
        )

    def schema_hash(self) -> str:
        """Hex SHA-256 of the canonical JSON."""
        cached: str | None = self.__dict__.get("_schema_hash")
        if cached is None:
            cached = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()
            object.__setattr__(self, "_schema_hash", cached)
        return cached

    def with_normalisation(self, frames: Float32Array) -> FeatureSchema:
        """This schema with mean and std measured on unnormalised frames `[T, len(features)]`.

        Constant columns (a sensor a home never had) keep std 1 so they stay at zero.
        """
        data = np.asarray(frames, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != len(self.features) or data.shape[0] == 0:
            raise FeatureSchemaMismatch(
                f"need frames [T>0, {len(self.features)}] to normalise, got {data.shape}"
            )
        if not np.isfinite(data).all():
            raise FeatureInputError("frames to normalise must be finite")
        std = data.std(axis=0)
        std = np.where(std > 1e-6, std, 1.0)
        return replace(self, mean=tuple(data.mean(axis=0).tolist()), std=tuple(std.tolist()))


def _reject_constant(name: str) -> float:
    raise FeatureSchemaMismatch(f"non-finite number {name} in feature schema")


def _finite_tuple(values: Iterable[float], label: str, length: int) -> tuple[float, ...]:
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise FeatureSchemaMismatch(f"{label} must hold numbers") from err
    if len(result) != length or not all(math.isfinite(v) for v in result):
        raise FeatureSchemaMismatch(f"{label} must hold {length} finite numbers")
    return result


ROOM_SCHEMA_NAME = "room-v1"
PHONE_SCHEMA_NAME = "phone-v1"
_KNOWN_FEATURES = {ROOM_SCHEMA_NAME: ROOM_FEATURES, PHONE_SCHEMA_NAME: PHONE_FEATURES}


def _identity_schema(name: str, window: Sequence[int], step: int) -> FeatureSchema:
    n = len(_KNOWN_FEATURES[name])
    return FeatureSchema(name, _KNOWN_FEATURES[name], (0.0,) * n, (1.0,) * n, tuple(window), step)


def room_schema(window: Sequence[int] = (0,), step: int = 60) -> FeatureSchema:
    """The room feature schema; normalisation is the identity until `with_normalisation`."""
    return _identity_schema(ROOM_SCHEMA_NAME, window, step)


def phone_schema(window: Sequence[int] = (0,), step: int = 60) -> FeatureSchema:
    return _identity_schema(PHONE_SCHEMA_NAME, window, step)


def normalise(schema: FeatureSchema, x: Float32Array) -> Float32Array:
    """`(x - mean) / std` for base frames `[T, F]` or windowed inputs `[T, F * len(window)]`."""
    data = np.asarray(x, dtype=np.float64)
    n_base = len(schema.features)
    if data.ndim != 2 or data.shape[1] not in {n_base, schema.n_inputs}:
        raise FeatureSchemaMismatch(
            f"inputs of shape {data.shape} do not fit schema {schema.name} "
            f"({n_base} features x {len(schema.window)} lags)"
        )
    repeat = data.shape[1] // n_base
    mean = np.tile(np.asarray(schema.mean), repeat)
    std = np.tile(np.asarray(schema.std), repeat)
    return np.asarray((data - mean) / std, dtype=np.float32)
