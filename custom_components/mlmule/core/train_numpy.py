"""Training a model family with numpy: the trainer Home Assistant runs (torch cannot install there).

Two parts:

* `Trainer`, the training loop both trainers share: mini-batches in a seeded order, early stopping
  on a time-based validation split, class weighting, bounded chunks (`run(max_steps=...,
  max_seconds=...)` returns and resumes, so HA can run it in an executor without hogging a
  thread), Platt calibration on the validation split, and a `TrainReport`.
* `NumpyBackend`, the numpy gradient step: the exact loss of the torch trainer
  (`mlmule_models.train`), backpropagated by hand, and torch's Adam. The gradients are checked
  against torch autograd in the tests, and so are whole training runs from the same start.

Training always starts from given weights (a snapshot, or `families.init_weights`): warm-starting
is what in-house training does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .blas import pin_blas_threads
from .errors import TrainingError
from .families import (
    FamilySpec,
    check_weights,
    forward_pass,
    gradients,
    logits,
    predict_classes,
    probabilities_from_logits,
    trainable_names,
)
from .metrics import balanced_accuracy, expected_calibration_error, macro_f1
from .weights import FloatArray, Weights, copy_weights

LabelArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD (torch trainer only): per-sample clipping, Gaussian noise, Poisson batches."""

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and self.max_grad_norm > 0 and 0 < self.delta < 1):
            raise TrainingError("DP needs noise_multiplier > 0, max_grad_norm > 0, 0 < delta < 1")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The same config drives the numpy and the torch trainer.

    `max_steps` / `max_seconds` bound the whole run; `Trainer.run` takes per-chunk bounds too.
    `val_fraction` of the samples, the *latest* ones, is held out for early stopping and
    calibration. `prox_mu` adds the FedProx term `mu/2 * |w - w_start|^2` over the trainable
    parameters, which keeps in-house training close to the snapshot it started from.

    `class_weight_power` weights each class by `(n / (k * n_c)) ** power`: 0 (the default) is
    plain cross-entropy, 1 is fully balanced, in between boosts rare classes partly. Off by
    default because labels in a home are noisy: a few mislabelled minutes form "rare classes"
    that weighting then amplifies (on the world, balanced weighting dropped in-home activity
    macro-F1 from 0.80 to 0.70 after three weeks; occupancy was unaffected).
    """

    learning_rate: float = 3e-3
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 4
    min_improvement: float = 1e-4
    weight_decay: float = 0.0
    class_weight_power: float = 0.0
    prox_mu: float = 0.0
    val_fraction: float = 0.2
    calibrate: bool = True
    seed: int = 0
    max_steps: int | None = None
    max_seconds: float | None = None
    dp: DPConfig | None = None

    def __post_init__(self) -> None:
        checks = {
            "learning_rate > 0": self.learning_rate > 0,
            "batch_size >= 1": self.batch_size >= 1,
            "max_epochs >= 1": self.max_epochs >= 1,
            "patience >= 1": self.patience >= 1,
            "min_improvement >= 0": self.min_improvement >= 0,
            "weight_decay >= 0": self.weight_decay >= 0,
            "0 <= class_weight_power <= 1": 0 <= self.class_weight_power <= 1,
            "prox_mu >= 0": self.prox_mu >= 0,
            "0 <= val_fraction < 1": 0 <= self.val_fraction < 1,
            "max_steps >= 1": self.max_steps is None or self.max_steps >= 1,
            "max_seconds > 0": self.max_seconds is None or self.max_seconds > 0,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise TrainingError(f"invalid training config: {', '.join(failed)}")


@dataclass(frozen=True)
class TrainReport:
    """What a training run did and how good the returned model is on the validation split.

    The validation figures describe the returned (best, calibrated) weights; they are None when
    there was no validation data. `best_epoch` is the epoch the returned weights come from, 0
    for the starting weights. `stop_reason` is one of "early_stopping", "max_epochs",
    "max_steps", "max_seconds".
    """

    epochs: int
    steps: int
    samples: int
    val_samples: int
    train_loss: float
    val_loss: float | None
    val_balanced_accuracy: float | None
    val_macro_f1: float | None
    val_ece: float | None
    best_epoch: int
    calibrated: bool
    seconds: float
    stop_reason: str
    epsilon: float | None = None


@dataclass(frozen=True, eq=False)
class Distillation:
    """A soft-target term: the model's predictions on proxy inputs `x` are pulled towards
    `targets` (the knowledge cache's ensemble, `knowledge.KnowledgeCache.ensemble`).

    The proxy rows join the training set as weighted hard rows (`soft_rows`): each once per
    class, weighted by that class's target probability, so that their weighted cross-entropy
    is the cross-entropy to the soft targets (it is linear in the target distribution); they
    weigh `weight` times the labelled rows in all. Every epoch shuffles them into the labelled
    batches, and any backend that takes sample weights distils (the torch one too). Early
    stopping and calibration look at the labelled validation split only. Measured against a
    separate batch of proxy rows beside each labelled batch, at the same weight: 0.488 against
    0.474 macro-F1 on the knowledge benchmark's phones at the learning benchmark's size, above
    local learning on every seed instead of two of five (bench/results/README.md)."""

    x: FloatArray  # [P, n_inputs] unnormalised proxy inputs
    targets: FloatArray  # [P, n_outputs] probabilities
    weight: float = 1.0

    def __post_init__(self) -> None:
        x = np.ascontiguousarray(self.x, dtype=np.float32)
        targets = np.ascontiguousarray(self.targets, dtype=np.float32)
        if x.ndim != 2 or targets.ndim != 2 or x.shape[0] != targets.shape[0] or not x.shape[0]:
            raise TrainingError("distillation needs [P, F] inputs and [P, K] targets, P > 0")
        if not (np.isfinite(x).all() and np.isfinite(targets).all()):
            raise TrainingError("distillation inputs or targets hold NaN or infinity")
        if targets.min() < 0 or targets.max() > 1:
            raise TrainingError("distillation targets must be probabilities")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise TrainingError("the distillation weight must be a finite number >= 0")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "targets", targets)


class TrainingBackend(Protocol):
    """One optimiser over one model: what differs between the numpy and the torch trainer."""

    def step(self, x: FloatArray, y: LabelArray, sample_weight: FloatArray) -> float:
        """One optimiser step on a batch; returns the batch's data loss before the step."""

    def raw_logits(self, x: FloatArray) -> FloatArray:
        """Uncalibrated logits `[N, n_classes]` of the current weights."""

    def weights(self) -> Weights:
        """A copy of the current weights in the canonical layout."""

    def epsilon(self) -> float | None:
        """The privacy spent so far under DP-SGD, None without DP."""


BackendFactory = Callable[[FamilySpec, Weights, TrainConfig, int], TrainingBackend]
"""Builds a backend from the spec, the start weights, the config and the training-set size."""


# --- the loss, shared by the loop and the numpy backend --------------------------------------


def class_weights(spec: FamilySpec, y: LabelArray, power: float = 1.0) -> FloatArray:
    """Per-class weights `(n / (k * n_c)) ** power` over the k classes present in `y`.

    `power` 1 is scikit-learn's "balanced"; a class absent from `y` gets 1 (it only ever
    weighs validation samples).
    """
    n_labels = 2 if spec.binary else spec.n_classes
    counts = np.bincount(y, minlength=n_labels).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_labels, dtype=np.float64)
    weights[present] = (y.size / (present.sum() * counts[present])) ** power
    return weights.astype(np.float32)


