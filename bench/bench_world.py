"""Synthetic world benchmark: generation speed, and figures that show the world is realistic
and non-IID.

- A year of one home at one-minute frames (median of N fresh runs): trajectories, physics
  and sensor events, frame extraction, and the total; events generated per second; and, in
  the same process, two baselines: frame extraction with `np.searchsorted` instead of the
  extractor's O(n) grid search, and the HA path (render every event as a state string, parse
  it back, extract) that the integration's recorder history takes.
- A 20-home x 60-day world: wall time for all room frames, phone data and encounters.
- Non-IID: Jensen-Shannon divergences between homes (occupancy prior by hour, activity prior,
  binned features) per `non_iid` value, and the per-home table of the 20-home world.
- Realism: occupancy rate by room kind and local hour, CO2 when occupied vs empty, BLE room
  accuracy, activity shares, visits and encounters.

Run: `$(scripts/ensure-env.sh companion)/bin/python bench/bench_world.py [--repeats N]`.
Writes bench/results/world.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from mlmule_core import features
from mlmule_core.features import (
    ACTIVITIES,
    ROOM_FEATURES,
    Activity,
    extract_room_frames,
    local_seconds,
    series_from_states,
)
from mlmule_core.storage import atomic_write_text
from mlmule_world import RoomKind, World, WorldConfig, divergence_report, generate_world

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "world.json"
SEED = 2026
COLUMN = {name: i for i, name in enumerate(ROOM_FEATURES)}


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def year_of_one_home(repeats: int) -> dict[str, Any]:
    config = WorldConfig(n_homes=1, days=365)
    runs: dict[str, list[float]] = defaultdict(list)
    events = rooms = 0
    for _ in range(repeats):
        world = generate_world(config, SEED)
        home = world.homes[0]
        runs["trajectories_s"].append(timed(world.trajectories)[0])
        runs["physics_and_sensors_s"].append(timed(lambda w=world: w.entity_series("home_000"))[0])
        seconds, _ = timed(
            lambda w=world, h=home: [w.room_data(h.home_id, r.room_id) for r in h.rooms]
        )
        runs["frames_s"].append(seconds)
        events = sum(len(s) for s in world.entity_series(home.home_id).values())
        rooms = len(home.rooms)
    totals = [sum(parts) for parts in zip(*runs.values(), strict=True)]
    medians = {name: statistics.median(values) for name, values in runs.items()}
    generation = medians["trajectories_s"] + medians["physics_and_sensors_s"]
    return {
        "days": config.days,
        "rooms": rooms,
        "frames": rooms * config.n_minutes,
        "runs": repeats,
        **medians,
        "total_s": statistics.median(totals),
        "events": events,
        "events_per_second": events / generation,
        "simulated_seconds_per_wall_second": config.days * 86400 / statistics.median(totals),
    }


def extraction_baselines(repeats: int) -> dict[str, Any]:
    """The extractor's grid search vs binary search, and the direct vs the HA-string path."""
    world = generate_world(WorldConfig(n_homes=1, days=365), SEED)
    home = world.homes[0]
    roles = world.entity_roles(home.home_id)
    series = world.entity_series(home.home_id)
    by_room: dict[str, dict[features.SensorRole, list[features.ChangeSeries]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for entity_id, (room_id, role) in roles.items():
        by_room[room_id][role].append(series[entity_id])

    def extract_all() -> None:
        for inputs in by_room.values():
            extract_room_frames(inputs, world.start, world.end, 60, home.tz)

    grid = [timed(extract_all)[0] for _ in range(repeats)]
    original = features.Grid.search

    def binary_search(self: features.Grid, times: np.ndarray) -> np.ndarray:
        return np.searchsorted(times, self.values, side="left")

    features.Grid.search = binary_search  # type: ignore[method-assign]
    try:
        searchsorted = [timed(extract_all)[0] for _ in range(repeats)]
    finally:
        features.Grid.search = original  # type: ignore[method-assign]

    def through_strings() -> int:
        changes: dict[str, list[tuple[float, str]]] = defaultdict(list)
        for moment, entity_id, state in world.events(home.home_id):
            changes[entity_id].append((moment, state))
        for room in home.rooms:
            inputs: dict[features.SensorRole, list[features.ChangeSeries]] = defaultdict(list)
            for entity_id, (room_id, role) in roles.items():
                if room_id == room.room_id:
                    inputs[role].append(series_from_states(role, changes[entity_id]))
            extract_room_frames(inputs, world.start, world.end, 60, home.tz)
        return sum(len(c) for c in changes.values())

    ha_path, n_events = timed(through_strings)
    median_grid = statistics.median(grid)
    return {
        "extract_year_grid_search_s": median_grid,
        "extract_year_np_searchsorted_s": statistics.median(searchsorted),
        "searchsorted_over_grid": statistics.median(searchsorted) / median_grid,
        "ha_string_path_year_s": ha_path,
        "ha_string_path_over_direct": ha_path / median_grid,
        "ha_string_path_events_per_second": n_events / ha_path,
    }


def big_world() -> tuple[World, dict[str, Any]]:
    config = WorldConfig(n_homes=20, days=60)
    world = generate_world(config, SEED)
    figures: dict[str, Any] = {"homes": config.n_homes, "days": config.days}
    figures["trajectories_s"], _ = timed(world.trajectories)
    rooms = [(h.home_id, r.room_id) for h in world.homes for r in h.rooms]
    figures["room_frames_s"], _ = timed(lambda: [world.room_data(h, r) for h, r in rooms])
    figures["phone_data_s"], _ = timed(
        lambda: [world.phone_data(p.person_id) for p in world.people]
    )
    figures["encounters_s"], encounters = timed(world.encounters)
    figures["total_s"] = sum(v for k, v in figures.items() if k.endswith("_s"))
    figures["rooms"] = len(rooms)
    figures["people"] = len(world.people)
    figures["frames"] = len(rooms) * config.n_minutes
    guests = sum(e.home_id != world.person(e.person_id).home_id for e in encounters)
    figures["encounters"] = {
        "total": len(encounters),
        "per_phone_per_day": len(encounters) / len(world.people) / config.days,
        "as_guest": guests,
    }
    return world, figures


def realism(world: World) -> dict[str, Any]:
    hours = (np.mod(local_seconds(world.minute_times, world.config.tz), 86400) // 3600).astype(int)
    occupancy: dict[str, list[np.ndarray]] = defaultdict(list)
    co2: dict[str, list[float]] = {"occupied": [], "empty": []}
    for home in world.homes:
        for room in home.rooms:
            data = world.room_data(home.home_id, room.room_id)
            occupancy[room.kind.value].append(
                np.bincount(hours, weights=data.occupancy, minlength=24)
                / np.bincount(hours, minlength=24)
            )
            frames = data.frames
            known = frames[:, COLUMN["co2_available"]] == 1
            occupied = data.occupancy == 1
            if known.any():
                co2["occupied"].append(float(frames[known & occupied, COLUMN["co2_ppm"]].mean()))
                co2["empty"].append(float(frames[known & ~occupied, COLUMN["co2_ppm"]].mean()))
    trajectories = world.trajectories()
    shares = np.bincount(trajectories.activity.ravel(), minlength=len(ACTIVITIES))
    visiting = trajectories.activity == ACTIVITIES.index(Activity.VISITING)
    visit_starts = np.count_nonzero(visiting[:, 1:] & ~visiting[:, :-1])
    ble, seen = [], []
    for person in world.people:
        phone = world.phone_data(person.person_id)
        home = (phone.place >= 0) & (phone.room >= 0)
        ble.append(float(np.mean(phone.room[home] == phone.true_room[home])))
        seen.append(float(np.mean(phone.room[phone.place >= 0] >= 0)))
    return {
        "occupancy_by_kind_and_local_hour": {
            kind: np.round(np.mean(rates, axis=0), 3).tolist() for kind, rates in occupancy.items()
        },
        "co2_ppm_mean": {state: float(np.mean(values)) for state, values in co2.items()},
        "activity_share": {
            name: float(count / shares.sum())
            for name, count in zip(ACTIVITIES, shares, strict=True)
        },
        "visits_per_person_per_week": visit_starts / len(world.people) / (world.config.days / 7),
        "ble_room_accuracy": {"mean": float(np.mean(ble)), "min": float(np.min(ble))},
        "ble_room_seen_share": float(np.mean(seen)),
    }


def divergence_sweep() -> list[dict[str, Any]]:
    sweep = []
    for non_iid in (0.0, 0.25, 0.5, 0.75, 1.0):
        world = generate_world(WorldConfig(n_homes=12, days=14, non_iid=non_iid), SEED)
        row: dict[str, Any] = {"non_iid": non_iid}
        for kind in (RoomKind.LIVING_ROOM, RoomKind.KITCHEN, RoomKind.BEDROOM):
            report = divergence_report(world, kind)
            row[kind.value] = {
                "occupancy_js": report.occupancy_js,
                "activity_js": report.activity_js,
                "feature_js": report.feature_js,
            }
        sweep.append(row)
    return sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    year = year_of_one_home(args.repeats)
    print(
        f"one home, one year ({year['frames']:,} frames in {year['rooms']} rooms): "
        f"{year['total_s']:.2f} s median of {year['runs']} "
        f"(trajectories {year['trajectories_s']:.2f} s, physics+sensors "
        f"{year['physics_and_sensors_s']:.2f} s, frames {year['frames_s']:.2f} s); "
        f"{year['events']:,} events, {year['events_per_second']:,.0f} events/s generated"
    )
    baselines = extraction_baselines(args.repeats)
    print(
        f"extracting a year: grid search {baselines['extract_year_grid_search_s']:.2f} s, "
        f"np.searchsorted {baselines['extract_year_np_searchsorted_s']:.2f} s "
        f"(x{baselines['searchsorted_over_grid']:.2f}); via HA state strings "
        f"{baselines['ha_string_path_year_s']:.2f} s "
        f"(x{baselines['ha_string_path_over_direct']:.1f})"
    )
    world, big = big_world()
    print(
        f"{big['homes']} homes x {big['days']} days: {big['total_s']:.1f} s for "
        f"{big['frames']:,} room frames, {big['people']} phones, "
        f"{big['encounters']['total']:,} encounters ({big['encounters']['as_guest']:,} as guest)"
    )
    report = divergence_report(world)
    print(
        f"non-IID at 0.5 (living rooms): occupancy JS {report.occupancy_js:.3f}, "
        f"activity JS {report.activity_js:.3f}, feature JS {report.feature_js:.3f}"
    )
    sweep = divergence_sweep()
    for row in sweep:
        living = row["living_room"]
        print(
            f"  non_iid {row['non_iid']:.2f}: occupancy JS {living['occupancy_js']:.3f}, "
            f"activity JS {living['activity_js']:.3f}, feature JS {living['feature_js']:.3f}"
        )
    figures = realism(world)
    print(
        f"CO2 {figures['co2_ppm_mean']['occupied']:.0f} ppm occupied vs "
        f"{figures['co2_ppm_mean']['empty']:.0f} empty; BLE room accuracy "
        f"{figures['ble_room_accuracy']['mean']:.3f}; "
        f"{figures['visits_per_person_per_week']:.2f} visits per person per week"
    )
    document = {
        "benchmark": "world",
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.processor() or platform.machine(),
        },
        "seed": SEED,
        "year_of_one_home": year,
        "extraction_baselines": baselines,
        "world_20x60": big,
        "divergence_20x60": report.as_dict(),
        "divergence_sweep_12x14": sweep,
        "realism_20x60": figures,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(document, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
