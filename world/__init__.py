"""The seeded synthetic world: homes, residents, sensors and phones, as data to learn from.

`generate_world(WorldConfig(...), seed)` is a pure function of its arguments. Its homes emit
HA-like state changes per entity, and the frames models train on come from running the core's
one feature extractor (`mlmule_core.features`) on those changes, exactly as the integration does
on HA's recorder history.

The benchmark, the demo, the tests and the model zoo use the world; the integration does not,
so it lives outside the HACS folder (this folder is the package `mlmule_world`).
"""

from __future__ import annotations

from mlmule_core.context import RoomKind

from .config import ELSEWHERE, PlaceKind, ScheduleType, WorldConfig
from .errors import WorldConfigError
from .generate import (
    Encounter,
    HomePhysics,
    PhoneData,
    RoomData,
    Trajectories,
    World,
    generate_world,
    time_split,
)
from .homes import HomeSpec, Household, PersonSpec, RoomSpec, SensorSpec
from .stats import divergence_report, jensen_shannon

__all__ = [
    "ELSEWHERE",
    "Encounter",
    "HomePhysics",
    "HomeSpec",
    "Household",
    "PersonSpec",
    "PhoneData",
    "PlaceKind",
    "RoomData",
    "RoomKind",
    "RoomSpec",
    "ScheduleType",
    "SensorSpec",
    "Trajectories",
    "World",
    "WorldConfig",
    "WorldConfigError",
    "divergence_report",
    "generate_world",
    "jensen_shannon",
    "time_split",
]