def per_sample_loss(spec: FamilySpec, raw: FloatArray, y: LabelArray) -> FloatArray:
    """Binary cross-entropy on the logit, or softmax cross-entropy; stable for any logit."""
    if spec.binary:
        z = raw[:, 0]
        binary_cross_entropy: FloatArray = (
            np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        ).astype(np.float32)
        return binary_cross_entropy
    shifted = raw - raw.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    cross_entropy: FloatArray = (log_norm - shifted[np.arange(y.size), y]).astype(np.float32)
    return cross_entropy


def weighted_loss(
    spec: FamilySpec, raw: FloatArray, y: LabelArray, sample_weight: FloatArray
) -> float:
    """`sum(w_i * loss_i) / sum(w_i)`: the data term of both trainers."""
    total = float(sample_weight.sum())
    if total <= 0:
        return 0.0
    return float(np.dot(sample_weight, per_sample_loss(spec, raw, y)) / total)


def soft_rows(
    binary: bool, distill: Distillation, labelled_mass: float
) -> tuple[FloatArray, LabelArray, FloatArray]:
    """The rows, labels and sample weights that stand for `distill` beside labelled rows of
    total weight `labelled_mass`: each proxy row once per class (binary: positive and
    negative), weighted by the class's target probability, scaled so that they weigh
    `distill.weight * labelled_mass` in all. Rows of a negligible probability are left out."""
    x, targets = distill.x, distill.targets
    if binary:
        rows = np.concatenate([x, x])
        labels = np.concatenate([np.ones(len(x), np.int64), np.zeros(len(x), np.int64)])
        probability = np.concatenate([targets[:, 0], 1.0 - targets[:, 0]])
    else:
        classes = targets.shape[1]
        rows = np.repeat(x, classes, axis=0)
        labels = np.tile(np.arange(classes, dtype=np.int64), len(x))
        probability = targets.reshape(-1)
    scale = distill.weight * labelled_mass / len(x)
    keep = (probability > 1e-3) & (scale > 0)  # weight 0: training exactly as without it
    return (
        np.ascontiguousarray(rows[keep], dtype=np.float32),
        labels[keep],
        (probability[keep] * scale).astype(np.float32),
    )


