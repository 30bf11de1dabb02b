"""What one merge costs a model host: wall time, and how often it decodes and builds a model.

A space (`ModelHost`) holding a starter model receives a mule's newer version and merges it
(`ModelHost.receive`), for the activity and occupancy starters. Measured in one process, merges
interleaved, for two versions of the HA-free core:

- `before`: the core as of BASELINE_COMMIT, extracted from git under build/ and imported under
  another package name;
- `now`: the core in this checkout.

For each: the medians of a merge's wall time and of its CPU time (the process's, which leaves
out the waits for the disk: every merge writes its new version, the store's index and the
host's state with fsync, and those waits vary with the machine and its load), and per merge the
calls of `load_model` (an ONNX
decode, whether of a received snapshot or of one read back from the store) and of
`families.build_onnx` (building a model graph from weights, including the rebuild that checks a
received model is canonical).

Run: `$(scripts/ensure-env.sh companion)/bin/python bench/bench_merge.py [--repeats N]`.
Writes bench/results/merge.json.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "merge.json"
BASELINE_COMMIT = "da27cb4"  # the core before merges decoded once
CORE = "custom_components/mlmule/core"
CONTEXT_KEYS = ("activity/bedroom", "occupancy/bedroom")
NOW = 1_780_000_000.0  # a fixed time: nothing here depends on the date


def core_at(commit: str, target: Path) -> ModuleType:
    """The core as of `commit`, imported as package `mlmule_core_<commit>`."""
    name = f"mlmule_core_{commit}"
    archive = subprocess.run(  # noqa: S603 - git on this checkout, with our own arguments
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, CORE],  # noqa: S607
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    package_dir = target / name
    (target / CORE).rename(package_dir)
    sys.path.insert(0, str(target))
    return importlib.import_module(name)


def load(core_name: str, module: str) -> ModuleType:
    return importlib.import_module(f"{core_name}.{module}")


class Version:
    """One version of the core: a space and a mule per context key, and call counters."""

    def __init__(self, label: str, core_name: str, workdir: Path, repeats: int) -> None:
        self.label = label
        self.calls: Counter[str] = Counter()
        host_module = load(core_name, "host")
        identity_module = load(core_name, "identity")
        starter_module = load(core_name, "starter")
        onnx_module = load(core_name, "onnx")
        self.snapshot_module = load(core_name, "snapshot")
        self.families_module = load(core_name, "families")
        space_id = identity_module.Identity.generate(kind="space", name="bench space")
        mule_id = identity_module.Identity.generate(kind="mule", name="bench mule")
        trust = identity_module.TrustStore()
        trust.add(
            identity_module.TrustEntry.for_key(
                mule_id.public_key_bytes, kind="mule", role="owner", label="bench", paired_at=NOW
            )
        )
        settings = host_module.HostSettings(clock=lambda: NOW)
        self.space = host_module.ModelHost(workdir / label / "space", space_id, trust, settings)
        mule = host_module.ModelHost(workdir / label / "mule", mule_id, trust, settings)
        rng = np.random.default_rng(0)
        # a mule version per merge, each newer than the last (the replay guard wants that)
        self.incoming: dict[str, list[bytes]] = {}
        for key in CONTEXT_KEYS:
            starter = starter_module.load_starter(key)
            model = onnx_module.load_model(starter.onnx_bytes)
            self.space.install(model, context_key=key, data_time=NOW - 3600, now=NOW - 3600)
            mule.install(model, context_key=key, data_time=NOW - 3600, now=NOW - 3600)
            containers = []
            for _ in range(repeats + 1):
                state = mule.slot(key).state()
                shared = self.families_module.shared_names(mule.slot(key).spec)
                weights = {
                    name: value + rng.normal(0, 0.01, value.shape).astype(np.float32)
                    if name in shared
                    else value
                    for name, value in state.weights.items()
                }
                mule.commit(
                    key,
                    type(state)(
                        weights=weights,
                        created_at=NOW - 60,
                        data_time=NOW - 120,
                        samples=500,
                        version=state.version + 1,
                        origin=mule_id.id,
                    ),
                )
                containers.append(mule.export(key))
            self.incoming[key] = containers
        self._count("load_model", self.snapshot_module, "load_model")
        self._count("build_onnx", self.families_module, "build_onnx")

    def _count(self, label: str, module: ModuleType, name: str) -> None:
        original: Callable[..., Any] = getattr(module, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[label] += 1
            return original(*args, **kwargs)

        setattr(module, name, counted)

    def merge(self, key: str, index: int) -> tuple[float, float]:
        """Wall and CPU seconds of merging the `index`th incoming version."""
        data = self.incoming[key][index]
        wall, cpu = time.perf_counter(), time.process_time()
        outcome = self.space.receive(data, now=NOW)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if outcome.reason != "merged":
            raise RuntimeError(f"{self.label}: the merge was refused: {outcome}")
        return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        workdir = Path(tmp)
        before = core_at(BASELINE_COMMIT, workdir / "code")
        versions = [
            Version("before", before.__name__, workdir, args.repeats),
            Version("now", "mlmule_core", workdir, args.repeats),
        ]
        figures: dict[str, Any] = {
            "baseline_commit": BASELINE_COMMIT,
            "repeats": args.repeats,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "context_keys": {},
        }
        for key in CONTEXT_KEYS:
            seconds: dict[str, list[tuple[float, float]]] = {v.label: [] for v in versions}
            for version in versions:  # warm-up, not timed or counted
                version.merge(key, 0)
                version.calls.clear()
            for index in range(1, args.repeats + 1):
                for version in versions:
                    seconds[version.label].append(version.merge(key, index))
            per_key: dict[str, Any] = {}
            for version in versions:
                wall, cpu = zip(*seconds[version.label], strict=True)
                per_key[version.label] = {
                    "median_ms": 1000 * statistics.median(wall),
                    "median_cpu_ms": 1000 * statistics.median(cpu),
                    "decodes_per_merge": version.calls["load_model"] / args.repeats,
                    "builds_per_merge": version.calls["build_onnx"] / args.repeats,
                }
                version.calls.clear()
            per_key["speedup"] = per_key["before"]["median_ms"] / per_key["now"]["median_ms"]
            per_key["cpu_speedup"] = (
                per_key["before"]["median_cpu_ms"] / per_key["now"]["median_cpu_ms"]
            )
            figures["context_keys"][key] = per_key
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"merge cost, median of {args.repeats} merges per version (before = {BASELINE_COMMIT})")
    for key, per_key in figures["context_keys"].items():
        for label in ("before", "now"):
            row = per_key[label]
            print(
                f"  {key:<18} {label:>6}: {row['median_ms']:6.2f} ms wall, "
                f"{row['median_cpu_ms']:6.2f} ms CPU, "
                f"{row['decodes_per_merge']:.1f} decodes, {row['builds_per_merge']:.1f} builds"
            )
        print(
            f"  {key:<18} speed-up x{per_key['speedup']:.2f} wall, "
            f"x{per_key['cpu_speedup']:.2f} CPU"
        )


if __name__ == "__main__":
    main()
