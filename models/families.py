"""The model families as torch modules, mirroring `mlmule_core.families` parameter for parameter.

`FamilyModule(spec).state_dict()` has exactly the canonical names and shapes of
`families.parameter_shapes(spec)`, in the same order, so weights move between torch and numpy
with `from_weights` / `to_weights` and nothing is renamed.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import numpy as np
import torch
from mlmule_core.families import FamilySpec, check_weights
from mlmule_core.weights import FloatArray, Weights
from torch import nn


class Normalisation(nn.Module):
    """The feature schema's frozen normalisation: buffers `mean` and `std`, never trained."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_inputs: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("std", torch.ones(n_inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Calibration(nn.Module):
    """Platt scaling of a binary logit; fitted after training, so buffers rather than parameters."""

    scale: torch.Tensor
    bias: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("bias", torch.zeros(1))

    def forward(self, logit: torch.Tensor) -> torch.Tensor:
        return logit * self.scale + self.bias


class FamilyModule(nn.Module):
    """A model of one family: normalisation, the convolution of a temporal family, ReLU
    layers, a linear head, then the output.

    `forward` gives probabilities (sigmoid of the calibrated logit, or a softmax), as the
    canonical ONNX graph does; `raw_logits` gives the uncalibrated head output training uses.
    """

    def __init__(self, spec: FamilySpec) -> None:
        super().__init__()
        self.spec = spec
        self.input = Normalisation(spec.n_inputs)
        # Registered between input and body: the state_dict follows the canonical order.
        self.conv = (
            nn.Conv1d(spec.n_inputs // spec.conv.lags, spec.conv.channels, spec.conv.kernel)
            if spec.conv is not None
            else None
        )
        first = spec.n_inputs if spec.conv is None else spec.conv.flat_width
        widths = (first, *spec.hidden)
        self.body = nn.ModuleList(
            nn.Linear(fan_in, fan_out) for fan_in, fan_out in pairwise(widths)
        )
        self.head = nn.Linear(widths[-1], spec.n_classes)
        self.calib = Calibration() if spec.binary else None

    def raw_logits(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.input(x)
        if self.conv is not None:
            # The lags as a sequence of F channels; the output flattened channel by channel,
            # as the canonical graph's Reshape, Transpose, Conv, Relu, Flatten.
            lags = self.spec.n_inputs // self.conv.in_channels
            sequence = hidden.reshape(-1, lags, self.conv.in_channels).transpose(1, 2)
            hidden = torch.relu(self.conv(sequence)).flatten(1)
        for layer in self.body:
            hidden = torch.relu(layer(hidden))
        logits: torch.Tensor = self.head(hidden)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.raw_logits(x)
        if self.calib is not None:
            return torch.sigmoid(self.calib(logits))
        return torch.softmax(logits, dim=1)

    @classmethod
    def from_weights(cls, spec: FamilySpec, weights: Mapping[str, FloatArray]) -> FamilyModule:
        check_weights(spec, weights)
        module = cls(spec)
        module.load_weights(weights)
        return module

    def load_weights(self, weights: Mapping[str, FloatArray]) -> None:
        state = {name: torch.from_numpy(np.array(value)) for name, value in weights.items()}
        self.load_state_dict(state, strict=True)

    def to_weights(self) -> Weights:
        return {
            name: value.detach().cpu().numpy().astype(np.float32, copy=True)
            for name, value in self.state_dict().items()
        }
