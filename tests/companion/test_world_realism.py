"""The world behaves like homes do: occupancy drives CO2, people sleep in bedrooms and cook at
meal times, motion sensors fire when someone is there, rooms cool towards the outdoors, BLE
mostly finds the right room, phones move with their owner's activity, and homes differ more
when `non_iid` says so. Also checks the Markov chain and the physics solver exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mlmule_core.features import (
    ACTIVITIES,
    PHONE_FEATURES,
    ROOM_FEATURES,
    Activity,
    local_seconds,
)
from mlmule_world import (
    RoomKind,
    World,
    WorldConfig,
    divergence_report,
    generate_world,
    jensen_shannon,
)
from mlmule_world.homes import build_home
from mlmule_world.physics import relax
from mlmule_world.residents import (
    FREE_DAY,
    WORKDAY,
    chain_tables,
    day_plan,
    profile,
    run_chain,
)
from scipy.spatial.distance import jensenshannon as scipy_jensenshannon

COLUMN = {name: i for i, name in enumerate(ROOM_FEATURES)}


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(WorldConfig(n_homes=6, days=14, non_iid=0.5), seed=7)


def local_hours(world: World) -> np.ndarray:
    local = local_seconds(world.minute_times, world.config.tz)
    return (np.mod(local, 86400.0) // 3600).astype(np.int64)


def rooms_of(world: World, kind: RoomKind):  # type: ignore[no-untyped-def]
    for home in world.homes:
        for room in home.rooms:
            if room.kind is kind:
                yield home, room, world.room_data(home.home_id, room.room_id)


# ----------------------------------------------------------------------------- behaviour


def test_co2_rises_with_occupancy_and_tracks_headcount(world: World) -> None:
    checked = 0
    for kind in (RoomKind.BEDROOM, RoomKind.LIVING_ROOM):
        for _, _, data in rooms_of(world, kind):
            frames = data.frames
            if frames[:, COLUMN["co2_available"]].mean() < 0.9:
                continue
            occupied = data.occupancy.astype(bool)
            slope = frames[:, COLUMN["co2_slope"]]
            assert slope[occupied].mean() > slope[~occupied].mean() + 20.0
            level = frames[:, COLUMN["co2_ppm"]]
            assert np.corrcoef(level, data.headcount)[0, 1] > 0.3
            checked += 1
    assert checked >= 4


def test_bedrooms_are_occupied_at_night_when_their_people_are_home(world: World) -> None:
    hours = local_hours(world)
    night = (hours >= 2) & (hours < 5)
    trajectories = world.trajectories()
    minute_step = np.arange(world.config.n_minutes) // 5
    for home, room, data in rooms_of(world, RoomKind.BEDROOM):
        sleepers = [
            world.people.index(p)
            for p in world.people
            if p.home_id == home.home_id and p.bedroom == room.room_id
        ]
        home_at_night = np.zeros(world.config.n_minutes, dtype=bool)
        for p in sleepers:
            home_at_night |= trajectories.place[p, minute_step] == home.index
        considered = night & home_at_night
        assert considered.sum() > 60
        assert data.occupancy[considered].mean() > 0.7


def test_kitchens_are_busier_at_meal_times(world: World) -> None:
    hours = local_hours(world)
    meals = np.isin(hours, [7, 12, 18, 19])
    between = np.isin(hours, [10, 15, 23])
    for _, _, data in rooms_of(world, RoomKind.KITCHEN):
        assert data.occupancy[meals].mean() > 2 * data.occupancy[between].mean()


def test_motion_sensors_fire_mostly_when_someone_is_there(world: World) -> None:
    fired, present = [], []
    for home in world.homes:
        for room in home.rooms:
            if room.kind is RoomKind.HALLWAY:
                continue  # people only pass through: a minute or less
            data = world.room_data(home.home_id, room.room_id)
            on = data.frames[:, COLUMN["motion_on"]] == 1
            fired.append(data.occupancy[on])
            present.append(data.frames[data.occupancy == 1, COLUMN["motion_count_5m"]])
    assert np.concatenate(fired).mean() > 0.9
    assert (np.concatenate(present) > 0).mean() > 0.5


def test_lamps_and_daylight_light_rooms(world: World) -> None:
    hours = local_hours(world)
    for _, _, data in rooms_of(world, RoomKind.LIVING_ROOM):
        frames = data.frames
        if frames[:, COLUMN["illuminance_available"]].mean() < 0.9:
            continue
        lux = frames[:, COLUMN["illuminance_log"]]
        dark_empty = ((hours >= 1) & (hours < 5)) & (data.occupancy == 0)
        noon = (hours >= 11) & (hours < 14)
        assert np.median(lux[dark_empty]) < 1.0
        assert np.median(lux[noon]) > 3.0
        light = frames[:, COLUMN["light_on"]] == 1
        if light.any():
            assert data.occupancy[light].mean() > 0.7


def test_showers_fill_the_bathroom_with_humidity(world: World) -> None:
    bathing = ACTIVITIES.index(Activity.BATHING)
    for _, _, data in rooms_of(world, RoomKind.BATHROOM):
        frames = data.frames
        if frames[:, COLUMN["humidity_available"]].mean() < 0.9:
            continue
        slope = frames[:, COLUMN["humidity_slope"]]
        shower = data.activity == bathing
        assert slope[shower].mean() > slope[~shower].mean() + 5.0


def test_empty_rooms_drift_towards_the_outdoor_temperature() -> None:
    """With no heating (July) and no sun (night), an RC room moves towards the outdoors."""
    summer = generate_world(
        WorldConfig(n_homes=2, days=7, start="2026-07-06T00:00:00+00:00", non_iid=0.0), seed=5
    )
    hours = local_hours(summer)
    night = (hours >= 0) & (hours < 4)
    agree, total = 0, 0
    for home in summer.homes:
        physics = summer.physics(home.home_id)
        outdoor = physics.outdoor.temperature
        for r, room in enumerate(home.rooms):
            indoor = physics.climate.temperature[r]
            empty = summer.room_data(home.home_id, room.room_id).headcount == 0
            change = indoor[30:] - indoor[:-30]
            gap = (outdoor - indoor)[:-30]
            chosen = night[:-30] & empty[:-30] & (np.abs(gap) > 1.0)
            agree += int(np.sum(np.sign(change[chosen]) == np.sign(gap[chosen])))
            total += int(chosen.sum())
    assert total > 500
    assert agree / total > 0.9


def test_heating_holds_the_comfort_temperature_in_winter(world: World) -> None:
    for home in world.homes:
        living = home.first_room(RoomKind.LIVING_ROOM)
        physics = world.physics(home.home_id)
        data = world.room_data(home.home_id, home.rooms[living].room_id)
        evening = data.occupancy == 1
        indoor = physics.climate.temperature[living][evening]
        assert abs(np.median(indoor) - home.household.comfort_temperature) < 2.0
        assert np.median(physics.outdoor.temperature) < 8.0


# ----------------------------------------------------------------------------- phones


def test_ble_presence_mostly_reports_the_true_room(world: World) -> None:
    agree, seen = [], []
    for person in world.people:
        phone = world.phone_data(person.person_id)
        at_a_home = phone.place >= 0
        reported = phone.room >= 0
        agree.append(
            np.mean(phone.room[at_a_home & reported] == phone.true_room[at_a_home & reported])
        )
        seen.append(np.mean(reported[at_a_home]))
    assert np.mean(agree) > 0.85
    assert min(agree) > 0.75
    assert np.mean(seen) > 0.95


def test_phone_motion_depends_on_activity_and_on_the_person() -> None:
    world = generate_world(WorldConfig(n_homes=3, days=7, non_iid=1.0), seed=12)
    steps = PHONE_FEATURES.index("step_rate")
    accel = PHONE_FEATURES.index("accel_mean")
    sleeping = ACTIVITIES.index(Activity.SLEEPING)
    away = ACTIVITIES.index(Activity.AWAY)
    watching = ACTIVITIES.index(Activity.WATCHING_TV)
    cooking = ACTIVITIES.index(Activity.COOKING)
    means = []
    for person in world.people:
        phone = world.phone_data(person.person_id)
        frames = phone.frames[phone.carried]
        activity = phone.activity[phone.carried]
        assert (
            frames[activity == away, steps].mean()
            > 3 * frames[activity == sleeping, steps].mean() + 1
        )
        assert (
            frames[activity == cooking, accel].mean()
            > 2 * frames[activity == watching, accel].mean()
        )
        means.append(frames[activity == watching, accel].mean())
    # personal bias: the same activity looks different on different people's phones
    assert max(means) > 1.2 * min(means)


# ----------------------------------------------------------------------------- non-IID


def test_homes_differ_more_when_non_iid_is_higher() -> None:
    reports = {
        u: divergence_report(generate_world(WorldConfig(n_homes=6, days=7, non_iid=u), seed=21))
        for u in (0.0, 1.0)
    }
    alike, different = reports[0.0], reports[1.0]
    assert different.occupancy_js > 1.5 * alike.occupancy_js
    assert different.activity_js > 1.5 * alike.activity_js
    assert different.feature_js > 5 * alike.feature_js
    spread = {u: np.std(list(r.occupancy_rate.values())) for u, r in reports.items()}
    assert spread[1.0] > spread[0.0]
    assert set(different.per_home) == set(different.home_ids)


def test_jensen_shannon_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.random(12), rng.random(12)
        p[rng.integers(12)] = 0.0
        expected = scipy_jensenshannon(p, q, base=2) ** 2
        assert jensen_shannon(p, q) == pytest.approx(expected, abs=1e-12)
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    assert jensen_shannon([3, 1], [6, 2]) == pytest.approx(0.0)


# ------------------------------------------------------------------------- chain and physics


def test_the_chain_reproduces_its_target_profile() -> None:
    """The time-varying chain's marginal equals the profile it was derived from."""
    _, people = build_home(WorldConfig(non_iid=0.0), seed=1, index=0)
    person = people[0]
    for kind in (WORKDAY, FREE_DAY):
        pi = profile(day_plan(person, kind, gym_today=False), person.traits)
        leave, cdf = chain_tables(pi)
        rows = list(zip(leave.tolist(), cdf.tolist(), strict=True))
        days, runs = 2, 400
        slots = np.tile(np.arange(288), days)
        visits = np.zeros((days * 288, pi.shape[1]))
        rng = np.random.default_rng(kind)
        for _ in range(runs):
            states = run_chain(rows, slots, pi[0], rng)
            visits[np.arange(states.size), states] += 1
        empirical = visits[288:] / runs  # the second day
        assert np.abs(empirical - pi).max() < 0.1
        assert np.abs(empirical - pi).mean() < 0.006
        # persistence: sleep comes in long bouts, not a coin flip per step
        states = run_chain(rows, slots, pi[0], rng)
        switches = np.count_nonzero(np.diff(states.astype(int)))
        assert switches < 60


