"""The model host's knowledge path: export, verify, cache, distil, judge (core/host.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from mlmule_core import families
from mlmule_core.features import room_schema
from mlmule_core.host import HostSettings, ModelHost
from mlmule_core.identity import Identity
from mlmule_core.knowledge import (
    combined_knowledge,
    knowledge_of,
    payload_kind,
    proxy_set,
    seal_knowledge,
    unpack_knowledge,
)
from mlmule_core.knowledge_offers import KnowledgeOffers, own_entry
from mlmule_core.onnx import OnnxModel
from mlmule_core.promotion import Change
from mlmule_core.protocol import PayloadKind
from mlmule_core.train_numpy import Distillation, TrainConfig
from mlmule_models.train import TorchBackend

from tests.support.hosts import KEY, NOW, data, occupancy_model, trust_of

WEAK = TrainConfig(max_epochs=1, learning_rate=1e-3, seed=0)
STRONG = TrainConfig(max_epochs=30, learning_rate=1e-2, seed=0)
DISTIL = TrainConfig(max_epochs=30, learning_rate=1e-2, seed=0, patience=8)


def wide_model(seed: int) -> OnnxModel:
    """Another architecture for the same key: weights could never merge with the space's."""
    schema = room_schema()
    spec = families.FamilySpec(
        families.OCCUPANCY_MLP, "occupancy", schema.n_inputs, (32, 16), 1, ("empty", "occupied")
    )
    return families.build_onnx(
        spec, families.init_weights(spec, np.random.default_rng(seed), schema), schema
    )


@pytest.fixture
def homes(tmp_path: Path) -> tuple[ModelHost, ModelHost, ModelHost]:
    """A space that learnt little, a teacher home with another family that learnt well, and a
    mule that carries knowledge between them (no labels of its own)."""
    space_id = Identity.generate(kind="space", name="bedroom")
    teacher_id = Identity.generate(kind="space", name="other home")
    mule_id = Identity.generate(kind="mule", name="phone")
    space = ModelHost(tmp_path / "space", space_id, trust_of(mule_id, teacher_id))
    teacher = ModelHost(tmp_path / "teacher", teacher_id, trust_of(mule_id))
    mule = ModelHost(tmp_path / "mule", mule_id, trust_of(space_id, teacher_id))
    space.install(occupancy_model(0), context_key=KEY, samples=0, data_time=NOW, now=NOW)
    teacher.install(wide_model(1), context_key=KEY, samples=0, data_time=NOW, now=NOW)
    mule.install(occupancy_model(2), context_key=KEY, samples=0, data_time=NOW, now=NOW)
    space.train(KEY, *data(200, 5), config=WEAK, data_time=NOW + 10, now=NOW + 20)
    teacher.train(KEY, *data(3000, 6), config=STRONG, data_time=NOW + 10, now=NOW + 20)
    assert teacher.decisions[KEY].served
    assert space.slot(KEY).meta.arch_hash != teacher.slot(KEY).meta.arch_hash
    return space, teacher, mule


def test_better_knowledge_is_distilled_and_served(
    homes: tuple[ModelHost, ModelHost, ModelHost],
) -> None:
    space, teacher, _ = homes
    before = space.slot(KEY)
    container = teacher.knowledge_snapshot(KEY, now=NOW + 30)
    assert payload_kind(container) == "knowledge"
    outcome = space.receive_knowledge(container, now=NOW + 40, config=DISTIL)
    assert outcome.accepted, outcome.detail
    assert outcome.reason == "distilled"
    decision = outcome.decision
    assert decision is not None
    assert decision.change is Change.DISTILL
    assert decision.challenger_score is not None
    assert decision.current_score is not None
    assert decision.challenger_score > decision.current_score
    after = space.slot(KEY)
    assert after.version == outcome.version == before.version + 1
    assert after.meta.arch_hash == before.meta.arch_hash  # its own family, taught by another
    assert after.meta.trained_at == NOW + 40
    assert space.counters["distilled"] == 1
    assert space.counters["knowledge_distilled"] == 1
    assert [e.contributor for e in space.knowledge.entries(KEY)] == [teacher.identity.id]


