"""The feature extractor: parsing HA states, sampling change series onto frames, look-back
counts, availability, time encoding, power baselines, phone frames and windows.

Look-back features are checked against a deliberately plain re-implementation (a loop per
frame) on random histories, and pinned on hand-made ones.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlmule_core.errors import FeatureInputError
from mlmule_core.features import (
    PHONE_FEATURES,
    ROOM_FEATURES,
    SINCE_CAP_SECONDS,
    STALE_AFTER,
    ChangeSeries,
    Grid,
    PhoneSignal,
    SensorRole,
    extract_phone_frames,
    extract_room_frames,
    local_seconds,
    parse_state,
    resolve_timezone,
    series_from_states,
    window_frames,
)

START = datetime(2026, 1, 5, tzinfo=UTC).timestamp()  # a Monday, on every step grid
COLUMN = {name: i for i, name in enumerate(ROOM_FEATURES)}


def series(*changes: tuple[float, float]) -> ChangeSeries:
    """A change series from (seconds after START, value) pairs."""
    return ChangeSeries(
        np.array([START + t for t, _ in changes]), np.array([v for _, v in changes])
    )


def room(inputs: dict[SensorRole, list[ChangeSeries]], minutes: int, step: int = 60) -> np.ndarray:
    return extract_room_frames(inputs, START, START + minutes * 60, step)


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("role", "state", "expected"),
    [
        (SensorRole.MOTION, "on", 1.0),
        (SensorRole.MOTION, "off", 0.0),
        (SensorRole.DOOR, "on", 1.0),
        (SensorRole.DOOR, "open", 1.0),
        (SensorRole.DOOR, "closed", 0.0),
        (SensorRole.LIGHT, "ON", 1.0),
        (SensorRole.MEDIA, "playing", 1.0),
        (SensorRole.MEDIA, "paused", 0.0),
        (SensorRole.MEDIA, "idle", 0.0),
        (SensorRole.MEDIA, "on", 0.0),  # a media player that is on but not playing
        (SensorRole.CO2, "612", 612.0),
        (SensorRole.TEMPERATURE, "-3.5", -3.5),
        (SensorRole.HUMIDITY, " 45.0 ", 45.0),
    ],
)
def test_parse_state_reads_ha_states(role: SensorRole, state: str, expected: float) -> None:
    assert parse_state(role, state) == expected


@pytest.mark.parametrize(
    ("role", "state"),
    [
        (SensorRole.MOTION, "unknown"),
        (SensorRole.MOTION, "unavailable"),
        (SensorRole.MOTION, "maybe"),
        (SensorRole.CO2, "unavailable"),
        (SensorRole.CO2, ""),
        (SensorRole.CO2, "n/a"),
        (SensorRole.TEMPERATURE, "inf"),
        (SensorRole.TEMPERATURE, "nan"),
    ],
)
def test_parse_state_gives_nan_for_unusable_states(role: SensorRole, state: str) -> None:
    assert math.isnan(parse_state(role, state))


def test_series_from_states_sorts_stably_and_parses() -> None:
    result = series_from_states(SensorRole.CO2, [(30.0, "500"), (10.0, "400"), (30.0, "unknown")])
    assert result.times.tolist() == [10.0, 30.0, 30.0]
    assert result.values[:2].tolist() == [400.0, 500.0]
    assert math.isnan(result.values[2])


def test_series_rejects_bad_times() -> None:
    with pytest.raises(FeatureInputError) as err:
        series_from_states(SensorRole.CO2, [(math.nan, "400")])
    assert err.value.reason == "feature_input"
    with pytest.raises(FeatureInputError):
        ChangeSeries(np.array([2.0, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(FeatureInputError):
        ChangeSeries(np.array([1.0, 2.0]), np.array([0.0]))


# ----------------------------------------------------------------------------- the grid


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-50, 700), max_size=40),
    st.integers(0, 3),
    st.sampled_from([1, 60, 300]),
    st.integers(0, 40),
)
def test_grid_search_equals_searchsorted(
    offsets: list[int], jitter_exponent: int, step: int, count: int
) -> None:
    # times on, just before and just after grid points, where a division could round wrongly
    jitter = [0.0, 1e-3, -1e-3, 2.5e-7][jitter_exponent]
    times = np.sort(START + np.array(offsets, dtype=np.float64) * step / 3 + jitter)
    grid = Grid(START, float(step), count)
    expected = np.searchsorted(times, grid.values, side="left")
    assert grid.search(times).tolist() == expected.tolist()


def test_frame_grid_requires_an_aligned_start() -> None:
    with pytest.raises(FeatureInputError):
        extract_room_frames({}, START + 1, START + 600)
    with pytest.raises(FeatureInputError):
        extract_room_frames({}, START, START + 600, step=7)


# ----------------------------------------------------------------------------- look-back features


def reference_motion(events: list[tuple[float, float]], minutes: int) -> dict[str, list[float]]:
    """Motion features by their definition, frame by frame, with plain loops."""
    out: dict[str, list[float]] = {"on": [], "since": [], "5": [], "15": [], "60": []}
    for k in range(minutes):
        end = START + 60 * (k + 1)
        before = [(t, v) for t, v in events if t < end]
        state = before[-1][1] if before else math.nan
        rises = [
            t for i, (t, v) in enumerate(events) if i > 0 and v == 1.0 and events[i - 1][1] != 1.0
        ]
        falls = [
            t for i, (t, v) in enumerate(events) if i > 0 and events[i - 1][1] == 1.0 and v != 1.0
        ]
        last_fall = max((t for t in falls if t < end), default=None)
        if state == 1.0:
            since = 0.0
        elif last_fall is None:
            since = SINCE_CAP_SECONDS
        else:
            since = min(end - last_fall, SINCE_CAP_SECONDS)
        out["on"].append(1.0 if state == 1.0 else 0.0)
        out["since"].append(math.log1p(since))
        for window in (5, 15, 60):
            out[str(window)].append(float(sum(end - 60 * window <= t < end for t in rises)))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 180 * 60), st.sampled_from([0.0, 1.0, math.nan]))))
def test_motion_features_match_their_definition(changes: list[tuple[int, float]]) -> None:
    events = sorted(((START + t, v) for t, v in changes), key=lambda e: e[0])
    events.insert(0, (START, 0.0))
    minutes = 200
    motion = ChangeSeries(np.array([t for t, _ in events]), np.array([v for _, v in events]))
    frames = room({SensorRole.MOTION: [motion]}, minutes)
    expected = reference_motion(events, minutes)
    np.testing.assert_allclose(frames[:, COLUMN["motion_on"]], expected["on"])
    np.testing.assert_allclose(frames[:, COLUMN["motion_since_log"]], expected["since"], rtol=1e-6)
    for window in (5, 15, 60):
        np.testing.assert_array_equal(
            frames[:, COLUMN[f"motion_count_{window}m"]], expected[str(window)]
        )


def test_counts_on_a_hand_made_history() -> None:
    # motion at 01:40, 06:40 and 16:40 (min:s), each on for 30 s
    motion = series((0, 0), (100, 1), (130, 0), (400, 1), (430, 0), (1000, 1), (1030, 0))
    frames = room({SensorRole.MOTION: [motion]}, 30)
    five, fifteen, sixty = (COLUMN[f"motion_count_{w}m"] for w in (5, 15, 60))
    # frame k covers [k, k+1) min; it sees events before its end, (k+1) min
    assert frames[1, five] == 1  # 01:40 is in [-3:00, 2:00)
    assert frames[6, five] == 1  # [2:00, 7:00) holds 06:40 only
    assert frames[6, fifteen] == 2
    assert frames[7, five] == 1  # [3:00, 8:00) holds 06:40
    assert frames[11, five] == 0  # [7:00, 12:00) holds none
    assert frames[16, fifteen] == 2  # [2:00, 17:00) holds 06:40 and 16:40
    assert frames[29, sixty] == 3
    assert frames[1, COLUMN["motion_on"]] == 1  # on since 01:40, off only at 02:10
    assert frames[1, COLUMN["motion_since_log"]] == 0.0
    assert frames[2, COLUMN["motion_on"]] == 0
    assert frames[2, COLUMN["motion_since_log"]] == pytest.approx(math.log1p(180 - 130))


def test_several_motion_sensors_combine_with_any() -> None:
    a = series((0, 0), (100, 1), (130, 0))
    b = series((0, 0), (110, 1), (200, 0))
    frames = room({SensorRole.MOTION: [a, b]}, 5)
    assert frames[2, COLUMN["motion_on"]] == 1  # b is still on before 03:00
    assert frames[2, COLUMN["motion_count_5m"]] == 2
    alone = room({SensorRole.MOTION: [a]}, 5)
    assert alone[2, COLUMN["motion_on"]] == 0


def test_door_events_are_openings_and_closings() -> None:
    door = series((0, 0), (100, 1), (110, 0), (400, 1))
    frames = room({SensorRole.DOOR: [door]}, 10)
    assert frames[1, COLUMN["door_count_5m"]] == 2
    assert frames[6, COLUMN["door_count_5m"]] == 1  # [02:00, 07:00) holds the 06:40 opening
    assert frames[6, COLUMN["door_count_15m"]] == 3
    assert frames[6, COLUMN["door_open"]] == 1
    assert frames[3, COLUMN["door_since_log"]] == pytest.approx(math.log1p(240 - 110))


# ----------------------------------------------------------------------------- availability


def test_unknown_unavailable_missing_and_stale_inputs_are_flagged_never_nan() -> None:
    stale = STALE_AFTER[SensorRole.CO2]
    co2 = series((0, 800), (600, math.nan), (1200, 900))
    temperature = series((0, 21.0))  # never changes again: stale after STALE_AFTER
    light = series((0, 1), (300, math.nan))
    minutes = int(stale // 60) + 30
    frames = room(
        {SensorRole.CO2: [co2], SensorRole.TEMPERATURE: [temperature], SensorRole.LIGHT: [light]},
        minutes,
    )
    assert not np.isnan(frames).any()
    co2_ok = frames[:, COLUMN["co2_available"]]
    assert co2_ok[:10].tolist() == [1.0] * 10
    assert co2_ok[10:20].tolist() == [0.0] * 10  # unavailable from 10:00 to 20:00
    assert co2_ok[20] == 1.0
    assert frames[15, COLUMN["co2_ppm"]] == 600.0  # the neutral value
    assert frames[25, COLUMN["co2_ppm"]] == 900.0
    temp_ok = frames[:, COLUMN["temperature_available"]]
    last_fresh = int(stale // 60) - 1  # the frame ending exactly `stale` after the reading
    assert temp_ok[last_fresh] == 1.0
    assert temp_ok[last_fresh + 1] == 0.0
    assert frames[last_fresh + 1, COLUMN["temperature_c"]] == 20.0
    assert frames[4, COLUMN["light_on"]] == 1.0
    assert frames[5, COLUMN["light_available"]] == 0.0
    assert frames[5, COLUMN["light_on"]] == 0.0
    # roles the room does not have
    for role in ("motion", "door", "illuminance", "humidity", "power", "media"):
        assert (frames[:, COLUMN[f"{role}_available"]] == 0).all()


def test_slope_is_per_hour_over_fifteen_minutes() -> None:
    co2 = series(*((60 * m, 400 + 10 * m) for m in range(40)))
    frames = room({SensorRole.CO2: [co2]}, 40)
    # 15 minutes of +10 ppm/min is +600 ppm/h; earlier frames lack the 15-minute-old value
    assert frames[30, COLUMN["co2_slope"]] == pytest.approx(600.0)
    assert frames[5, COLUMN["co2_slope"]] == 0.0


def test_illuminance_is_log_scaled() -> None:
    frames = room({SensorRole.ILLUMINANCE: [series((0, 250.0))]}, 3)
    assert frames[1, COLUMN["illuminance_log"]] == pytest.approx(math.log1p(250.0))


# ----------------------------------------------------------------------------- power


def test_power_above_baseline_ignores_standby_and_brief_glitches() -> None:
    changes = [(0.0, 1.5)]
    changes += [(3600.0 * h + 600, 0.0) for h in range(30)]  # a 0 W glitch every hour
    changes += [(3600.0 * h + 660, 1.5) for h in range(30)]
    kettle = 27 * 3600.0
    changes += [(kettle, 2001.5), (kettle + 180, 1.5)]
    changes.sort()
    plug = series(*changes)
    minutes = 28 * 60
    frames = room({SensorRole.POWER: [plug]}, minutes)
    above = frames[:, COLUMN["power_above_baseline_log"]]
    boiling = int(kettle // 60) + 1
    assert above[boiling] == pytest.approx(math.log1p(2000.0), rel=1e-6)
    steady = np.r_[26 * 60 : 26 * 60 + 9]  # standby minutes of a later hour
    assert np.all(above[steady] == 0.0)
    assert (frames[:, COLUMN["power_available"]] == 1).all()


def test_power_baseline_does_not_depend_on_the_extracted_range() -> None:
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0, 3 * 86400, 400))
    watts = rng.gamma(1, 50, 400)
    plug = series((0.0, 2.0), *zip(times.tolist(), watts.tolist(), strict=True))
    inputs = {SensorRole.POWER: [plug]}
    whole = extract_room_frames(inputs, START, START + 3 * 86400)
    later = extract_room_frames(inputs, START + 2 * 86400, START + 3 * 86400)
    np.testing.assert_array_equal(
        whole[2 * 1440 :, COLUMN["power_above_baseline_log"]],
        later[:, COLUMN["power_above_baseline_log"]],
    )


# ----------------------------------------------------------------------------- time


def test_time_features_are_cyclic_in_local_time_across_dst() -> None:
    # Berlin leaves CET for CEST on 2026-03-29 at 01:00 UTC
    before = datetime(2026, 3, 29, 0, 30, tzinfo=UTC).timestamp()  # 01:30 CET, a Sunday
    after = datetime(2026, 3, 29, 1, 30, tzinfo=UTC).timestamp()  # 03:30 CEST
    for moment, hour in ((before, 1.5), (after, 3.5)):
        frames = extract_room_frames({}, moment - 30 * 60, moment + 30 * 60, 60, "Europe/Berlin")
        row = frames[30]
        angle = 2 * math.pi * hour / 24
        assert row[COLUMN["tod_sin"]] == pytest.approx(math.sin(angle), abs=1e-6)
        assert row[COLUMN["tod_cos"]] == pytest.approx(math.cos(angle), abs=1e-6)
        assert row[COLUMN["dow_sin"]] == pytest.approx(math.sin(2 * math.pi * 6 / 7), abs=1e-6)
        assert row[COLUMN["weekend"]] == 1.0
    monday = extract_room_frames({}, START, START + 60, 60, "+01:00")[0]
    assert monday[COLUMN["weekend"]] == 0.0
    assert monday[COLUMN["dow_cos"]] == pytest.approx(1.0)
    assert np.hypot(monday[COLUMN["tod_sin"]], monday[COLUMN["tod_cos"]]) == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(1.6e9, 1.9e9), min_size=1, max_size=30),
    st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]),
)
def test_local_seconds_agree_with_datetime(times: list[float], zone: str) -> None:
    ordered = np.sort(np.array(times))
    expected = [
        t + datetime.fromtimestamp(t, ZoneInfo(zone)).utcoffset().total_seconds()  # type: ignore[union-attr]
        for t in ordered.tolist()
    ]
    np.testing.assert_array_equal(local_seconds(ordered, zone), expected)
    np.testing.assert_array_equal(local_seconds(ordered[::-1], zone), expected[::-1])


def test_timezones_resolve_or_fail_clearly() -> None:
    assert resolve_timezone("-05:30").utcoffset(None) == -timedelta(hours=5, minutes=30)
    assert resolve_timezone("UTC") is UTC
    with pytest.raises(FeatureInputError):
        resolve_timezone("Mars/Olympus_Mons")


# ----------------------------------------------------------------------------- phone and windows


def test_phone_frames_average_samples_and_flag_gaps() -> None:
    steps = ChangeSeries(START + np.array([0.0, 60.0, 120.0, 600.0]), np.array([10, 20, 30, 5.0]))
    inputs = {PhoneSignal.STEP_RATE: steps}
    column = PHONE_FEATURES.index("step_rate")
    available = PHONE_FEATURES.index("phone_available")
    per_minute = extract_phone_frames(inputs, START, START + 900)
    assert per_minute[:3, column].tolist() == [10.0, 20.0, 30.0]
    assert per_minute[3:10, available].tolist() == [0.0] * 7  # no samples, no data
    assert per_minute[3:10, column].tolist() == [0.0] * 7
    assert per_minute[10, column] == 5.0
    five_minutes = extract_phone_frames(inputs, START, START + 900, step=300)
    assert five_minutes[0, column] == pytest.approx(20.0)
    assert five_minutes[1, available] == 0.0
    assert not np.isnan(per_minute).any()


def test_window_frames_stacks_lags_and_clamps_at_the_start() -> None:
    frames = np.arange(12, dtype=np.float32).reshape(6, 2)
    windowed = window_frames(frames, (0, 2))
    assert windowed.shape == (6, 4)
    assert windowed[4].tolist() == [8, 9, 4, 5]
    assert windowed[1].tolist() == [2, 3, 0, 1]
    with pytest.raises(FeatureInputError):
        window_frames(frames, (2, 0))


def test_frames_have_one_column_per_feature_and_no_rows_for_an_empty_range() -> None:
    assert room({}, 3).shape == (3, len(ROOM_FEATURES))
    assert extract_room_frames({}, START, START).shape == (0, len(ROOM_FEATURES))
    with pytest.raises(FeatureInputError):
        extract_room_frames({"smell": []}, START, START + 60)  # type: ignore[dict-item]
