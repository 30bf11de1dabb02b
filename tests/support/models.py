"""Canonical models as another home would hold them (no HA imports)."""

from __future__ import annotations

import numpy as np

from custom_components.mlmule.core import families
from custom_components.mlmule.core.onnx import OnnxModel


def learned_elsewhere(model: OnnxModel, seed: int = 7) -> OnnxModel:
    """`model` with its learned parameters moved a little, as another home's training leaves
    it. A host settles a model it held itself (the bare starter every space begins from) as
    `unchanged`; this one it merges."""
    spec, schema, weights = families.from_onnx(model)
    rng = np.random.default_rng(seed)
    learned = families.shared_names(spec)
    moved = {
        name: (value + rng.normal(0.0, 0.01, value.shape)).astype(np.float32)
        if name in learned
        else value
        for name, value in weights.items()
    }
    return families.build_onnx(spec, moved, schema)
