"""The torch trainer (companion and simulator): the core's training loop with a torch backend.

The loop, the batch order, early stopping, calibration and the report are the core's
(`mlmule_core.train_numpy.Trainer`), so torch and numpy training differ only in who computes the
gradient step. Torch adds DP-SGD through opacus: per-sample clipping and Gaussian noise on
Poisson-sampled batches, with the RDP accountant's epsilon in the report.

Privacy scope: epsilon covers the training split. The validation split, used for early stopping
and calibration, and the class weights, computed from the training labels, are not covered.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch
from mlmule_core.families import FamilySpec
from mlmule_core.train_numpy import LabelArray, TrainConfig, Trainer, TrainReport
from mlmule_core.weights import FloatArray, Weights
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer
from torch.nn import functional

from .families import FamilyModule


def per_sample_loss(spec: FamilySpec, raw: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary or softmax cross-entropy per sample, the same as the numpy trainer's."""
    if spec.binary:
        return functional.binary_cross_entropy_with_logits(
            raw[:, 0], y.to(raw.dtype), reduction="none"
        )
    return functional.cross_entropy(raw, y, reduction="none")


def weighted_loss(
    spec: FamilySpec, raw: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor
) -> torch.Tensor:
    """`sum(w_i * loss_i) / sum(w_i)`, the data term both trainers minimise."""
    return (sample_weight * per_sample_loss(spec, raw, y)).sum() / sample_weight.sum()


def proximal_term(module: FamilyModule, reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """FedProx's `1/2 * |w - w_start|^2` over the trainable parameters."""
    squares = [
        ((parameter - reference[name]) ** 2).sum() for name, parameter in _trainable(module).items()
    ]
    return 0.5 * torch.stack(squares).sum()


def _trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return dict(module.named_parameters())


class TorchBackend:
    """Torch's Adam over a `FamilyModule`; with `config.dp`, opacus's DP-SGD around it."""

    def __init__(
        self, spec: FamilySpec, weights: Weights, config: TrainConfig, n_samples: int
    ) -> None:
        self._spec = spec
        self._config = config
        self._module = FamilyModule.from_weights(spec, weights)
        self._reference = {
            name: parameter.detach().clone() for name, parameter in _trainable(self._module).items()
        }
        self._optimizer = torch.optim.Adam(
            self._module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self._dp_model: GradSampleModule | None = None
        self._dp_optimizer: DPOptimizer | None = None
        self._accountant: RDPAccountant | None = None
        if config.dp is not None:
            noise = torch.Generator().manual_seed(config.seed)
            # The loss is a weighted *sum* per batch ("sum" per-sample gradients); the optimiser
            # divides the clipped, noised sum by the expected batch size.
            self._dp_model = GradSampleModule(self._module, loss_reduction="sum")
            self._dp_optimizer = DPOptimizer(
                self._optimizer,
                noise_multiplier=config.dp.noise_multiplier,
                max_grad_norm=config.dp.max_grad_norm,
                expected_batch_size=config.batch_size,
                loss_reduction="mean",
                generator=noise,
            )
            self._accountant = RDPAccountant()
            self._sample_rate = min(1.0, config.batch_size / n_samples)

    def step(self, x: FloatArray, y: LabelArray, sample_weight: FloatArray) -> float:
        features = torch.from_numpy(x)
        labels = torch.from_numpy(y)
        weight = torch.from_numpy(sample_weight)
        if self._dp_model is not None:
            return self._dp_step(features, labels, weight)
        self._optimizer.zero_grad(set_to_none=True)
        raw = self._module.raw_logits(features)
        loss = weighted_loss(self._spec, raw, labels, weight)
        objective = loss
        if self._config.prox_mu > 0:
            objective = loss + self._config.prox_mu * proximal_term(self._module, self._reference)
        objective.backward()  # type: ignore[no-untyped-call]
        self._optimizer.step()
        return float(loss.detach())

    def _dp_step(self, features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> float:
        assert self._dp_model is not None
        assert self._dp_optimizer is not None
        assert self._accountant is not None
        dp = self._config.dp
        assert dp is not None
        self._dp_optimizer.zero_grad(set_to_none=True)
        # The per-sample hooks sit on the wrapped Linear layers, so the inner module's own
        # raw_logits records per-sample gradients too.
        raw = self._module.raw_logits(features)
        losses = weight * per_sample_loss(self._spec, raw, labels)
        with warnings.catch_warnings():
            # Expected with opacus: the inputs never require gradients, only the weights do.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses.sum().backward()  # type: ignore[no-untyped-call]
        if self._dp_optimizer.pre_step():
            if self._config.prox_mu > 0:
                # The proximal gradient involves no data, so it is added after the noise.
                with torch.no_grad():
                    for name, parameter in _trainable(self._module).items():
                        assert parameter.grad is not None
                        parameter.grad += self._config.prox_mu * (parameter - self._reference[name])
            self._dp_optimizer.original_optimizer.step()
        self._accountant.step(noise_multiplier=dp.noise_multiplier, sample_rate=self._sample_rate)
        total = float(weight.sum())
        return float(losses.detach().sum()) / total if total > 0 else 0.0

    def raw_logits(self, x: FloatArray) -> FloatArray:
        with torch.no_grad():
            raw = self._module.raw_logits(torch.from_numpy(x))
        return raw.numpy().astype(np.float32)

    def weights(self) -> Weights:
        return self._module.to_weights()

    def epsilon(self) -> float | None:
        if self._accountant is None or self._config.dp is None:
            return None
        return float(self._accountant.get_epsilon(self._config.dp.delta))


def torch_trainer(
    spec: FamilySpec,
    weights: Mapping[str, FloatArray],
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    config: TrainConfig | None = None,
    *,
    validation: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
) -> Trainer:
    """A resumable torch training run (`run(max_steps=..., max_seconds=...)`, `result()`)."""
    return Trainer(spec, weights, x, y, config, validation=validation, backend=TorchBackend)


def train(
    spec: FamilySpec,
    weights: Mapping[str, FloatArray],
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    config: TrainConfig | None = None,
    *,
    validation: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
) -> tuple[Weights, TrainReport]:
    """Train with torch from `weights` to completion."""
    return torch_trainer(spec, weights, x, y, config, validation=validation).result()
