"""The numpy trainer's loss, gradients and Adam step equal torch's on random batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlmule_core.families import FamilySpec, init_weights, trainable_names
from mlmule_core.train_numpy import NumpyBackend, TrainConfig, loss_and_gradients
from mlmule_models.families import FamilyModule
from mlmule_models.train import TorchBackend, proximal_term, weighted_loss

BINARY = FamilySpec(
    "occupancy-mlp", "occupancy", 7, (16, 8), 1, ("vacant", "occupied"), personal_head=False
)
MULTI = FamilySpec(
    "activity-mlp", "activity", 9, (12,), 5, ("sleep", "cook", "eat", "work", "away")
)
DEEP = FamilySpec("activity-mlp", "phone_activity", 4, (6, 6, 6), 3, ("a", "b", "c"))
SPECS = [BINARY, MULTI, DEEP]


def random_problem(
    spec: FamilySpec, seed: int, batch: int = 33
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = init_weights(spec, rng)
    # A non-trivial normalisation and calibration, so nothing is the identity by accident.
    weights["input.mean"] = rng.normal(size=spec.n_inputs).astype(np.float32)
    weights["input.std"] = rng.uniform(0.5, 2.0, size=spec.n_inputs).astype(np.float32)
    if spec.binary:
        weights["calib.scale"] = np.array([1.7], np.float32)
        weights["calib.bias"] = np.array([-0.3], np.float32)
    x = rng.normal(scale=2.0, size=(batch, spec.n_inputs)).astype(np.float32)
    n_labels = 2 if spec.binary else spec.n_classes
    y = rng.integers(0, n_labels, size=batch).astype(np.int64)
    sample_weight = rng.uniform(0.2, 3.0, size=batch).astype(np.float32)
    return weights, x, y, sample_weight


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.task + str(spec.hidden))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("prox_mu", [0.0, 0.3])
def test_gradients_match_torch_autograd(spec: FamilySpec, seed: int, prox_mu: float) -> None:
    weights, x, y, sample_weight = random_problem(spec, seed)
    rng = np.random.default_rng(100 + seed)
    reference = {
        name: value + rng.normal(scale=0.1, size=value.shape).astype(np.float32)
        for name, value in weights.items()
    }
    loss, grads = loss_and_gradients(
        spec, weights, x, y, sample_weight, prox_mu=prox_mu, reference=reference
    )

    module = FamilyModule.from_weights(spec, weights)
    torch_loss = weighted_loss(
        spec,
        module.raw_logits(torch.from_numpy(x)),
        torch.from_numpy(y),
        torch.from_numpy(sample_weight),
    )
    objective = torch_loss + prox_mu * proximal_term(
        module, {name: torch.from_numpy(reference[name]) for name in trainable_names(spec)}
    )
    objective.backward()  # type: ignore[no-untyped-call]

    assert loss == pytest.approx(float(torch_loss.detach()), rel=1e-5, abs=1e-6)
    assert list(grads) == list(trainable_names(spec))
    parameters = dict(module.named_parameters())
    for name, grad in grads.items():
        expected = parameters[name].grad
        assert expected is not None
        np.testing.assert_allclose(grad, expected.numpy(), rtol=1e-4, atol=2e-6, err_msg=name)
    # The gradient is not trivially zero: the check above would pass for dead networks too.
    assert max(float(np.abs(grad).max()) for grad in grads.values()) > 1e-3


def test_gradient_matches_finite_differences() -> None:
    """Independent of torch: the analytic gradient of one weight against a central difference."""
    weights, x, y, sample_weight = random_problem(MULTI, 7)
    weights64 = {name: value.astype(np.float64) for name, value in weights.items()}
    _, grads = loss_and_gradients(MULTI, weights, x, y, sample_weight)
    step = 1e-3
    for name, index in [("body.0.weight", (3, 2)), ("head.bias", (4,)), ("head.weight", (1, 5))]:
        plus = {k: v.copy() for k, v in weights64.items()}
        minus = {k: v.copy() for k, v in weights64.items()}
        plus[name][index] += step
        minus[name][index] -= step
        numeric = (
            loss_and_gradients(MULTI, _as32(plus), x, y, sample_weight)[0]
            - loss_and_gradients(MULTI, _as32(minus), x, y, sample_weight)[0]
        ) / (2 * step)
        assert grads[name][index] == pytest.approx(numeric, rel=2e-2, abs=1e-4), name


def _as32(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: value.astype(np.float32) for name, value in weights.items()}


def test_losses_stay_finite_and_equal_for_extreme_logits() -> None:
    weights, x, y, sample_weight = random_problem(BINARY, 3)
    weights["head.weight"] = weights["head.weight"] * 1e4
    loss, grads = loss_and_gradients(BINARY, weights, x, y, sample_weight)
    module = FamilyModule.from_weights(BINARY, weights)
    expected = weighted_loss(
        BINARY,
        module.raw_logits(torch.from_numpy(x)),
        torch.from_numpy(y),
        torch.from_numpy(sample_weight),
    )
    assert np.isfinite(loss)
    assert all(np.isfinite(grad).all() for grad in grads.values())
    assert loss == pytest.approx(float(expected.detach()), rel=1e-4)


@pytest.mark.parametrize("spec", [BINARY, MULTI], ids=["binary", "multi"])
def test_adam_steps_match_torch_adam(spec: FamilySpec) -> None:
    weights, _, _, _ = random_problem(spec, 11)
    config = TrainConfig(learning_rate=0.01, weight_decay=0.01, prox_mu=0.05)
    numpy_backend = NumpyBackend(spec, weights, config, 100)
    torch_backend = TorchBackend(spec, weights, config, 100)
    for seed in range(5):
        _, x, y, sample_weight = random_problem(spec, 50 + seed)
        numpy_loss = numpy_backend.step(x, y, sample_weight)
        torch_loss = torch_backend.step(x, y, sample_weight)
        assert numpy_loss == pytest.approx(torch_loss, rel=1e-5)
    numpy_weights = numpy_backend.weights()
    torch_weights = torch_backend.weights()
    assert list(numpy_weights) == list(torch_weights)
    for name in numpy_weights:
        np.testing.assert_allclose(
            numpy_weights[name], torch_weights[name], rtol=1e-4, atol=1e-6, err_msg=name
        )
    moved = max(
        float(np.abs(numpy_weights[name] - weights[name]).max()) for name in trainable_names(spec)
    )
    assert moved > 0.02  # five steps of lr 0.01 moved the model
    # Frozen parameters stay frozen in both.
    for name in ("input.mean", "input.std"):
        np.testing.assert_array_equal(numpy_weights[name], weights[name])
        np.testing.assert_array_equal(torch_weights[name], weights[name])
