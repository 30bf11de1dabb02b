"""The world's configuration, its vocabularies, and seeded random streams.

Every random draw comes from a generator keyed by `(seed, purpose, ids...)`, so home 3's data
is the same whether the world has 4 homes or 40, and adding draws for one purpose never shifts
another's.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import numpy as np
from mlmule_core.context import ROOMS, RoomKind
from mlmule_core.errors import FeatureInputError
from mlmule_core.features import resolve_timezone

from .errors import WorldConfigError

STEP_MINUTES = 5  # the residents' Markov chain steps
STEPS_PER_DAY = 24 * 60 // STEP_MINUTES
MINUTE = 60.0


class ScheduleType(StrEnum):
    """How a resident's days are shaped; the typical one is the 9-to-5 commuter."""

    COMMUTER = "commuter"
    EARLY_RISER = "early_riser"
    LATE_RISER = "late_riser"
    WORK_FROM_HOME = "work_from_home"
    SHIFT_WORKER = "shift_worker"


class PlaceKind(StrEnum):
    """Shared places outside the homes; a place named `office_north` is of kind `office`."""

    OFFICE = "office"
    GYM = "gym"
    CAFE = "cafe"
    SHOP = "shop"


ELSEWHERE = "elsewhere"  # away, somewhere no home or shared place tracks


@dataclass(frozen=True)
class WorldConfig:
    """What the world holds. Every knob the benchmark sweeps is here.

    `non_iid` scales how much households differ (0: every home has the typical household,
    layout and sensor kit, so homes differ only by chance; 1: sizes, schedules, volumes,
    ventilation and sensor sets vary widely). `visit_rate` is visits to other homes per person
    per week; homes form affinity groups of `group_size` (visits mostly stay inside a group,
    `cross_group_visits` is the relative weight of the neighbouring groups). `rooms` fixes every
    home's layout; None lets each household have its own (a bedroom per couple or single, an
    office for home workers). `sensor_dropout` is the fraction of time a sensor is unavailable;
    `label_noise` the fraction of time a label is wrong.
    """

    n_homes: int = 20
    days: int = 28
    start: str = "2026-01-05T00:00:00+00:00"
    non_iid: float = 0.5
    visit_rate: float = 1.0
    label_noise: float = 0.02
    sensor_dropout: float = 0.01
    residents_range: tuple[int, int] = (1, 4)
    rooms: tuple[RoomKind, ...] | None = None
    shared_places: tuple[str, ...] = ("office_centre", "office_park", "gym", "cafe", "shop")
    tz: str = "Europe/Berlin"
    latitude: float = 52.5
    longitude: float = 13.4
    group_size: int = 4
    cross_group_visits: float = 0.1

    def __post_init__(self) -> None:
        _require(isinstance(self.n_homes, int) and 1 <= self.n_homes <= 10_000, "n_homes")
        _require(isinstance(self.days, int) and 1 <= self.days <= 3660, "days")
        for name in ("non_iid", "label_noise"):
            value = getattr(self, name)
            _require(isinstance(value, int | float) and 0.0 <= value <= 1.0, name)
        _require(0.0 <= self.sensor_dropout <= 0.5, "sensor_dropout")
        _require(0.0 <= self.visit_rate <= 50.0, "visit_rate")
        low, high = self.residents_range
        _require(
            isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= 8,
            "residents_range",
        )
        if self.rooms is not None:
            _require(
                all(kind in ROOMS for kind in self.rooms), "rooms"
            )  # a world home has rooms only
            _require(0 < len(self.rooms) <= 16, "rooms")
            object.__setattr__(self, "rooms", tuple(RoomKind(kind) for kind in self.rooms))
        for place in self.shared_places:
            _require(
                place_kind(place) is not None and place != ELSEWHERE, f"shared place {place!r}"
            )
        _require(len(set(self.shared_places)) == len(self.shared_places), "shared_places")
        _require(-90.0 <= self.latitude <= 90.0 and -180.0 <= self.longitude <= 180.0, "location")
        _require(isinstance(self.group_size, int) and self.group_size >= 1, "group_size")
        _require(0.0 <= self.cross_group_visits <= 1.0, "cross_group_visits")
        try:
            resolve_timezone(self.tz)
        except FeatureInputError as err:
            raise WorldConfigError(str(err)) from err
        start = self.start_epoch
        _require(start % (STEP_MINUTES * MINUTE) == 0, "start (must sit on a 5-minute boundary)")

    @property
    def start_epoch(self) -> float:
        try:
            moment = datetime.fromisoformat(self.start)
        except ValueError as err:
            raise WorldConfigError(f"start is not an ISO 8601 time: {self.start!r}") from err
        if moment.tzinfo is None:
            raise WorldConfigError("start must carry a UTC offset")
        return moment.timestamp()

    @property
    def end_epoch(self) -> float:
        return self.start_epoch + self.days * 86400.0

    @property
    def n_minutes(self) -> int:
        return self.days * 1440

    @property
    def n_steps(self) -> int:
        return self.days * STEPS_PER_DAY


def place_kind(name: str) -> PlaceKind | None:
    """The kind of a shared place from its name's first word; None when it names no kind."""
    head = name.split("_", 1)[0]
    try:
        return PlaceKind(head)
    except ValueError:
        return None


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise WorldConfigError(f"world config: {what} is out of range")


def _key(part: int | str) -> int:
    if isinstance(part, int):
        if part < 0:
            raise WorldConfigError("random stream keys must be non-negative")
        return part
    return int.from_bytes(hashlib.sha256(part.encode("utf-8")).digest()[:8], "big")


def stream(seed: int, *keys: int | str) -> np.random.Generator:
    """An independent generator for one purpose, e.g. `stream(seed, "chain", home, resident)`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise WorldConfigError(f"seed must be a non-negative integer, got {seed!r}")
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=tuple(_key(k) for k in keys))
    return np.random.Generator(np.random.PCG64(sequence))


def lerp_trait(typical: float, spread: float, non_iid: float, rng: np.random.Generator) -> float:
    """A household trait: the typical value moved by `non_iid * spread` standard deviations."""
    return typical + non_iid * spread * float(np.clip(rng.standard_normal(), -2.5, 2.5))


def scale_trait(
    typical: float, log_spread: float, non_iid: float, rng: np.random.Generator
) -> float:
    """A positive trait: the typical value times a log-normal factor scaled by `non_iid`."""
    return typical * math.exp(
        non_iid * log_spread * float(np.clip(rng.standard_normal(), -2.5, 2.5))
    )


def maybe(typical: bool, chance: float, non_iid: float, rng: np.random.Generator) -> bool:
    """A yes/no trait: with probability `non_iid` drawn at `chance`, else the typical answer."""
    if rng.random() < non_iid:
        return bool(rng.random() < chance)
    return typical
