"""Realistic data for end-to-end runs: a simulated phone's log, and a simulated room's history.

Both come from the seeded world (`mlmule_world`), moved forward by whole weeks so that the
data ends just before now (the companion refuses future times and trains on recent minutes; whole
weeks keep the time of day and the weekday of every sample).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from mlmule_core.features import (
    ACTIVITIES,
    PHONE_FEATURES,
    FeatureSchema,
    PhoneSignal,
    window_frames,
)
from mlmule_world import World, WorldConfig, generate_world

WEEK = 7 * 86_400.0
SIGNALS = tuple(signal.value for signal in PhoneSignal)


def recent_world(days: int = 2, seed: int = 11) -> tuple[World, float]:
    """A one-home world, and the shift that makes it end within the last week."""
    world = generate_world(WorldConfig(n_homes=1, days=days, visit_rate=0.0), seed)
    shift = math.floor((time.time() - 3600.0 - world.end) / WEEK) * WEEK
    return world, shift


def write_phone_log(
    path: Path,
    world: World,
    shift: float,
    *,
    home_id: str,
    spaces: Mapping[str, str],
    person: int = 0,
) -> int:
    """The phone's minutes as `log-data` CSV: signals, place and the owner's labels.

    `spaces` maps the world's room ids to the space ids the home gives them; minutes in other
    rooms keep the room id. Returns the number of rows.
    """
    phone = world.phone_data(world.people[person].person_id)
    home = world.homes[0]
    available = phone.frames[:, PHONE_FEATURES.index("phone_available")] > 0.5
    columns = [PHONE_FEATURES.index(name) for name in SIGNALS]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "home", "room", *SIGNALS, "activity"])
        for minute, start in enumerate(phone.times):
            at_home = phone.place[minute] == home.index
            room = (
                home.rooms[phone.room[minute]].room_id
                if at_home and phone.room[minute] >= 0
                else ""
            )
            values = (
                [f"{phone.frames[minute, c]:.6g}" for c in columns]
                if available[minute]
                else [""] * len(columns)
            )
            writer.writerow(
                [
                    f"{start + shift:.0f}",
                    home_id if at_home else "",
                    spaces.get(room, room),
                    *values,
                    ACTIVITIES[phone.activity_label[minute]],
                ]
            )
    return len(phone.times)


def room_training_data(
    world: World, room_id: str, schema: FeatureSchema, *, every: int = 5
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """A room's occupancy training set as its space has it: windowed frames, noisy labels."""
    data = world.room_data(world.homes[0].home_id, room_id)
    rows = np.arange(max(schema.window), data.times.size, every)
    x = window_frames(data.frames, schema.window)[rows]
    return x, data.occupancy_label[rows].astype(np.int64)
