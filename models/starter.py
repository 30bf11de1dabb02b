"""Build the starter models: `python -m mlmule_models.starter [--check] [--only NAME ...]`.

Trains one model per starter of the recipe (`recipes.starters()`) with the torch trainer on the
broad training world, measures it on the held-out homes, and writes into
`custom_components/mlmule/core/starter/` (HACS installs only that folder): `<name>.onnx`
(canonical graph), `<name>.md` (the model card) and `index.json`. Runs are deterministic: fixed
seeds, `torch.use_deterministic_algorithms` and one thread, so `--check` can regenerate and
compare against the shipped files.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlmule_core.starter as starter_package
import numpy as np
import torch
from mlmule_core.families import (
    DEFAULT_MODEL_SIZE,
    MODEL_SIZES,
    FamilySpec,
    arch_hash,
    forward,
    from_onnx,
    init_weights,
    parameter_shapes,
    predict_classes,
    trainable_names,
)
from mlmule_core.features import FeatureSchema
from mlmule_core.metrics import balanced_accuracy, expected_calibration_error, macro_f1
from mlmule_core.onnx import load_model
from mlmule_core.starter import INDEX_FILE, INDEX_FORMAT
from mlmule_core.storage import atomic_write_bytes, atomic_write_text
from mlmule_core.train_numpy import TrainReport
from mlmule_core.weights import Weights
from mlmule_world import World

from .export import canonical_export
from .recipes import (
    HELD_OUT_WORLD,
    RECIPE_VERSION,
    TRAIN_WORLD,
    SpaceData,
    Starter,
    WorldRecipe,
    sample_rows,
    space_data,
    starters,
    windowed,
)
from .train import train

STARTER_DIR = Path(starter_package.__file__).resolve().parent
# Regenerated weights may differ from the shipped ones by float rounding on another CPU;
# predictions on the held-out homes must agree to this much.
CHECK_TOLERANCE = 2e-3


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """One thread and deterministic kernels for the duration, then the previous settings."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class HeldOut:
    """Metrics on held-out homes: pooled over all their samples, and the spread across spaces."""

    spaces: int
    samples: int
    metric: str  # the headline: balanced accuracy (occupancy) or macro-F1 (activity)
    pooled: float
    median: float
    worst: float
    best: float
    balanced_accuracy: float
    macro_f1: float
    ece: float
    positive_rate: float | None  # occupancy only


@dataclass(frozen=True)
class StarterBuild:
    starter: Starter
    spec: FamilySpec
    schema: FeatureSchema
    weights: Weights
    report: TrainReport
    train_spaces: int
    held_out: HeldOut
    onnx_bytes: bytes


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


@dataclass
class _Split:
    x: list[np.ndarray]
    y: list[np.ndarray]
    base: list[np.ndarray]


def _samples(spaces: Sequence[SpaceData], starter: Starter) -> tuple[_Split, _Split]:
    """Per space, the earlier minutes for training and the latest for validation."""
    recipe = starter.recipe
    train, validation = _Split([], [], []), _Split([], [], [])
    for space in spaces:
        rows = sample_rows(space.truth.size, recipe.window, recipe.subsample)
        cut = round(rows.size * (1.0 - recipe.train.val_fraction))
        for part, chosen in ((train, rows[:cut]), (validation, rows[cut:])):
            part.x.append(windowed(space, recipe.window, chosen))
            part.y.append(space.truth[chosen])
            part.base.append(space.frames[chosen])
    return train, validation


def build(starter: Starter, train_world: World, held_out_world: World) -> StarterBuild:
    """Train and measure one starter (deterministic given the recipe)."""
    recipe = starter.recipe
    spaces = list(space_data(train_world, recipe.task, starter.kind))
    train_part, val_part = _samples(spaces, starter)
    schema = recipe.schema().with_normalisation(np.concatenate(train_part.base))
    spec = recipe.spec(schema, starter.model_size)
    start = init_weights(spec, np.random.default_rng(_seed(starter.name)), schema)
    with deterministic_torch():
        torch.manual_seed(_seed(starter.name))
        weights, report = train(
            spec,
            start,
            np.concatenate(train_part.x),
            np.concatenate(train_part.y),
            recipe.train,
            validation=(np.concatenate(val_part.x), np.concatenate(val_part.y)),
        )
    held_out = evaluate(starter, spec, weights, held_out_world)
    metadata = {
        "mlmule.context_keys": json.dumps(list(starter.context_keys)),
        "mlmule.starter": starter.name,
        "mlmule.recipe_version": str(RECIPE_VERSION),
        "mlmule.training_data": _world_text(TRAIN_WORLD),
    }
    return StarterBuild(
        starter,
        spec,
        schema,
        weights,
        report,
        len(spaces),
        held_out,
        canonical_export(spec, weights, schema, metadata),
    )


