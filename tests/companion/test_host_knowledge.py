"""The model host's knowledge path: export, verify, cache, distil, judge (core/host.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from mlmule_core import families
from mlmule_core.features import room_schema
from mlmule_core.host import ModelHost
from mlmule_core.identity import Identity
from mlmule_core.knowledge import (
    knowledge_of,
    payload_kind,
    proxy_set,
    seal_knowledge,
    unpack_knowledge,
)
from mlmule_core.knowledge_offers import KnowledgeOffers
from mlmule_core.onnx import OnnxModel
from mlmule_core.promotion import Change
from mlmule_core.protocol import PayloadKind
from mlmule_core.train_numpy import TrainConfig

from mule_companion.distill_torch import DistillingTorchBackend
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
    space, teacher, mule = homes
    outcome = mule.receive_knowledge(teacher.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40)
    assert outcome.reason == "cached"
    assert mule.slot(KEY).version == 1
    # the same knowledge again is not newer
    again = mule.receive_knowledge(teacher.knowledge_snapshot(KEY, now=NOW + 31), now=NOW + 41)
    assert (again.accepted, again.reason) == (False, "replayed")
    [relayed] = mule.relayed_knowledge(KEY, now=NOW + 50)
    received = unpack_knowledge(relayed, trust=mule.identity, expected_proxy=None)
    assert received.origin == mule.identity.id
    assert received.contributor == teacher.identity.id
    outcome = space.receive_knowledge(relayed, now=NOW + 60, config=DISTIL)
    assert outcome.reason == "distilled", outcome.detail
    assert [e.contributor for e in space.knowledge.entries(KEY)] == [teacher.identity.id]
    # the cache survives a restart
    reopened = ModelHost(tmp_path / "mule", mule.identity, mule.trust)
    assert reopened.knowledge.as_dict() == mule.knowledge.as_dict()
    assert reopened.status()["knowledge"][KEY][teacher.identity.id]["score"] is not None


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
    assert mule.relayed_knowledge(KEY, now=NOW + 50) == []
    mule.receive_knowledge(teacher.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40)
    [relayed] = mule.relayed_knowledge(KEY, now=NOW + 50)
    assert unpack_knowledge(relayed, trust=mule.identity, expected_proxy=mule.expected_proxy())


def test_its_own_knowledge_coming_back_changes_nothing(
    homes: tuple[ModelHost, ModelHost, ModelHost],
) -> None:
    space, _, mule = homes
    mule.receive_knowledge(space.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40)
    [relayed] = mule.relayed_knowledge(KEY, now=NOW + 50)
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
    job = space.start_distillation(KEY, now=NOW + 40, config=DISTIL, backend=DistillingTorchBackend)
    assert job is not None
    job.commit(now=NOW + 50)
    assert job.decision is not None
    assert job.decision.change is Change.DISTILL
    assert job.decision.served


def test_a_relay_offers_the_freshest_knowledge_on_the_current_proxy_set(
    homes: tuple[ModelHost, ModelHost, ModelHost],
) -> None:
    """A relay hands back the freshest contribution it can pass on; fresher knowledge cached
    on an older proxy set is skipped. A space offers its own, sealed once per model version."""
    space, teacher, mule = homes
    relay = KnowledgeOffers(mule, relay=True)
    own = relay.offer(KEY, now=NOW + 30)
    assert unpack_knowledge(
        own.container, trust=mule.identity, expected_proxy=None
    ).contributor == (mule.identity.id)
    slot = space.slot(KEY)
    fresher_on_the_older_set = knowledge_of(
        slot.spec,
        slot.weights,
        slot.schema,
        KEY,
        samples=10,
        score=None,
        trained_at=NOW + 1000,
        proxy=proxy_set(slot.schema, size=256),
    )
    assert mule.knowledge.add(space.identity.id, fresher_on_the_older_set, received_at=NOW)
    mule.receive_knowledge(teacher.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40)
    offered = relay.offer(KEY, now=NOW + 50)
    received = unpack_knowledge(
        offered.container, trust=mule.identity, expected_proxy=mule.expected_proxy()
    )
    assert received.contributor == teacher.identity.id
    assert (offered.info.kind, offered.info.size) == (PayloadKind.KNOWLEDGE, len(offered.container))
    assert relay.offer(KEY, now=NOW + 60) is offered  # sealed once: no second container
    # a space with labels offers its own model's knowledge, whatever it caches
    space_offers = KnowledgeOffers(teacher, relay=False).offer(KEY, now=NOW + 70)
    assert space_offers.info.version == teacher.slot(KEY).version


def test_training_with_a_distillation_term_is_judged_as_a_distillation(
    homes: tuple[ModelHost, ModelHost, ModelHost],
) -> None:
    """`train(distill=...)`: the round trains towards the cache's ensemble as well, counts as a
    distillation, and the rule judges it as one."""
    space, teacher, _ = homes
    outcome = space.receive_knowledge(
        teacher.knowledge_snapshot(KEY, now=NOW + 30), now=NOW + 40, distill=False
    )
    assert outcome.reason == "cached"
    distill = space.distillation(KEY, now=NOW + 50)
    assert distill is not None
    trained = space.counters["trained"]
    space.train(
        KEY, *data(200, 7), config=DISTIL, data_time=NOW + 50, now=NOW + 60, distill=distill
    )
    assert space.decisions[KEY].change is Change.DISTILL
    assert (space.counters["distilled"], space.counters["trained"]) == (1, trained)
