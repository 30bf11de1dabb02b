"""The data of each task, cut into units: what one learner trains on and is scored on.

A *unit* is one context key at one learner, with its time-ordered training samples (observed,
noisy labels: what HA or the phone would have) and its held-out future (ground truth):

- occupancy (fixed-data mode): a room of a home; the room's space is the learner;
- phone_activity (mobile-data mode): a phone in one kind of room; the phone is the learner;
- digits (fixed-data mode): scikit-learn's 8x8 digits, Dirichlet label-skewed over the homes,
  each home a space that learns; the world's phones carry models between the homes they enter.
  Each sample arrives at its home at its own time in the learning period, and the home keeps it;
- paper (fixed-data mode): the paper's conditions on digits: each affinity group of homes sees
  a context-specific subset of the digits (neighbouring groups overlap), every home enough of
  them to learn alone, arriving over the learning period like digits.

Frames come from the world through the same extractor the integration uses
(`mlmule_models.recipes`), windowed and subsampled as the starter recipe says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from mlmule_core import families
from mlmule_core.families import ACTIVITY_MLP, FamilySpec
from mlmule_core.features import FeatureSchema, window_frames
from mlmule_core.starter import load_starter
from mlmule_core.weights import Weights
from mlmule_models.recipes import TASK_RECIPES, sample_rows, space_data, windowed
from mlmule_world import World, WorldConfig, generate_world
from mlmule_world.config import stream

from .config import DAY, FIXED_DATA_TASKS, BenchConfig
from .real_data import (
    HAPT_KEY,
    HAPT_KIND,
    hapt_initial,
    hapt_schema,
    hapt_spec,
    load_hapt,
    on_clock,
)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
TimeArray = npt.NDArray[np.float64]

# Normalisation statistics come from a small world of their own, like a starter model's: no
# method sees them as data, and every method gets the same ones.
NORMALISATION_WORLD = WorldConfig(n_homes=6, days=7, non_iid=0.8)
NORMALISATION_SEED = 9001
DIGITS_KIND = "digits"
DIGITS_KEY = f"activity/{DIGITS_KIND}"  # the activity family serves any class labels
PAPER_KIND = "paper"
PAPER_KEY = f"activity/{PAPER_KIND}"
HOME_SPACE = "home"  # the space id of a whole-home space (digits, paper)
RELAY_SPACE = "relay"  # the space id of a shared place's relay space


@dataclass(frozen=True)
class Unit:
    """One context key at one learner: training samples by time, and the held-out future."""

    unit_id: str
    context_key: str
    learner: str  # the space (fixed-data mode) or phone (mobile-data mode) that trains it
    home: str  # the learner's home
    times: TimeArray  # when each training sample was sensed (or arrived), ascending
    x: FloatArray
    y: IntArray  # observed labels
    y_true: IntArray  # the training samples' ground truth (for the next-day regression check)
    x_test: FloatArray
    y_test: IntArray  # ground truth
    kept: bool = False  # a data set the home keeps (digits, paper): never out of the window

    def window(self, now: float, history: float) -> tuple[FloatArray, IntArray, float]:
        """The samples sensed in `[now - history, now)` (kept: everything before `now`), and
        the time of the newest one."""
        lo, hi = np.searchsorted(self.times, [now - history, now], side="left")
        if self.kept:
            lo = 0
        newest = float(self.times[hi - 1]) if hi > lo else 0.0
        return self.x[lo:hi], self.y[lo:hi], newest

    def samples_before(self, now: float) -> int:
        return int(np.searchsorted(self.times, now, side="left"))

    def next_day(self, now: float) -> tuple[FloatArray, IntArray]:
        """The ground truth of what arrives in `[now, now + 1 day)`: what a model served now
        is judged on."""
        lo, hi = np.searchsorted(self.times, [now, now + DAY], side="left")
        return self.x[lo:hi], self.y_true[lo:hi]


@dataclass(frozen=True)
class Architecture:
    """The one architecture of a context key, and the start every method shares."""

    spec: FamilySpec
    schema: FeatureSchema
    initial: Weights

    def personal(self) -> Architecture:
        """The same model with its head kept local (FedPer): what is merged changes, not what
        is computed, so it has the same architecture hash."""
        spec = FamilySpec(
            family=self.spec.family,
            task=self.spec.task,
            n_inputs=self.spec.n_inputs,
            hidden=self.spec.hidden,
            n_classes=self.spec.n_classes,
            labels=self.spec.labels,
            personal_head=True,
        )
        return Architecture(spec, self.schema, self.initial)


@dataclass(frozen=True)
class SpaceSite:
    """A space where phones exchange models: a room (or a whole home for digits)."""

    home: str
    space: str  # space id within the home
    context_key: str


@dataclass(frozen=True)
class TaskData:
    task: str
    mode: str  # "fixed" or "mobile"
    units: tuple[Unit, ...]
    sites: tuple[SpaceSite, ...]
    architectures: dict[str, Architecture]  # by context key
    kind_of_room: dict[tuple[str, str], str]  # (home, room) -> context kind, spaces only

    @property
    def context_keys(self) -> list[str]:
        return sorted(self.architectures)

    def relay_keys(self) -> list[str]:
        """The keys a relay space relays: every key of the task."""
        return self.context_keys

    def units_of(self, learner: str) -> list[Unit]:
        return [unit for unit in self.units if unit.learner == learner]

    @property
    def learners(self) -> list[str]:
        return sorted({unit.learner for unit in self.units})


def build_world(config: BenchConfig, seed: int) -> World:
    return generate_world(
        WorldConfig(
            n_homes=config.homes,
            days=config.days,
            non_iid=config.non_iid,
            visit_rate=config.visit_rate,
            group_size=config.group_size,
        ),
        seed,
    )


def build_task(config: BenchConfig, world: World, task: str, seed: int) -> TaskData:
    if task == "occupancy":
        return _occupancy(config, world, seed)
    if task == "phone_activity":
        return _phone_activity(config, world, seed)
    if task == "paper":
        return _paper(config, world, seed)
    if task == "hapt":
        return _hapt(config, world, seed)
    return _digits(config, world, seed)


def held_out_start(config: BenchConfig, world: World) -> float:
    return world.start + config.learn_seconds


def _room_kinds(config: BenchConfig, world: World) -> dict[tuple[str, str], str]:
    return {
        (home.home_id, room.room_id): room.kind.value
        for home in world.homes
        for room in home.rooms
        if room.kind.value in config.room_kinds
    }


def _kind_table(world: World, kinds: dict[tuple[str, str], str]) -> npt.NDArray[np.str_]:
    """`[home index, room index]` -> the room's kind if it is a space, else ""."""
    width = max(len(home.rooms) for home in world.homes)
    table = np.full((len(world.homes), width), "", dtype="<U32")
    for home in world.homes:
        for index, room in enumerate(home.rooms):
            table[home.index, index] = kinds.get((home.home_id, room.room_id), "")
    return table