def test_worse_knowledge_is_never_served(homes: tuple[ModelHost, ModelHost, ModelHost]) -> None:
    space, teacher, _ = homes
    # a teacher that learnt the opposite of the truth, with a confident score
    x, y = data(3000, 7)
    liar = teacher.slot(KEY)
    teacher.train(KEY, x, 1 - y, config=STRONG, data_time=NOW + 50, now=NOW + 60)
    assert teacher.slot(KEY).version > liar.version
    knowledge = unpack_knowledge(
        teacher.knowledge_snapshot(KEY, now=NOW + 70), trust=teacher.identity, expected_proxy=None
    ).knowledge
    lying = seal_knowledge(
        dataclasses.replace(knowledge, score=1.0),
        teacher.identity,
        version=99,
        created_at=NOW + 70,
    )
    before = space.export(KEY)
    heavy = TrainConfig(max_epochs=30, learning_rate=1e-2, seed=0, patience=30, val_fraction=0.0)
    job_outcome = space.receive_knowledge(lying, now=NOW + 80, distill=False)
    assert job_outcome.reason == "cached"
    job = space.start_distillation(KEY, now=NOW + 80, config=heavy, weight=5.0)
    assert job is not None
    job.commit(now=NOW + 90)
    assert job.decision is not None
    assert job.decision.change is Change.DISTILL
    assert not job.decision.served
    assert space.export(KEY) == before
    assert space.promotions["kept_current"] >= 1


def test_distillation_runs_in_bounded_chunks(
    homes: tuple[ModelHost, ModelHost, ModelHost],
) -> None:
    space, teacher, _ = homes
    version = space.slot(KEY).version
    assert space.start_distillation(KEY, now=NOW + 30) is None  # nothing cached yet
    outcome = space.receive_knowledge(
        teacher.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40, distill=False
    )
    assert (outcome.accepted, outcome.reason, outcome.changed) == (True, "cached", True)
    assert space.slot(KEY).version == version
    job = space.start_distillation(KEY, now=NOW + 40, config=DISTIL)
    assert job is not None
    chunks = 0
    while not job.run(max_steps=3):
        chunks += 1
    assert chunks >= 5
    job.commit(now=NOW + 50)
    assert job.decision is not None
    assert job.decision.served
    assert space.slot(KEY).version == version + 1


def test_a_host_without_labels_caches_and_relays_knowledge(
    homes: tuple[ModelHost, ModelHost, ModelHost], tmp_path: Path
) -> None:
    """A host without labels caches what arrives and passes it on, signed by itself (its own
    model, a starter, has learnt nothing to add)."""
    space, teacher, mule = homes
    outcome = mule.receive_knowledge(teacher.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40)
    assert outcome.reason == "cached"
    assert mule.slot(KEY).version == 1
    # the same knowledge again is not newer
    again = mule.receive_knowledge(teacher.knowledge_snapshot(KEY, now=NOW + 31), now=NOW + 41)
    assert (again.accepted, again.reason) == (False, "replayed")
    offered = KnowledgeOffers(mule, relay=True).offer(KEY, now=NOW + 50, receiver=space.identity.id)
    received = unpack_knowledge(offered.container, trust=mule.identity, expected_proxy=None)
    assert received.contributor == received.origin == mule.identity.id
    teacher_p = mule.knowledge.entries(KEY)[0].knowledge.probabilities
    # re-sealed in int8: half a quantisation step, then rows renormalised
    np.testing.assert_allclose(received.knowledge.probabilities, teacher_p, atol=1.5 / 127)
    outcome = space.receive_knowledge(offered.container, now=NOW + 60, config=DISTIL)
    assert outcome.reason == "distilled", outcome.detail
    assert [e.contributor for e in space.knowledge.entries(KEY)] == [mule.identity.id]
    # the cache survives a restart
    reopened = ModelHost(tmp_path / "mule", mule.identity, mule.trust)
    assert reopened.knowledge.as_dict() == mule.knowledge.as_dict()
    assert reopened.status()["knowledge"][KEY][teacher.identity.id]["score"] is not None


