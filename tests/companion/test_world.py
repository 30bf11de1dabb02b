"""The synthetic world as an API: determinism, the same-code guarantee, events as HA would
record them, trajectories, visits, encounters, labels, dropouts and time splits."""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np
import pytest
from mlmule_core.features import (
    ACTIVITIES,
    BINARY_ROLES,
    EMPTY_ROOM_ACTIVITY,
    PHONE_FEATURES,
    PHONE_SIGNAL_RANGES,
    ROOM_FEATURES,
    Activity,
    PhoneSignal,
    SensorRole,
    extract_room_frames,
    series_from_states,
)
from mlmule_world import RoomKind, World, WorldConfig, WorldConfigError, generate_world, time_split

SMALL = WorldConfig(n_homes=4, days=3, group_size=2)
VISITING = ACTIVITIES.index(Activity.VISITING)


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(SMALL, seed=7)


def room_arrays(world: World, home_index: int) -> list[np.ndarray]:
    home = world.homes[home_index]
    arrays = []
    for room in home.rooms:
        data = world.room_data(home.home_id, room.room_id)
        arrays += [data.frames, data.occupancy, data.headcount, data.activity]
        arrays += [data.occupancy_label, data.activity_label, data.resident_activity]
    return arrays


# ----------------------------------------------------------------------------- determinism


