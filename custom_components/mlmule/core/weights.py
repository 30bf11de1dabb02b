"""Model weights as plain numpy: an ordered mapping from parameter name to float32 array."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Weights = dict[str, FloatArray]


def copy_weights(weights: Mapping[str, FloatArray]) -> Weights:
    """A deep copy in the same order, as contiguous float32."""
    return {name: np.array(value, dtype=np.float32, copy=True) for name, value in weights.items()}


def weights_digest(weights: Mapping[str, FloatArray]) -> str:
    """SHA-256 over the names and float32 bytes: equal digests, equal models."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(weights[name], dtype=np.float32).tobytes())
    return digest.hexdigest()


def same_layout(a: Mapping[str, FloatArray], b: Mapping[str, FloatArray]) -> bool:
    """True when both hold the same names, in the same order, with the same shapes."""
    return list(a) == list(b) and all(a[name].shape == b[name].shape for name in a)


def all_finite(weights: Mapping[str, FloatArray]) -> bool:
    return all(bool(np.isfinite(value).all()) for value in weights.values())


def l2_distance(
    a: Mapping[str, FloatArray], b: Mapping[str, FloatArray], names: Iterable[str] | None = None
) -> float:
    """Euclidean distance between two models over the chosen parameters."""
    chosen = list(a) if names is None else list(names)
    return float(np.sqrt(sum(float(np.sum((a[n] - b[n]) ** 2)) for n in chosen)))
