"""A cross-check against a real federated-learning framework: Flower's FedAvg, in Flower's own
simulation engine, on the same digits partitions, starting model, rounds, trainer and seeds as
our FedAvg. Our FedAvg passes if its final personalised macro-F1 agrees with Flower's within the
seed-to-seed noise.

Flower's clients train with the product's numpy trainer (the same round as ours, down to the
seed); the server side (client sampling, the weighted average of the round) is Flower's.
Needs `flwr` and `ray` (`pip install "flwr[simulation]"`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from mlmule_core.host import score
from mlmule_core.promotion import DEFAULT_HOLDOUT_FRACTION, split_holdout
from mlmule_core.train_numpy import train
from mlmule_world.config import stream

from .config import HOUR, BenchConfig
from .data import DIGITS_KEY, Unit, build_task, build_world
from .results import spread, write_json
from .run import run_task
from .training import SINGLE_THREADED, LocalExecutor

TASK = "digits"


def flower_fedavg(config: BenchConfig, seed: int) -> dict[str, Any]:
    """Flower's FedAvg on the digits partitions of `seed`; the per-round mean score."""
    import flwr  # noqa: PLC0415 - optional dependency
    from flwr.client import NumPyClient  # noqa: PLC0415
    from flwr.common import Context, ndarrays_to_parameters  # noqa: PLC0415
    from flwr.server import ServerConfig  # noqa: PLC0415
    from flwr.server.strategy import FedAvg  # noqa: PLC0415
    from flwr.simulation import start_simulation  # noqa: PLC0415

    world = build_world(config, seed)
    data = build_task(config, world, TASK, seed)
    architecture = data.architectures[DIGITS_KEY]
    spec, initial = architecture.spec, architecture.initial
    names = list(initial)
    units: list[Unit] = list(data.units)
    budget = config.budget
    min_samples = config.min_samples(TASK)
    # our FedAvg's rounds: one per budget period of the learning time
    rounds = int(config.learn_seconds // (budget.period_hours * HOUR))

    class DigitsClient(NumPyClient):
        def __init__(self, unit: Unit) -> None:
            self.unit = unit

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            weights = dict(zip(names, (np.asarray(p, np.float32) for p in parameters), strict=True))
            # what the home holds when our FedAvg's round of this period runs (its last hour)
            period = int(config["server_round"]) - 1
            now = world.start + (period + 1) * budget.period_hours * HOUR - 1.0
            x, y, _ = self.unit.window(now, budget.history_days * 24 * HOUR)
            if y.size < min_samples:
                return parameters, 0, {}  # as in our simulation: too little data, no round
            # the seed our simulation gives this learner's round in this period
            round_seed = int(
                stream(seed, "train", self.unit.learner, DIGITS_KEY, period).integers(2**31)
            )
            # as `ModelHost.start_training`: the latest fifth is held out for the promotion
            # rule; our server weighs an update by the round's whole window, so this does too
            samples = int(y.size)
            x, y, _ = split_holdout(x, y, DEFAULT_HOLDOUT_FRACTION)
            trained, _ = train(spec, weights, x, y, budget.train_config(round_seed))
            return [trained[name] for name in names], samples, {}

    def client_fn(context: Context) -> Any:
        return DigitsClient(units[int(context.node_config["partition-id"])]).to_client()

    curve: list[float] = []

    def evaluate(
        server_round: int, parameters: list[np.ndarray], _: dict[str, Any]
    ) -> tuple[float, dict[str, Any]]:
        weights = dict(zip(names, (np.asarray(p, np.float32) for p in parameters), strict=True))
        mean = float(np.mean([score(spec, weights, u.x_test, u.y_test) for u in units]))
        curve.append(mean)
        return 1.0 - mean, {"score": mean, "round": server_round}

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=len(units),
        min_available_clients=len(units),
        initial_parameters=ndarrays_to_parameters([initial[name] for name in names]),
        evaluate_fn=evaluate,
        on_fit_config_fn=lambda server_round: {"server_round": server_round},
    )
    began = time.perf_counter()
    start_simulation(
        client_fn=client_fn,
        num_clients=len(units),
        config=ServerConfig(num_rounds=rounds),
        strategy=strategy,
        client_resources={"num_cpus": 1},
        ray_init_args={
            "include_dashboard": False,
            "log_to_driver": False,
            "runtime_env": {"env_vars": SINGLE_THREADED},
        },
    )
    return {
        "flower_version": flwr.__version__,
        "rounds": rounds,
        "clients": len(units),
        "curve": curve,  # round 0 (the initial model) first
        "final": curve[-1],
        "wall_seconds": time.perf_counter() - began,
    }


def run_flower_check(config: BenchConfig, out: Path, *, backend: str, quiet: bool) -> int:
    del backend, quiet  # Flower brings its own engine
    config = config.with_overrides(tasks=(TASK,), methods=("fedavg",))
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for seed in config.seeds:
        run = run_task(config, TASK, seed, LocalExecutor(), methods=["fedavg"]).runs[0]
        # Flower scores its global model
        ours.append(
            {
                "curve": run.global_scores,
                "final": run.global_scores[-1],
                "wall_seconds": run.wall_seconds,
            }
        )
        theirs.append(flower_fedavg(config, seed))
    our_finals = [entry["final"] for entry in ours]
    flower_finals = [entry["final"] for entry in theirs]
    differences = [a - b for a, b in zip(our_finals, flower_finals, strict=True)]
    # noise: how much our FedAvg's final score moves from seed to seed
    noise = float(np.std(our_finals, ddof=1)) if len(our_finals) > 1 else 0.0
    agree = abs(float(np.mean(differences))) <= max(noise, 1e-3)
    document = {
        "task": TASK,
        "seeds": list(config.seeds),
        "config": config.to_json(),
        "ours": {"final": spread(our_finals), "runs": ours},
        "flower": {"final": spread(flower_finals), "runs": theirs},
        "difference": spread(differences),
        "noise": noise,
        "agree": agree,
    }
    write_json(out, document)
    print(
        f"our FedAvg {np.mean(our_finals):.4f}, Flower's {np.mean(flower_finals):.4f}, "
        f"mean difference {np.mean(differences):+.4f}, seed noise {noise:.4f}: "
        f"{'agree' if agree else 'DISAGREE'}; wrote {out}"
    )
    return 0 if agree else 1
