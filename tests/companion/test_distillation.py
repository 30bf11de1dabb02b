"""The distillation term of both trainers (train_numpy.Distillation, the phone's torch step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlmule_core.errors import TrainingError
from mlmule_core.families import FamilySpec, forward, logits, trainable_names
from mlmule_core.train_numpy import (
    Distillation,
    NumpyBackend,
    SoftBatch,
    TrainConfig,
    Trainer,
    loss_and_gradients,
    soft_loss,
)
from mlmule_models.families import FamilyModule
from mlmule_models.train import TorchBackend, weighted_loss
from test_train_gradients import BINARY, MULTI, SPECS, _as32, random_problem

from mule_companion.distill_torch import DistillingTorchBackend
from mule_companion.distill_torch import soft_loss as torch_soft_loss


def soft_batch(spec: FamilySpec, seed: int, rows: int = 17, weight: float = 0.7) -> SoftBatch:
    rng = np.random.default_rng(500 + seed)
    x = rng.normal(scale=2.0, size=(rows, spec.n_inputs)).astype(np.float32)
    if spec.binary:
        targets = rng.uniform(size=(rows, 1)).astype(np.float32)
    else:
        raw = rng.uniform(size=(rows, spec.n_classes))
        targets = (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32)
    return SoftBatch(x, targets, weight)


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.task + str(spec.hidden))
@pytest.mark.parametrize("seed", [0, 1])
def test_the_soft_term_s_gradients_match_torch_autograd(spec: FamilySpec, seed: int) -> None:
    weights, x, y, sample_weight = random_problem(spec, seed)
    soft = soft_batch(spec, seed)
    loss, grads = loss_and_gradients(spec, weights, x, y, sample_weight, soft=soft)
    _, without = loss_and_gradients(spec, weights, x, y, sample_weight)

    module = FamilyModule.from_weights(spec, weights)
    labelled = weighted_loss(
        spec,
        module.raw_logits(torch.from_numpy(x)),
        torch.from_numpy(y),
        torch.from_numpy(sample_weight),
    )
    distilled = torch_soft_loss(
        spec, module.raw_logits(torch.from_numpy(soft.x)), torch.from_numpy(soft.targets)
    )
    (labelled + soft.weight * distilled).backward()  # type: ignore[no-untyped-call]

    # the reported loss is the labelled term; the soft losses agree between the trainers
    assert loss == pytest.approx(float(labelled.detach()), rel=1e-5, abs=1e-6)
    raw = np.asarray(module.raw_logits(torch.from_numpy(soft.x)).detach().numpy())
    assert soft_loss(spec, raw, soft.targets) == pytest.approx(float(distilled.detach()), rel=1e-5)
    parameters = dict(module.named_parameters())
    for name, grad in grads.items():
        expected = parameters[name].grad
        assert expected is not None
        np.testing.assert_allclose(grad, expected.numpy(), rtol=1e-4, atol=2e-6, err_msg=name)
    # the term changes the gradient: the check above is not the labelled one alone
    assert max(float(np.abs(grads[n] - without[n]).max()) for n in grads) > 1e-3


@pytest.mark.parametrize("spec", [BINARY, MULTI], ids=["binary", "multi"])
def test_the_soft_term_s_gradient_matches_finite_differences(spec: FamilySpec) -> None:
    """Independent of torch: only the soft term (no labelled samples weigh anything)."""
    weights, x, y, _ = random_problem(spec, 9)
    no_weight = np.zeros(y.size, dtype=np.float32)
    soft = soft_batch(spec, 9, weight=1.0)
    _, grads = loss_and_gradients(spec, weights, x, y, no_weight, soft=soft)
    weights64 = {name: value.astype(np.float64) for name, value in weights.items()}

    def objective(candidate: dict[str, np.ndarray]) -> float:
        # from the logits in float64: probabilities near 1 in float32 lose log(1 - p)
        z = logits(spec, _as32(candidate), soft.x, calibrated=False).astype(np.float64)
        t = soft.targets.astype(np.float64)
        if spec.binary:
            log_p, log_not_p = -np.logaddexp(0, -z[:, 0]), -np.logaddexp(0, z[:, 0])
            return float(np.mean(-(t[:, 0] * log_p + (1 - t[:, 0]) * log_not_p)))
        log_q = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
        return float(np.mean(-(t * log_q).sum(axis=1)))

    step = 1e-3
    for name, index in [("body.0.weight", (3, 2)), ("head.bias", (0,)), ("head.weight", (0, 5))]:
        plus = {k: v.copy() for k, v in weights64.items()}
        minus = {k: v.copy() for k, v in weights64.items()}
        plus[name][index] += step
        minus[name][index] -= step
        numeric = (objective(plus) - objective(minus)) / (2 * step)
        assert grads[name][index] == pytest.approx(numeric, rel=2e-2, abs=1e-4), name


@pytest.mark.parametrize("spec", [BINARY, MULTI], ids=["binary", "multi"])
def test_distilling_adam_steps_match_between_numpy_and_torch(spec: FamilySpec) -> None:
    weights, _, _, _ = random_problem(spec, 11)
    config = TrainConfig(learning_rate=0.01, prox_mu=0.05)
    numpy_backend = NumpyBackend(spec, weights, config, 100)
    torch_backend = DistillingTorchBackend(spec, weights, config, 100)
    for seed in range(4):
        _, x, y, sample_weight = random_problem(spec, 60 + seed)
        soft = soft_batch(spec, seed)
        assert numpy_backend.step(x, y, sample_weight, soft) == pytest.approx(
            torch_backend.step(x, y, sample_weight, soft), rel=1e-5
        )
    numpy_weights, torch_weights = numpy_backend.weights(), torch_backend.weights()
    for name in trainable_names(spec):
        np.testing.assert_allclose(
            numpy_weights[name], torch_weights[name], rtol=1e-4, atol=1e-6, err_msg=name
        )


def test_distillation_pulls_the_model_towards_the_targets_in_chunks() -> None:
    spec = MULTI
    weights, x, y, _ = random_problem(spec, 4, batch=200)
    proxy = soft_batch(spec, 4, rows=128)
    # targets: one class everywhere, which the labelled data (random labels) never says
    targets = np.zeros_like(proxy.targets)
    targets[:, 2] = 1.0
    config = TrainConfig(max_epochs=20, patience=100, seed=3, val_fraction=0.0)
    plain = Trainer(spec, weights, x, y, config).result()[0]
    trainer = Trainer(spec, weights, x, y, config, distill=Distillation(proxy.x, targets, 2.0))
    chunks = 0
    while not trainer.run(max_steps=7):
        chunks += 1
    distilled = trainer.result()[0]
    assert chunks > 3
    share = forward(spec, distilled, proxy.x)[:, 2].mean()
    assert share > 0.6
    assert share > forward(spec, plain, proxy.x)[:, 2].mean() + 0.3
    # the labelled batches are those of training without distillation: weight 0 changes nothing
    silent = Trainer(spec, weights, x, y, config, distill=Distillation(proxy.x, targets, 0.0))
    for name, value in silent.result()[0].items():
        np.testing.assert_allclose(value, plain[name], rtol=1e-5, atol=1e-6, err_msg=name)


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


def test_a_backend_that_cannot_distil_is_refused() -> None:
    weights, x, y, _ = random_problem(MULTI, 2)
    proxy = soft_batch(MULTI, 2)
    with pytest.raises(TrainingError) as refused:
        Trainer(
            MULTI, weights, x, y, distill=Distillation(proxy.x, proxy.targets), backend=TorchBackend
        )
    assert refused.value.reason == "distill_unsupported"
