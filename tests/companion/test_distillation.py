"""The distillation term of both trainers: soft targets as weighted hard rows
(train_numpy.Distillation, `soft_rows`)."""

from __future__ import annotations

import numpy as np
import pytest
from mlmule_core.errors import TrainingError
from mlmule_core.families import FamilySpec, forward, logits, trainable_names
from mlmule_core.train_numpy import (
    Distillation,
    TrainConfig,
    Trainer,
    soft_rows,
    weighted_loss,
)
from mlmule_models.train import TorchBackend
from test_train_gradients import BINARY, MULTI, random_problem


def proxy(spec: FamilySpec, seed: int, rows: int = 17, weight: float = 0.7) -> Distillation:
    rng = np.random.default_rng(500 + seed)
    x = rng.normal(scale=2.0, size=(rows, spec.n_inputs)).astype(np.float32)
    if spec.binary:
        targets = rng.uniform(0.05, 0.95, size=(rows, 1)).astype(np.float32)
    else:
        raw = rng.uniform(0.2, 1.0, size=(rows, spec.n_classes))
        targets = (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)
    return Distillation(x, targets, weight)


def soft_cross_entropy(spec: FamilySpec, raw: np.ndarray, targets: np.ndarray) -> float:
    """The mean cross-entropy of logits to target probabilities, in float64."""
    z, t = raw.astype(np.float64), targets.astype(np.float64)
    if spec.binary:
        log_p, log_not_p = -np.logaddexp(0, -z[:, 0]), -np.logaddexp(0, z[:, 0])
        return float(np.mean(-(t[:, 0] * log_p + (1 - t[:, 0]) * log_not_p)))
    log_q = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
    return float(np.mean(-(t * log_q).sum(axis=1)))


@pytest.mark.parametrize("spec", [BINARY, MULTI], ids=["binary", "multi"])
def test_soft_rows_give_the_cross_entropy_to_the_soft_targets(spec: FamilySpec) -> None:
    weights, _, _, _ = random_problem(spec, 3)
    distill = proxy(spec, 3, weight=0.5)
    rows, labels, sample_weight = soft_rows(spec.binary, distill, labelled_mass=40.0)
    # they weigh `weight` times the labelled rows in all
    assert float(sample_weight.sum()) == pytest.approx(0.5 * 40.0, rel=1e-5)
    raw = logits(spec, weights, rows, calibrated=False)
    expected = soft_cross_entropy(
        spec, logits(spec, weights, distill.x, calibrated=False), distill.targets
    )
    assert weighted_loss(spec, raw, labels, sample_weight) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("spec", [BINARY, MULTI], ids=["binary", "multi"])
def test_distilling_runs_match_between_numpy_and_torch(spec: FamilySpec) -> None:
    weights, x, y, _ = random_problem(spec, 11, batch=64)
    config = TrainConfig(learning_rate=0.01, max_epochs=3, val_fraction=0.0, seed=2)
    distill = proxy(spec, 11, rows=24)
    numpy_weights, _ = Trainer(spec, weights, x, y, config, distill=distill).result()
    torch_weights, _ = Trainer(
        spec, weights, x, y, config, distill=distill, backend=TorchBackend
    ).result()
    for name in trainable_names(spec):
        np.testing.assert_allclose(
            numpy_weights[name], torch_weights[name], rtol=1e-3, atol=1e-5, err_msg=name
        )
    plain, _ = Trainer(spec, weights, x, y, config).result()
    assert any(not np.allclose(plain[n], numpy_weights[n]) for n in trainable_names(spec))


def test_distillation_pulls_the_model_towards_the_targets_in_chunks() -> None:
    spec = MULTI
    weights, x, y, _ = random_problem(spec, 4, batch=200)
    rows = proxy(spec, 4, rows=128).x
    # targets: one class everywhere, which the labelled data (random labels) never says
    targets = np.zeros((len(rows), spec.n_classes), np.float32)
    targets[:, 2] = 1.0
    config = TrainConfig(max_epochs=20, patience=100, seed=3, val_fraction=0.0)
    plain = Trainer(spec, weights, x, y, config).result()[0]
    trainer = Trainer(spec, weights, x, y, config, distill=Distillation(rows, targets, 2.0))
    chunks = 0
    while not trainer.run(max_steps=7):
        chunks += 1
    distilled = trainer.result()[0]
    assert chunks > 3
    share = forward(spec, distilled, rows)[:, 2].mean()
    assert share > 0.6
    assert share > forward(spec, plain, rows)[:, 2].mean() + 0.3
    # weight 0 adds no row: training exactly as without it
    silent = Trainer(spec, weights, x, y, config, distill=Distillation(rows, targets, 0.0))
    for name, value in silent.result()[0].items():
        np.testing.assert_allclose(value, plain[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_bad_distillation_inputs_are_refused() -> None:
    x = np.zeros((4, MULTI.n_inputs), np.float32)
    with pytest.raises(TrainingError):
        Distillation(x, np.full((4, 5), 0.2, np.float32), weight=-1.0)
    with pytest.raises(TrainingError):
        Distillation(x, np.full((4, 5), np.nan, np.float32))
    with pytest.raises(TrainingError):
        Distillation(x, np.full((3, 5), 0.2, np.float32))
    weights, xs, ys, _ = random_problem(MULTI, 1)
    with pytest.raises(TrainingError) as refused:
        Trainer(MULTI, weights, xs, ys, distill=Distillation(x, np.full((4, 3), 0.3, np.float32)))
    assert refused.value.reason == "bad_shape"