def test_same_config_and_seed_give_identical_data(world: World) -> None:
    again = generate_world(SMALL, seed=7)
    for a, b in zip(room_arrays(world, 1), room_arrays(again, 1), strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(world.events("home_001")) == list(again.events("home_001"))
    person = world.homes[1].residents[0]
    np.testing.assert_array_equal(world.phone_data(person).frames, again.phone_data(person).frames)
    np.testing.assert_array_equal(world.trajectories().activity, again.trajectories().activity)


def test_another_seed_gives_other_data(world: World) -> None:
    other = generate_world(SMALL, seed=8)
    home = world.homes[1]
    room = home.rooms[0].room_id
    assert not np.array_equal(
        world.room_data(home.home_id, room).frames,
        other.room_data(other.homes[1].home_id, other.homes[1].rooms[0].room_id).frames,
    )


def test_a_home_does_not_change_when_the_world_grows() -> None:
    # Home 0's data depends on its affinity group and the next three: its visitors, their
    # hosts, and those hosts' own plans.
    config = WorldConfig(n_homes=8, days=2, group_size=2, visit_rate=7.0)
    small = generate_world(config, seed=3)
    large = generate_world(WorldConfig(n_homes=14, days=2, group_size=2, visit_rate=7.0), seed=3)
    for a, b in zip(room_arrays(small, 0), room_arrays(large, 0), strict=True):
        np.testing.assert_array_equal(a, b)
    assert small.homes[0] == large.homes[0]
    for person in small.homes[0].residents:
        np.testing.assert_array_equal(
            small.phone_data(person).frames, large.phone_data(person).frames
        )


# ----------------------------------------------------------------------------- same code


def test_room_frames_are_the_extractor_run_on_the_ha_state_strings(world: World) -> None:
    """Render a home's history as HA would store it, parse it back, extract: same frames."""
    home = world.homes[0]
    roles = world.entity_roles(home.home_id)
    changes: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for moment, entity_id, state in world.events(home.home_id):
        changes[entity_id].append((moment, state))
    assert set(changes) == set(roles)
    for room in home.rooms:
        inputs: dict[SensorRole, list] = defaultdict(list)
        for entity_id, (room_id, role) in roles.items():
            if room_id == room.room_id:
                inputs[role].append(series_from_states(role, changes[entity_id]))
        frames = extract_room_frames(inputs, world.start, world.end, 60, home.tz)
        expected = world.room_data(home.home_id, room.room_id).frames
        np.testing.assert_array_equal(frames, expected)


def test_events_look_like_ha_state_changes(world: World) -> None:
    home = world.homes[2]
    roles = world.entity_roles(home.home_id)
    events = list(world.events(home.home_id))
    times = [t for t, _, _ in events]
    assert times == sorted(times)
    assert times[0] == world.start
    assert times[-1] < world.end
    patterns = {
        SensorRole.MOTION: r"on|off|unavailable",
        SensorRole.DOOR: r"on|off|unavailable",
        SensorRole.LIGHT: r"on|off|unavailable",
        SensorRole.MEDIA: r"playing|off|unavailable",
        SensorRole.CO2: r"\d+|unavailable",
        SensorRole.ILLUMINANCE: r"\d+|unavailable",
        SensorRole.TEMPERATURE: r"-?\d+\.\d|unavailable",
        SensorRole.HUMIDITY: r"\d+\.\d|unavailable",
        SensorRole.POWER: r"\d+\.\d|unavailable",
    }
    last: dict[str, str] = {}
    for moment, entity_id, state in events:
        role = roles[entity_id][1]
        assert re.fullmatch(patterns[role], state), (entity_id, state)
        assert last.get(entity_id) != state, "HA records changes only"
        assert round(moment * 1000) == moment * 1000  # whole milliseconds
        last[entity_id] = state
    domains = {entity_id.split(".")[0] for entity_id in roles}
    assert domains <= {"binary_sensor", "sensor", "light", "media_player"}
    for entity_id, (room_id, role) in roles.items():
        assert f"{home.home_id}_{room_id}" in entity_id
        assert (role in BINARY_ROLES) == (not entity_id.startswith("sensor."))


# ----------------------------------------------------------------------------- room data


def test_room_data_is_consistent(world: World) -> None:
    home = world.homes[0]
    for room in home.rooms:
        data = world.room_data(home.home_id, room.room_id)
        minutes = SMALL.days * 1440
        assert data.frames.shape == (minutes, len(ROOM_FEATURES))
        assert data.frames.dtype == np.float32
        assert not np.isnan(data.frames).any()
        assert data.times[0] == world.start
        assert np.all(np.diff(data.times) == 60.0)
        np.testing.assert_array_equal(data.occupancy, data.headcount > 0)
        assert np.all((data.activity == EMPTY_ROOM_ACTIVITY) == (data.headcount == 0))
        assert data.resident_activity.shape == (minutes, len(home.residents))
        here = data.resident_activity >= 0
        assert np.all(here.sum(axis=1) <= data.headcount)
        assert np.all(data.occupancy[here.any(axis=1)] == 1)
        assert data.kind is room.kind
    with pytest.raises(WorldConfigError):
        world.room_data(home.home_id, "attic")
    with pytest.raises(WorldConfigError):
        world.room_data("home_999", "kitchen")


def test_labels_are_wrong_about_as_often_as_configured() -> None:
    noisy = generate_world(WorldConfig(n_homes=1, days=14, label_noise=0.1), seed=2)
    clean = generate_world(WorldConfig(n_homes=1, days=14, label_noise=0.0), seed=2)
    home = noisy.homes[0]
    room = home.rooms[1].room_id
    wrong = np.mean(
        noisy.room_data(home.home_id, room).activity_label
        != noisy.room_data(home.home_id, room).activity
    )
    assert 0.05 < wrong < 0.15
    data = clean.room_data(home.home_id, room)
    np.testing.assert_array_equal(data.activity_label, data.activity)
    person = home.residents[0]
    phone = noisy.phone_data(person)
    assert 0.05 < np.mean(phone.activity_label != phone.activity) < 0.15


def test_sensor_dropouts_make_inputs_unavailable_about_as_often_as_configured() -> None:
    flaky = generate_world(WorldConfig(n_homes=2, days=14, sensor_dropout=0.05), seed=4)
    solid = generate_world(WorldConfig(n_homes=2, days=14, sensor_dropout=0.0), seed=4)
    missing, always = [], []
    for world, out in ((flaky, missing), (solid, always)):
        for home in world.homes:
            for room in home.rooms:
                frames = world.room_data(home.home_id, room.room_id).frames
                temperature = frames[:, ROOM_FEATURES.index("temperature_available")]
                if temperature.any():
                    out.append(1.0 - temperature.mean())
    assert 0.02 < np.mean(missing) < 0.12
    assert max(always) == 0.0
    states = {state for _, _, state in flaky.events(flaky.homes[0].home_id)}
    assert "unavailable" in states


# ----------------------------------------------------------------------------- people


def test_trajectories_place_people_where_their_activity_happens(world: World) -> None:
    trajectories = world.trajectories()
    steps = SMALL.days * 288
    assert trajectories.place.shape == (len(world.people), steps)
    assert np.all(np.diff(trajectories.times) == 300.0)
    away = trajectories.activity == ACTIVITIES.index(Activity.AWAY)
    visiting = trajectories.activity == VISITING
    at_home = ~away & ~visiting
    for p, person in enumerate(world.people):
        home = world.home(person.home_id).index
        assert np.all(trajectories.place[p, at_home[p]] == home)
        assert np.all(trajectories.room[p, at_home[p]] >= 0)
        assert np.all(trajectories.place[p, away[p]] < 0)
        assert np.all(trajectories.room[p, away[p]] == -1)
        hosts = trajectories.place[p, visiting[p]]
        assert np.all((hosts >= 0) & (hosts != home))
    names = {trajectories.place_name(int(c)) for c in np.unique(trajectories.place)}
    assert names <= {*(h.home_id for h in world.homes), *SMALL.shared_places, "elsewhere"}


def test_visits_follow_the_visit_graph_and_find_a_host_at_home() -> None:
    world = generate_world(WorldConfig(n_homes=8, days=14, group_size=4, visit_rate=4.0), seed=5)
    trajectories = world.trajectories()
    visits = 0
    for p, person in enumerate(world.people):
        home = world.home(person.home_id).index
        steps = np.flatnonzero(trajectories.activity[p] == VISITING)
        starts = steps[np.diff(np.concatenate([[-2], steps])) > 1]
        for start in starts.tolist():
            host = int(trajectories.place[p, start])
            assert world.visit_graph[home, host] > 0
            residents = [world.people.index(world.person(r)) for r in world.homes[host].residents]
            assert any(trajectories.place[r, start] == host for r in residents)
            visits += 1
    weeks = 14 / 7
    assert 0.3 * 4.0 * weeks * len(world.people) < visits < 4.0 * weeks * len(world.people)
    quiet = generate_world(WorldConfig(n_homes=8, days=3, visit_rate=0.0), seed=5)
    assert not np.any(quiet.trajectories().activity == VISITING)


def test_visit_graph_forms_affinity_groups(world: World) -> None:
    graph = generate_world(WorldConfig(n_homes=12, group_size=4), seed=1).visit_graph
    np.testing.assert_allclose(graph.sum(axis=1), 1.0)
    group = np.arange(12) // 4
    gap = np.abs(group[:, None] - group[None, :])
    friends = graph[(gap == 0) & (graph > 0)]
    neighbours = graph[gap == 1]
    assert friends.size == 12 * 3
    assert neighbours.size > 0
    assert friends.mean() > 5 * neighbours.mean()
    assert np.all(graph[gap > 1] == 0)
    assert np.all(np.diag(graph) == 0)


def test_phone_data_and_encounters(world: World) -> None:
    person = world.people[0]
    phone = world.phone_data(person.person_id)
    minutes = SMALL.days * 1440
    assert phone.frames.shape == (minutes, len(PHONE_FEATURES))
    assert not np.isnan(phone.frames).any()
    assert phone.phone_id == person.phone_id
    outside = phone.place < 0
    assert np.all(phone.room[outside] == -1)
    assert np.all(phone.true_room[outside] == -1)
    encounters = world.encounters()
    times = [e.time for e in encounters]
    assert times == sorted(times)
    for encounter in encounters[:500]:
        home = world.home(encounter.home_id)
        assert encounter.room_id in {r.room_id for r in home.rooms}
        assert world.person(encounter.person_id).phone_id == encounter.phone_id
    own = [e for e in encounters if e.person_id == person.person_id]
    assert own, "a resident's phone is seen at home"


def test_phone_signals_stay_in_the_ranges_a_phone_reports() -> None:
    """The companion refuses a logged row outside these ranges, so the world never makes one
    (two weeks of gym sessions reach the step-rate ceiling: the test sees the tail)."""
    world = generate_world(WorldConfig(n_homes=4, days=14, group_size=2), seed=7)
    frames = np.concatenate([world.phone_data(p.person_id).frames for p in world.people])
    for signal, (low, high) in PHONE_SIGNAL_RANGES.items():
        values = frames[:, PHONE_FEATURES.index(signal)]
        assert values.min() >= low, signal
        assert values.max() <= high, signal
    steps = frames[:, PHONE_FEATURES.index(PhoneSignal.STEP_RATE)]
    assert steps.max() == PHONE_SIGNAL_RANGES[PhoneSignal.STEP_RATE][1]


# ----------------------------------------------------------------------------- config and splits


@pytest.mark.parametrize(
    "changes",
    [
        {"n_homes": 0},
        {"days": 0},
        {"non_iid": 1.5},
        {"label_noise": -0.1},
        {"residents_range": (3, 2)},
        {"rooms": ("bedroom", "garage")},
        {"shared_places": ("stadium",)},
        {"tz": "Nowhere/Special"},
        {"start": "2026-01-05T00:00:00"},
        {"start": "2026-01-05T00:01:00+00:00"},
        {"start": "yesterday"},
    ],
)
def test_bad_configs_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(WorldConfigError) as err:
        WorldConfig(**changes)  # type: ignore[arg-type]
    assert err.value.reason == "world_config"


def test_bad_seeds_are_refused() -> None:
    for seed in (-1, 1.5, True):
        with pytest.raises(WorldConfigError):
            generate_world(SMALL, seed)  # type: ignore[arg-type]


def test_a_fixed_layout_is_every_home_s_layout() -> None:
    layout = (RoomKind.BEDROOM, RoomKind.KITCHEN, RoomKind.LIVING_ROOM)
    world = generate_world(WorldConfig(n_homes=3, days=1, rooms=layout, non_iid=1.0), seed=9)
    for home in world.homes:
        assert tuple(r.kind for r in home.rooms) == layout
        assert not np.isnan(world.room_data(home.home_id, "bedroom").frames).any()


def test_time_split_trains_on_the_past_and_tests_on_the_future() -> None:
    times = 1_767_571_200.0 + 60.0 * np.arange(10 * 1440)
    train, test = time_split(times, train_days=7, test_days=3)
    assert (train.start, train.stop) == (0, 7 * 1440)
    assert (test.start, test.stop) == (7 * 1440, 10 * 1440)
    train, test = time_split(times, train_days=6, test_days=2, gap_days=1)
    assert times[test.start] - times[train.stop - 1] == pytest.approx(86400.0 + 60.0)
    with pytest.raises(WorldConfigError):
        time_split(times, train_days=8, test_days=3)
    with pytest.raises(WorldConfigError):
        time_split(times, train_days=0, test_days=3)
    assert math.isclose(times[train.stop] - times[0], 6 * 86400.0)