def loss_and_gradients(
    spec: FamilySpec,
    weights: Mapping[str, FloatArray],
    x: FloatArray,
    y: LabelArray,
    sample_weight: FloatArray,
    *,
    prox_mu: float = 0.0,
    reference: Mapping[str, FloatArray] | None = None,
) -> tuple[float, Weights]:
    """The data loss and the gradients of the full objective for the trainable parameters.

    The objective is `weighted_loss + prox_mu/2 * sum |w - reference|^2` over the trainable
    parameters (FedProx).
    """
    passed = forward_pass(spec, weights, x)
    raw = passed.logits
    total = float(sample_weight.sum())
    scale = np.float32(1.0 / total) if total > 0 else np.float32(0.0)
    if spec.binary:
        d_raw = (probabilities_from_logits(spec, raw)[:, 0] - y.astype(np.float32))[:, None]
    else:
        d_raw = probabilities_from_logits(spec, raw)
        d_raw[np.arange(y.size), y] -= 1.0
    d_out = (d_raw * (sample_weight * scale)[:, None]).astype(np.float32)
    grads = gradients(spec, weights, passed, d_out)  # the family's backpropagation
    if prox_mu > 0:
        if reference is None:
            raise TrainingError("FedProx needs reference weights")
        for name in grads:
            grads[name] = grads[name] + np.float32(prox_mu) * (weights[name] - reference[name])
    ordered = {name: grads[name].astype(np.float32) for name in trainable_names(spec)}
    return weighted_loss(spec, raw, y, sample_weight), ordered


class NumpyBackend:
    """Adam over the trainable parameters, computed exactly as `torch.optim.Adam` does."""

    beta1 = 0.9
    beta2 = 0.999
    eps = 1e-8

    def __init__(
        self, spec: FamilySpec, weights: Weights, config: TrainConfig, n_samples: int
    ) -> None:
        del n_samples  # only DP-SGD needs the dataset size
        if config.dp is not None:
            raise TrainingError(
                "DP-SGD needs the torch trainer (opacus accounting)", reason="dp_unsupported"
            )
        self._spec = spec
        self._config = config
        self._weights = copy_weights(weights)
        self._reference = copy_weights(weights)
        # The trainable tensors are views into one flat buffer, so that Adam updates them all
        # in one vectorised pass (per-tensor numpy calls dominated a small model's step).
        names = trainable_names(spec)
        self._flat = np.concatenate([self._weights[name].ravel() for name in names])
        offset = 0
        for name in names:
            value = self._weights[name]
            self._weights[name] = self._flat[offset : offset + value.size].reshape(value.shape)
            offset += value.size
        self._m = np.zeros_like(self._flat)
        self._v = np.zeros_like(self._flat)
        self._t = 0

    def step(
        self,
        x: FloatArray,
        y: LabelArray,
        sample_weight: FloatArray,
    ) -> float:
        loss, grads = loss_and_gradients(
            self._spec,
            self._weights,
            x,
            y,
            sample_weight,
            prox_mu=self._config.prox_mu,
            reference=self._reference,
        )
        self._t += 1
        lr = self._config.learning_rate
        correction1 = 1.0 - self.beta1**self._t
        correction2_sqrt = math.sqrt(1.0 - self.beta2**self._t)
        # the gradients come in trainable order, the flat buffer's
        gradient = np.concatenate([grad.ravel() for grad in grads.values()])
        # torch's (coupled) Adam weight decay: the L2 term joins the gradient.
        decayed = gradient + np.float32(self._config.weight_decay) * self._flat
        self._m *= np.float32(self.beta1)
        self._m += np.float32(1.0 - self.beta1) * decayed
        self._v *= np.float32(self.beta2)
        self._v += np.float32(1.0 - self.beta2) * decayed * decayed
        denominator = np.sqrt(self._v) / np.float32(correction2_sqrt) + np.float32(self.eps)
        self._flat -= np.float32(lr / correction1) * self._m / denominator
        return loss

    def raw_logits(self, x: FloatArray) -> FloatArray:
        return logits(self._spec, self._weights, x, calibrated=False)

    def weights(self) -> Weights:
        return copy_weights(self._weights)

    def epsilon(self) -> float | None:
        return None


