"""The discrete-event simulation: one method, one task, one seed, from the world's start to the
held-out future.

Events in time order: phones entering spaces (visits), phones meeting (for gossip), hourly
ticks (FedAsync's client slots, FedAvg's rounds), and the end of each budget period, when every
learner that has not trained in it trains (nightly training) and every unit is scored on its
held-out future. Visits that share no space and no phone are independent, so they run as one
batch and their training rounds go to the executor together.

Every unit is scored two ways: *personalised*, with the model its learner serves (after the
product's promotion rule where the product's host decides), and *global*, with the server's
model, for the methods that have one. After every simulated hour, each unit whose served model
changed is checked against the next day's ground truth: the new model scoring lower than the
one it replaced by more than the tolerance is a *regression*.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlmule_core.families import FamilySpec
from mlmule_core.host import score
from mlmule_core.train_numpy import Distillation, TrainReport
from mlmule_core.weights import Weights
from mlmule_world.config import stream

from .config import HOUR, BenchConfig
from .data import TaskData, Unit
from .mobility import Meeting, Visit
from .peers import Budget, Ledger, Peer, Training, TrainNeed
from .training import Executor

# Scratch space for the hosts' stores: memory-backed where the system has it (`mkdtemp` makes
# each run's directory private).
_SHM = Path("/dev/shm")  # noqa: S108
SCRATCH = _SHM if _SHM.is_dir() else None
# (learner, context key, now) -> the distillation term of its next round, or None
DistillationFor = Callable[[Peer, str, float], Distillation | None]


@dataclass
class MethodRun:
    """What one method did on one task and seed."""

    method: str
    task: str
    seed: int
    hours: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # personalised
    global_scores: list[float] = field(default_factory=list)  # empty: no global model
    final_units: dict[str, float] = field(default_factory=dict)
    model_changes: int = 0  # (unit, hour) in which the served model changed
    regressions: int = 0  # of those, the ones that scored lower on the next day
    ledger: Ledger = field(default_factory=Ledger)
    wall_seconds: float = 0.0
    details: dict[str, object] = field(default_factory=dict)

    @property
    def final(self) -> float:
        return self.scores[-1]

    @property
    def final_global(self) -> float | None:
        return self.global_scores[-1] if self.global_scores else None


class Simulation:
    """Everything the methods share for one task and seed: data, contacts, budget, executor."""

    def __init__(
        self,
        config: BenchConfig,
        data: TaskData,
        *,
        seed: int,
        start: float,
        end: float,
        homes: Sequence[str],
        phones: Mapping[str, str],
        visits: Sequence[Visit],
        meetings: Sequence[Meeting],
        executor: Executor,
        relays: Sequence[str] = (),
        progress: Callable[[str, int], Iterable[int]] | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.seed = seed
        self.start = start
        self.end = end
        self.homes = list(homes)
        self.phones = dict(phones)  # phone -> its owner's home
        self.visits = list(visits)
        self.meetings = list(meetings)
        self.relays = list(relays)  # shared places that are relay spaces
        self.min_samples = config.min_samples(data.task)
        self.executor = executor
        self.period = config.budget.period_hours * HOUR
        self.history = config.budget.history_days * 24 * HOUR
        self.units_by_learner: dict[str, list[Unit]] = {}
        for unit in data.units:
            self.units_by_learner.setdefault(unit.learner, []).append(unit)
        self._progress = progress
        self.budget = Budget(start, self.period)
        self.ledger = Ledger()
        # a method whose learners distil sets this: the term a learner's next round trains
        # towards (None: a plain round)
        self.distillation_for: DistillationFor | None = None

    # -- training, shared by every method

    def need(self, peer: Peer, context_key: str, unit: Unit, now: float) -> TrainNeed | None:
        """A round for `peer` on `unit`'s recent data, if its budget and data allow one."""
        if not self.budget.available(peer.name, context_key, now):
            return None
        x, y, newest = unit.window(now, self.history)
        if y.size < self.min_samples:
            return None
        self.budget.spend(peer.name, context_key, now)
        seed = int(
            stream(self.seed, "train", peer.name, context_key, self.budget.period(now)).integers(
                2**31
            )
        )
        return TrainNeed(
            peer=peer,
            context_key=context_key,
            x=x,
            y=y,
            data_time=newest,
            config=self.config.budget.train_config(seed),
            now=now,
            distill=(
                None
                if self.distillation_for is None
                else self.distillation_for(peer, context_key, now)
            ),
        )

    def train(self, needs: Sequence[TrainNeed]) -> list[TrainReport | None]:
        """Run the rounds; a round whose result could not be committed reports None."""
        reports: list[TrainReport | None] = []
        for outcome in self.executor.run(needs):
            if isinstance(outcome, TrainReport):
                self.ledger.trained(outcome)
                reports.append(outcome)
            else:
                self.ledger.reject(f"training_{outcome.reason}")
                reports.append(None)
        return reports

    def drive(self, trainings: Iterable[Training]) -> None:
        """Run encounter generators side by side, their training rounds batched."""
        pending: list[tuple[Training, TrainNeed]] = []
        for generator in trainings:
            need = next(generator, None)
            if need is not None:
                pending.append((generator, need))
        while pending:
            reports = self.train([need for _, need in pending])
            following = []
            for (generator, _), report in zip(pending, reports, strict=True):
                with contextlib.suppress(StopIteration):
                    following.append((generator, generator.send(report)))
            pending = following

    # -- the run

    def run(self, factory: Callable[[Simulation, Path], Method]) -> MethodRun:
        """Run one method from scratch: fresh hosts in a scratch directory, fresh budget."""
        self.budget = Budget(self.start, self.period)
        self.ledger = Ledger()
        self.distillation_for = None
        root = scratch_dir("mlmule-bench-")
        try:
            began = time.perf_counter()
            method = factory(self, root)
            result = self._run(method)
            result.wall_seconds = time.perf_counter() - began
        finally:
            remove_scratch(root)
        return result

    def _run(self, method: Method) -> MethodRun:
        result = MethodRun(method.name, self.data.task, self.seed, ledger=self.ledger)
        self._evaluate(method, self.start, result)
        served = {unit.unit_id: method.model_for(unit) for unit in self.data.units}
        hours = round((self.end - self.start) / HOUR)
        visits = iter(self.visits)
        meetings = iter(self.meetings if method.uses_meetings else ())
        next_visit = next(visits, None)
        next_meeting = next(meetings, None)
        ticks = (
            self._progress(f"{self.data.task}/{method.name}/seed {self.seed}", hours)
            if self._progress
            else range(hours)
        )
        for hour in ticks:
            tick = self.start + (hour + 1) * HOUR
            batch: list[Visit] = []
            busy: set[str] = set()
            while True:
                visit_time = next_visit.time if next_visit is not None else tick
                meeting_time = next_meeting.time if next_meeting is not None else tick
                if min(visit_time, meeting_time) >= tick:
                    break
                if next_meeting is not None and meeting_time < visit_time:
                    method.on_visits(batch)
                    batch, busy = [], set()
                    method.on_meeting(next_meeting)
                    next_meeting = next(meetings, None)
                    continue
                assert next_visit is not None
                resources = {f"{next_visit.home}/{next_visit.space}", next_visit.phone}
                if resources & busy:
                    method.on_visits(batch)
                    batch, busy = [], set()
                batch.append(next_visit)
                busy |= resources
                next_visit = next(visits, None)
            method.on_visits(batch)
            method.on_hour(tick)
            if self._period_ends(tick):
                method.on_period_end(tick - 1.0)  # still inside the period that ends
            self._check_changes(method, tick, served, result)
            if self._evaluation_due(tick):
                self._evaluate(method, tick, result)
        if result.hours[-1] != (self.end - self.start) / HOUR:
            self._evaluate(method, self.end, result)
        result.final_units = {unit.unit_id: self.score(method, unit) for unit in self.data.units}
        result.details = method.details()
        return result

    def score(self, method: Method, unit: Unit) -> float:
        spec, weights = method.model_for(unit)
        return score(spec, weights, unit.x_test, unit.y_test)

    def _check_changes(
        self,
        method: Method,
        now: float,
        served: dict[str, tuple[FamilySpec, Weights]],
        result: MethodRun,
    ) -> None:
        """Judge every served model that changed in the last hour against the one before it,
        on the next day's ground truth (the held-out future where a day brings too little)."""
        tolerance = self.config.regression_tolerance
        for unit in self.data.units:
            before = served[unit.unit_id]
            now_served = method.model_for(unit)
            if now_served[1] is before[1]:
                continue
            served[unit.unit_id] = now_served
            result.model_changes += 1
            x, y = unit.next_day(now)
            if y.size < self.config.regression_min_samples:
                x, y = unit.x_test, unit.y_test
            old = score(before[0], before[1], x, y)
            new = score(now_served[0], now_served[1], x, y)
            result.regressions += new < old - tolerance

    def _period_ends(self, tick: float) -> bool:
        return (
            abs(((tick - self.start) / self.period) - round((tick - self.start) / self.period))
            < 1e-9
        )

    def _evaluation_due(self, tick: float) -> bool:
        every = self.config.eval_every_hours * HOUR
        return abs(((tick - self.start) / every) - round((tick - self.start) / every)) < 1e-9

    def _evaluate(self, method: Method, now: float, result: MethodRun) -> None:
        scores = [self.score(method, unit) for unit in self.data.units]
        result.hours.append((now - self.start) / HOUR)
        result.scores.append(float(np.mean(scores)))
        if method.has_global:
            global_scores = []
            for unit in self.data.units:
                spec, weights = method.global_model(unit)
                global_scores.append(score(spec, weights, unit.x_test, unit.y_test))
            result.global_scores.append(float(np.mean(global_scores)))