def _occupancy(config: BenchConfig, world: World, seed: int) -> TaskData:
    recipe = TASK_RECIPES["occupancy"]
    cut = held_out_start(config, world)
    units: list[Unit] = []
    for kind in config.room_kinds:
        for space in space_data(world, "occupancy", kind):
            rows = sample_rows(space.truth.size, recipe.window, config.sample_minutes)
            x = windowed(space, recipe.window, rows)
            home, room = space.space_id.split("/")
            units.append(
                _split_unit(
                    f"{home}/{room}",
                    f"occupancy/{kind}",
                    learner=f"{home}/{room}",
                    home=home,
                    times=space.times[rows],
                    x=x,
                    observed=space.observed[rows],
                    truth=space.truth[rows],
                    cut=cut,
                )
            )
    kinds = _room_kinds(config, world)
    sites = tuple(
        SpaceSite(home, room, f"occupancy/{kind}") for (home, room), kind in sorted(kinds.items())
    )
    keys = sorted({unit.context_key for unit in units})
    architectures = {key: _world_architecture("occupancy", key, seed) for key in keys}
    return TaskData("occupancy", "fixed", _usable(units, config), sites, architectures, kinds)


def _phone_activity(config: BenchConfig, world: World, seed: int) -> TaskData:
    recipe = TASK_RECIPES["phone_activity"]
    cut = held_out_start(config, world)
    kinds = _room_kinds(config, world)
    table = _kind_table(world, kinds)
    units: list[Unit] = []
    for person in world.people:
        phone = world.phone_data(person.person_id)
        # the kind of room the phone reports each minute ("" outside the spaces)
        in_home = (phone.place >= 0) & (phone.room >= 0)
        kind_of = np.where(
            in_home, table[np.maximum(phone.place, 0), np.maximum(phone.room, 0)], ""
        )
        rows = sample_rows(phone.times.size, recipe.window, config.sample_minutes)
        inputs = window_frames(phone.frames, recipe.window)[rows]
        for kind in config.room_kinds:
            chosen = kind_of[rows] == kind
            units.append(
                _split_unit(
                    f"{person.phone_id}/{kind}",
                    f"phone_activity/{kind}",
                    learner=person.phone_id,
                    home=person.home_id,
                    times=phone.times[rows][chosen],
                    x=inputs[chosen],
                    observed=phone.activity_label[rows][chosen],
                    truth=phone.activity[rows][chosen],
                    cut=cut,
                )
            )
    sites = tuple(
        SpaceSite(home, room, f"phone_activity/{kind}")
        for (home, room), kind in sorted(kinds.items())
    )
    usable = _usable(units, config)
    keys = sorted({unit.context_key for unit in usable})
    architectures = {key: _world_architecture("phone_activity", key, seed) for key in keys}
    return TaskData("phone_activity", "mobile", usable, sites, architectures, kinds)


