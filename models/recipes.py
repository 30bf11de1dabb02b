"""The training recipe of the starter models, and the data it draws from the synthetic world.

Everything that decides a starter model is here: the worlds (training homes, held-out homes),
the context keys, the architecture and feature window per task, the sampling and the training
settings. `mlmule_models.starter` turns it into files; `bench/bench_learning_baseline.py` uses the
same data access for its local-training comparison. Nothing here needs torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from mlmule_core.context import ROOMS
from mlmule_core.families import (
    DEFAULT_MODEL_SIZE,
    MODEL_SIZES,
    FamilySpec,
    ModelSize,
    preset_spec,
)
from mlmule_core.features import (
    ACTIVITIES,
    ChangeSeries,
    FeatureSchema,
    SensorRole,
    extract_room_frames,
    phone_schema,
    room_schema,
    window_frames,
)
from mlmule_core.train_numpy import TrainConfig
from mlmule_world import World, WorldConfig, generate_world

RECIPE_VERSION = 1
HOME_KIND = "home"  # a whole-home space
ROOM_KINDS: tuple[str, ...] = tuple(kind.value for kind in ROOMS)
OCCUPANCY_LABELS = ("vacant", "occupied")


@dataclass(frozen=True)
class WorldRecipe:
    config: WorldConfig
    seed: int

    def build(self) -> World:
        return generate_world(self.config, self.seed)


# A broad training world (households vary more than in the default world) and held-out homes
# from another seed: the model cards report metrics on homes the starters never saw.
TRAIN_WORLD = WorldRecipe(WorldConfig(n_homes=24, days=14, non_iid=0.8), seed=7001)
HELD_OUT_WORLD = WorldRecipe(WorldConfig(n_homes=10, days=7), seed=7002)


@dataclass(frozen=True)
class TaskRecipe:
    """How one task's starters are built.

    The architecture is the model size's preset (`families.FAMILY_PRESETS`). `window` lists the
    lags (in minutes) stacked into one input; `subsample` keeps every n-th minute, since
    neighbouring minutes are nearly identical and cost time, not information.
    """

    task: str
    window: tuple[int, ...]
    subsample: int
    train: TrainConfig

    def schema(self) -> FeatureSchema:
        """The schema before normalisation (identity mean and std)."""
        if self.task == "phone_activity":
            return phone_schema(window=self.window)
        return room_schema(window=self.window)

    def spec(self, schema: FeatureSchema, model_size: ModelSize = DEFAULT_MODEL_SIZE) -> FamilySpec:
        labels = OCCUPANCY_LABELS if self.task == "occupancy" else ACTIVITIES
        return preset_spec(model_size, self.task, schema, labels)


_STARTER_TRAINING = TrainConfig(
    learning_rate=3e-3, batch_size=256, max_epochs=15, patience=3, val_fraction=0.2, seed=0
)
TASK_RECIPES: dict[str, TaskRecipe] = {
    "occupancy": TaskRecipe("occupancy", (0, 5, 15), 6, _STARTER_TRAINING),
    "activity": TaskRecipe("activity", (0, 5, 15, 30), 6, _STARTER_TRAINING),
    "phone_activity": TaskRecipe("phone_activity", (0, 1, 2, 5, 10), 10, _STARTER_TRAINING),
}


@dataclass(frozen=True)
class Starter:
    """One starter model and the context keys it serves."""

    name: str  # file stem
    task: str
    kind: str | None  # None: trained on every kind (the phone model)
    context_keys: tuple[str, ...]
    model_size: ModelSize = DEFAULT_MODEL_SIZE

    @property
    def recipe(self) -> TaskRecipe:
        return TASK_RECIPES[self.task]


def starters() -> tuple[Starter, ...]:
    """Every starter the recipe builds.

    Occupancy: one per room kind and one for a whole home. Activity: one per room kind; a
    whole-home activity label is ill-defined with several residents, so `activity/home` has
    none. Phone activity: one model shared by every kind, because its inputs are the phone's own
    motion, which does not depend on the room, and each kind's snapshot then specialises through
    in-house training; seven copies of one model would only make the integration bigger.
    Every model size has this set; the default size's files keep their names, the others'
    have the size as a suffix (`activity-kitchen-large`).
    """
    return tuple(
        replace(starter, name=f"{starter.name}-{size}", model_size=size)
        if size != DEFAULT_MODEL_SIZE
        else starter
        for size in MODEL_SIZES
        for starter in _default_size_starters()
    )


def _default_size_starters() -> list[Starter]:
    found = [
        Starter(f"occupancy-{kind}", "occupancy", kind, (f"occupancy/{kind}",))
        for kind in (*ROOM_KINDS, HOME_KIND)
    ]
    found += [
        Starter(f"activity-{kind}", "activity", kind, (f"activity/{kind}",)) for kind in ROOM_KINDS
    ]
    phone_keys = tuple(f"phone_activity/{kind}" for kind in (*ROOM_KINDS, HOME_KIND))
    found.append(Starter("phone-activity", "phone_activity", None, phone_keys))
    return found


# --- data from the world ----------------------------------------------------------------------

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SpaceData:
    """One space's (or one phone's) minutes: unnormalised base frames and two label vectors.

    `truth` is the world's ground truth; `observed` is what an HA space or a phone would have as
    labels (BLE presence, a user's activity labels), with their noise.
    """

    space_id: str
    times: npt.NDArray[np.float64]
    frames: npt.NDArray[np.float32]
    truth: IntArray
    observed: IntArray


def space_data(world: World, task: str, kind: str | None) -> Iterator[SpaceData]:
    """Every space of `kind` in the world for `task` (for the phone task: every phone)."""
    if task == "phone_activity":
        for person in world.people:
            phone = world.phone_data(person.person_id)
            yield SpaceData(
                person.person_id,
                phone.times,
                phone.frames,
                phone.activity.astype(np.int64),
                phone.activity_label.astype(np.int64),
            )
        return
    for home in world.homes:
        if kind == HOME_KIND:
            yield _whole_home(world, home.home_id)
            continue
        for room in home.rooms:
            if room.kind.value != kind:
                continue
            data = world.room_data(home.home_id, room.room_id)
            truth, observed = (
                (data.occupancy, data.occupancy_label)
                if task == "occupancy"
                else (data.activity, data.activity_label)
            )
            yield SpaceData(
                f"{home.home_id}/{room.room_id}",
                data.times,
                data.frames,
                truth.astype(np.int64),
                observed.astype(np.int64),
            )


def _whole_home(world: World, home_id: str) -> SpaceData:
    """A whole-home space: every entity of the home as its inputs, "anyone home" as the label."""
    home = world.home(home_id)
    series = world.entity_series(home_id)
    inputs: dict[SensorRole, list[ChangeSeries]] = {}
    for entity_id, (_, role) in world.entity_roles(home_id).items():
        inputs.setdefault(role, []).append(series[entity_id])
    frames = extract_room_frames(inputs, world.start, world.end, 60, home.tz)
    rooms = [world.room_data(home_id, room.room_id) for room in home.rooms]
    truth = np.any([room.occupancy > 0 for room in rooms], axis=0)
    observed = np.any([room.occupancy_label > 0 for room in rooms], axis=0)
    return SpaceData(
        f"{home_id}/{HOME_KIND}",
        rooms[0].times,
        frames,
        truth.astype(np.int64),
        observed.astype(np.int64),
    )


def sample_rows(n_minutes: int, window: Sequence[int], subsample: int) -> IntArray:
    """The minutes used as samples: every `subsample`-th, once the longest lag has history."""
    return np.arange(max(window), n_minutes, subsample, dtype=np.int64)


def windowed(data: SpaceData, window: Sequence[int], rows: IntArray) -> npt.NDArray[np.float32]:
    """Model inputs (unnormalised; the model normalises) for the chosen minutes."""
    return window_frames(data.frames, window)[rows]
