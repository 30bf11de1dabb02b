"""The Ray backend on a local Ray instance: training rounds as Ray tasks, the same results."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
from mlmule_bench.config import PRESETS
from mlmule_bench.run import run_task
from mlmule_bench.training import LocalExecutor, RayExecutor

TINY = PRESETS["tiny"]
METHODS = ["local", "fedavg", "mlmule"]


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[RayExecutor]:
    executor = RayExecutor(num_cpus=2)
    yield executor
    executor.close()


def test_ray_tasks_train_exactly_what_the_local_backend_trains(
    ray_executor: RayExecutor,
) -> None:
    on_ray = run_task(TINY, "occupancy", 0, ray_executor, methods=METHODS)
    here = run_task(TINY, "occupancy", 0, LocalExecutor(), methods=METHODS)
    assert ray.is_initialized()
    for remote, local in zip(on_ray.runs, here.runs, strict=True):
        assert remote.method == local.method
        assert remote.scores == local.scores
        assert remote.final_units == local.final_units
        assert remote.ledger.train_rounds == local.ledger.train_rounds > 0
        assert remote.ledger.bytes_moved == local.ledger.bytes_moved
    # the nightly rounds of all spaces went out as one batch of Ray tasks
    assert ray_executor.batches > 0