def _digits(config: BenchConfig, world: World, seed: int) -> TaskData:
    """Digits over the homes with a Dirichlet(alpha) label skew, arriving over the months."""
    features, labels = _digits_data()
    rng = stream(seed, "digits-partition")
    owner = dirichlet_partition(labels, len(world.homes), config.digits_alpha, rng)
    return _dataset_task(
        config,
        world,
        seed,
        "digits",
        context_key=DIGITS_KEY,
        features=features,
        labels=labels,
        owner=owner,
        rng=rng,
    )


def _paper(config: BenchConfig, world: World, seed: int) -> TaskData:
    """The paper's conditions: group g of homes sees digits `2g, ..., 2g + paper_classes - 1`
    (mod 10), so neighbouring groups share some; each digit's samples are dealt evenly over
    the homes that see it."""
    features, labels = _digits_data()
    rng = stream(seed, "paper-partition")
    seen = {
        home.index: {(2 * home.group + j) % 10 for j in range(config.paper_classes)}
        for home in world.homes
    }
    owner = np.full(labels.size, -1, dtype=np.int64)
    for label in range(10):
        homes = np.asarray([index for index, digits in seen.items() if label in digits])
        members = rng.permutation(np.flatnonzero(labels == label))
        if homes.size:
            owner[members] = homes[np.arange(members.size) % homes.size]
    return _dataset_task(
        config,
        world,
        seed,
        "paper",
        context_key=PAPER_KEY,
        features=features,
        labels=labels,
        owner=owner,
        rng=rng,
    )


def _hapt(config: BenchConfig, world: World, seed: int) -> TaskData:
    """Real phones: UCI HAPT's volunteers, one per world person in person order (as many as
    both have), each a mobile-data learner whose phone meets its home's whole-home space. A
    volunteer's first protocol run arrives over the learning period, the second is the held-out
    future; the labels are the video annotations, so observed and true labels are the same."""
    cut = held_out_start(config, world)
    end = world.start + config.days * DAY
    units = [
        _split_unit(
            f"{person.phone_id}/{HAPT_KIND}",
            HAPT_KEY,
            learner=person.phone_id,
            home=person.home_id,
            times=on_clock(samples, world.start, cut, end),
            x=samples.x,
            observed=samples.y,
            truth=samples.y,
            cut=cut,
        )
        for person, samples in zip(world.people, load_hapt().learners, strict=False)
    ]
    homes = [home.home_id for home in world.homes]
    hidden = config.digits_hidden
    architecture = Architecture(
        hapt_spec(hidden), hapt_schema(), hapt_initial(hidden, stream(seed, "init", HAPT_KEY))
    )
    return TaskData(
        "hapt",
        "mobile",
        _usable(units, config),
        tuple(SpaceSite(home, HOME_SPACE, HAPT_KEY) for home in homes),
        {HAPT_KEY: architecture},
        {(home, HOME_SPACE): HAPT_KIND for home in homes},
    )


@cache
def _digits_data() -> tuple[FloatArray, IntArray]:
    from sklearn.datasets import load_digits  # noqa: PLC0415 - only the digits tasks need it

    bunch = load_digits()
    return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)


