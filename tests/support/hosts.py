"""Small models, data and trust for tests of the model host (no HA imports)."""

from __future__ import annotations

import numpy as np
from mlmule_core import families
from mlmule_core.features import room_schema
from mlmule_core.identity import Identity, TrustEntry, TrustStore
from mlmule_core.onnx import OnnxModel

KEY = "occupancy/bedroom"
NOW = 1_790_000_000.0


def occupancy_model(seed: int = 0) -> OnnxModel:
    schema = room_schema()
    spec = families.FamilySpec(
        family=families.OCCUPANCY_MLP,
        task="occupancy",
        n_inputs=schema.n_inputs,
        hidden=(16, 8),
        n_classes=1,
        labels=("empty", "occupied"),
    )
    weights = families.init_weights(spec, np.random.default_rng(seed), schema)
    return families.build_onnx(spec, weights, schema)


def trust_of(*identities: Identity) -> TrustStore:
    store = TrustStore()
    for identity in identities:
        store.add(
            TrustEntry.for_key(
                identity.public_key_bytes,
                kind=identity.kind,
                role="owner",
                label=identity.name,
                paired_at=NOW,
            )
        )
    return store


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, room_schema().n_inputs)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return x, y