# --- Platt calibration ----------------------------------------------------------------------


def fit_platt(raw: FloatArray, y: LabelArray, *, iterations: int = 100) -> tuple[float, float]:
    """Platt scaling `p = sigmoid(a * z + b)` fitted by Newton's method with line search.

    Uses Platt's smoothed targets, which keep `a` finite on separable data (Lin, Lin & Weng
    2007). Needs both classes in `y`.
    """
    z = np.asarray(raw, dtype=np.float64).reshape(-1)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise TrainingError("Platt scaling needs both classes", reason="calibration")
    target = np.where(y == 1, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))

    def objective(a: float, b: float) -> float:
        t = a * z + b
        return float(np.sum(np.logaddexp(0.0, t) - target * t))

    a, b = 1.0, math.log((negatives + 1.0) / (positives + 1.0)) * -1.0
    value = objective(a, b)
    for _ in range(iterations):
        p = np.exp(-np.logaddexp(0.0, -(a * z + b)))  # the sigmoid, without overflow
        g = np.array([np.dot(z, p - target), np.sum(p - target)])
        s = p * (1.0 - p)
        hessian = np.array(
            [[np.dot(z * z, s) + 1e-12, np.dot(z, s)], [np.dot(z, s), np.sum(s) + 1e-12]]
        )
        if float(np.abs(g).max()) < 1e-7:
            break
        direction = -np.linalg.solve(hessian, g)
        step = 1.0
        while step > 1e-10:
            candidate = objective(a + step * direction[0], b + step * direction[1])
            if candidate < value + 1e-4 * step * float(np.dot(g, direction)):
                a, b, value = a + step * direction[0], b + step * direction[1], candidate
                break
            step /= 2.0
        else:
            break
    return float(a), float(b)


# --- the training loop ----------------------------------------------------------------------


def hold_out_latest(
    x: FloatArray, y: LabelArray, val_fraction: float
) -> tuple[FloatArray, LabelArray, FloatArray, LabelArray]:
    """Hold out the last `val_fraction` of time-ordered samples: validate on the future."""
    n_val = math.floor(y.size * val_fraction)
    cut = y.size - n_val
    return x[:cut], y[:cut], x[cut:], y[cut:]


@dataclass
class _Evaluation:
    loss: float
    weights: Weights


