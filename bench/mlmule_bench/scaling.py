"""How the simulation's wall time grows with the number of homes: one seed of one task, a few
methods, for each size; the world, data and contacts timed apart from each method's run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import BenchConfig
from .plots import _save, scaling
from .results import write_json
from .run import run_task
from .training import make_executor

TASK = "occupancy"
METHODS = ("local", "fedavg", "mlmule")


def run_scaling(
    config: BenchConfig,
    homes: Sequence[int],
    out: Path,
    *,
    days: int | None,
    backend: str,
    ray_address: str | None,
    quiet: bool,
) -> int:
    methods = tuple(m for m in config.methods if m in METHODS) or METHODS
    days = days or config.days
    seed = config.seeds[0]
    executor = make_executor(backend, ray_address=ray_address)
    rows: list[dict[str, Any]] = []
    try:
        for count in homes:
            sized = config.with_overrides(
                homes=count, days=days, tasks=(TASK,), methods=methods, seeds=(seed,)
            )
            began = time.perf_counter()
            outcome = run_task(sized, TASK, seed, executor, methods=methods)
            total = time.perf_counter() - began
            row: dict[str, Any] = {
                "homes": count,
                "units": outcome.units,
                "visits": outcome.visits,
                "data_seconds": outcome.data_seconds,
                "method_seconds": {run.method: run.wall_seconds for run in outcome.runs},
                "final": {run.method: run.final for run in outcome.runs},
                "total_seconds": total,
            }
            rows.append(row)
            if not quiet:
                print(
                    f"{count} homes: {outcome.units} spaces, {outcome.visits} visits, "
                    f"data {outcome.data_seconds:.0f} s, "
                    + ", ".join(f"{m} {s:.0f} s" for m, s in row["method_seconds"].items())
                    + f", total {total:.0f} s"
                )
    finally:
        executor.close()
    document = {
        "task": TASK,
        "days": days,
        "seed": seed,
        "backend": backend,
        "methods": list(methods),
        "runs": rows,
    }
    write_json(out, document)
    _save(scaling(document), out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
