"""From the runs of every task, seed and method to `learning.json`: curves and figures summarised
over seeds (median, mean, spread), time to target, communication, and ratios to the local
baseline run in the same process."""

from __future__ import annotations

import json
import math
import platform
import statistics
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .config import BenchConfig

SCHEMA_VERSION = 1
METRICS = {
    "occupancy": "balanced_accuracy",
    "phone_activity": "macro_f1",
    "digits": "macro_f1",
    "paper": "macro_f1",
    "hapt": "macro_f1",
}
LEDGER_FIGURES = (
    "bytes_moved",
    "exchanges",
    "transfers",
    "encounters",
    "raw_samples_moved",
    "train_rounds",
    "train_steps",
)
RUN_FIGURES = ("regressions", "model_changes")
# The keys every per-method, per-task entry has (the tests check them).
ENTRY_KEYS = frozenset(
    {
        "curve",
        "final",
        "final_global",
        "regressions",
        "model_changes",
        "time_to_target_hours",
        "bytes_moved",
        "exchanges",
        "raw_samples_moved",
        "transfers",
        "encounters",
        "train_rounds",
        "train_steps",
        "wall_seconds",
        "ratio_to_local",
        "rejected",
    }
)
TOP_KEYS = frozenset(
    {"schema", "generated", "config", "seeds", "target", "metric", "per_method", "tasks"}
)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, mean, standard deviation, min, max and the values themselves (by seed)."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(array)),
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "per_seed": [float(value) for value in array],
    }


def time_to_target(hours: Sequence[float], scores: Sequence[float], target: float) -> float | None:
    """The first evaluation time (hours from the start) at which the mean score reached it."""
    for hour, value in zip(hours, scores, strict=True):
        if value >= target:
            return float(hour)
    return None


def summarise(
    config: BenchConfig,
    task_runs: Sequence[Mapping[str, Any]],
    *,
    backend: str,
    wall_seconds: float,
) -> dict[str, Any]:
    """The `learning.json` document from the JSON of every `TaskRun`."""
    per_method: dict[str, dict[str, Any]] = {}
    tasks: dict[str, Any] = {}
    for task in config.tasks:
        runs_of_task = sorted(
            (run for run in task_runs if run["task"] == task), key=lambda run: run["seed"]
        )
        if not runs_of_task:
            continue
        tasks[task] = {
            "metric": METRICS[task],
            "units": [run["units"] for run in runs_of_task],
            "learners": [run["learners"] for run in runs_of_task],
            "visits": [run["visits"] for run in runs_of_task],
            "meetings": [run["meetings"] for run in runs_of_task],
            "relays": [run.get("relays", 0) for run in runs_of_task],
            "data_seconds": [run["data_seconds"] for run in runs_of_task],
            "affinity": runs_of_task[0]["affinity"],
            "groups": runs_of_task[0]["groups"],
        }
        local_finals = _finals(runs_of_task, "local")
        for method in config.methods:
            method_runs = [
                next(entry for entry in run["runs"] if entry["method"] == method)
                for run in runs_of_task
                if any(entry["method"] == method for entry in run["runs"])
            ]
            if method_runs:
                per_method.setdefault(method, {})[task] = _entry(
                    method_runs, config.targets[task], local_finals
                )
    return {
        "schema": SCHEMA_VERSION,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "backend": backend,
        "wall_seconds": wall_seconds,
        "config": config.to_json(),
        "seeds": list(config.seeds),
        "target": {task: config.targets[task] for task in config.tasks},
        "metric": {task: METRICS[task] for task in config.tasks},
        "per_method": per_method,
        "tasks": tasks,
    }


def _finals(runs_of_task: Sequence[Mapping[str, Any]], method: str) -> list[float] | None:
    finals = [
        entry["final"] for run in runs_of_task for entry in run["runs"] if entry["method"] == method
    ]
    return finals if len(finals) == len(runs_of_task) else None