def _dataset_task(
    config: BenchConfig,
    world: World,
    seed: int,
    task: str,
    *,
    context_key: str,
    features: FloatArray,
    labels: IntArray,
    owner: IntArray,
    rng: np.random.Generator,
) -> TaskData:
    """A data set dealt out to the homes (`owner`: a home index per sample, -1 nobody's).

    Each home holds out `digits_test_fraction` of its samples as its future; the rest arrive
    one by one at uniformly random times in the learning period (a sample's time is its data
    time), and the home keeps them all.
    """
    homes = [home.home_id for home in world.homes]
    learn_end = held_out_start(config, world)
    units: list[Unit] = []
    for index, home in enumerate(homes):
        rows = rng.permutation(np.flatnonzero(owner == index))
        n_test = round(rows.size * config.digits_test_fraction)
        test, train = np.sort(rows[:n_test]), rows[n_test:]
        arrivals = np.sort(rng.uniform(world.start, learn_end, size=train.size))
        units.append(
            Unit(
                unit_id=f"{home}/{HOME_SPACE}",
                context_key=context_key,
                learner=f"{home}/{HOME_SPACE}",
                home=home,
                times=arrivals.astype(np.float64),
                x=features[train],
                y=labels[train],
                y_true=labels[train],
                x_test=features[test],
                y_test=labels[test],
                kept=True,
            )
        )
    classes = tuple(str(digit) for digit in range(10))
    spec = FamilySpec(
        family=ACTIVITY_MLP,
        task="activity",
        n_inputs=features.shape[1],
        hidden=config.digits_hidden,
        n_classes=len(classes),
        labels=classes,
    )
    # Pixels are 0..16: a fixed scale to [-1, 1], fitted on nothing.
    schema = FeatureSchema(
        "digits-8x8",
        tuple(f"pixel_{i}" for i in range(features.shape[1])),
        (8.0,) * features.shape[1],
        (8.0,) * features.shape[1],
    )
    initial = families.init_weights(spec, stream(seed, "init", context_key), schema)
    sites = tuple(SpaceSite(home, HOME_SPACE, context_key) for home in homes)
    kind = context_key.split("/", 1)[1]
    kinds = {(home, HOME_SPACE): kind for home in homes}
    usable = tuple(unit for unit in units if unit.y.size and unit.y_test.size)
    architecture = {context_key: Architecture(spec, schema, initial)}
    return TaskData(task, "fixed", usable, sites, architecture, kinds)


def dirichlet_partition(
    labels: IntArray, parts: int, alpha: float, rng: np.random.Generator
) -> IntArray:
    """The part each sample goes to: each class is split over the parts by Dirichlet(alpha)
    proportions (Hsu et al. 2019), so a small alpha gives each part a few dominant classes."""
    owner = np.empty(labels.size, dtype=np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(parts, alpha))
        bounds = np.round(np.cumsum(shares)[:-1] * members.size).astype(np.int64)
        for part, chunk in enumerate(np.split(members, bounds)):
            owner[chunk] = part
    return owner


def _split_unit(
    unit_id: str,
    context_key: str,
    *,
    learner: str,
    home: str,
    times: TimeArray,
    x: FloatArray,
    observed: npt.ArrayLike,
    truth: npt.ArrayLike,
    cut: float,
) -> Unit:
    """Train on what was sensed before `cut` (observed labels), test after it (ground truth)."""
    before = times < cut
    return Unit(
        unit_id=unit_id,
        context_key=context_key,
        learner=learner,
        home=home,
        times=np.ascontiguousarray(times[before], dtype=np.float64),
        x=np.ascontiguousarray(x[before], dtype=np.float32),
        y=np.asarray(observed, dtype=np.int64)[before],
        y_true=np.asarray(truth, dtype=np.int64)[before],
        x_test=np.ascontiguousarray(x[~before], dtype=np.float32),
        y_test=np.asarray(truth, dtype=np.int64)[~before],
    )


def _usable(units: Sequence[Unit], config: BenchConfig) -> tuple[Unit, ...]:
    """Units with enough to learn from and to be scored on."""
    floor = config.budget.min_samples
    return tuple(unit for unit in units if unit.y.size >= floor and unit.y_test.size >= floor)


def _world_architecture(task: str, context_key: str, seed: int) -> Architecture:
    """The starter recipe's architecture; normalisation from the normalisation world."""
    recipe = TASK_RECIPES[task]
    schema = _normalised_schema(task)
    spec = recipe.spec(schema)
    initial = families.init_weights(spec, stream(seed, "init", context_key), schema)
    return Architecture(spec, schema, initial)


def starter_architecture(context_key: str) -> Architecture:
    """The shipped starter model of `context_key` as everyone's start (`--init starter`)."""
    starter = load_starter(context_key)
    return Architecture(starter.spec, starter.schema, starter.weights)


@cache
def _normalised_schema(task: str) -> FeatureSchema:
    recipe = TASK_RECIPES[task]
    world = generate_world(NORMALISATION_WORLD, NORMALISATION_SEED)
    if task == "phone_activity":
        frames = [world.phone_data(person.person_id).frames for person in world.people]
    else:
        frames = [
            world.room_data(home.home_id, room.room_id).frames
            for home in world.homes
            for room in home.rooms
        ]
    return recipe.schema().with_normalisation(np.concatenate(frames))


def is_fixed(task: str) -> bool:
    return task in FIXED_DATA_TASKS
