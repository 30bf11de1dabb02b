"""What a space does with its entities' histories, independent of Home Assistant.

A space has feature inputs (entities in roles), occupancy label sources (room-presence sensors,
persons, or an occupancy sensor) and optionally an activity label source. Given the state
changes of those entities (as HA's recorder or live states give them), this module builds:

- the training set of a task: feature frames with the label each frame had, unlabelled frames
  dropped;
- the feature row of "now" for a prediction;
- whether a hold-only input is active (the binary sensor may stay on, but not turn on, for it);
- which inputs drove a prediction (occlusion by role).

Everything goes through `features.extract_room_frames`, the extractor the world and the
benchmark use, so a model sees the same numbers in training, in simulation and in production.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .errors import MlmuleError
from .features import (
    ACTIVITIES,
    ROOM_FEATURES,
    ChangeSeries,
    FeatureSchema,
    SensorRole,
    extract_room_frames,
    parse_state,
    series_from_states,
    window_frames,
)

StateChanges = Mapping[str, Sequence[tuple[float, str]]]
Float32Array = npt.NDArray[np.float32]

# History a frame's look-back features need before its own time (counts over 60 min, the power
# baseline over 24 h); a live prediction reads this much history.
LOOKBACK_SECONDS = 24 * 3600.0
PRESENT_STATES = frozenset({"on", "home", "true", "detected", "occupied", "present"})
UNKNOWN_STATES = frozenset({"", "unknown", "unavailable", "none", "null"})
HOLD_POWER_WATTS = 10.0


class SpaceConfigError(MlmuleError):
    reason = "space_config"


@dataclass(frozen=True)
class SpaceInputs:
    """The entities a space reads and what each one is."""

    roles: Mapping[str, SensorRole]  # feature input entity -> role
    occupancy_labels: tuple[str, ...] = ()
    occupancy_label_state: str | None = None  # the room name room-presence sensors report
    activity_label: str | None = None
    hold_only: frozenset[str] = field(default_factory=frozenset)
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if not self.roles:
            raise SpaceConfigError("a space needs at least one feature input")
        if not self.hold_only <= set(self.roles):
            raise SpaceConfigError("hold-only inputs must also be feature inputs")

    @property
    def entities(self) -> list[str]:
        """Every entity whose history the space reads."""
        labels = [*self.occupancy_labels, *([self.activity_label] if self.activity_label else [])]
        return sorted({*self.roles, *labels})


def room_series(inputs: SpaceInputs, changes: StateChanges) -> dict[SensorRole, list[ChangeSeries]]:
    """The feature inputs' histories grouped by role, as the extractor takes them."""
    by_role: dict[SensorRole, list[ChangeSeries]] = {}
    for entity_id, role in sorted(inputs.roles.items()):
        by_role.setdefault(role, []).append(series_from_states(role, changes.get(entity_id, ())))
    return by_role


def occupancy_value(state: str, label_state: str | None) -> float:
    """1 present, 0 absent, NaN unknown, for one label entity's state."""
    text = state.strip().lower()
    if text in UNKNOWN_STATES:
        return math.nan
    if label_state is not None and text == label_state.strip().lower():
        return 1.0
    return 1.0 if text in PRESENT_STATES else 0.0


def activity_value(state: str) -> float:
    """The activity class index of a label state, NaN for anything that is not an activity."""
    text = state.strip().lower().replace(" ", "_")
    return float(ACTIVITIES.index(text)) if text in ACTIVITIES else math.nan


