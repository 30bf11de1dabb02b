"""The shared training loop with the numpy and torch backends: same runs, bounds, calibration."""

from __future__ import annotations

import numpy as np
import pytest
from mlmule_core.errors import FamilyError, TrainingError
from mlmule_core.families import FamilySpec, forward, init_weights, predict_classes
from mlmule_core.metrics import balanced_accuracy, expected_calibration_error, macro_f1
from mlmule_core.train_numpy import (
    DPConfig,
    TrainConfig,
    Trainer,
    class_weights,
    fit_platt,
    train,
)
from mlmule_core.weights import l2_distance
from mlmule_models import train as torch_train
from opacus.accountants import RDPAccountant
from sklearn.datasets import make_classification
from sklearn.utils.class_weight import compute_class_weight

from mule_companion.config import TrainingSettings
from mule_companion.training import PhoneTrainer

BINARY = FamilySpec("occupancy-mlp", "occupancy", 8, (16, 8), 1, ("vacant", "occupied"))
MULTI = FamilySpec("activity-mlp", "activity", 8, (16,), 4, ("sleep", "cook", "work", "away"))


def dataset(
    spec: FamilySpec, n: int, seed: int, *, imbalance: float | None = None, flip: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    n_labels = 2 if spec.binary else spec.n_classes
    weights = None
    if imbalance is not None:
        weights = [imbalance] + [(1 - imbalance) / (n_labels - 1)] * (n_labels - 1)
    x, y = make_classification(
        n_samples=n,
        n_features=spec.n_inputs,
        n_informative=5,
        n_redundant=1,
        n_classes=n_labels,
        n_clusters_per_class=1,
        weights=weights,
        flip_y=flip,
        class_sep=1.2,
        random_state=seed,
    )
    # Raw sensor-like scales; the model's frozen normalisation undoes them.
    x = x * 3.0 + 10.0
    return x.astype(np.float32), y.astype(np.int64)


def start(spec: FamilySpec, seed: int = 0) -> dict[str, np.ndarray]:
    weights = init_weights(spec, np.random.default_rng(seed))
    weights["input.mean"] = np.full(spec.n_inputs, 10.0, np.float32)
    weights["input.std"] = np.full(spec.n_inputs, 3.0, np.float32)
    return weights


@pytest.mark.parametrize("spec", [BINARY, MULTI], ids=["binary", "multi"])
def test_numpy_and_torch_trainers_follow_the_same_run(spec: FamilySpec) -> None:
    x, y = dataset(spec, 800, seed=1)
    config = TrainConfig(max_epochs=6, batch_size=32, learning_rate=0.01, weight_decay=1e-3)
    numpy_weights, numpy_report = train(spec, start(spec), x, y, config)
    torch_weights, torch_report = torch_train.train(spec, start(spec), x, y, config)

    for field in ("epochs", "steps", "best_epoch", "stop_reason", "samples", "val_samples"):
        assert getattr(numpy_report, field) == getattr(torch_report, field), field
    assert numpy_report.train_loss == pytest.approx(torch_report.train_loss, rel=1e-5)
    assert numpy_report.val_loss == pytest.approx(torch_report.val_loss, rel=1e-5)
    for name in numpy_weights:
        np.testing.assert_allclose(
            numpy_weights[name], torch_weights[name], rtol=1e-5, atol=2e-6, err_msg=name
        )
    # Both actually learned: far better than chance on the held-out validation split.
    assert numpy_report.val_balanced_accuracy is not None
    assert numpy_report.val_balanced_accuracy > 0.8


def test_chunked_run_equals_one_shot_run() -> None:
    x, y = dataset(BINARY, 600, seed=2)
    config = TrainConfig(max_epochs=5, batch_size=50)
    expected_weights, expected_report = train(BINARY, start(BINARY), x, y, config)

    trainer = Trainer(BINARY, start(BINARY), x, y, config)
    chunks = 0
    while not trainer.run(max_steps=7):
        chunks += 1
        assert trainer.steps == 7 * chunks
    weights, report = trainer.result()
    assert chunks >= 5
    assert report.steps == expected_report.steps
    for name in weights:
        np.testing.assert_array_equal(weights[name], expected_weights[name])


def test_early_stopping_returns_the_best_epoch() -> None:
    # Few, noisy samples and a big model overfit fast.
    x, y = dataset(MULTI, 300, seed=3, flip=0.3)
    config = TrainConfig(max_epochs=200, patience=3, learning_rate=0.03, batch_size=16)
    spec = FamilySpec("activity-mlp", "activity", 8, (64, 64), 4, MULTI.labels)
    _, report = train(spec, start(spec), x, y, config)
    assert report.stop_reason == "early_stopping"
    assert report.epochs < 200
    assert report.best_epoch == report.epochs - config.patience


def test_total_bounds_stop_the_run() -> None:
    x, y = dataset(BINARY, 600, seed=4)
    _, by_steps = train(BINARY, start(BINARY), x, y, TrainConfig(max_steps=11))
    assert (by_steps.steps, by_steps.stop_reason) == (11, "max_steps")
    _, by_time = train(BINARY, start(BINARY), x, y, TrainConfig(max_seconds=1e-9))
    assert by_time.stop_reason == "max_seconds"
    assert by_time.steps == 0
    assert by_time.val_loss is not None  # still evaluated and reported


def test_chunk_time_bound_returns_before_done() -> None:
    x, y = dataset(BINARY, 600, seed=4)
    trainer = Trainer(BINARY, start(BINARY), x, y, TrainConfig(max_epochs=50))
    assert trainer.run(max_seconds=1e-9) is False
    assert not trainer.done
    assert trainer.steps == 0


def test_warm_start_continues_from_the_snapshot() -> None:
    x, y = dataset(MULTI, 800, seed=5)
    config = TrainConfig(max_epochs=8)
    trained, first = train(MULTI, start(MULTI), x, y, config)
    _, from_scratch = train(MULTI, start(MULTI), x, y, TrainConfig(max_steps=1))
    _, warm = train(MULTI, trained, x, y, TrainConfig(max_steps=1))
    assert first.val_loss is not None
    assert warm.val_loss is not None
    assert from_scratch.val_loss is not None
    assert warm.val_loss < from_scratch.val_loss * 0.7
    assert warm.val_loss == pytest.approx(first.val_loss, rel=0.1)


def test_training_that_only_hurts_returns_the_snapshot() -> None:
    x, y = dataset(MULTI, 1200, seed=16)
    trained, _ = train(MULTI, start(MULTI), x[:800], y[:800], TrainConfig(max_epochs=8))
    shuffled = np.random.default_rng(0).permutation(y[800:1000])
    config = TrainConfig(max_epochs=5, patience=2, learning_rate=0.03)
    weights, report = train(
        MULTI, trained, x[800:1000], shuffled, config, validation=(x[1000:], y[1000:])
    )
    assert report.best_epoch == 0
    assert report.stop_reason == "early_stopping"
    assert all(np.array_equal(weights[name], trained[name]) for name in trained)


def test_fedprox_keeps_training_near_the_start() -> None:
    x, y = dataset(BINARY, 600, seed=6)
    origin = start(BINARY)
    distances = []
    for mu in (0.0, 1.0, 10.0):
        weights, _ = train(BINARY, origin, x, y, TrainConfig(max_epochs=5, prox_mu=mu))
        distances.append(l2_distance(weights, origin, ["body.0.weight", "head.weight"]))
    assert distances[0] > distances[1] > distances[2]


def test_balanced_class_weights_match_sklearn() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 3, 0, 1, 3], dtype=np.int64)
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=y)
    got = class_weights(MULTI, y, power=1.0)
    np.testing.assert_allclose(got[[0, 1, 3]], expected, rtol=1e-6)
    assert got[2] == 1.0  # absent: only weighs validation samples
    np.testing.assert_allclose(class_weights(MULTI, y, power=0.5)[[0, 1, 3]], np.sqrt(expected))
    np.testing.assert_array_equal(class_weights(MULTI, y, power=0.0), np.ones(4))


