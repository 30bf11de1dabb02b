"""Staleness counts from a model's last training (`trained_at`, signed in the snapshot header), a
hard cap stays on data age, and a host decodes a merge once and writes what it built."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlmule_core import families, snapshot
from mlmule_core.errors import MalformedSnapshot, StaleSnapshot
from mlmule_core.host import HostSettings, ModelHost
from mlmule_core.identity import Identity
from mlmule_core.onnx import save_model
from mlmule_core.snapshot import SnapshotMeta, inspect, pack, unpack
from mlmule_core.strategies import (
    DAY,
    HOUR,
    AggregationContext,
    ModelState,
    make_strategy,
    merged_state,
    share_all,
)
from mlmule_core.train_numpy import TrainConfig
from test_host import KEY, NOW, data, occupancy_model, trust_of

MONTH_AGO = NOW - 40 * DAY  # beyond the freshness filter's 30-day ceiling


def meta_of(**changes: Any) -> SnapshotMeta:
    spec, schema, _ = families.from_onnx(occupancy_model())
    fields: dict[str, Any] = {
        "task": "occupancy",
        "context_key": KEY,
        "arch_hash": families.arch_hash(spec, schema),
        "schema_hash": schema.schema_hash(),
        "created_at": NOW,
        "data_time": MONTH_AGO,
        "samples": 100,
        "version": 3,
    }
    return SnapshotMeta(**{**fields, **changes})


def test_trained_at_is_signed_and_read_back() -> None:
    key = Identity.generate(kind="space", name="bedroom")
    container = pack(save_model(occupancy_model()), meta_of(trained_at=NOW - HOUR), key)
    header = inspect(container)["header"]
    assert isinstance(header, dict)
    assert header["trained_at"] == NOW - HOUR
    # not critical: a reader that predates the field reads the snapshot, aged by data_time
    assert "critical" not in header
    meta = unpack(container, trust=key, expected_arch=None, now=NOW).meta
    assert (meta.trained_at, meta.last_trained) == (NOW - HOUR, NOW - HOUR)
    # the signature covers it like every other header field
    forged = container.replace(str(NOW - HOUR).encode(), str(NOW - 60).encode())
    assert forged != container
    with pytest.raises(snapshot.SnapshotError):
        unpack(forged, trust=key, expected_arch=None, now=NOW)


def test_a_snapshot_without_trained_at_is_as_old_as_its_data() -> None:
    key = Identity.generate(kind="space", name="bedroom")
    container = pack(save_model(occupancy_model()), meta_of(), key)
    assert "trained_at" not in inspect(container)["header"]  # type: ignore[operator]
    meta = unpack(container, trust=key, expected_arch=None, now=NOW).meta
    assert (meta.trained_at, meta.last_trained) == (None, MONTH_AGO)


@pytest.mark.parametrize("trained_at", [MONTH_AGO - 1, NOW + 1])
def test_trained_at_lies_between_the_data_and_the_snapshot(trained_at: float) -> None:
    key = Identity.generate(kind="space", name="bedroom")
    with pytest.raises(MalformedSnapshot, match="trained_at"):
        pack(save_model(occupancy_model()), meta_of(trained_at=trained_at), key)


def test_the_hard_cap_on_data_age_holds_however_fresh_the_training() -> None:
    key = Identity.generate(kind="space", name="bedroom")
    container = pack(save_model(occupancy_model()), meta_of(trained_at=NOW - 60), key)
    with pytest.raises(StaleSnapshot):
        unpack(container, trust=key, expected_arch=None, now=NOW, max_age=30 * DAY)
    assert unpack(container, trust=key, expected_arch=None, now=NOW, max_age=60 * DAY)


def state(weights: dict[str, np.ndarray], **changes: Any) -> ModelState:
    fields: dict[str, Any] = {
        "weights": weights,
        "created_at": NOW,
        "data_time": MONTH_AGO,
        "samples": 100,
        "version": 1,
        "origin": "peer",
    }
    return ModelState(**{**fields, **changes})


def weights_of(seed: int) -> dict[str, np.ndarray]:
    _, _, weights = families.from_onnx(occupancy_model(seed))
    return weights


def test_ml_mule_discounts_by_the_time_since_training() -> None:
    context = AggregationContext(shared=share_all)
    local = state(weights_of(0), origin="local", trained_at=NOW - HOUR)
    shares = {}
    for label, trained_at in (("an hour", NOW - HOUR), ("three days", NOW - 3 * DAY)):
        incoming = state(weights_of(1), trained_at=trained_at)
        result = make_strategy("mlmule").aggregate(local, [incoming], now=NOW, context=context)
        assert result.decisions[0].accepted, label
        shares[label] = result.decisions[0].weight
    # the same data time: only the training age tells them apart. s = 1 / (1 + age / 72 h)
    assert shares["an hour"] == pytest.approx(0.5 / (1 + 1 / 72))
    assert shares["three days"] == pytest.approx(0.5 / 2)


def test_the_freshness_filter_ages_by_training_and_old_snapshots_by_their_data() -> None:
    context = AggregationContext(shared=share_all)
    local = state(weights_of(0), origin="local", trained_at=NOW)
    trained_today = state(weights_of(1), trained_at=NOW - HOUR)
    written_before_trained_at = state(weights_of(2), origin="older peer")  # aged 40 days
    result = make_strategy("mlmule").aggregate(
        local, [trained_today, written_before_trained_at], now=NOW, context=context
    )
    assert [d.reason for d in result.decisions] == ["accepted", "stale"]
    # FedAsync's time clock counts from training too
    fedasync = make_strategy("fedasync", alpha=1.0, exponent=1.0, half_life=HOUR)
    shares = fedasync.aggregate(local, [trained_today], now=NOW, context=context)
    assert shares.decisions[0].weight == pytest.approx(0.5)


def test_a_merge_is_as_fresh_as_its_newest_training() -> None:
    context = AggregationContext(shared=share_all)
    local = state(weights_of(0), origin="local", trained_at=NOW - 2 * HOUR)
    incoming = state(weights_of(1), trained_at=NOW - HOUR, data_time=MONTH_AGO - DAY)
    result = make_strategy("mlmule").aggregate(local, [incoming], now=NOW, context=context)
    merged = merged_state(local, [incoming], result, now=NOW)
    assert (merged.trained_at, merged.data_time) == (NOW - HOUR, MONTH_AGO)
    legacy = merged_state(
        replace(local, trained_at=None), [incoming], result, now=NOW
    )  # a local model from before trained_at: its data time stands in
    assert legacy.trained_at == NOW - HOUR


def hosts(tmp_path: Path, **settings: Any) -> tuple[ModelHost, ModelHost]:
    space_id = Identity.generate(kind="space", name="bedroom")
    mule_id = Identity.generate(kind="mule", name="phone")
    options = HostSettings(**settings)
    space = ModelHost(tmp_path / "space", space_id, trust_of(mule_id), options)
    mule = ModelHost(tmp_path / "mule", mule_id, trust_of(space_id), options)
    space.install(occupancy_model(0), context_key=KEY, samples=500, data_time=NOW, now=NOW)
    mule.install(occupancy_model(1), context_key=KEY, samples=300, data_time=NOW, now=NOW)
    return space, mule


def test_training_sets_trained_at_and_adopting_keeps_it(tmp_path: Path) -> None:
    space, mule = hosts(tmp_path)
    assert space.slot(KEY).meta.last_trained == NOW  # a starter: as old as its data
    # (training long enough that the promotion rule serves it)
    config = TrainConfig(max_epochs=20, learning_rate=1e-2, seed=0)
    space.train(KEY, *data(1000, 1), config=config, data_time=NOW + 10, now=NOW + 600)
    assert space.decisions[KEY].served
    assert space.slot(KEY).meta.trained_at == NOW + 600
    # a mule re-signs what it adopts: newer created_at, the same training time
    assert mule.adopt(space.export(KEY), now=NOW + 7200).accepted
    carried = mule.slot(KEY).meta
    assert (carried.created_at, carried.trained_at) == (NOW + 7200, NOW + 600)


def counting(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    calls: Counter[str] = Counter()
    for module, name in ((snapshot, "load_model"), (families, "build_onnx")):
        original = getattr(module, name)

        def counted(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kw)

        monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("compression", ["none", "int8"])
def test_a_merge_decodes_once_and_serves_what_it_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    space, mule = hosts(tmp_path, compression=compression)
    incoming = mule.export(KEY)
    calls = counting(monkeypatch)
    outcome = space.receive(incoming, now=NOW + 60)
    assert outcome.reason == "merged", outcome.detail
    if compression == "none":
        # one decode of the received model; one build checks it is canonical, one builds
        # the merge, which is signed and stored without being read back
        assert calls == Counter({"load_model": 1, "build_onnx": 2})
    served = space.slot(KEY)
    reopened = ModelHost(tmp_path / "space", space.identity, space.trust, space.settings)
    stored = reopened.slot(KEY)
    assert stored.snapshot.sha256 == served.snapshot.sha256
    assert stored.meta == served.meta
    for name, value in stored.weights.items():
        np.testing.assert_array_equal(served.weights[name], value)
    x, _ = data(50, 9)
    np.testing.assert_array_equal(served.predict(x), stored.predict(x))


def test_training_and_inference_run_numpy_on_one_blas_thread(tmp_path: Path) -> None:
    from threadpoolctl import ThreadpoolController  # noqa: PLC0415

    space, _ = hosts(tmp_path)
    space.train(KEY, *data(300, 1), config=TrainConfig(max_epochs=1, seed=0), data_time=NOW)
    space.predict(KEY, data(5, 2)[0])
    blas = [lib for lib in ThreadpoolController().info() if lib["user_api"] == "blas"]
    assert blas, "numpy's BLAS library was not found"
    assert all(lib["num_threads"] == 1 for lib in blas)
