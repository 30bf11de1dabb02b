"""How different the homes of a world are: Jensen-Shannon divergences between their label
priors and feature distributions (the non-IID-ness the `non_iid` knob controls)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import numpy.typing as npt
from mlmule_core.context import RoomKind
from mlmule_core.features import ACTIVITIES, ROOM_FEATURES, local_seconds

from .errors import WorldConfigError
from .generate import RoomData, World

FloatArray = npt.NDArray[np.float64]

DEFAULT_FEATURES = (
    "motion_count_15m",
    "co2_ppm",
    "temperature_c",
    "humidity_pct",
    "illuminance_log",
    "power_above_baseline_log",
)


def jensen_shannon(p: npt.ArrayLike, q: npt.ArrayLike) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two histograms."""
    a = np.asarray(p, dtype=np.float64)
    b = np.asarray(q, dtype=np.float64)
    if (
        a.shape != b.shape
        or a.ndim != 1
        or (a < 0).any()
        or (b < 0).any()
        or a.sum() <= 0
        or b.sum() <= 0
    ):
        raise WorldConfigError("jensen_shannon needs two non-negative histograms of one shape")
    a, b = a / a.sum(), b / b.sum()
    m = 0.5 * (a + b)

    def kl(x: FloatArray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return max(0.0, 0.5 * kl(a) + 0.5 * kl(b))


@dataclass(frozen=True)
class DivergenceReport:
    """Mean pairwise divergences between homes, and each home's mean divergence to the rest."""

    room_kind: str
    home_ids: tuple[str, ...]
    occupancy_rate: dict[str, float]
    occupancy_js: float  # on the joint (hour of day, occupied) distribution
    activity_js: float  # on the room's activity label prior
    feature_js: float  # mean over features of binned feature distributions (common bins)
    per_home: dict[str, dict[str, float]]

    def as_dict(self) -> dict[str, object]:
        return {
            "room_kind": self.room_kind,
            "occupancy_rate": self.occupancy_rate,
            "occupancy_js": self.occupancy_js,
            "activity_js": self.activity_js,
            "feature_js": self.feature_js,
            "per_home": self.per_home,
        }


def divergence_report(
    world: World,
    room_kind: RoomKind = RoomKind.LIVING_ROOM,
    features: Sequence[str] = DEFAULT_FEATURES,
    bins: int = 10,
) -> DivergenceReport:
    """Compare the first room of `room_kind` across the homes that have one."""
    columns = [ROOM_FEATURES.index(name) for name in features]
    rooms: list[RoomData] = []
    for home in world.homes:
        index = home.first_room(room_kind)
        if index >= 0:
            rooms.append(world.room_data(home.home_id, home.rooms[index].room_id))
    if len(rooms) < 2:
        raise WorldConfigError(f"fewer than two homes have a {room_kind}")
    hours = [
        (np.mod(local_seconds(room.times, world.homes[0].tz), 86400.0) // 3600).astype(np.int64)
        for room in rooms
    ]
    occupancy = [
        np.bincount(hour * 2 + room.occupancy, minlength=48).astype(np.float64)
        for room, hour in zip(rooms, hours, strict=True)
    ]
    activity = [
        np.bincount(room.activity.astype(np.int64), minlength=len(ACTIVITIES)).astype(np.float64)
        for room in rooms
    ]
    pooled = np.concatenate([room.frames[:, columns] for room in rooms]).astype(np.float64)
    edges = [
        np.unique(np.quantile(pooled[:, j], np.linspace(0, 1, bins + 1))[1:-1])
        for j in range(len(columns))
    ]
    histograms = [
        [
            np.bincount(
                np.searchsorted(edge, room.frames[:, col], side="right"), minlength=edge.size + 1
            ).astype(np.float64)
            for edge, col in zip(edges, columns, strict=True)
        ]
        for room in rooms
    ]

    ids = tuple(room.home_id for room in rooms)
    n = len(rooms)
    pair = {name: np.zeros((n, n)) for name in ("occupancy", "activity", "features")}
    for i, j in combinations(range(n), 2):
        values = {
            "occupancy": jensen_shannon(occupancy[i], occupancy[j]),
            "activity": jensen_shannon(activity[i], activity[j]),
            "features": float(
                np.mean(
                    [
                        jensen_shannon(a, b)
                        for a, b in zip(histograms[i], histograms[j], strict=True)
                    ]
                )
            ),
        }
        for name, value in values.items():
            pair[name][i, j] = pair[name][j, i] = value
    upper = np.triu_indices(n, 1)
    return DivergenceReport(
        room_kind=room_kind.value,
        home_ids=ids,
        occupancy_rate={room.home_id: float(room.occupancy.mean()) for room in rooms},
        occupancy_js=float(pair["occupancy"][upper].mean()),
        activity_js=float(pair["activity"][upper].mean()),
        feature_js=float(pair["features"][upper].mean()),
        per_home={
            ids[i]: {name: float(matrix[i].sum() / (n - 1)) for name, matrix in pair.items()}
            for i in range(n)
        },
    )
