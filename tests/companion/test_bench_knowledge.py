"""The knowledge benchmark end to end on a tiny world: the CLI, knowledge.json, and the pieces
it stands on (the heterogeneous homes, the product's distillation, what moves between sizes)."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import numpy as np
import pytest
from mlmule_bench.knowledge import (
    METHODS,
    MISSING,
    SETTINGS,
    TASKS,
    TINY,
    heterogeneous,
    main,
    missing_columns,
)
from mlmule_core import families
from mlmule_core.host import DISTILL_WEIGHT
from mlmule_core.knowledge import DEFAULT_KNOWLEDGE_COMPRESSION


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "knowledge.json"
    assert main(["--config", "tiny", "--out", str(out)]) == 0
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def test_the_document_is_laid_out_like_learning_json(document: dict[str, Any]) -> None:
    assert document["seeds"] == list(TINY.seeds)
    assert set(document["per_method"]) == set(METHODS)
    for method, by_setting in document["per_method"].items():
        assert set(by_setting) == set(SETTINGS), method
        for entry in by_setting.values():
            assert len(entry["final"]["per_seed"]) == len(TINY.seeds)
            assert 0.0 <= entry["final"]["median"] <= 1.0
            assert entry["regressions"]["max"] <= entry["model_changes"]["max"]
            assert {"bytes_per_exchange", "bytes_moved"} <= set(entry)


def test_local_moves_nothing_and_every_exchange_mode_moves_something(
    document: dict[str, Any],
) -> None:
    for setting in SETTINGS:
        assert document["per_method"]["local"][setting]["bytes_moved"]["max"] == 0
        assert document["per_method"]["local"][setting]["rounds"]["distil"]["max"] == 0
        for method in METHODS[1:]:
            entry = document["per_method"][method][setting]
            assert entry["bytes_moved"]["min"] > 0, (method, setting)
            assert entry["exchanges"]["min"] > 0, (method, setting)
            # knowledge is distilled; weights alone never are
            distilled = entry["rounds"]["distil"]["min"] > 0
            assert distilled == (method != "mlmule_weights"), (method, setting)


def test_knowledge_snapshots_are_smaller_than_weight_snapshots(document: dict[str, Any]) -> None:
    for setting in SETTINGS:
        sizes = document["per_method"]["mlmule_both"][setting]["container_bytes"]
        assert 0 < sizes["knowledge"] < sizes["weights"], setting
        # the former defaults, fp16 on 256 proxy rows, are larger
        fp16 = document["per_method"]["mlmule_knowledge_fp16"][setting]["container_bytes"]
        assert fp16["knowledge"] > sizes["knowledge"], setting
    for task in TASKS:
        sizes = document["snapshot_bytes"][task]
        assert sizes["knowledge"]["int8"] < sizes["knowledge"]["fp16"] < sizes["large"]["weights"]
        by_rows = sizes["knowledge_by_proxy_size"]
        assert by_rows["int8"]["64"] < by_rows["int8"]["128"] < by_rows["int8"]["256"]
        assert by_rows["int8"]["256"] < by_rows["fp16"]["256"]
        # issue 13: for the largest family, the default knowledge snapshot is at least 10 times
        # smaller than its weights
        assert sizes["large"]["weights"] >= 10 * sizes["knowledge"][DEFAULT_KNOWLEDGE_COMPRESSION]
    assert document["headline"]["occupancy"]["bytes_per_exchange_ratio"] > 1


def test_weights_move_only_within_a_model_size(document: dict[str, Any]) -> None:
    for setting in SETTINGS:
        rejected = document["per_method"]["mlmule_weights"][setting]["rejected"]
        assert not {"arch_mismatch", "incompatible"} & set(rejected), rejected


def test_distillation_time_is_measured_on_both_sides(document: dict[str, Any]) -> None:
    times = document["distillation_seconds"]
    assert times["torch_available"] == (importlib.util.find_spec("torch") is not None)
    for task in TASKS:
        for size in families.MODEL_SIZES:
            entry = times[f"{task}/{size}"]
            assert entry["numpy"] > 0
            assert (entry["torch"] is not None) == times["torch_available"]


def test_knowledge_is_distilled_at_the_products_weight(document: dict[str, Any]) -> None:
    assert document["setting"]["distill_weight"] == DISTILL_WEIGHT
    assert document["setting"]["distill_weight_variants"] == {"mlmule_knowledge_w05": 0.5}


def test_homes_differ_in_model_size_and_sensor_set() -> None:
    setting, visits, _ = heterogeneous(TINY, "occupancy", 0)
    assert visits
    hashes = {families.arch_hash(a.spec, a.schema) for a in setting.arch_of_home.values()}
    assert len(hashes) == 2
    columns = missing_columns(setting.schema, MISSING["occupancy"])
    missing = np.asarray(list(columns.values()), dtype=np.float32)
    lacking = {
        unit.home: bool(np.all(unit.x[:, list(columns)] == missing)) for unit in setting.data.units
    }
    assert {home for home, lacks in lacking.items() if lacks} >= setting.reduced_homes
    # the world's full sensor sets have some of those sensors
    assert not all(lacking.values())


def test_the_uniform_control_has_one_size_and_the_worlds_sensors() -> None:
    setting, _, _ = heterogeneous(TINY, "phone_activity", 0, mixed=False)
    assert set(setting.size_of_home.values()) == {families.DEFAULT_MODEL_SIZE}
    assert not setting.reduced_homes
