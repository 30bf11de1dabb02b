"""ONNX inference backends: the numpy executor against onnxruntime, in the same process.

For MLPs shaped like ours (occupancy 32-32-16-1 sigmoid, activity 96-64-32-8 softmax, both with
input normalisation), median over repeats of:

- load: `create_session(onnx_bytes, backend)` (parse and validate, then build the session);
- inference: `session.run` at batch 1 (a live prediction) and 1440 (a day of minutes);
- load with protobuf's pure-Python backend (as HA OS may have), in a child process;

each with the ratio numpy / onnxruntime. Warm-up runs precede every measurement. Both backends
run single-threaded (OPENBLAS_NUM_THREADS=1 unless set).

Run: `$(scripts/ensure-env.sh companion)/bin/python bench/bench_onnx_runtime.py [--repeats N]`.
Writes bench/results/onnx_runtime.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Both backends single-threaded, like the onnxruntime sessions create_session makes: on a busy
# machine a multi-threaded BLAS makes the numpy medians erratic (seen: 4x-40x on two cores).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import onnxruntime as ort
from google.protobuf.internal import api_implementation
from mlmule_core.onnx import Node, OnnxModel, ValueInfo, create_session, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "onnx_runtime.json"
SHAPES = {"occupancy 32-32-16-1": (32, 32, 16, 1), "activity 96-64-32-8": (96, 64, 32, 8)}
BATCHES = (1, 1440)
WARMUP = 10


def mlp(sizes: tuple[int, ...], rng: np.random.Generator) -> bytes:
    """(x - mean) / std, Gemm + Relu per hidden layer, then Sigmoid (one output) or Softmax."""
    n_inputs, *_, n_outputs = sizes
    nodes = [Node("Sub", ("x", "mean"), ("centred",)), Node("Div", ("centred", "std"), ("h0",))]
    initializers = {
        "mean": rng.normal(0, 3, n_inputs).astype(np.float32),
        "std": rng.uniform(0.5, 2, n_inputs).astype(np.float32),
    }
    previous = "h0"
    for layer, (width, size) in enumerate(itertools.pairwise(sizes), start=1):
        initializers[f"w{layer}"] = (rng.standard_normal((size, width)) / width**0.5).astype(
            np.float32
        )
        initializers[f"b{layer}"] = (rng.standard_normal(size) * 0.1).astype(np.float32)
        nodes.append(
            Node("Gemm", (previous, f"w{layer}", f"b{layer}"), (f"z{layer}",), {"transB": 1})
        )
        previous = f"z{layer}"
        if layer < len(sizes) - 1:
            nodes.append(Node("Relu", (previous,), (f"h{layer}",)))
            previous = f"h{layer}"
    if n_outputs == 1:
        nodes.append(Node("Sigmoid", (previous,), ("y",)))
    else:
        nodes.append(Node("Softmax", (previous,), ("y",), {"axis": 1}))
    model = OnnxModel(
        nodes=tuple(nodes),
        inputs=(ValueInfo("x", shape=("batch", n_inputs)),),
        outputs=(ValueInfo("y", shape=("batch", n_outputs)),),
        initializers=initializers,
    )
    return save_model(model)


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    for _ in range(WARMUP):
        action()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def pure_python_load_seconds(data: bytes, repeats: int) -> float:
    """`load_model` in a child process whose protobuf is the pure-Python implementation."""
    completed = subprocess.run(  # noqa: S603 - this script, run by this interpreter
        [sys.executable, __file__, "--child-load", str(repeats)],
        input=data,
        capture_output=True,
        env={**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"},
        check=True,
    )
    return float(completed.stdout)


def child_load(repeats: int) -> None:
    assert api_implementation.Type() == "python"
    data = sys.stdin.buffer.read()
    print(median_seconds(lambda: load_model(data), repeats))


def measure(name: str, sizes: tuple[int, ...], repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(sum(sizes))
    data = mlp(sizes, rng)
    load = {
        backend: median_seconds(lambda b=backend: create_session(data, b), repeats)
        for backend in ("numpy", "onnxruntime")
    }
    sessions = {backend: create_session(data, backend) for backend in ("numpy", "onnxruntime")}
    inference: dict[str, dict[str, float]] = {}
    for batch in BATCHES:
        x = {"x": rng.standard_normal((batch, sizes[0])).astype(np.float32)}
        runs = repeats * 20 if batch == 1 else repeats * 4
        times = {
            backend: median_seconds(lambda s=session, f=x: s.run(f), runs)
            for backend, session in sessions.items()
        }
        outputs = [session.run(x)["y"] for session in sessions.values()]
        inference[str(batch)] = {
            "numpy_ms": times["numpy"] * 1e3,
            "onnxruntime_ms": times["onnxruntime"] * 1e3,
            "ratio_numpy_over_onnxruntime": times["numpy"] / times["onnxruntime"],
            "max_abs_difference": float(np.max(np.abs(outputs[0] - outputs[1]))),
            "runs": runs,
        }
    return {
        "model": name,
        "parameters": int(sum(a * b + b for a, b in itertools.pairwise(sizes))),
        "onnx_bytes": len(data),
        "load": {
            "numpy_ms": load["numpy"] * 1e3,
            "onnxruntime_ms": load["onnxruntime"] * 1e3,
            "ratio_numpy_over_onnxruntime": load["numpy"] / load["onnxruntime"],
            "load_model_pure_python_protobuf_ms": pure_python_load_seconds(data, repeats) * 1e3,
            "runs": repeats,
        },
        "inference": inference,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = f"{'model':<22}{'what':<18}{'numpy ms':>11}{'ort ms':>11}{'numpy/ort':>11}"
    print(header)
    print("-" * len(header))
    for result in results:
        rows = [("load", result["load"])]
        rows += [
            (f"infer batch {batch}", figures) for batch, figures in result["inference"].items()
        ]
        for what, figures in rows:
            print(
                f"{result['model']:<22}{what:<18}{figures['numpy_ms']:>11.4f}"
                f"{figures['onnxruntime_ms']:>11.4f}{figures['ratio_numpy_over_onnxruntime']:>11.2f}"
            )
        pure_python = result["load"]["load_model_pure_python_protobuf_ms"]
        print(f"{result['model']:<22}{'load, pure-py pb':<18}{pure_python:>11.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="load repeats (inference: x4/x20)")
    parser.add_argument("--child-load", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child_load:
        child_load(arguments.child_load)
        return
    results = [measure(name, sizes, arguments.repeats) for name, sizes in SHAPES.items()]
    print_table(results)
    report = {
        "benchmark": "onnx_runtime",
        "statistic": "median wall time (time.perf_counter), after warm-up runs",
        "onnxruntime_session": "CPUExecutionProvider, 1 intra-op and 1 inter-op thread",
        "numpy_blas_threads": os.environ["OPENBLAS_NUM_THREADS"],
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor_count": os.cpu_count(),
            "numpy": np.__version__,
            "onnxruntime": ort.__version__,
            "protobuf_backend": api_implementation.Type(),
        },
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
