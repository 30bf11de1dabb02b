"""One task on one seed, every method: world, data, contacts, then each method from scratch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .config import BenchConfig
from .data import TaskData, build_task, build_world, held_out_start
from .methods import METHOD_CLASSES
from .mobility import (
    Meeting,
    Visit,
    affinity,
    exchange_places,
    meetings,
    relay_places,
    visits,
)
from .simulate import MethodRun, Simulation
from .training import Executor

Progress = Callable[[str, int], Iterable[int]]


@dataclass
class TaskRun:
    """Every method's run on one task and seed, and what they all shared."""

    task: str
    seed: int
    units: int
    learners: int
    visits: int
    meetings: int
    relays: int
    data_seconds: float
    runs: list[MethodRun] = field(default_factory=list)
    affinity: dict[tuple[str, str], int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)  # home -> the world's affinity group

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "seed": self.seed,
            "units": self.units,
            "learners": self.learners,
            "visits": self.visits,
            "meetings": self.meetings,
            "relays": self.relays,
            "data_seconds": self.data_seconds,
            "affinity": [[a, b, n] for (a, b), n in sorted(self.affinity.items())],
            "groups": self.groups,
            "runs": [
                {
                    "method": run.method,
                    "hours": run.hours,
                    "scores": run.scores,
                    "final": run.final,
                    "global_scores": run.global_scores,
                    "final_global": run.final_global,
                    "model_changes": run.model_changes,
                    "regressions": run.regressions,
                    "final_units": run.final_units,
                    "ledger": run.ledger.as_dict(),
                    "wall_seconds": run.wall_seconds,
                    "details": run.details,
                }
                for run in self.runs
            ],
        }


def run_task(
    config: BenchConfig,
    task: str,
    seed: int,
    executor: Executor,
    *,
    methods: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> TaskRun:
    began = time.perf_counter()
    world = build_world(config, seed)
    data: TaskData = build_task(config, world, task, seed)
    end = held_out_start(config, world)
    visit_list: list[Visit] = visits(config, world, data, end)
    chosen = list(methods or config.methods)
    # gossip meets where ML Mule could exchange, no more
    meeting_list: list[Meeting] = (
        meetings(
            world,
            end,
            config.exchange_cooldown_hours,
            places=exchange_places(config, world, data),
        )
        if "gossip" in chosen
        else []
    )
    relays = relay_places(config, world)
    phones = {person.phone_id: person.home_id for person in world.people}
    simulation = Simulation(
        config,
        data,
        seed=seed,
        start=world.start,
        end=end,
        homes=[home.home_id for home in world.homes],
        phones=phones,
        visits=visit_list,
        meetings=meeting_list,
        executor=executor,
        relays=relays,
        progress=progress,
    )
    result = TaskRun(
        task=task,
        seed=seed,
        units=len(data.units),
        learners=len(data.learners),
        visits=len(visit_list),
        meetings=len(meeting_list),
        relays=len(relays),
        data_seconds=time.perf_counter() - began,
        affinity=affinity(visit_list),
        groups={home.home_id: home.group for home in world.homes},
    )
    done: dict[str, MethodRun] = {}
    for name in chosen:
        twin = done.get(METHOD_CLASSES[name].same_run_as(data) or "")
        done[name] = simulation.run(METHOD_CLASSES[name]) if twin is None else reused(twin, name)
        result.runs.append(done[name])
    return result


def reused(run: MethodRun, method: str) -> MethodRun:
    """`run` under another method's name, for a method that would have repeated it: no time
    spent, and `details.same_run_as` says whose run it is."""
    return replace(
        run,
        method=method,
        wall_seconds=0.0,
        details={**run.details, "same_run_as": run.method},
    )