def test_class_weighting_helps_rare_classes() -> None:
    x, y = dataset(MULTI, 3000, seed=7, imbalance=0.85, flip=0.0)
    test_x, test_y = x[2000:], y[2000:]
    scores = {}
    for weighting in (False, True):
        config = TrainConfig(max_epochs=10, class_weight_power=float(weighting))
        weights, _ = train(MULTI, start(MULTI), x[:2000], y[:2000], config)
        predicted = predict_classes(MULTI, forward(MULTI, weights, test_x))
        scores[weighting] = (balanced_accuracy(test_y, predicted), macro_f1(test_y, predicted))
    assert scores[True][0] > scores[False][0] + 0.02


def test_platt_calibration_makes_probabilities_honest() -> None:
    # Class weighting on a rare positive class inflates its probability; Platt undoes that.
    x, y = dataset(BINARY, 4000, seed=8, imbalance=0.9, flip=0.05)
    test_x, test_y = x[3000:], y[3000:]
    ece = {}
    for calibrate in (False, True):
        config = TrainConfig(max_epochs=10, calibrate=calibrate, class_weight_power=1.0)
        weights, report = train(BINARY, start(BINARY), x[:3000], y[:3000], config)
        assert report.calibrated is calibrate
        ece[calibrate] = expected_calibration_error(test_y, forward(BINARY, weights, test_x))
    assert ece[True] < ece[False] / 2
    assert ece[True] < 0.05