def test_knowledge_versions_count_per_space_of_one_home(tmp_path: Path) -> None:
    """Two bedrooms of one home sign their knowledge with the home's key, each with its own
    versions (own model's and combined): a phone takes both, and refuses each one's replay."""
    home = Identity.generate(kind="space", name="home")
    phone = Identity.generate(kind="mule", name="phone")
    rooms = [
        ModelHost(tmp_path / name, home, trust_of(phone), HostSettings(source=name))
        for name in ("kids", "parents")
    ]
    for seed, room in enumerate(rooms):
        room.install(occupancy_model(seed), context_key=KEY, samples=0, data_time=NOW, now=NOW)
    rooms[0].train(KEY, *data(3000, 6), config=STRONG, data_time=NOW + 10, now=NOW + 20)
    mule = ModelHost(tmp_path / "mule", phone, trust_of(home))
    mule.install(occupancy_model(9), context_key=KEY, samples=0, data_time=NOW, now=NOW)
    assert rooms[0].slot(KEY).version > rooms[1].slot(KEY).version
    first, second = (room.knowledge_snapshot(KEY, now=NOW + 30) for room in rooms)
    assert mule.receive_knowledge(first, now=NOW + 40).accepted
    # the second room's lower version is not a replay of the first room's
    outcome = mule.receive_knowledge(second, now=NOW + 41)
    assert outcome.reason != "replayed", outcome.detail
    assert mule.receive_knowledge(second, now=NOW + 42).reason == "replayed"
    # combined offers (as a space makes for the phones' model): versions from the clock
    sealed_later, sealed_earlier = (
        KnowledgeOffers(room, relay=True).offer(KEY, now=NOW + 60 - i, receiver=phone.id)
        for i, room in enumerate(rooms)
    )
    assert sealed_earlier.info.version < sealed_later.info.version
    assert mule.receive_knowledge(sealed_later.container, now=NOW + 70).reason != "replayed"
    assert mule.receive_knowledge(sealed_earlier.container, now=NOW + 71).reason != "replayed"


def test_knowledge_cached_on_an_older_proxy_set_is_not_relayed(
    homes: tuple[ModelHost, ModelHost, ModelHost],
) -> None:
    """Knowledge a host cached before an update changed the key's proxy set (256 rows, the
    earlier default) is held, not passed on: every receiver would refuse it."""
    _, teacher, mule = homes
    slot = teacher.slot(KEY)
    older = knowledge_of(
        slot.spec,
        slot.weights,
        slot.schema,
        KEY,
        samples=10,
        score=None,
        trained_at=NOW,
        proxy=proxy_set(slot.schema, size=256),
    )
    assert mule.knowledge.add(teacher.identity.id, older, received_at=NOW)
    offers = KnowledgeOffers(mule, relay=True)
    own_p = own_entry(mule.slot(KEY), mule.identity.id, received_at=NOW).knowledge.probabilities
    alone = unpack_knowledge(
        offers.offer(KEY, now=NOW + 50).container,
        trust=mule.identity,
        expected_proxy=mule.expected_proxy(),
    )
    np.testing.assert_allclose(alone.knowledge.probabilities, own_p, atol=0.01)
    mule.receive_knowledge(teacher.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40)
    both = unpack_knowledge(
        offers.offer(KEY, now=NOW + 60).container,
        trust=mule.identity,
        expected_proxy=mule.expected_proxy(),
    )
    assert not np.allclose(both.knowledge.probabilities, own_p, atol=0.01)