def test_relax_solves_the_recurrence_exactly() -> None:
    rng = np.random.default_rng(4)
    rate = rng.uniform(0.0, 0.6, size=(3, 5000))
    rate[1, 1000:1200] = 5.0  # a window opened: fast decay, chunks must split
    target = rng.normal(500.0, 200.0, size=(3, 5000))
    first = np.array([400.0, 1500.0, -3.0])
    solved = relax(rate, target, first)
    expected = np.empty_like(solved)
    expected[:, 0] = first
    for m in range(4999):
        a = np.exp(-rate[:, m])
        expected[:, m + 1] = target[:, m] + (expected[:, m] - target[:, m]) * a
    np.testing.assert_allclose(solved, expected, rtol=1e-9, atol=1e-9)


def test_weather_follows_the_seasons(world: World) -> None:
    summer = generate_world(WorldConfig(n_homes=1, days=3, start="2026-07-06T00:00:00+00:00"), 1)
    winter_out = world.physics(world.homes[0].home_id).outdoor
    summer_out = summer.physics(summer.homes[0].home_id).outdoor
    assert summer_out.temperature.mean() > winter_out.temperature.mean() + 8
    assert summer_out.illuminance.max() > 2 * winter_out.illuminance.max()
    assert math.isclose(winter_out.illuminance.min(), 0.0)