def test_platt_fit_recovers_a_known_sigmoid() -> None:
    rng = np.random.default_rng(10)
    z = rng.normal(scale=2.0, size=50_000).astype(np.float32)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-(0.6 * z - 0.8)))).astype(np.int64)
    scale, bias = fit_platt(z, y)
    assert scale == pytest.approx(0.6, abs=0.03)
    assert bias == pytest.approx(-0.8, abs=0.05)


def test_platt_fit_stays_finite_on_separable_data() -> None:
    z = np.linspace(-3, 3, 40).astype(np.float32)
    scale, bias = fit_platt(z, (z > 0).astype(np.int64))
    assert np.isfinite([scale, bias]).all()
    assert scale > 1


def test_single_class_validation_keeps_the_snapshot_calibration() -> None:
    x, y = dataset(BINARY, 400, seed=11)
    weights = start(BINARY)
    weights["calib.scale"] = np.array([2.0], np.float32)
    val_x = x[:50]
    _, report = train(BINARY, weights, x, y, validation=(val_x, np.zeros(50, np.int64)))
    assert report.calibrated is False
    trained, _ = train(BINARY, weights, x, y, validation=(val_x, np.zeros(50, np.int64)))
    assert trained["calib.scale"][0] == 2.0


def test_training_without_validation_runs_all_epochs() -> None:
    x, y = dataset(BINARY, 300, seed=12)
    _, report = train(BINARY, start(BINARY), x, y, TrainConfig(max_epochs=3, val_fraction=0.0))
    assert (report.stop_reason, report.epochs, report.val_samples) == ("max_epochs", 3, 0)
    assert report.val_loss is None
    assert report.val_balanced_accuracy is None


def test_seed_decides_the_batch_order() -> None:
    x, y = dataset(BINARY, 300, seed=13)
    a, _ = train(BINARY, start(BINARY), x, y, TrainConfig(max_epochs=2, seed=1))
    b, _ = train(BINARY, start(BINARY), x, y, TrainConfig(max_epochs=2, seed=1))
    c, _ = train(BINARY, start(BINARY), x, y, TrainConfig(max_epochs=2, seed=2))
    assert l2_distance(a, b) == 0.0
    assert l2_distance(a, c) > 0.0


def test_a_phone_draws_fresh_randomness_per_run_unless_told_a_seed() -> None:
    restarts = [PhoneTrainer(TrainingSettings(seed=5)) for _ in range(2)]
    runs = [[trainer.config().seed for _ in range(3)] for trainer in restarts]
    assert runs[0] == runs[1]  # a seeded phone repeats its runs after a restart
    assert len(set(runs[0])) == 3  # yet no two of its runs share their noise
    fresh = PhoneTrainer(TrainingSettings())
    assert len({fresh.config().seed for _ in range(8)}) > 1


def test_bad_training_input_is_refused() -> None:
    x, y = dataset(BINARY, 100, seed=14)
    weights = start(BINARY)
    nan_x = x.copy()
    nan_x[3, 2] = np.nan
    cases = {
        "non_finite_features": (nan_x, y),
        "bad_label": (x, np.where(y == 1, 2, 0)),
        "bad_shape": (x[:, :5], y),
        "no_data": (x[:0], y[:0]),
    }
    for reason, (features, labels) in cases.items():
        with pytest.raises(TrainingError) as caught:
            Trainer(BINARY, weights, features, labels)
        assert caught.value.reason == reason
    with pytest.raises(TrainingError) as caught:
        Trainer(BINARY, weights, x, y, TrainConfig(dp=DPConfig(noise_multiplier=1.0)))
    assert caught.value.reason == "dp_unsupported"
    with pytest.raises(FamilyError):
        Trainer(BINARY, start(MULTI), x, y)
    with pytest.raises(TrainingError):
        TrainConfig(learning_rate=0)


def test_dp_sgd_reports_the_accountants_epsilon() -> None:
    x, y = dataset(BINARY, 1000, seed=15, flip=0.0)
    dp = DPConfig(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    config = TrainConfig(max_epochs=4, batch_size=50, dp=dp, prox_mu=0.01, val_fraction=0.2)
    weights, report = torch_train.train(BINARY, start(BINARY), x, y, config)

    accountant = RDPAccountant()
    accountant.history = [(1.1, 50 / 800, report.steps)]
    assert report.epsilon == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert report.steps == 4 * 16
    assert 0.5 < report.epsilon < 10
    # Noisy, but it still learned the easy problem.
    assert report.val_balanced_accuracy is not None
    assert report.val_balanced_accuracy > 0.7

    _, longer = torch_train.train(
        BINARY, start(BINARY), x, y, TrainConfig(max_epochs=8, batch_size=50, dp=dp)
    )
    assert longer.epsilon is not None
    assert longer.epsilon > report.epsilon
    plain, plain_report = torch_train.train(BINARY, start(BINARY), x, y, TrainConfig(max_epochs=4))
    assert plain_report.epsilon is None
    assert l2_distance(plain, weights) > 0.1
