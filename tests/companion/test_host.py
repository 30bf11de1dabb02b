"""The model host that spaces, mules and the simulator share: merge, train, reject, persist."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from mlmule_core import families
from mlmule_core.host import HostError, HostSettings, ModelHost
from mlmule_core.identity import Identity
from mlmule_core.snapshot import pack, unpack
from mlmule_core.train_numpy import TrainConfig

from tests.support.hosts import KEY, NOW, data, occupancy_model, trust_of


@pytest.fixture
def peers(tmp_path: Path) -> tuple[ModelHost, ModelHost, Identity]:
    space_id = Identity.generate(kind="space", name="bedroom")
    mule_id = Identity.generate(kind="mule", name="phone")
    stranger = Identity.generate(kind="mule", name="stranger")
    space = ModelHost(tmp_path / "space", space_id, trust_of(mule_id))
    mule = ModelHost(tmp_path / "mule", mule_id, trust_of(space_id))
    space.install(occupancy_model(0), context_key=KEY, samples=500, data_time=NOW, now=NOW)
    mule.install(occupancy_model(1), context_key=KEY, samples=300, data_time=NOW, now=NOW)
    return space, mule, stranger


def test_merge_moves_the_model_and_raises_the_version(
    peers: tuple[ModelHost, ModelHost, Identity],
) -> None:
    space, mule, _ = peers
    before = space.slot(KEY)
    outcome = space.receive(mule.export(KEY), now=NOW + 60)
    assert outcome.accepted, outcome.detail
    after = space.slot(KEY)
    assert after.version == before.version + 1
    assert outcome.version == after.version
    assert 0.0 < outcome.weight < 1.0
    moved = families.shared_names(after.spec)
    assert any(not np.array_equal(after.weights[n], before.weights[n]) for n in moved)
    assert after.meta.lineage[-1] == mule.identity.id
    assert after.meta.samples == max(before.meta.samples, mule.slot(KEY).meta.samples)
    assert space.counters["merged"] == 1


def test_its_own_model_coming_back_changes_nothing(
    peers: tuple[ModelHost, ModelHost, Identity], tmp_path: Path
) -> None:
    # fixed-data mode: the mule adopts the space's model and offers it, re-signed, next visit
    space, mule, _ = peers
    assert mule.adopt(space.export(KEY), now=NOW + 60).accepted
    before = space.slot(KEY)
    outcome = space.receive(mule.export(KEY), now=NOW + 120)
    assert (outcome.accepted, outcome.reason, outcome.changed) == (True, "unchanged", False)
    assert outcome.version == before.version
    assert space.slot(KEY).snapshot.sha256 == before.snapshot.sha256
    assert space.counters["unchanged"] == 1
    assert space.counters["merged"] == 0
    # an older version is remembered across a restart; a model it never held still merges
    # (training long enough that the promotion rule serves it)
    config = TrainConfig(max_epochs=20, learning_rate=1e-2, seed=0)
    space.train(KEY, *data(1000, 2), config=config, data_time=NOW + 130, now=NOW + 140)
    assert space.decisions[KEY].served
    reopened = ModelHost(tmp_path / "space", space.identity, space.trust)
    carried = mule.slot(KEY).state()
    mule.commit(KEY, replace(carried, version=carried.version + 1, created_at=NOW + 150))
    # the space has moved on: an older model of its own
    assert reopened.receive(mule.export(KEY), now=NOW + 160).reason == "held_before"
    mule.train(KEY, *data(1000, 3), config=config, data_time=NOW + 170, now=NOW + 180)
    assert mule.decisions[KEY].served
    assert reopened.receive(mule.export(KEY), now=NOW + 190).reason == "merged"


@pytest.mark.parametrize("attack", ["stranger", "tampered", "replay", "wrong_key", "stale"])
def test_rejections_leave_the_model_untouched(
    peers: tuple[ModelHost, ModelHost, Identity], attack: str
) -> None:
    space, mule, stranger = peers
    good = mule.export(KEY)
    if attack == "stranger":
        snapshot = unpack(good, trust=mule.identity, expected_arch=None)
        data_ = pack(snapshot.onnx_bytes, snapshot.meta, stranger)
        expected = "unknown_signer"
    elif attack == "tampered":
        data_ = bytearray(good)
        data_[len(data_) // 2] ^= 0x01
        data_ = bytes(data_)
        expected = "bad_signature"
    elif attack == "replay":
        assert space.receive(good, now=NOW + 60).accepted
        data_ = good
        expected = "replayed"
    elif attack == "wrong_key":
        snapshot = unpack(good, trust=mule.identity, expected_arch=None)
        data_ = pack(
            snapshot.onnx_bytes,
            replace(snapshot.meta, context_key="occupancy/kitchen"),
            mule.identity,
        )
        expected = "incompatible"
    else:
        snapshot = unpack(good, trust=mule.identity, expected_arch=None)
        old = replace(snapshot.meta, data_time=NOW - 200 * 86400, version=5)
        data_ = pack(snapshot.onnx_bytes, old, mule.identity)
        expected = "stale"
    before = space.export(KEY)
    outcome = space.receive(data_, now=NOW + 120)
    assert not outcome.accepted
    assert outcome.reason == expected, outcome.detail
    assert space.export(KEY) == before
    assert space.rejections[expected] == 1


def test_training_warm_starts_and_stores_a_new_version(
    peers: tuple[ModelHost, ModelHost, Identity],
) -> None:
    space, _, _ = peers
    x, y = data(600, 0)
    first = space.slot(KEY)
    report = space.train(
        KEY,
        x,
        y,
        config=TrainConfig(max_epochs=40, learning_rate=1e-2, seed=1),
        data_time=NOW,
        now=NOW + 1,
    )
    slot = space.slot(KEY)
    assert slot.version == first.version + 1
    # the training window overlaps what the model learned before: the count is the larger one
    # (of 600, the latest 120 are held out for the promotion rule)
    assert slot.meta.samples == max(500, 480)
    assert slot.meta.data_time == NOW
    assert report.val_balanced_accuracy is not None
    assert report.val_balanced_accuracy > 0.85
    probabilities = space.predict(KEY, x[:5])
    assert probabilities.shape == (5, 1)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_a_merge_during_chunked_training_wins(peers: tuple[ModelHost, ModelHost, Identity]) -> None:
    space, mule, _ = peers
    x, y = data(400, 1)
    job = space.start_training(KEY, x, y, config=TrainConfig(max_epochs=3), data_time=NOW)
    assert not job.run(max_steps=2)
    assert space.receive(mule.export(KEY), now=NOW + 60).accepted
    merged = space.slot(KEY).version
    with pytest.raises(HostError, match="changed during training"):
        job.commit(now=NOW + 61)
    assert space.slot(KEY).version == merged


def test_state_survives_a_restart_and_rollback_restores(
    peers: tuple[ModelHost, ModelHost, Identity], tmp_path: Path
) -> None:
    space, mule, _ = peers
    original = space.export(KEY)
    assert space.receive(mule.export(KEY), now=NOW + 60).accepted
    restarted = ModelHost(tmp_path / "space", space.identity, space.trust)
    assert restarted.slot(KEY).version == 2
    assert restarted.counters["merged"] == 1
    # the replay guard persisted too
    assert restarted.receive(mule.export(KEY), now=NOW + 90).reason == "replayed"
    restarted.rollback(KEY)
    assert restarted.export(KEY) == original


def test_adopting_the_spaces_model_re_signs_it_with_growing_versions(
    peers: tuple[ModelHost, ModelHost, Identity],
) -> None:
    space, mule, _ = peers
    x, y = data(300, 2)
    space.train(KEY, x, y, config=TrainConfig(max_epochs=2), data_time=NOW, now=NOW + 1)
    outcome = mule.adopt(space.export(KEY), now=NOW + 2)
    assert outcome.accepted, outcome.detail
    carried = mule.slot(KEY)
    assert carried.snapshot.origin == mule.identity.id
    assert carried.version == 2
    assert carried.meta.lineage[-1] == space.identity.id
    for name, value in space.slot(KEY).weights.items():
        np.testing.assert_array_equal(carried.weights[name], value)


def test_unknown_context_keys_are_refused_unless_known(tmp_path: Path) -> None:
    space_id = Identity.generate(kind="space", name="kitchen")
    mule_id = Identity.generate(kind="mule", name="phone")
    space = ModelHost(tmp_path / "space", space_id, trust_of(mule_id))
    space.install(occupancy_model(3), context_key="occupancy/kitchen", data_time=NOW, now=NOW)
    arch = space.slot("occupancy/kitchen").meta.arch_hash
    strict = ModelHost(tmp_path / "strict", mule_id, trust_of(space_id))
    assert strict.adopt(space.export("occupancy/kitchen"), now=NOW).reason == "incompatible"
    open_ = ModelHost(
        tmp_path / "open", mule_id, trust_of(space_id), known_arch={"occupancy/kitchen": arch}
    )
    assert open_.adopt(space.export("occupancy/kitchen"), now=NOW).accepted


def test_compressed_export_round_trips(
    peers: tuple[ModelHost, ModelHost, Identity], tmp_path: Path
) -> None:
    space, mule, _ = peers
    small = mule.export(KEY, compression="int8")
    assert len(small) < len(mule.export(KEY))
    assert space.receive(small, now=NOW + 60).accepted
    fp16_host = ModelHost(
        tmp_path / "fp16",
        Identity.generate(kind="space", name="x"),
        trust_of(mule.identity),
        HostSettings(compression="fp16"),
    )
    fp16_host.install(occupancy_model(4), context_key=KEY, data_time=NOW, now=NOW)
    assert (
        unpack(fp16_host.export(KEY), trust=fp16_host.identity, expected_arch=None).compression
        == "fp16"
    )


def test_versions_count_per_source_of_one_signer(tmp_path: Path) -> None:
    """Two bedrooms of one home sign with the home's key: a phone must take both models."""
    home = Identity.generate(kind="space", name="home")
    phone = Identity.generate(kind="mule", name="phone")
    rooms = [
        ModelHost(tmp_path / name, home, trust_of(phone), HostSettings(source=name))
        for name in ("kids", "parents")
    ]
    for seed, room in enumerate(rooms):
        room.install(occupancy_model(seed), context_key=KEY, samples=100, data_time=NOW, now=NOW)
    rooms[0].train(
        KEY,
        *data(300, 5),
        config=TrainConfig(max_epochs=40, learning_rate=1e-2),
        data_time=NOW,
        now=NOW,
    )
    mule = ModelHost(tmp_path / "mule", phone, trust_of(home))
    mule.install(occupancy_model(9), context_key=KEY, samples=100, data_time=NOW, now=NOW)
    assert rooms[0].slot(KEY).version == 2
    assert mule.receive(rooms[0].export(KEY), now=NOW + 1).accepted
    # the other room's version 1 is not a replay of the first room's version 2
    outcome = mule.receive(rooms[1].export(KEY), now=NOW + 2)
    assert outcome.reason != "replayed", outcome.detail
    assert mule.receive(rooms[1].export(KEY), now=NOW + 3).reason == "replayed"


def test_receiving_a_known_key_not_yet_held_takes_it_as_it_is(tmp_path: Path) -> None:
    space_id = Identity.generate(kind="space", name="kitchen")
    mule_id = Identity.generate(kind="mule", name="phone")
    space = ModelHost(tmp_path / "space", space_id, trust_of(mule_id))
    space.install(occupancy_model(3), context_key=KEY, samples=50, data_time=NOW, now=NOW)
    known = {KEY: space.slot(KEY).meta.arch_hash}
    mule = ModelHost(tmp_path / "mule", mule_id, trust_of(space_id), known_arch=known)
    outcome = mule.receive(space.export(KEY), now=NOW + 1)
    assert (outcome.accepted, outcome.reason, outcome.version) == (True, "adopted", 1)
    np.testing.assert_array_equal(
        mule.slot(KEY).weights["head.weight"], space.slot(KEY).weights["head.weight"]
    )
