"""`python -m mlmule_bench [run|sweep|flower|scaling|plot|table] ...` (run is the default).

    run      every task x seed x method of a configuration -> learning.json and its figures
    sweep    the same for each value of one setting -> learning_sweep_<setting>.json, e.g.
             --sweep relays=true,false             relay spaces on and off
             --sweep mule_carries=answer,merge     what a mule carries
             --sweep mlmule_options.staleness=polynomial,constant   the staleness rule
             --sweep mlmule_options.half_life=21600,86400           its half-life (seconds)
             --sweep promotion.confidence=0,1      the promotion rule (also tolerance,
                                                   keep_equal_predictions)
             --sweep visit_rate=1,4                how often phones visit other homes (guest
                                                   share); a strategy's own guest-share bound
                                                   sweeps as mlmule_options.<its option>
             (a shared body with per-kind heads is not a sweep: every task has one context key)
    flower   our FedAvg against Flower's on the same partitions and budget -> learning_flower.json
    scaling  wall time for a growing number of homes -> learning_scaling.json and a figure
    plot     redraw the figures of an existing learning.json
    table    print the summary of an existing learning.json as Markdown tables, and issue 12's
             targets for mlmule: met or not

Run it from the companion environment with `bench/` on the path (the Makefile does both):
`PYTHONPATH=bench $(scripts/ensure-env.sh companion)/bin/python -m mlmule_bench --config tiny`.
"""

from __future__ import annotations

import os

from .training import SINGLE_THREADED

# Before numpy loads BLAS: small models train several times faster on one thread per process.
for _name, _value in SINGLE_THREADED.items():
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from tqdm import tqdm  # type: ignore[import-untyped]  # noqa: E402

from .config import (  # noqa: E402
    BACKENDS,
    METHODS,
    TASKS,
    BenchConfig,
    BenchConfigError,
    load_config,
)

RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMANDS = ("run", "sweep", "flower", "scaling", "plot", "table")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlmule_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the benchmark")
    _common(run)
    run.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "learning.json",
        help="the JSON to write; figures go beside it",
    )
    run.add_argument(
        "--jobs", type=int, default=1, help="(task, seed) pairs run in this many processes at once"
    )
    run.add_argument("--no-plots", action="store_true")
    run.add_argument(
        "--reuse",
        type=Path,
        help="a learning_runs.json of an earlier run of this configuration: the methods not "
        "run now are taken from it, so a change that touches only some methods reruns those",
    )
    run.add_argument("--emit-runs", type=Path, help=argparse.SUPPRESS)  # for --jobs workers

    sweep = commands.add_parser("sweep", help="run the benchmark for each value of a setting")
    _common(sweep)
    sweep.add_argument(
        "--sweep",
        required=True,
        help="SETTING=V1,V2,...: a configuration key, mlmule_options.<strategy option> or "
        "promotion.<promotion rule option>",
    )
    sweep.add_argument("--out", type=Path, default=None, help="default: learning_sweep_<key>.json")
    sweep.add_argument("--jobs", type=int, default=1)

    flower = commands.add_parser("flower", help="cross-check FedAvg against Flower's")
    _common(flower)
    flower.add_argument("--out", type=Path, default=RESULTS / "learning_flower.json")

    scaling = commands.add_parser("scaling", help="wall time against the number of homes")
    _common(scaling)
    scaling.add_argument("--homes", type=_csv, default=("20", "100", "500"))
    scaling.add_argument("--days", type=int, default=None)
    scaling.add_argument("--out", type=Path, default=RESULTS / "learning_scaling.json")

    plot = commands.add_parser("plot", help="redraw the figures of a learning.json")
    plot.add_argument("--out", type=Path, default=RESULTS / "learning.json")
    table = commands.add_parser("table", help="a learning.json as Markdown tables")
    table.add_argument("--out", type=Path, default=RESULTS / "learning.json")
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="default", help="a preset (default, tiny) or a JSON file of overrides"
    )
    parser.add_argument(
        "--seed",
        type=int,
        action="append",
        dest="seeds",
        help="a seed to run (repeat for several); default: the config's",
    )
    parser.add_argument("--methods", type=_csv, help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--tasks", type=_csv, help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="where training rounds run: this process, or Ray tasks",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="a Ray cluster to join (default: start a local Ray instance)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def configure(args: argparse.Namespace) -> BenchConfig:
    config = load_config(args.config)
    overrides: dict[str, Any] = {}
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.methods:
        overrides["methods"] = args.methods
    if args.tasks:
        overrides["tasks"] = args.tasks
    return config.with_overrides(**overrides) if overrides else config


def progress_bar(quiet: bool) -> Any:
    if quiet:
        return None

    def bar(label: str, hours: int) -> Iterable[int]:
        ticks: Iterable[int] = tqdm(
            range(hours), desc=label, unit="h", leave=False, mininterval=1.0
        )
        return ticks

    return bar


def main(argv: Sequence[str] | None = None) -> int:
    # thousands of promotion decisions per run: counted in the results, not logged one by one
    logging.getLogger("mlmule_core").setLevel(logging.ERROR)
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] not in (*COMMANDS, "-h", "--help"):
        arguments.insert(0, "run")
    args = build_parser().parse_args(arguments)
    if args.command in {"plot", "table"}:
        document = json.loads(args.out.read_text(encoding="utf-8"))
        if args.command == "table":
            from .results import markdown_tables, markdown_targets  # noqa: PLC0415

            print(markdown_tables(document))
            print(markdown_targets(document))
            return 0
        from .plots import plot_all  # noqa: PLC0415

        for path in plot_all(document, args.out.parent):
            print(path)
        return 0
    config = configure(args)
    if args.command == "flower":
        from .flower_check import run_flower_check  # noqa: PLC0415

        return run_flower_check(config, args.out, backend=args.backend, quiet=args.quiet)
    if args.command == "sweep":
        return run_sweep(config, args)
    if args.command == "scaling":
        from .scaling import run_scaling  # noqa: PLC0415

        homes = [int(value) for value in args.homes]
        return run_scaling(
            config,
            homes,
            args.out,
            days=args.days,
            backend=args.backend,
            ray_address=args.ray_address,
            quiet=args.quiet,
        )
    return run(config, args)


