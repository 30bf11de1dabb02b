"""How long the learning benchmark takes, per (task, seed) unit, and whether a speed-up changed it.

Each unit runs as `python -m mlmule_bench run --tasks T --seed S` in its own process, one at a
time (a unit is what `--jobs` hands to a worker), so its wall time is what a worker spends. With
`--reference REV`, the same units also run on a `git archive` of REV, alternately with the
current tree (both see the same machine load), and every figure of every method's run is
compared: a speed-up must leave them identical.

    python bench/bench_learning_speed.py                          # tiny config, seeds 0 and 1
    python bench/bench_learning_speed.py --reference f6526ea      # ... against a commit
    python bench/bench_learning_speed.py --config default --seed 0 --reference f6526ea

Writes bench/results/learning_speed.json: per unit its seconds (median over `--repeat`), per
method its seconds, the comparison, and the full run extrapolated: every unit of the default
preset's seeds, `--jobs` at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCRATCH = ROOT / "build" / "learning-speed"
# how the project's packages map onto its folders (pyproject.toml's package-dir)
PACKAGES = {
    "mlmule_core": "custom_components/mlmule/core",
    "mlmule_world": "world",
    "mlmule_models": "models",
}
# what differs between two runs of the same code: timings
TIMINGS = frozenset({"wall_seconds", "data_seconds"})


def reference_tree(revision: str) -> Path:
    """`revision` checked out under build/ (once), with its packages importable from `pkgs/`."""
    commit = subprocess.run(  # noqa: S603 - git on this repository
        ["git", "-C", str(ROOT), "rev-parse", revision],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    tree = SCRATCH / f"ref-{commit[:12]}"
    if not (tree / "pkgs").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(  # noqa: S603
            ["git", "-C", str(ROOT), "archive", commit],  # noqa: S607
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)  # noqa: S603, S607
        (tree / "pkgs").mkdir()
        for package, folder in PACKAGES.items():
            (tree / "pkgs" / package).symlink_to(tree / folder)
    return tree


def python_path(tree: Path | None) -> str:
    """The import path of a tree: its bench package, and its own copies of the project's
    packages ahead of the installed (editable) ones."""
    if tree is None:
        return str(BENCH)
    return os.pathsep.join([str(tree / "bench"), str(tree / "pkgs")])


def run_unit(
    tree: Path | None, config: str, task: str, seed: int, methods: str | None
) -> tuple[float, float, list[Any]]:
    """One (task, seed) unit of every method, as a `--jobs` worker runs it: wall seconds, CPU
    seconds (what other loads on the machine do not inflate), runs."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as scratch:
        out = Path(scratch) / "runs.json"
        command = [
            sys.executable,
            "-m",
            "mlmule_bench",
            "run",
            "--config",
            config,
            "--tasks",
            task,
            "--seed",
            str(seed),
            "--quiet",
            "--emit-runs",
            str(out),
            *(["--methods", methods] if methods else []),
        ]
        env = {**os.environ, "PYTHONPATH": python_path(tree)}
        began, used = time.perf_counter(), _children_cpu()
        subprocess.run(command, check=True, env=env, cwd=BENCH)  # noqa: S603
        seconds, cpu = time.perf_counter() - began, _children_cpu() - used
        runs: list[Any] = json.loads(out.read_text(encoding="utf-8"))
    return seconds, cpu, runs


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Where two runs' documents differ, timings aside."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            if key in TIMINGS:
                continue
            if key not in before or key not in after:
                found.append(f"{path}/{key}: only in one")
                continue
            found += differences(before[key], after[key], f"{path}/{key}")
        return found
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{path}: {len(before)} against {len(after)} items"]
        found = []
        for index, (a, b) in enumerate(zip(before, after, strict=True)):
            name = a.get("method", index) if isinstance(a, dict) else index
            found += differences(a, b, f"{path}/{name}")
        return found
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def method_seconds(runs: list[Any]) -> dict[str, float]:
    return {run["method"]: run["wall_seconds"] for task_run in runs for run in task_run["runs"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--seed", type=int, action="append", dest="seeds")
    parser.add_argument("--tasks", default="occupancy,phone_activity,digits,paper,hapt")
    parser.add_argument("--methods", help="comma-separated (default: the config's)")
    parser.add_argument("--reference", help="a git revision to compare with (and time)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per unit (median)")
    parser.add_argument("--jobs", type=int, default=2, help="workers of the extrapolated run")
    parser.add_argument("--full-seeds", type=int, default=5, help="seeds of the full run")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "learning_speed.json")
    args = parser.parse_args(argv)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    trees: dict[str, Path | None] = {"current": None}
    if args.reference:
        trees = {"reference": reference_tree(args.reference), **trees}
    units: list[dict[str, Any]] = []
    identical = True
    for task in args.tasks.split(","):
        for seed in args.seeds or [0, 1]:
            seconds: dict[str, list[float]] = {name: [] for name in trees}
            cpu: dict[str, list[float]] = {name: [] for name in trees}
            outputs: dict[str, list[Any]] = {}
            methods: dict[str, dict[str, float]] = {}
            for _ in range(args.repeat):
                for name, tree in trees.items():  # alternately: the same machine load
                    took, used, runs = run_unit(tree, args.config, task, seed, args.methods)
                    seconds[name].append(took)
                    cpu[name].append(used)
                    outputs[name] = runs
                    methods[name] = method_seconds(runs)
            unit: dict[str, Any] = {
                "task": task,
                "seed": seed,
                "seconds": {name: statistics.median(v) for name, v in seconds.items()},
                "cpu_seconds": {name: statistics.median(v) for name, v in cpu.items()},
                "method_seconds": methods,
            }
            if args.reference:
                found = differences(outputs["reference"], outputs["current"])
                unit["identical"] = not found
                unit["differences"] = found[:20]
                identical &= not found
            units.append(unit)
            print(
                f"{task} seed {seed}: "
                + ", ".join(
                    f"{n} {s:.1f} s ({unit['cpu_seconds'][n]:.1f} s CPU)"
                    for n, s in unit["seconds"].items()
                )
                + ("" if not args.reference else f", identical: {unit.get('identical')}"),
                flush=True,
            )
    per_task: dict[str, dict[str, float]] = {}
    per_task_cpu: dict[str, dict[str, float]] = {}
    for name in trees:
        for task in args.tasks.split(","):
            of_task = [u for u in units if u["task"] == task]
            per_task.setdefault(task, {})[name] = statistics.median(
                u["seconds"][name] for u in of_task
            )
            per_task_cpu.setdefault(task, {})[name] = statistics.median(
                u["cpu_seconds"][name] for u in of_task
            )
    # every task x full_seeds units, `jobs` at a time on as many free cores, balanced (a
    # lower bound by up to one unit)
    extrapolated = {
        name: sum(by[name] for by in per_task_cpu.values()) * args.full_seeds / args.jobs / 60.0
        for name in trees
    }
    document = {
        "config": args.config,
        "seeds": args.seeds or [0, 1],
        "methods": args.methods or "all of the config's",
        "reference": args.reference,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "units": units,
        "median_unit_seconds": per_task,
        "median_unit_cpu_seconds": per_task_cpu,
        "full_run_minutes": extrapolated,
        "full_run_assumes": (
            f"{args.full_seeds} seeds per task, {args.jobs} workers on as many free cores "
            "(from the units' CPU seconds)"
        ),
        "identical": identical if args.reference else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}; full run about {extrapolated} minutes")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
