"""The learning benchmark end to end on a tiny world: the CLI, learning.json, and its figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlmule_bench.__main__ import main
from mlmule_bench.config import GLOBAL_METHODS, METHODS, MLMULE_METHODS, PRESETS, BenchConfigError
from mlmule_bench.results import ENTRY_KEYS, check_document

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "learning.json"
    assert main(["run", "--config", "tiny", "--out", str(out), "--quiet"]) == 0
    return out.parent


@pytest.fixture(scope="module")
def document(run_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((run_dir / "learning.json").read_text())
    return loaded


def test_the_document_has_every_method_task_and_figure(document: dict[str, Any]) -> None:
    assert check_document(document) == []
    assert document["seeds"] == list(TINY.seeds)
    assert document["target"] == {task: TINY.targets[task] for task in TINY.tasks}
    assert set(document["per_method"]) == set(METHODS)
    for method, by_task in document["per_method"].items():
        assert set(by_task) == set(TINY.tasks), method
        for task, entry in by_task.items():
            assert set(entry) >= ENTRY_KEYS
            # both scorings: the global one only where a method has a global model
            assert (entry["final_global"] is not None) == (method in GLOBAL_METHODS), method
            assert entry["regressions"]["max"] <= entry["model_changes"]["max"]
            assert entry["model_changes"]["max"] > 0, (method, task)
            hours = entry["curve"]["hours"]
            assert hours[0] == 0
            assert hours[-1] == (TINY.days - TINY.test_days) * 24
            # one seed: its curve is the mean curve, and the target is first reached where
            # the document says
            (reached,) = entry["time_to_target_hours"]["per_seed"]
            above = [
                h
                for h, v in zip(hours, entry["curve"]["mean"], strict=True)
                if v >= document["target"][task]
            ]
            assert reached == (above[0] if above else None)


def test_ml_mule_moves_models_and_never_raw_samples(document: dict[str, Any]) -> None:
    for task in TINY.tasks:
        for method in MLMULE_METHODS:
            entry = document["per_method"][method][task]
            assert entry["raw_samples_moved"]["per_seed"] == [0.0] * len(TINY.seeds)
            assert entry["bytes_moved"]["min"] > 0, (method, task)
            assert entry["exchanges"]["min"] > 0, (method, task)
        # the upper bound pools raw data, and is the only method that does
        assert document["per_method"]["centralized"][task]["raw_samples_moved"]["min"] > 0
        assert document["per_method"]["local"][task]["bytes_moved"]["max"] == 0


def test_every_method_starts_from_the_same_model_and_learns(document: dict[str, Any]) -> None:
    for task in TINY.tasks:
        starts = {
            method: by_task[task]["curve"]["mean"][0]
            for method, by_task in document["per_method"].items()
        }
        assert len(set(starts.values())) == 1, starts
        for method, by_task in document["per_method"].items():
            assert by_task[task]["final"]["mean"] > starts[method], (method, task)


def test_the_training_budget_is_the_same_for_every_learner(document: dict[str, Any]) -> None:
    periods = (TINY.days - TINY.test_days) * 24 / TINY.budget.period_hours
    for task, info in document["tasks"].items():
        learners = max(info["learners"])
        for method, by_task in document["per_method"].items():
            rounds = by_task[task]["train_rounds"]["max"]
            # one round per learner and period at most; the server of `centralized` is one
            # learner per context key
            assert rounds <= learners * periods, (method, task, rounds)
        local = document["per_method"]["local"][task]["train_rounds"]["max"]
        assert local > 0


def test_the_figures_are_written(run_dir: Path) -> None:
    for name in ("learning_curves.png", "learning_bytes.png", "learning_affinity.png"):
        data = (run_dir / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name
        assert len(data) > 10_000, name
    runs = json.loads((run_dir / "learning_runs.json").read_text())["runs"]
    assert {(run["task"], run["seed"]) for run in runs} == {
        (task, seed) for task in TINY.tasks for seed in TINY.seeds
    }


def test_a_rerun_of_some_methods_reuses_the_others_runs(run_dir: Path, tmp_path: Path) -> None:
    earlier = run_dir / "learning_runs.json"
    out = tmp_path / "learning.json"
    rerun = ["run", "--config", "tiny", "--methods", "mlmule_no_fine_tune", "--tasks", "digits"]
    assert main([*rerun, "--out", str(out), "--quiet", "--no-plots", "--reuse", str(earlier)]) == 0
    document = json.loads(out.read_text())
    assert check_document(document) == []
    assert set(document["per_method"]) == set(METHODS)
    assert document["reused"] == {
        "methods": [m for m in METHODS if m != "mlmule_no_fine_tune"],
        "from": "learning_runs.json",
    }
    before = json.loads((run_dir / "learning.json").read_text())["per_method"]
    # the runs are deterministic: the rerun method scores as it did, the others are copied
    for method, by_task in document["per_method"].items():
        assert by_task["digits"]["final"] == before[method]["digits"]["final"], method

    other_world = tmp_path / "other.json"
    runs = json.loads(earlier.read_text())
    for run in runs["runs"]:
        run["visits"] += 1  # another world's mobility
    other_world.write_text(json.dumps(runs))
    with pytest.raises(BenchConfigError, match="no earlier run of the same world"):
        main([*rerun, "--out", str(tmp_path / "x.json"), "--quiet", "--reuse", str(other_world)])