def collect_runs(config: BenchConfig, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Every (task, seed) of `config`, here or in `--jobs` worker processes."""
    from .run import run_task  # noqa: PLC0415
    from .training import make_executor  # noqa: PLC0415

    pairs = [(task, seed) for task in config.tasks for seed in config.seeds]
    if args.jobs > 1 and len(pairs) > 1:
        return _in_processes(args, config, pairs, args.jobs, out)
    executor = make_executor(args.backend, ray_address=args.ray_address)
    task_runs = []
    try:
        for task, seed in tqdm(pairs, desc="task x seed", disable=args.quiet or len(pairs) < 2):
            outcome = run_task(config, task, seed, executor, progress=progress_bar(args.quiet))
            task_runs.append(outcome.to_json())
            if not args.quiet:
                _print_task(outcome.to_json())
    finally:
        executor.close()
    return task_runs


def sweep_values(spec: str) -> tuple[str, list[Any]]:
    """`key=v1,v2` -> the key and its values, each read as JSON where it parses as JSON."""
    key, _, text = spec.partition("=")
    if not key or not text:
        raise BenchConfigError(f"--sweep takes KEY=V1,V2,..., not {spec!r}")
    values: list[Any] = []
    for raw in _csv(text):
        try:
            values.append(json.loads(raw))
        except ValueError:
            values.append(raw)
    return key.strip(), values


def swept(config: BenchConfig, key: str, value: Any) -> BenchConfig:
    """`config` with one setting changed (`mlmule_options.<option>` for a strategy option,
    `promotion.<option>` for one of the promotion rule)."""
    document = config.to_json()
    group, _, option = key.partition(".")
    if option and group in {"mlmule_options", "promotion"}:
        return BenchConfig.from_json({**document, group: {**document[group], option: value}})
    return BenchConfig.from_json({**document, key: value})


def run_sweep(config: BenchConfig, args: argparse.Namespace) -> int:
    from .results import check_document, summarise, write_json  # noqa: PLC0415

    key, values = sweep_values(args.sweep)
    out: Path = args.out or RESULTS / f"learning_sweep_{key.replace('.', '_')}.json"
    began = time.perf_counter()
    by_value: dict[str, Any] = {}
    for value in values:
        chosen = swept(config, key, value)
        part_out = out.with_name(f"{out.stem}_{json.dumps(value).strip(chr(34))}.json")
        document = summarise(
            chosen,
            collect_runs(chosen, args, part_out),
            backend=args.backend,
            wall_seconds=time.perf_counter() - began,
        )
        problems = check_document(document)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        shutil.rmtree(_parts_dir(part_out), ignore_errors=True)
        by_value[json.dumps(value)] = {
            "per_method": document["per_method"],
            "config": document["config"],
        }
    write_json(
        out,
        {
            "sweep": key,
            "values": values,
            "seeds": list(config.seeds),
            "metric": {task: document["metric"][task] for task in config.tasks},
            "wall_seconds": time.perf_counter() - began,
            "results": by_value,
        },
    )
    print(f"wrote {out}")
    return 0


def run(config: BenchConfig, args: argparse.Namespace) -> int:
    from .results import check_document, summarise, write_json  # noqa: PLC0415

    began = time.perf_counter()
    task_runs = collect_runs(config, args, args.out)
    if args.emit_runs is not None:
        args.emit_runs.write_text(json.dumps(task_runs), encoding="utf-8")
        return 0
    reused: list[str] = []
    if args.reuse is not None:
        earlier = json.loads(args.reuse.read_text(encoding="utf-8"))["runs"]
        task_runs, reused = with_reused_runs(task_runs, earlier)
        config = config.with_overrides(
            methods=tuple(m for m in METHODS if m in reused or m in config.methods)
        )
    document = summarise(
        config, task_runs, backend=args.backend, wall_seconds=time.perf_counter() - began
    )
    if reused:
        # wall_seconds is this run's alone
        document["reused"] = {"methods": reused, "from": args.reuse.name}
    problems = check_document(document)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    write_json(args.out, document)
    runs_path = args.out.with_name(args.out.stem + "_runs.json")
    write_json(runs_path, {"runs": task_runs})
    shutil.rmtree(_parts_dir(args.out), ignore_errors=True)
    print(f"wrote {args.out} and {runs_path} in {document['wall_seconds']:.0f} s")
    _print_summary(document)
    if not args.no_plots:
        from .plots import plot_all  # noqa: PLC0415

        for path in plot_all(document, args.out.parent):
            print(f"wrote {path}")
    return 0


def with_reused_runs(
    task_runs: list[dict[str, Any]], earlier: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """`task_runs` with the runs of every other method taken from `earlier` runs of the same
    (task, seed), and those methods. The world must be the same: same units and visits."""
    by_pair = {(run["task"], run["seed"]): run for run in earlier}
    order = {method: index for index, method in enumerate(METHODS)}
    reused: set[str] = set()
    combined = []
    for run in task_runs:
        old = by_pair.get((run["task"], run["seed"]))
        if old is None or (old["units"], old["visits"]) != (run["units"], run["visits"]):
            raise BenchConfigError(
                f"{run['task']} seed {run['seed']}: no earlier run of the same world to reuse"
            )
        fresh = {entry["method"] for entry in run["runs"]}
        kept = [entry for entry in old["runs"] if entry["method"] not in fresh]
        reused.update(entry["method"] for entry in kept)
        runs = sorted([*kept, *run["runs"]], key=lambda entry: order[entry["method"]])
        combined.append({**run, "runs": runs})
    return combined, [method for method in METHODS if method in reused]


def _in_processes(
    args: argparse.Namespace,
    config: BenchConfig,
    pairs: list[tuple[str, int]],
    jobs: int,
    out: Path,
) -> list[dict[str, Any]]:
    """Each (task, seed) in its own `python -m mlmule_bench run` process, `jobs` at a time.

    Workers hand back their runs as JSON files in `<out>_parts/`, which outlive a failed or
    interrupted run: pairs already there are not run again. The folder goes once the whole
    document is written.
    """
    parts = _parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    # workers read the whole configuration (overrides and sweeps included) from a file
    config_file = parts / "config.json"
    config_file.write_text(json.dumps(config.to_json()), encoding="utf-8")
    # seed by seed: an interrupted run has whole seeds of every task, not every seed of some
    waiting = [
        pair for pair in sorted(pairs, key=lambda pair: pair[1]) if not _part(parts, *pair).exists()
    ]
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    with tqdm(
        total=len(pairs), initial=len(pairs) - len(waiting), desc="task x seed", disable=args.quiet
    ) as bar:
        while waiting or running:
            while waiting and len(running) < jobs:
                task, seed = waiting.pop(0)
                target = _part(parts, task, seed)
                scratch = target.with_suffix(".tmp")
                command = [
                    sys.executable,
                    "-m",
                    "mlmule_bench",
                    "run",
                    "--config",
                    str(config_file),
                    "--tasks",
                    task,
                    "--seed",
                    str(seed),
                    "--backend",
                    args.backend,
                    "--quiet",
                    "--emit-runs",
                    str(scratch),
                ]
                running.append((subprocess.Popen(command, env=os.environ.copy()), target))  # noqa: S603
                bar.set_postfix_str(", ".join(t.stem for _, t in running), refresh=True)
            time.sleep(0.5)
            for process, target in list(running):
                if process.poll() is None:
                    continue
                running.remove((process, target))
                if process.returncode != 0:
                    for other, _ in running:
                        other.terminate()
                    raise SystemExit(f"a worker failed: {process.args!r}")
                target.with_suffix(".tmp").replace(target)  # complete parts only
                bar.update(1)
    return [run for task, seed in pairs for run in json.loads(_part(parts, task, seed).read_text())]


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.stem + "_parts")


def _part(parts: Path, task: str, seed: int) -> Path:
    return parts / f"{task}-{seed}.json"


def _print_task(task_run: dict[str, Any]) -> None:
    print(
        f"{task_run['task']} seed {task_run['seed']}: {task_run['units']} units, "
        f"{task_run['visits']} visits, {task_run['meetings']} meetings"
    )
    for run in task_run["runs"]:
        ledger = run["ledger"]
        print(
            f"  {run['method']:<17} final {run['final']:.3f}  {ledger['bytes_moved'] / 1e6:8.1f} MB"
            f"  {ledger['exchanges']:6d} exchanges  {run['wall_seconds']:6.1f} s"
        )


def _print_summary(document: dict[str, Any]) -> None:
    for task in document["tasks"]:
        print(f"\n{task} ({document['metric'][task]}, target {document['target'][task]}):")
        print(
            f"  {'method':<18} {'median':>7} {'min':>6} {'max':>6} {'global':>7} {'x local':>8} "
            f"{'t->target h':>11} {'regress':>7} {'MB':>9}"
        )
        for method, by_task in document["per_method"].items():
            entry = by_task.get(task)
            if entry is None:
                continue
            final, ratio = entry["final"], entry["ratio_to_local"]
            hours = entry["time_to_target_hours"]["median"]
            glob = entry["final_global"]
            glob_text = "-" if glob is None else f"{glob['median']:.3f}"
            print(
                f"  {method:<18} {final['median']:7.3f} {final['min']:6.3f} {final['max']:6.3f} "
                f"{glob_text:>7} "
                f"{ratio['median'] if ratio else float('nan'):8.2f} "
                f"{'-' if hours is None else f'{hours:.0f}':>11} "
                f"{entry['regressions']['median']:7.0f} "
                f"{entry['bytes_moved']['median'] / 1e6:9.1f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