def test_its_own_knowledge_coming_back_changes_nothing(
    homes: tuple[ModelHost, ModelHost, ModelHost],
) -> None:
    """Relayed with the space first in its lineage, the space's own knowledge is held."""
    space, _, mule = homes
    own = unpack_knowledge(
        space.knowledge_snapshot(KEY, now=NOW + 30), trust=space.identity, expected_proxy=None
    )
    relayed = seal_knowledge(
        own.knowledge,
        mule.identity,
        version=own.meta.version,
        created_at=NOW + 50,
        lineage=(space.identity.id,),
    )
    outcome = space.receive_knowledge(relayed, now=NOW + 60)
    assert (outcome.accepted, outcome.reason, outcome.changed) == (True, "held_before", False)
    assert space.knowledge.entries(KEY) == []


@pytest.mark.parametrize(
    "attack",
    ["stranger", "tampered", "replay", "wrong_proxy", "truncated", "weights", "oversized", "stale"],
)
def test_bad_knowledge_is_refused_and_changes_nothing(
    homes: tuple[ModelHost, ModelHost, ModelHost], attack: str
) -> None:
    space, teacher, _ = homes
    good = teacher.knowledge_snapshot(KEY, now=NOW + 30)
    expected = {
        "stranger": "unknown_signer",
        "tampered": "bad_signature",
        "replay": "replayed",
        "wrong_proxy": "wrong_proxy_set",
        "truncated": "malformed",
        "weights": "wrong_payload",
        "oversized": "too_large",
        "stale": "stale",
    }[attack]
    if attack == "stranger":
        stranger = Identity.generate(kind="mule", name="stranger")
        knowledge = unpack_knowledge(good, trust=teacher.identity, expected_proxy=None).knowledge
        bad = seal_knowledge(knowledge, stranger, version=5, created_at=NOW + 30)
    elif attack == "tampered":
        flipped = bytearray(good)
        flipped[len(flipped) // 2] ^= 0x01
        bad = bytes(flipped)
    elif attack == "replay":
        assert space.receive_knowledge(good, now=NOW + 40, distill=False).accepted
        bad = good
    elif attack == "wrong_proxy":
        knowledge = unpack_knowledge(good, trust=teacher.identity, expected_proxy=None).knowledge
        other = dataclasses.replace(knowledge, proxy_id="0" * 32)
        bad = seal_knowledge(other, teacher.identity, version=7, created_at=NOW + 30)
    elif attack == "truncated":
        bad = good[: len(good) // 2]
    elif attack == "weights":
        bad = teacher.export(KEY)
    elif attack == "oversized":
        bad = good + bytes(4 * 2**20)
    else:
        knowledge = unpack_knowledge(good, trust=teacher.identity, expected_proxy=None).knowledge
        old = dataclasses.replace(knowledge, trained_at=NOW - 200 * 86400, data_time=None)
        bad = seal_knowledge(old, teacher.identity, version=8, created_at=NOW + 30)
    before = space.export(KEY)
    cached = len(space.knowledge.entries(KEY))
    outcome = space.receive_knowledge(bad, now=NOW + 50)
    assert not outcome.accepted
    assert outcome.reason == expected, outcome.detail
    assert space.export(KEY) == before
    assert len(space.knowledge.entries(KEY)) == cached
    assert space.rejections[expected] == 1
    # and the weights path refuses knowledge alike
    assert space.receive(good, now=NOW + 60).reason in {"wrong_payload", "replayed"}


def test_a_phone_distils_with_its_torch_step(homes: tuple[ModelHost, ModelHost, ModelHost]) -> None:
    # mobile-data mode: the phone's host distils like a space, with the torch gradient step
    space, teacher, _ = homes
    space.receive_knowledge(
        teacher.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40, distill=False
    )
    distill = space.distillation(KEY, now=NOW + 40)
    assert distill is not None
    np.testing.assert_allclose(
        distill.targets, space.knowledge.entries(KEY)[0].knowledge.probabilities, rtol=1e-6
    )
    job = space.start_distillation(KEY, now=NOW + 40, config=DISTIL, backend=TorchBackend)
    assert job is not None
    job.commit(now=NOW + 50)
    assert job.decision is not None
    assert job.decision.change is Change.DISTILL
    assert job.decision.served


def test_an_offer_leaves_out_the_receivers_own_knowledge_and_is_sealed_once(
    homes: tuple[ModelHost, ModelHost, ModelHost],
) -> None:
    """A peer without labels offers each receiver what it knows without that receiver's own
    contribution, sealed once per state of its cache and model; a space with labels offers its
    own model's knowledge, whatever it caches."""
    space, teacher, mule = homes
    # a model that has learnt something (a merge, in a relay): its knowledge is offered too
    mule.train(KEY, *data(300, 9), config=WEAK, data_time=NOW + 10, now=NOW + 20)
    mule.receive_knowledge(teacher.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40)
    mule.receive_knowledge(space.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40)
    relay = KnowledgeOffers(mule, relay=True)
    to_teacher = relay.offer(KEY, now=NOW + 50, receiver=teacher.identity.id)
    to_space = relay.offer(KEY, now=NOW + 50, receiver=space.identity.id)
    to_anyone = relay.offer(KEY, now=NOW + 50)
    assert len({to_teacher.info.sha256, to_space.info.sha256, to_anyone.info.sha256}) == 3
    assert (to_space.info.kind, to_space.info.size) == (
        PayloadKind.KNOWLEDGE,
        len(to_space.container),
    )
    # versions count up: receivers never take a later offer for a replay
    assert to_teacher.info.version < to_space.info.version < to_anyone.info.version
    assert relay.offer(KEY, now=NOW + 60, receiver=space.identity.id) is to_space
    # the space gets the teacher's knowledge and the mule's own, not its own coming back
    got = unpack_knowledge(to_space.container, trust=mule.identity, expected_proxy=None)
    [teacher_entry] = [e for e in mule.knowledge.entries(KEY) if e.contributor != space.identity.id]
    own = own_entry(mule.slot(KEY), mule.identity.id, received_at=NOW + 50)
    expected = combined_knowledge([teacher_entry, own], now=NOW + 50)
    assert expected is not None
    np.testing.assert_allclose(got.knowledge.probabilities, expected.probabilities, atol=0.01)
    # a space with labels offers its own model's knowledge
    labelled = KnowledgeOffers(teacher, relay=False).offer(KEY, now=NOW + 70)
    assert labelled.info.version == teacher.slot(KEY).version
    assert (
        unpack_knowledge(
            labelled.container, trust=teacher.identity, expected_proxy=None
        ).contributor
        == teacher.identity.id
    )


def test_a_distillation_that_loses_never_costs_the_training(
    homes: tuple[ModelHost, ModelHost, ModelHost],
) -> None:
    """`train(distill=...)` also trains a run towards the knowledge, judged first as a
    distillation; when the rule refuses it, the plain run is judged and served as training."""
    space, teacher, _ = homes
    space.train(KEY, *data(3000, 8), config=STRONG, data_time=NOW + 25, now=NOW + 26)
    space.receive_knowledge(
        teacher.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40, distill=False
    )
    assert space.counters["knowledge_cached"] == 1  # counted once
    good = space.distillation(KEY, now=NOW + 50)
    assert good is not None
    # the opposite of what the teacher knows, pulled hard: the distilled run must lose
    wrong = Distillation(good.x, 1.0 - good.targets, weight=50.0)
    trained, version = space.counters["trained"], space.slot(KEY).version
    refused = space.promotions["kept_current"]
    space.train(KEY, *data(3000, 7), config=STRONG, data_time=NOW + 50, now=NOW + 60, distill=wrong)
    assert (space.counters["distilled"], space.counters["trained"]) == (1, trained + 1)
    assert space.promotions["kept_current"] == refused + 1  # the distillation
    decision = space.decisions[KEY]
    assert (decision.change, decision.served) == (Change.TRAINING, True)
    assert space.slot(KEY).version == version + 1
