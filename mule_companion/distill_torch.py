"""The torch gradient step with the distillation term (imported only where torch is).

`mlmule_models.train.TorchBackend` computes the labelled loss (and FedProx); this adds the
soft-target term of `mlmule_core.train_numpy.Distillation` to the same objective, exactly as the
numpy backend does (`train_numpy.soft_loss`): `labelled + weight * mean CE(targets, model)`.
"""

from __future__ import annotations

import torch
from mlmule_core.families import FamilySpec
from mlmule_core.train_numpy import LabelArray, SoftBatch
from mlmule_core.weights import FloatArray
from mlmule_models.train import TorchBackend, proximal_term, weighted_loss
from torch.nn import functional


def soft_loss(spec: FamilySpec, raw: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits to target probabilities (binary: BCE with a soft label)."""
    if spec.binary:
        return functional.binary_cross_entropy_with_logits(raw[:, 0], targets[:, 0])
    return -(targets * functional.log_softmax(raw, dim=1)).sum(dim=1).mean()


class DistillingTorchBackend(TorchBackend):
    """Torch's Adam on the labelled loss plus the distillation term (no DP-SGD with it)."""

    def step(
        self,
        x: FloatArray,
        y: LabelArray,
        sample_weight: FloatArray,
        soft: SoftBatch | None = None,
    ) -> float:
        if soft is None:
            return super().step(x, y, sample_weight)
        module = self._module
        self._optimizer.zero_grad(set_to_none=True)
        raw = module.raw_logits(torch.from_numpy(x))
        loss = weighted_loss(self._spec, raw, torch.from_numpy(y), torch.from_numpy(sample_weight))
        proxy = module.raw_logits(torch.from_numpy(soft.x))
        objective = loss + soft.weight * soft_loss(
            self._spec, proxy, torch.from_numpy(soft.targets)
        )
        if self._config.prox_mu > 0:
            objective = objective + self._config.prox_mu * proximal_term(module, self._reference)
        objective.backward()  # type: ignore[no-untyped-call]
        self._optimizer.step()
        return float(loss.detach())