def _values_at(
    changes: Sequence[tuple[float, str]],
    parse: Callable[[str], float],
    times: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Each entity's parsed state in force at each time (NaN before its first change)."""
    ordered = sorted(changes, key=lambda change: change[0])
    change_times = np.array([t for t, _ in ordered], dtype=np.float64)
    values = np.array([parse(s) for _, s in ordered], dtype=np.float64)
    index = np.searchsorted(change_times, times, side="right") - 1
    return np.where(index >= 0, values[np.clip(index, 0, None)] if values.size else np.nan, np.nan)


def occupancy_labels_at(
    inputs: SpaceInputs, changes: StateChanges, times: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Occupied (1), empty (0) or unknown (NaN) at each time: occupied when any source says so,
    empty when every source is known and none does."""
    if not inputs.occupancy_labels:
        raise SpaceConfigError("the space has no occupancy label source")
    columns = np.vstack(
        [
            _values_at(
                changes.get(entity, ()),
                lambda s: occupancy_value(s, inputs.occupancy_label_state),
                times,
            )
            for entity in inputs.occupancy_labels
        ]
    )
    any_present = np.nanmax(np.where(np.isnan(columns), -1.0, columns), axis=0) >= 1.0
    all_known = ~np.isnan(columns).any(axis=0)
    return np.where(any_present, 1.0, np.where(all_known, 0.0, np.nan))


def activity_labels_at(
    inputs: SpaceInputs, changes: StateChanges, times: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    if inputs.activity_label is None:
        raise SpaceConfigError("the space has no activity label source")
    return _values_at(changes.get(inputs.activity_label, ()), activity_value, times)


@dataclass(frozen=True)
class TrainingSet:
    x: Float32Array  # raw feature rows (the model normalises)
    y: npt.NDArray[np.int64]
    times: npt.NDArray[np.float64]  # end time of each frame

    @property
    def data_time(self) -> float:
        """The time of the newest labelled data, or 0 when there is none."""
        return float(self.times[-1]) if self.times.size else 0.0


def model_inputs(schema: FeatureSchema, frames: Float32Array) -> Float32Array:
    """Frames shaped as the model's input: windowed when the schema has lags."""
    if tuple(schema.window) == (0,):
        return frames
    return window_frames(frames, schema.window)


def training_set(
    inputs: SpaceInputs,
    changes: StateChanges,
    *,
    task: str,
    schema: FeatureSchema,
    start: float,
    end: float,
) -> TrainingSet:
    """Frames in [start, end) with their labels; frames whose label is unknown are dropped."""
    if schema.features != ROOM_FEATURES:
        raise SpaceConfigError(f"a space's models read room features, not {schema.name!r}")
    step = schema.step_seconds
    frames = extract_room_frames(room_series(inputs, changes), start, end, step, inputs.tz)
    x = model_inputs(schema, frames)
    ends = start + step * (np.arange(frames.shape[0], dtype=np.float64) + 1.0)
    if task == "occupancy":
        labels = occupancy_labels_at(inputs, changes, ends)
    elif task == "activity":
        labels = activity_labels_at(inputs, changes, ends)
    else:
        raise SpaceConfigError(f"a space does not train {task!r} models")
    known = ~np.isnan(labels)
    return TrainingSet(x[known], labels[known].astype(np.int64), ends[known])


def current_features(
    inputs: SpaceInputs, changes: StateChanges, *, schema: FeatureSchema, now: float
) -> Float32Array:
    """The model input row of the last whole frame before `now` (shape [1, n_inputs])."""
    step = schema.step_seconds
    end = math.floor(now / step) * step
    start = end - step * (max(schema.window) + 1)
    frames = extract_room_frames(room_series(inputs, changes), start, end, step, inputs.tz)
    return model_inputs(schema, frames)[-1:]


def unavailable_fraction(inputs: SpaceInputs, states: Mapping[str, str]) -> float:
    """The share of feature inputs whose current state is unknown or unavailable."""
    missing = sum(
        1
        for entity, role in inputs.roles.items()
        if math.isnan(parse_state(role, states.get(entity, "unavailable")))
    )
    return missing / len(inputs.roles)


def held(inputs: SpaceInputs, states: Mapping[str, str]) -> bool:
    """Whether a hold-only input is active now: on, open, playing, or drawing power."""
    for entity in inputs.hold_only:
        role = inputs.roles[entity]
        value = parse_state(role, states.get(entity, "unavailable"))
        threshold = HOLD_POWER_WATTS if role is SensorRole.POWER else 0.5
        if not math.isnan(value) and value >= threshold:
            return True
    return False


def explain(
    predict: Callable[[Float32Array], Float32Array],
    schema: FeatureSchema,
    inputs: SpaceInputs,
    x: Float32Array,
    *,
    top: int = 3,
) -> list[tuple[str, float]]:
    """Which roles drove the prediction: the change in output when a role's features are set
    to their schema mean (as if the role said nothing unusual). Largest effect first."""
    base = predict(x)
    positive = base[:, -1] if base.shape[1] == 1 else base.max(axis=1)
    effects: list[tuple[str, float]] = []
    names = [name for _ in schema.window for name in schema.features]
    means = np.tile(np.asarray(schema.mean, dtype=np.float32), len(schema.window))
    for role in sorted(set(inputs.roles.values())):
        columns = [i for i, name in enumerate(names) if name.startswith(f"{role.value}_")]
        if not columns:
            continue
        occluded = x.copy()
        occluded[:, columns] = means[columns]
        out = predict(occluded)
        moved = out[:, -1] if out.shape[1] == 1 else out[np.arange(len(out)), base.argmax(axis=1)]
        effects.append((role.value, float(np.mean(positive - moved))))
    effects.sort(key=lambda item: abs(item[1]), reverse=True)
    return effects[:top]
