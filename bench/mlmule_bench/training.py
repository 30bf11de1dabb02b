"""Where training rounds run: in this process, or as Ray tasks on a Ray cluster.

The simulation hands over every round that can run at the same moment (the nightly rounds of
all spaces, the rounds of encounters that happen together) as one batch. Either way a round is
the product's numpy trainer on the host's current weights, and its result is committed through
the host's own `TrainingJob`, so versions, lineage and sample counts are the product's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol, cast

import numpy as np
from mlmule_core.errors import MlmuleError
from mlmule_core.host import FineTuning, TrainingJob
from mlmule_core.promotion import HeldOut, split_holdout
from mlmule_core.train_numpy import Trainer, TrainReport, train
from mlmule_core.weights import Weights, copy_weights

from .peers import TrainNeed

# Small matrices train several times faster on one BLAS thread than on many fighting for the
# cores; Ray workers get the same setting.
SINGLE_THREADED = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


# A round's report, or why its result could not be committed (the host keeps its model).
Outcome = TrainReport | MlmuleError


class Executor(Protocol):
    name: str

    def run(self, needs: Sequence[TrainNeed]) -> list[Outcome]:
        """Run the rounds, commit each as its host's next version, return the outcomes."""

    def close(self) -> None: ...


class LocalExecutor:
    """Rounds one after another in this process: `ModelHost.train`, exactly as HA runs it."""

    name = "local"

    def run(self, needs: Sequence[TrainNeed]) -> list[Outcome]:
        return [self._one(need) for need in needs]

    @staticmethod
    def _one(need: TrainNeed) -> Outcome:
        try:
            return need.peer.host.train(
                need.context_key,
                need.x,
                need.y,
                config=need.config,
                data_time=need.data_time,
                now=need.now,
                distill=need.distill,
            )
        except MlmuleError as err:  # e.g. a sample count past what a snapshot header holds
            return err

    def close(self) -> None:
        return None


class _FinishedRun:
    """A training run that already happened elsewhere, for the host's `TrainingJob` to commit."""

    done = True

    def __init__(self, weights: Weights, report: TrainReport) -> None:
        self._weights = weights
        self._report = report

    def run(self, *, max_seconds: float | None = None, max_steps: int | None = None) -> bool:
        del max_seconds, max_steps
        return True

    def result(self) -> tuple[Weights, TrainReport]:
        return copy_weights(self._weights), self._report


class RayExecutor:
    """Batches of rounds as Ray tasks, on a local Ray instance or the cluster at `address`.

    A batch of one runs locally: the result is the same and a task costs more than the round;
    so do distilling rounds (the remote task is plain training).
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        import ray  # noqa: PLC0415 - optional: only this backend needs it

        self._ray: Any = ray
        if not ray.is_initialized():
            ray.init(
                address=address,
                num_cpus=num_cpus if address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": SINGLE_THREADED},
            )
        # The task is the core's own `train` (what `ModelHost.train` runs), so workers need the
        # project installed, not this package.
        self._remote: Any = ray.remote(num_cpus=1)(train)
        self._local = LocalExecutor()
        self.batches = 0  # batches that went out as Ray tasks

    def run(self, needs: Sequence[TrainNeed]) -> list[Outcome]:
        distilling = [need for need in needs if need.distill is not None]
        if distilling:
            plain = [need for need in needs if need.distill is None]
            by_need = dict(
                zip(
                    map(id, [*plain, *distilling]),
                    [*self.run(plain), *self._local.run(distilling)],
                    strict=True,
                )
            )
            return [by_need[id(need)] for need in needs]
        if len(needs) < 2:
            return self._local.run(needs)
        self.batches += 1
        slots = [need.peer.host.slot(need.context_key) for need in needs]
        # as `ModelHost.start_training`: the latest samples are held out for the promotion rule,
        # and a merge the rule refused is fine-tuned beside the served model
        refused = [need.peer.host.take_refused_merge(need.context_key) for need in needs]
        splits = [
            split_holdout(need.x, need.y, need.peer.host.settings.promotion.holdout_fraction)
            for need in needs
        ]
        futures = [
            [
                self._remote.remote(slot.spec, start, x, y, need.config)
                for start in (slot.weights, *(() if merge is None else (merge.weights,)))
            ]
            for slot, merge, need, (x, y, _) in zip(slots, refused, needs, splits, strict=True)
        ]
        outcomes: list[Outcome] = []
        for need, merge, (_, y, window), runs in zip(needs, refused, splits, futures, strict=True):
            (weights, report), *tuned = self._ray.get(runs)
            # the host's own job commits: base-version check, promotion, metadata, signing
            job = TrainingJob(
                need.peer.host,
                need.context_key,
                cast("Trainer", _FinishedRun(weights, report)),
                samples=int(np.asarray(y).shape[0]),
                data_time=need.data_time,
                window=window,
                labelled=HeldOut.of(need.x, need.y),
                fine_tuning=None
                if merge is None
                else FineTuning(merge, cast("Trainer", _FinishedRun(*tuned[0]))),
            )
            try:
                outcomes.append(job.commit(now=need.now))
            except MlmuleError as err:
                outcomes.append(err)
        return outcomes

    def close(self) -> None:
        self._ray.shutdown()


def make_executor(backend: str, *, ray_address: str | None = None) -> Executor:
    if backend == "ray":
        return RayExecutor(address=ray_address or os.environ.get("RAY_ADDRESS"))
    return LocalExecutor()