def held_out_inputs(starter: Starter, world: World) -> list[tuple[np.ndarray, np.ndarray]]:
    """`(inputs, true labels)` per held-out space, sampled as in training."""
    recipe = starter.recipe
    found = []
    for space in space_data(world, recipe.task, starter.kind):
        rows = sample_rows(space.truth.size, recipe.window, recipe.subsample)
        found.append((windowed(space, recipe.window, rows), space.truth[rows]))
    return found


def evaluate(starter: Starter, spec: FamilySpec, weights: Weights, world: World) -> HeldOut:
    per_space = []
    all_true, all_probabilities = [], []
    for x, y in held_out_inputs(starter, world):
        probabilities = forward(spec, weights, x)
        predicted = predict_classes(spec, probabilities)
        per_space.append(balanced_accuracy(y, predicted) if spec.binary else macro_f1(y, predicted))
        all_true.append(y)
        all_probabilities.append(probabilities)
    y_true = np.concatenate(all_true)
    probabilities = np.concatenate(all_probabilities)
    predicted = predict_classes(spec, probabilities)
    balanced = balanced_accuracy(y_true, predicted)
    f1 = macro_f1(y_true, predicted)
    return HeldOut(
        spaces=len(per_space),
        samples=int(y_true.size),
        metric="balanced_accuracy" if spec.binary else "macro_f1",
        pooled=balanced if spec.binary else f1,
        median=float(np.median(per_space)),
        worst=float(np.min(per_space)),
        best=float(np.max(per_space)),
        balanced_accuracy=balanced,
        macro_f1=f1,
        ece=expected_calibration_error(y_true, probabilities),
        positive_rate=float(y_true.mean()) if spec.binary else None,
    )


def _world_text(world: WorldRecipe) -> str:
    config = world.config
    return (
        f"synthetic world seed {world.seed}: {config.n_homes} homes x {config.days} days, "
        f"non_iid {config.non_iid}, label noise {config.label_noise}, "
        f"sensor dropout {config.sensor_dropout}"
    )


# --- model card and index -------------------------------------------------------------------


def model_card(built: StarterBuild) -> str:
    starter, spec, schema, report, held = (
        built.starter,
        built.spec,
        built.schema,
        built.report,
        built.held_out,
    )
    recipe = starter.recipe
    kind = starter.kind or "every kind (shared)"
    metric_name = "balanced accuracy" if spec.binary else "macro-F1"
    keys = ", ".join(f"`{key}`" for key in starter.context_keys)
    output = (
        "`probability` [batch, 1]: calibrated (Platt) probability that the space is occupied"
        if spec.binary
        else f"`probability` [batch, {spec.n_classes}]: softmax over {', '.join(spec.labels)}"
    )
    shapes = parameter_shapes(spec)
    parameters = sum(math.prod(shape) for shape in shapes.values())
    trainable = sum(math.prod(shapes[name]) for name in trainable_names(spec))
    positive = (
        f"- occupied share of minutes: {held.positive_rate:.3f}\n"
        if held.positive_rate is not None
        else ""
    )
    return f"""# Starter model `{starter.name}`

Serves {keys}. Generated by `python -m mlmule_models.starter` (recipe version {RECIPE_VERSION});
do not edit by hand.

## What it is
- Model size `{starter.model_size}`: family `{spec.family}`, task `{spec.task}`, space kind: {kind}.
- Inputs: `features` [batch, {spec.n_inputs}] = {len(schema.features)} `{schema.name}` features
  x lags {list(schema.window)} (minutes, step {schema.step_seconds} s), unnormalised; the graph
  normalises with the schema's statistics.
- {_layers(spec)}; output {output}.
- {parameters} parameters ({trainable} trained); the file is {len(built.onnx_bytes)} bytes.
- Architecture hash `{arch_hash(spec, schema)}`.

## Training data
- {_world_text(TRAIN_WORLD)}.
- {built.train_spaces} spaces of this kind; every {recipe.subsample}th minute; ground-truth
  labels from the simulator. The latest {recipe.train.val_fraction:.0%} of each space's time
  is the validation split (early stopping, calibration).
- {report.samples} training and {report.val_samples} validation samples; {report.epochs} epochs
  ({report.stop_reason}), best epoch {report.best_epoch}; validation {metric_name}
  {(report.val_balanced_accuracy if spec.binary else report.val_macro_f1) or 0:.3f}.

## Held-out homes
Measured on {held.spaces} spaces of homes the model never saw
({_world_text(HELD_OUT_WORLD)}), {held.samples} samples, against ground truth:
- {metric_name}: {held.pooled:.3f} pooled; per space median {held.median:.3f},
  worst {held.worst:.3f}, best {held.best:.3f}
- balanced accuracy {held.balanced_accuracy:.3f}, macro-F1 {held.macro_f1:.3f},
  expected calibration error {held.ece:.3f}
{positive}
## Limits
- Trained only on simulated homes. Real sensors, layouts and habits differ; the starter is a
  prior for minute one, and in-house training on the space's own labels is what makes it fit.
- Its calibration is the simulated homes'; the space recalibrates on its own validation data.
- Sensors a home lacks arrive as unavailable (flag 0, neutral value); the fewer it has, the
  less the model can see.
- Not for safety or security decisions.
"""


