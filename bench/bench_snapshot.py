"""Snapshot container benchmark: time to pack, verify and unpack, sizes, and what compression costs.

For MLPs shaped like ours (the starter models in core/starter/*.onnx when there are any, else
canonical models of the same shapes built here), and each compression (none, fp16, int8):

- median wall time of `pack`, `verify_container` (framing, signature, header) and `unpack`
  (everything, including the canonical-model check a merging receiver runs), and their ratio
  to the uncompressed container measured in the same process;
- the container size, and its ratio to the uncompressed one;
- the accuracy cost: max |delta output| and prediction agreement between the original model and
  the unpacked one, both run by onnxruntime, on inputs drawn from the feature schema.

Run: `$(scripts/ensure-env.sh companion)/bin/python bench/bench_snapshot.py [--repeats N]`.
Writes bench/results/snapshot.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlmule_core import families
from mlmule_core.features import FeatureSchema
from mlmule_core.identity import Identity, PeerKind, TrustEntry, TrustRole, TrustStore
from mlmule_core.onnx import load_model, save_model
from mlmule_core.snapshot import COMPRESSIONS, SnapshotMeta, pack, unpack, verify_container

ROOT = Path(__file__).resolve().parents[1]
STARTER_DIR = ROOT / "custom_components" / "mlmule" / "core" / "starter"
RESULTS = ROOT / "bench" / "results" / "snapshot.json"
SHAPES = {"occupancy 32-32-16-1": (32, 32, 16, 1), "activity 96-64-32-8": (96, 64, 32, 8)}
EVAL_ROWS = 20_000


def built_model(sizes: tuple[int, ...], rng: np.random.Generator) -> bytes:
    """A canonical model of the shape, with a non-trivial normalisation and non-zero biases."""
    n_inputs, *hidden, n_outputs = sizes
    if n_outputs == 1:
        spec = families.FamilySpec(
            families.OCCUPANCY_MLP, "occupancy", n_inputs, tuple(hidden), 1, ("clear", "occupied")
        )
    else:
        labels = tuple(f"activity_{i}" for i in range(n_outputs))
        spec = families.FamilySpec(
            families.ACTIVITY_MLP, "activity", n_inputs, tuple(hidden), n_outputs, labels
        )
    schema = FeatureSchema(
        name=f"bench-{n_inputs}",
        features=tuple(f"sensor_{i}" for i in range(n_inputs)),
        mean=tuple(rng.normal(0, 3, n_inputs).tolist()),
        std=tuple(rng.uniform(0.5, 2, n_inputs).tolist()),
    )
    weights = families.init_weights(spec, rng, schema)
    for name in weights:
        if name.endswith(".bias"):
            weights[name] = rng.normal(0, 0.1, weights[name].shape).astype(np.float32)
    return save_model(families.build_onnx(spec, weights, schema))


def models(rng: np.random.Generator) -> dict[str, bytes]:
    starters = sorted(STARTER_DIR.glob("*.onnx"))
    if starters:
        return {path.stem: path.read_bytes() for path in starters}
    return {name: built_model(sizes, rng) for name, sizes in SHAPES.items()}


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    action()  # warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def predictions(output: np.ndarray) -> np.ndarray:
    return (output[:, 0] > 0.5) if output.shape[1] == 1 else output.argmax(axis=1)


def bench_model(
    name: str, onnx_bytes: bytes, repeats: int, rng: np.random.Generator
) -> dict[str, object]:
    spec, schema, _ = families.from_onnx(load_model(onnx_bytes))
    context_key = f"{spec.task}/bench"
    arch = families.arch_hash(spec, schema)
    now = time.time()
    meta = SnapshotMeta(
        task=spec.task,
        context_key=context_key,
        arch_hash=arch,
        schema_hash=schema.schema_hash(),
        created_at=now,
        data_time=now - 60,
        samples=10_080,
        version=1,
        lineage=("bench@0",),
    )
    mule = Identity.generate(kind="mule", name="bench phone")
    trust = TrustStore()
    trust.add(
        TrustEntry.for_key(
            mule.public_key_bytes,
            kind=PeerKind.MULE,
            role=TrustRole.OWNER,
            label="bench",
            paired_at=now,
        )
    )
    expected = {context_key: arch}
    mean, std = families.input_normalisation(schema)  # per lag, as the model reads them
    features = (mean + std * rng.standard_normal((EVAL_ROWS, spec.n_inputs))).astype(np.float32)
    reference = run(onnx_bytes, features)

    rows: dict[str, dict[str, float]] = {}
    for compression in COMPRESSIONS:
        data = pack(onnx_bytes, meta, mule, compression=compression)
        unpacked = unpack(data, trust=trust, expected_arch=expected, now=now).onnx_bytes
        output = run(unpacked, features)
        pack_once = partial(pack, onnx_bytes, meta, mule, compression=compression)
        verify_once = partial(verify_container, data, trust=trust)
        unpack_once = partial(unpack, data, trust=trust, expected_arch=expected, now=now)
        rows[compression] = {
            "bytes": len(data),
            "pack_ms": 1e3 * median_seconds(pack_once, repeats),
            "verify_ms": 1e3 * median_seconds(verify_once, repeats),
            "unpack_ms": 1e3 * median_seconds(unpack_once, repeats),
            "max_abs_output_delta": float(np.abs(output - reference).max()),
            "mean_abs_output_delta": float(np.abs(output - reference).mean()),
            "prediction_agreement": float(np.mean(predictions(output) == predictions(reference))),
        }
    baseline = rows["none"]
    for row in rows.values():
        for key in ("bytes", "pack_ms", "verify_ms", "unpack_ms"):
            row[f"{key}_vs_none"] = row[key] / baseline[key]
    parameters = int(sum(v.size for v in load_model(onnx_bytes).initializers.values()))
    print_table(name, parameters, len(onnx_bytes), rows)
    return {
        "model": name,
        "onnx_bytes": len(onnx_bytes),
        "parameters": parameters,
        "compressions": rows,
    }


def print_table(name: str, parameters: int, size: int, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{name}: {parameters} parameters, ONNX {size} B")
    print(
        f"  {'':5} {'bytes':>7} {'x':>5} {'pack ms':>8} {'verify ms':>10} {'unpack ms':>10}"
        f" {'unpack x':>9} {'max |d out|':>12} {'agree':>7}"
    )
    for compression, row in rows.items():
        print(
            f"  {compression:5} {row['bytes']:7.0f} {row['bytes_vs_none']:5.2f}"
            f" {row['pack_ms']:8.3f} {row['verify_ms']:10.3f} {row['unpack_ms']:10.3f}"
            f" {row['unpack_ms_vs_none']:9.2f} {row['max_abs_output_delta']:12.2e}"
            f" {row['prediction_agreement']:7.2%}"
        )


def run(onnx_bytes: bytes, features: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {families.INPUT_NAME: features})
    return np.asarray(output, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed runs per figure")
    args = parser.parse_args()
    rng = np.random.default_rng(20250114)
    results = [bench_model(name, data, args.repeats, rng) for name, data in models(rng).items()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "snapshot",
        "repeats": args.repeats,
        "evaluation_rows": EVAL_ROWS,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "models": results,
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nsaved {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