class Method:
    """A learning method: what it does at each event, and which model each unit uses.

    Subclasses (in `methods.py`) build their peers in `__init__` from the simulation.
    """

    name = "method"
    uses_meetings = False
    has_global = False  # a server's model, scored beside the personalised ones

    def __init__(self, sim: Simulation, root: Path) -> None:
        self.sim = sim
        self.root = root

    @classmethod
    def same_run_as(cls, data: TaskData) -> str | None:
        """The method whose run on `data` this one's would repeat step for step (its knob has
        no effect on that task), so that run is reused instead of repeated; None to run."""
        del data
        return None

    def on_visits(self, visits: Sequence[Visit]) -> None:
        """A batch of visits sharing no space and no phone."""

    def on_meeting(self, meeting: Meeting) -> None:
        """Two phones start being at the same place."""

    def on_hour(self, now: float) -> None:
        """Every simulated hour."""

    def on_period_end(self, now: float) -> None:
        """Nightly: learners that have not trained in this period train now."""

    def model_for(self, unit: Unit) -> tuple[FamilySpec, Weights]:
        """The model `unit`'s learner serves now: its personalised score."""
        raise NotImplementedError

    def global_model(self, unit: Unit) -> tuple[FamilySpec, Weights]:
        """The global model of `unit`'s key (only where `has_global`)."""
        raise NotImplementedError

    def details(self) -> dict[str, object]:
        return {}


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


def remove_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