def _layers(spec: FamilySpec) -> str:
    hidden = f"hidden layers {list(spec.hidden) or 'none'} (ReLU)"
    if spec.conv is None:
        return hidden[0].upper() + hidden[1:]
    conv = spec.conv
    return (
        f"A 1-D convolution over the {conv.lags} lags as a sequence ({conv.channels} channels, "
        f"kernel {conv.kernel}, ReLU, flattened to {conv.flat_width}), then {hidden}"
    )


def write(builds: Sequence[StarterBuild], directory: Path) -> None:
    """The files, cards and the index: the default size's keys under "models", the other
    sizes' under "model_sizes" (`mlmule_core.starter.parse_index`)."""
    by_size: dict[str, dict[str, dict[str, Any]]] = {size: {} for size in MODEL_SIZES}
    for built in builds:
        models = by_size[built.starter.model_size]
        onnx_name = f"{built.starter.name}.onnx"
        card_name = f"{built.starter.name}.md"
        atomic_write_bytes(directory / onnx_name, built.onnx_bytes)
        atomic_write_text(directory / card_name, model_card(built))
        for key in built.starter.context_keys:
            models[key] = {
                "file": onnx_name,
                "card": card_name,
                "sha256": hashlib.sha256(built.onnx_bytes).hexdigest(),
                "arch_hash": arch_hash(built.spec, built.schema),
                "held_out": asdict(built.held_out),
            }
    index = {
        "format": INDEX_FORMAT,
        "recipe_version": RECIPE_VERSION,
        "generated_by": "python -m mlmule_models.starter",
        "models": dict(sorted(by_size[DEFAULT_MODEL_SIZE].items())),
        "model_sizes": {
            size: dict(sorted(models.items()))
            for size, models in by_size.items()
            if size != DEFAULT_MODEL_SIZE and models
        },
    }
    atomic_write_text(directory / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_all(names: Sequence[str] | None = None) -> list[StarterBuild]:
    chosen = [s for s in starters() if names is None or s.name in names]
    unknown = set(names or ()) - {s.name for s in chosen}
    if unknown:
        raise SystemExit(f"unknown starters: {sorted(unknown)}")
    train_world, held_out_world = TRAIN_WORLD.build(), HELD_OUT_WORLD.build()
    return [build(s, train_world, held_out_world) for s in chosen]


def differences(built: StarterBuild, shipped: bytes, held_out_world: World) -> list[str]:
    """How a regenerated starter differs from the shipped file beyond float rounding."""
    spec, schema, weights = from_onnx(load_model(shipped))
    problems = []
    if (spec, schema) != (built.spec, built.schema):
        problems.append("spec or feature schema differ")
        return problems
    worst = 0.0
    for x, _ in held_out_inputs(built.starter, held_out_world):
        gap = np.abs(forward(spec, weights, x) - forward(spec, built.weights, x)).max()
        worst = max(worst, float(gap))
    if worst > CHECK_TOLERANCE:
        problems.append(f"held-out predictions differ by up to {worst:.2e}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlmule_models.starter", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare with the shipped files")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these starters")
    parser.add_argument("--out", type=Path, default=STARTER_DIR, help="output folder")
    args = parser.parse_args(argv)
    builds = build_all(args.only)
    if args.check:
        held_out_world = HELD_OUT_WORLD.build()
        failed = False
        for built in builds:
            path = args.out / f"{built.starter.name}.onnx"
            problems = (
                differences(built, path.read_bytes(), held_out_world)
                if path.exists()
                else ["missing"]
            )
            failed |= bool(problems)
            print(f"{built.starter.name}: {'; '.join(problems) or 'matches'}")
        return 1 if failed else 0
    if args.only:
        raise SystemExit("--only builds a subset: use it with --check (the index lists all)")
    write(builds, args.out)
    for built in builds:
        held = built.held_out
        print(
            f"{built.starter.name:24s} {held.metric} held-out {held.pooled:.3f} "
            f"(median {held.median:.3f}, worst {held.worst:.3f}, {held.spaces} spaces)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