def _entry(
    runs: Sequence[Mapping[str, Any]], target: float, local_finals: Sequence[float] | None
) -> dict[str, Any]:
    hours = runs[0]["hours"]
    curves = np.asarray([run["scores"] for run in runs], dtype=np.float64)
    finals = [run["final"] for run in runs]
    reached = [time_to_target(run["hours"], run["scores"], target) for run in runs]
    hit = [value for value in reached if value is not None]
    rejected: dict[str, int] = {}
    promotions: dict[str, int] = {}  # the promotion rule's verdicts, summed over seeds
    twins = {run.get("details", {}).get("same_run_as") for run in runs}
    for run in runs:
        for reason, count in run["ledger"]["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + count
        for verdict, count in run.get("details", {}).get("promotions", {}).items():
            promotions[verdict] = promotions.get(verdict, 0) + count
    entry: dict[str, Any] = {
        "curve": {
            "hours": hours,
            "mean": curves.mean(axis=0).tolist(),
            "median": np.median(curves, axis=0).tolist(),
            "min": curves.min(axis=0).tolist(),
            "max": curves.max(axis=0).tolist(),
        },
        "final": spread(finals),
        # the server's model, for the methods that have one
        "final_global": (
            spread([run["final_global"] for run in runs])
            if all(run.get("final_global") is not None for run in runs)
            else None
        ),
        "global_curve": (
            np.mean([run["global_scores"] for run in runs], axis=0).tolist()
            if all(run.get("global_scores") for run in runs)
            else None
        ),
        "time_to_target_hours": {
            "median": statistics.median(hit) if len(hit) == len(reached) else None,
            "per_seed": reached,
            "reached": f"{len(hit)}/{len(reached)}",
        },
        "wall_seconds": spread([run["wall_seconds"] for run in runs]),
        # the method whose runs these are, where this one would have repeated them
        "same_run_as": twins.pop() if len(twins) == 1 else None,
        "rejected": dict(sorted(rejected.items())),
        "promotions": dict(sorted(promotions.items())),
        "ratio_to_local": (
            spread([f / b for f, b in zip(finals, local_finals, strict=True)])
            if local_finals is not None and all(b > 0 for b in local_finals)
            else None
        ),
    }
    for name in LEDGER_FIGURES:
        entry[name] = spread([run["ledger"][name] for run in runs])
    for name in RUN_FIGURES:
        entry[name] = spread([run[name] for run in runs])
    return entry


def check_document(document: Mapping[str, Any]) -> list[str]:
    """Everything wrong with a `learning.json` document's shape; empty when it is sound."""
    problems = [f"missing top-level key {key!r}" for key in sorted(TOP_KEYS - set(document))]
    for method, by_task in document.get("per_method", {}).items():
        for task, entry in by_task.items():
            missing = ENTRY_KEYS - set(entry)
            if missing:
                problems.append(f"{method}/{task} lacks {sorted(missing)}")
                continue
            curve = entry["curve"]
            if not (len(curve["hours"]) == len(curve["mean"]) > 1):
                problems.append(f"{method}/{task} has no curve")
            if not all(0.0 <= value <= 1.0 for value in curve["mean"]):
                problems.append(f"{method}/{task} has scores outside [0, 1]")
            if len(entry["final"]["per_seed"]) != len(document.get("seeds", [])):
                problems.append(f"{method}/{task} lacks a seed's final score")
            if not math.isclose(curve["mean"][-1], entry["final"]["mean"], abs_tol=1e-9):
                problems.append(f"{method}/{task}: the curve does not end at the final score")
    return problems


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    from mlmule_core.storage import atomic_write_text  # noqa: PLC0415

    atomic_write_text(path, json.dumps(document, indent=1, sort_keys=False) + "\n")


def _cpus() -> int:
    import os  # noqa: PLC0415

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def markdown_tables(document: Mapping[str, Any]) -> str:
    """One Markdown table per task: final score (median and range over seeds), its ratio to
    local, time to target, communication and raw samples moved."""
    lines: list[str] = []
    for task, info in document["tasks"].items():
        target = document["target"][task]
        lines += [
            f"**{task}** ({info['metric'].replace('_', ' ')} on each learner's held-out last "
            f"{document['config']['test_days']} days; target {target}; median [min-max] over "
            f"{len(document['seeds'])} seeds)",
            "",
            "| method | final | global | x local | hours to target | regressions | MB moved "
            "| exchanges | raw samples moved |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for method, by_task in document["per_method"].items():
            entry = by_task.get(task)
            if entry is None:
                continue
            final, ratio = entry["final"], entry["ratio_to_local"]
            reach = entry["time_to_target_hours"]
            hours = "never" if reach["median"] is None else f"{reach['median']:.0f}"
            if reach["median"] is None and reach["reached"][0] != "0":
                hours = f"{reach['reached']} seeds"
            glob = entry.get("final_global")
            glob_text = "-" if glob is None else f"{glob['median']:.3f}"
            regressions = entry.get("regressions", {}).get("median")
            regression_text = "-" if regressions is None else f"{regressions:.0f}"
            twin = entry.get("same_run_as")
            label = method if twin is None else f"{method} (= {twin})"
            lines.append(
                f"| {label} | {final['median']:.3f} [{final['min']:.3f}-{final['max']:.3f}] "
                f"| {glob_text} | {ratio['median']:.3f} | {hours} | {regression_text} "
                f"| {entry['bytes_moved']['median'] / 1e6:.1f} "
                f"| {entry['exchanges']['median']:.0f} "
                f"| {entry['raw_samples_moved']['median']:.0f} |"
                if ratio is not None
                else f"| {label} | {final['median']:.3f} | {glob_text} | - | {hours} "
                f"| {regression_text} | - | - | - |"
            )
        lines.append("")
    return "\n".join(lines)


HOME_TASKS = ("occupancy", "phone_activity", "digits")


def target_checks(document: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 12's done-when targets for `mlmule` (the product's defaults), judged as the issue
    does on medians over seeds: (target, what was measured, met). "Beyond the seed spread"
    means ML Mule's worst seed above local learning's best. Targets whose task or method was
    not run are left out."""
    methods = document["per_method"]

    def entry(method: str, task: str) -> Mapping[str, Any] | None:
        found: Mapping[str, Any] | None = methods.get(method, {}).get(task)
        return found

    checks: list[tuple[str, str, bool]] = []
    for task in document["tasks"]:
        if (mine := entry("mlmule", task)) is not None and "regressions" in mine:
            regressions = mine["regressions"]
            checks.append(
                (
                    f"{task}: regressions 0",
                    f"{regressions['median']:.0f} (worst seed {regressions['max']:.0f})",
                    regressions["median"] == 0,
                )
            )
    # how far below FedAvg's final score each home task may end
    margins = {"phone_activity": 0.0, "occupancy": 0.005, "digits": 0.01}
    for task in HOME_TASKS:
        if (mine := entry("mlmule", task)) is None:
            continue
        if (fedavg := entry("fedavg", task)) is not None:
            ours, theirs, margin = mine["final"]["median"], fedavg["final"]["median"], margins[task]
            target = f"{task}: at least FedAvg's final" + (f" - {margin:g}" if margin else "")
            checks.append((target, f"{ours:.3f} vs {theirs:.3f}", ours >= theirs - margin))
        if (local := entry("local", task)) is not None:
            low, high = mine["final"]["min"], local["final"]["max"]
            measured = f"worst seed {low:.3f} vs local's best {high:.3f}"
            checks.append((f"{task}: above local beyond the seed spread", measured, low > high))
        if (gossip := entry("gossip", task)) is not None:
            ours, theirs = mine["bytes_moved"]["median"], gossip["bytes_moved"]["median"]
            measured = f"{ours / 1e6:.1f} MB vs {theirs / 1e6:.1f} MB"
            checks.append((f"{task}: fewer bytes than gossip", measured, ours < theirs))
    if (mine := entry("mlmule", "paper")) is None:
        return checks
    ours = mine["final"]["median"]
    fedavg = entry("fedavg", "paper")
    if fedavg is not None and fedavg.get("final_global") is not None:
        theirs = fedavg["final_global"]["median"]
        checks.append(
            (
                "paper: at least FedAvg's global + 0.05",
                f"{ours:.3f} vs {theirs:.3f}",
                ours >= theirs + 0.05,
            )
        )
    if (tuned := entry("fedavg_ft", "paper")) is not None:
        theirs = tuned["final"]["median"]
        checks.append(
            (
                "paper: at least fedavg_ft - 0.01",
                f"{ours:.3f} vs {theirs:.3f}",
                ours >= theirs - 0.01,
            )
        )
    if (gossip := entry("gossip", "paper")) is not None:
        reach = [found["time_to_target_hours"] for found in (mine, gossip)]
        first, other = (hours["median"] for hours in reach)
        shown = [
            f"{hours['median']:.0f} h"
            if hours["median"] is not None
            else f"not on every seed ({hours.get('reached', 'none')})"
            for hours in reach
        ]
        checks.append(
            (
                "paper: reaches the target no later than gossip",
                f"{shown[0]} vs {shown[1]}",
                first is not None and (other is None or first <= other),
            )
        )
    return checks


def markdown_targets(document: Mapping[str, Any]) -> str:
    """`target_checks` as a Markdown table."""
    lines = [
        f"**Issue 12's targets for mlmule** (medians over {len(document['seeds'])} seeds)",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [
        f"| {target} | {measured} | {'yes' if met else '**no**'} |"
        for target, measured, met in target_checks(document)
    ]
    return "\n".join([*lines, ""])