@dataclass
class _LoopState:
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0
    batches: list[npt.NDArray[np.int64]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_weight_sum: float = 0.0
    last_train_loss: float = math.nan
    best: _Evaluation | None = None
    best_epoch: int = 0
    epochs_without_improvement: int = 0


class Trainer:
    """A resumable training run; `run` advances it within bounds, `result` gives the outcome.

    `x` / `y` are time-ordered samples; unless `validation` is given, the latest
    `config.val_fraction` of them are held out.
    """

    def __init__(
        self,
        spec: FamilySpec,
        weights: Mapping[str, FloatArray],
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        config: TrainConfig | None = None,
        *,
        validation: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
        backend: BackendFactory = NumpyBackend,
        distill: Distillation | None = None,
    ) -> None:
        self.spec = spec
        self.config = config or TrainConfig()
        check_weights(spec, weights)
        if distill is not None:
            n_outputs = 1 if spec.binary else spec.n_classes
            if distill.x.shape[1] != spec.n_inputs or distill.targets.shape[1] != n_outputs:
                raise TrainingError(
                    f"distillation needs [P, {spec.n_inputs}] inputs and [P, {n_outputs}] targets",
                    reason="bad_shape",
                )
        features, labels = self._checked(x, y)
        if validation is None:
            self._x, self._y, self._x_val, self._y_val = hold_out_latest(
                features, labels, self.config.val_fraction
            )
        else:
            self._x, self._y = features, labels
            self._x_val, self._y_val = self._checked(*validation, allow_empty=True)
        if self._y.size == 0:
            raise TrainingError("no training samples", reason="no_data")
        per_class = class_weights(spec, self._y, self.config.class_weight_power)
        self._sample_weight = per_class[self._y]
        self._val_weight = per_class[self._y_val]
        if distill is not None:
            rows, soft_labels, soft_weight = soft_rows(
                spec.binary, distill, float(self._sample_weight.sum())
            )
            self._x = np.concatenate([self._x, rows])
            self._y = np.concatenate([self._y, soft_labels])
            self._sample_weight = np.concatenate([self._sample_weight, soft_weight])
        self._backend = backend(spec, copy_weights(weights), self.config, self._y.size)
        self._rng = np.random.default_rng(self.config.seed)
        self._state = _LoopState()
        self._result: tuple[Weights, TrainReport] | None = None
        if self._y_val.size:
            # The snapshot itself is the first candidate: training that only makes validation
            # worse returns the snapshot (recalibrated) rather than something worse.
            self._state.best = _Evaluation(self._validation_loss(), self._backend.weights())

    def _checked(
        self, x: npt.ArrayLike, y: npt.ArrayLike, *, allow_empty: bool = False
    ) -> tuple[FloatArray, LabelArray]:
        features = np.ascontiguousarray(x, dtype=np.float32)
        labels = np.asarray(y)
        if features.ndim != 2 or features.shape[1] != self.spec.n_inputs:
            raise TrainingError(
                f"features must be [N, {self.spec.n_inputs}], got {features.shape}",
                reason="bad_shape",
            )
        integral = labels.dtype == np.bool_ or np.issubdtype(labels.dtype, np.integer)
        if labels.shape != (features.shape[0],) or not integral:
            raise TrainingError("labels must be N integers", reason="bad_shape")
        if features.shape[0] == 0 and not allow_empty:
            raise TrainingError("no training samples", reason="no_data")
        n_labels = 2 if self.spec.binary else self.spec.n_classes
        if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
            raise TrainingError(f"labels must lie in 0..{n_labels - 1}", reason="bad_label")
        if not np.isfinite(features).all():
            raise TrainingError("features hold NaN or infinity", reason="non_finite_features")
        return features, labels.astype(np.int64)

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def steps(self) -> int:
        return self._state.steps

    @property
    def epochs(self) -> int:
        return self._state.epoch

    def run(self, *, max_steps: int | None = None, max_seconds: float | None = None) -> bool:
        """Train until done or until this chunk's bounds; returns `done`.

        Bounds are checked between optimiser steps, so a chunk overruns `max_seconds` by at most
        one step, plus a validation pass at an epoch's end or the final calibration.
        """
        pin_blas_threads()
        state = self._state
        config = self.config
        chunk_start = time.monotonic()
        seconds_before = state.seconds
        chunk_steps = 0
        while self._result is None:
            elapsed = time.monotonic() - chunk_start
            state.seconds = seconds_before + elapsed
            if config.max_seconds is not None and state.seconds >= config.max_seconds:
                self._finish("max_seconds")
            elif config.max_steps is not None and state.steps >= config.max_steps:
                self._finish("max_steps")
            elif (max_steps is not None and chunk_steps >= max_steps) or (
                max_seconds is not None and elapsed >= max_seconds
            ):
                break
            else:
                self._step()
                chunk_steps += 1
                if state.batch_in_epoch == len(state.batches):
                    self._end_epoch()
        state.seconds = seconds_before + (time.monotonic() - chunk_start)
        return self.done

    def result(self) -> tuple[Weights, TrainReport]:
        """Run to completion (within the config's bounds) and return the weights and report."""
        while not self.run():
            pass
        assert self._result is not None
        return copy_weights(self._result[0]), self._result[1]

    def _epoch_batches(self) -> list[npt.NDArray[np.int64]]:
        n = self._y.size
        size = self.config.batch_size
        if self.config.dp is not None:
            # DP-SGD's accounting assumes Poisson sampling: each sample joins each batch
            # independently with probability batch_size / n.
            rate = min(1.0, size / n)
            return [np.flatnonzero(self._rng.random(n) < rate) for _ in range(math.ceil(n / size))]
        order = self._rng.permutation(n)
        return [order[start : start + size] for start in range(0, n, size)]

    def _step(self) -> None:
        state = self._state
        if state.batch_in_epoch == 0:
            state.batches = self._epoch_batches()
            state.epoch_loss_sum = state.epoch_weight_sum = 0.0
        batch = state.batches[state.batch_in_epoch]
        weight = self._sample_weight[batch]
        loss = self._backend.step(self._x[batch], self._y[batch], weight)
        state.epoch_loss_sum += loss * float(weight.sum())
        state.epoch_weight_sum += float(weight.sum())
        state.batch_in_epoch += 1
        state.steps += 1

    def _validation_loss(self) -> float:
        raw = self._backend.raw_logits(self._x_val)
        return weighted_loss(self.spec, raw, self._y_val, self._val_weight)

    def _end_epoch(self) -> None:
        state = self._state
        state.epoch += 1
        state.batch_in_epoch = 0
        if state.epoch_weight_sum > 0:
            state.last_train_loss = state.epoch_loss_sum / state.epoch_weight_sum
        if self._y_val.size:
            loss = self._validation_loss()
            if state.best is None or loss < state.best.loss - self.config.min_improvement:
                state.best = _Evaluation(loss, self._backend.weights())
                state.best_epoch = state.epoch
                state.epochs_without_improvement = 0
            else:
                state.epochs_without_improvement += 1
                if state.epochs_without_improvement >= self.config.patience:
                    self._finish("early_stopping")
                    return
        if state.epoch >= self.config.max_epochs:
            self._finish("max_epochs")

    def _finish(self, reason: str) -> None:
        state = self._state
        if state.batch_in_epoch and state.epoch_weight_sum > 0:
            state.last_train_loss = state.epoch_loss_sum / state.epoch_weight_sum
        final = self._backend.weights()
        if self._y_val.size:
            loss = self._validation_loss()
            if state.best is not None and state.best.loss <= loss:
                final = state.best.weights
            else:
                state.best_epoch = state.epoch
        else:
            state.best_epoch = state.epoch
        calibrated = self._calibrate(final)
        self._result = (final, self._report(final, reason, calibrated))

    def _calibrate(self, weights: Weights) -> bool:
        if not (self.spec.binary and self.config.calibrate):
            return False
        positives = int(self._y_val.sum())
        if positives in {0, self._y_val.size}:
            return False  # one class only: keep the calibration the snapshot came with
        raw = logits(self.spec, weights, self._x_val, calibrated=False)
        scale, bias = fit_platt(raw, self._y_val)
        weights["calib.scale"] = np.array([scale], dtype=np.float32)
        weights["calib.bias"] = np.array([bias], dtype=np.float32)
        return True

    def _report(self, weights: Weights, reason: str, calibrated: bool) -> TrainReport:
        state = self._state
        val_loss = balanced = f1 = ece = None
        if self._y_val.size:
            raw = logits(self.spec, weights, self._x_val, calibrated=False)
            val_loss = weighted_loss(self.spec, raw, self._y_val, self._val_weight)
            probabilities = probabilities_from_logits(
                self.spec, logits(self.spec, weights, self._x_val)
            )
            predicted = predict_classes(self.spec, probabilities)
            balanced = balanced_accuracy(self._y_val, predicted)
            f1 = macro_f1(self._y_val, predicted)
            ece = expected_calibration_error(self._y_val, probabilities)
        return TrainReport(
            epochs=state.epoch,
            steps=state.steps,
            samples=int(self._y.size),
            val_samples=int(self._y_val.size),
            train_loss=state.last_train_loss,
            val_loss=val_loss,
            val_balanced_accuracy=balanced,
            val_macro_f1=f1,
            val_ece=ece,
            best_epoch=state.best_epoch,
            calibrated=calibrated,
            seconds=state.seconds,
            stop_reason=reason,
            epsilon=self._backend.epsilon(),
        )


def train(
    spec: FamilySpec,
    weights: Mapping[str, FloatArray],
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    config: TrainConfig | None = None,
    *,
    validation: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    distill: Distillation | None = None,
) -> tuple[Weights, TrainReport]:
    """Train with numpy from `weights` to completion; see `Trainer` for chunked runs."""
    return Trainer(spec, weights, x, y, config, validation=validation, distill=distill).result()
