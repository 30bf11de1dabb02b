"""Learning baseline: local-only training against starter-plus-local, on held-out future weeks.

For every space of 20 world homes (each room, and the whole home) the numpy trainer (what HA
runs) learns from the first 1, 7 or 21 days of the space's own labels (BLE presence, a user's
activity labels, with their noise), and is scored against ground truth on the last week:

* local-only starts from fresh weights of the same architecture;
* starter+local starts from the shipped starter model (trained on other worlds' homes);
* starter alone is the shipped model with no local training.

Prints medians across spaces per room kind and across homes overall, with the ratio
starter+local / local-only, and saves everything to bench/results/learning_baseline.json.
These are the numbers the ML Mule benchmark has to improve on.

    python bench/bench_learning_baseline.py [--homes 20] [--tasks occupancy activity]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from mlmule_core.families import FamilySpec, forward, init_weights, predict_classes
from mlmule_core.metrics import balanced_accuracy, macro_f1
from mlmule_core.starter import load_starter
from mlmule_core.train_numpy import TrainConfig, train
from mlmule_core.weights import Weights
from mlmule_models.recipes import (
    HOME_KIND,
    ROOM_KINDS,
    TASK_RECIPES,
    SpaceData,
    sample_rows,
    space_data,
    windowed,
)
from mlmule_world import WorldConfig, generate_world, time_split

RESULTS = Path(__file__).resolve().parent / "results" / "learning_baseline.json"
WORLD_SEED = 424242  # neither the starters' training world nor their held-out homes
WORLD_DAYS = 28
TEST_DAYS = 7
LOCAL_DAYS = (1, 7, 21)
# What in-house training on HA would use: the numpy trainer with its defaults, bounded epochs.
LOCAL_TRAINING = TrainConfig(max_epochs=20, patience=3, batch_size=64, val_fraction=0.2)
ARMS = ("local", "starter+local")


@dataclass(frozen=True)
class Score:
    task: str
    kind: str
    space: str
    home: str
    local_days: int
    arm: str
    metric: float
    seconds: float


def headline(spec: FamilySpec, y: np.ndarray, probabilities: np.ndarray) -> float:
    """Balanced accuracy for occupancy, macro-F1 for activity, against ground truth."""
    predicted = predict_classes(spec, probabilities)
    return balanced_accuracy(y, predicted) if spec.binary else macro_f1(y, predicted)


def run_space(task: str, kind: str, space: SpaceData, times: np.ndarray) -> list[Score]:
    recipe = TASK_RECIPES[task]
    starter = load_starter(f"{task}/{kind}")
    spec = starter.spec
    rows = sample_rows(space.truth.size, recipe.window, recipe.subsample)
    x = windowed(space, recipe.window, rows)
    home = space.space_id.split("/")[0]

    def within(minutes: slice) -> np.ndarray:
        return (rows >= minutes.start) & (rows < minutes.stop)

    test = within(time_split(times, WORLD_DAYS - TEST_DAYS, TEST_DAYS)[1])
    test_x, test_y = x[test], space.truth[rows][test]
    starter_only = headline(spec, test_y, forward(spec, starter.weights, test_x))
    scores = [Score(task, kind, space.space_id, home, 0, "starter", starter_only, 0.0)]
    fresh = init_weights(spec, np.random.default_rng(0), starter.schema)
    starts: dict[str, Weights] = {"local": fresh, "starter+local": starter.weights}
    for days in LOCAL_DAYS:
        local = within(time_split(times, days, TEST_DAYS)[0])
        local_x, local_y = x[local], space.observed[rows][local]
        for arm in ARMS:
            began = time.perf_counter()
            weights, _ = train(spec, starts[arm], local_x, local_y, LOCAL_TRAINING)
            seconds = time.perf_counter() - began
            metric = headline(spec, test_y, forward(spec, weights, test_x))
            scores.append(Score(task, kind, space.space_id, home, days, arm, metric, seconds))
    return scores


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarise(scores: list[Score]) -> dict[str, object]:
    """Medians per (task, kind, days, arm) over spaces, and per (task, days, arm) over homes."""
    by_kind: dict[tuple[str, str, int, str], list[float]] = defaultdict(list)
    per_home: dict[tuple[str, int, str, str], list[float]] = defaultdict(list)
    for score in scores:
        by_kind[(score.task, score.kind, score.local_days, score.arm)].append(score.metric)
        per_home[(score.task, score.local_days, score.arm, score.home)].append(score.metric)
    overall: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for (task, days, arm, _), values in per_home.items():
        overall[(task, days, arm)].append(float(np.mean(values)))
    return {
        "by_kind": {"/".join(map(str, key)): median(values) for key, values in by_kind.items()},
        "spaces_by_kind": {"/".join(map(str, key)): len(values) for key, values in by_kind.items()},
        "overall_by_home": {"/".join(map(str, key)): median(v) for key, v in overall.items()},
        "homes": len({score.home for score in scores}),
    }


def table(summary: dict[str, object], task: str, kinds: list[str]) -> str:
    by_kind = summary["by_kind"]
    overall = summary["overall_by_home"]
    assert isinstance(by_kind, dict)
    assert isinstance(overall, dict)
    metric = "balanced accuracy" if task == "occupancy" else "macro-F1"
    header = f"{'kind':12s} {'starter':>8s}"
    for days in LOCAL_DAYS:
        header += f" | {days:>2d}d local  +starter  ratio"
    lines = [f"{task}: median {metric} on the held-out last week", header, "-" * len(header)]

    def row(label: str, values: dict[str, float], prefix: str) -> str:
        text = f"{label:12s} {values.get(f'{prefix}/0/starter', float('nan')):8.3f}"
        for days in LOCAL_DAYS:
            local = values.get(f"{prefix}/{days}/local", float("nan"))
            both = values.get(f"{prefix}/{days}/starter+local", float("nan"))
            text += f" | {local:9.3f} {both:9.3f} {both / local:6.2f}"
        return text

    lines.extend(
        row(kind, by_kind, f"{task}/{kind}")
        for kind in kinds
        if f"{task}/{kind}/0/starter" in by_kind
    )
    lines.append(row("all (homes)", overall, task))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--homes", type=int, default=20)
    parser.add_argument("--tasks", nargs="+", default=["occupancy", "activity"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    config = WorldConfig(n_homes=args.homes, days=WORLD_DAYS)
    world = generate_world(config, WORLD_SEED)
    began = time.perf_counter()
    scores: list[Score] = []
    for task in args.tasks:
        kinds = [*ROOM_KINDS, HOME_KIND] if task == "occupancy" else list(ROOM_KINDS)
        for kind in kinds:
            for space in space_data(world, task, kind):
                scores.extend(run_space(task, kind, space, world.minute_times))
            print(f"  {task}/{kind} done ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    elapsed = time.perf_counter() - began

    summary = summarise(scores)
    for task in args.tasks:
        kinds = [*ROOM_KINDS, HOME_KIND] if task == "occupancy" else list(ROOM_KINDS)
        print(table(summary, task, kinds))
        print()
    train_seconds = defaultdict(list)
    for score in scores:
        if score.arm in ARMS:
            train_seconds[score.arm].append(score.seconds)
    print(
        "median training seconds per space: "
        + ", ".join(f"{arm} {median(values):.2f}" for arm, values in train_seconds.items())
        + f"; whole run {elapsed:.0f} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "learning_baseline",
        "world": {**asdict(config), "seed": WORLD_SEED},
        "test_days": TEST_DAYS,
        "local_days": list(LOCAL_DAYS),
        "local_training": asdict(LOCAL_TRAINING),
        "labels": "trained on the space's observed (noisy) labels, scored on ground truth",
        "metric": {"occupancy": "balanced_accuracy", "activity": "macro_f1"},
        "summary": summary,
        "median_training_seconds": {arm: median(v) for arm, v in train_seconds.items()},
        "seconds": elapsed,
        "python": platform.python_version(),
        "scores": [asdict(score) for score in scores],
    }
    args.out.write_text(json.dumps(document, indent=1, default=str) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
