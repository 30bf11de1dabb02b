"""The phone's knowledge (`mule_companion.knowledge`) on real models and real containers: what
it accepts into its cache, what it offers each home, and what it distils from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlmule_core.errors import ReplayedSnapshot, UnknownSigner, WrongProxySet
from mlmule_core.host import DISTILL_WEIGHT, ModelHost
from mlmule_core.identity import Identity, TrustEntry, TrustStore
from mlmule_core.knowledge import (
    knowledge_of,
    proxy_set,
    seal_knowledge,
    unpack_knowledge,
)
from mlmule_core.onnx import load_model
from mlmule_core.protocol import PayloadKind
from mlmule_core.snapshot import ReplayGuard
from mlmule_core.starter import load_starter, starter_index

from mule_companion.knowledge import PhoneKnowledge

KEY = "phone_activity/kitchen"
T0 = 1_790_000_000.0


class Peers:
    """A phone and two paired homes, each home with the starter model of `KEY`."""

    def __init__(self, root: Path) -> None:
        self.phone = Identity.generate(kind="mule", name="phone")
        self.homes = [Identity.generate(kind="space", name=f"home {i}") for i in range(2)]
        self.trust = TrustStore()
        for home in self.homes:
            self.trust.add(
                TrustEntry.for_key(
                    home.public_key_bytes, kind="space", role="owner", label="h", paired_at=T0
                )
            )
        self.host = ModelHost(
            root / "host",
            self.phone,
            self.trust,
            known_arch={k: e.arch_hash for k, e in starter_index().items()},
        )
        starter = load_starter(KEY)
        self.host.install(
            load_model(starter.onnx_bytes), context_key=KEY, samples=50, data_time=T0, now=T0
        )
        self.knowledge = PhoneKnowledge(
            root / "knowledge.json",
            self.phone,
            self.trust,
            max_entries=8,
            limits=self.host.settings.limits,
            replay=ReplayGuard(root / "replay.json"),
            max_age=None,
        )

    def sealed_by(self, signer: Identity, version: int, *, seed: str = "", shift: int = 0) -> bytes:
        """Knowledge of the starter with its output biases moved (another model), sealed."""
        slot = self.host.slot(KEY)
        weights = dict(slot.weights)
        bias = sorted(name for name in weights if name.endswith("bias"))[-1]
        weights[bias] = weights[bias] + np.float32(3.0) * (
            np.arange(weights[bias].size) == shift
        ).astype(np.float32)
        knowledge = knowledge_of(
            slot.spec,
            weights,
            slot.schema,
            KEY,
            samples=100,
            score=0.7,
            trained_at=T0 + version,
            proxy=proxy_set(slot.schema, seed=seed),
        )
        return seal_knowledge(knowledge, signer, version=version, created_at=T0 + version)


def test_received_knowledge_is_verified_then_cached_by_contributor(tmp_path: Path) -> None:
    peers = Peers(tmp_path)
    first, second = peers.homes
    snapshot, changed = peers.knowledge.receive(peers.sealed_by(first, 1), now=T0 + 10)
    assert changed
    assert snapshot.contributor == first.id
    with pytest.raises(ReplayedSnapshot):  # the same version again, other bytes
        peers.knowledge.receive(peers.sealed_by(first, 1, shift=1), now=T0 + 10)
    with pytest.raises(WrongProxySet):
        peers.knowledge.receive(peers.sealed_by(second, 1, seed="elsewhere"), now=T0 + 10)
    stranger = Identity.generate(kind="space", name="stranger")
    with pytest.raises(UnknownSigner):
        peers.knowledge.receive(peers.sealed_by(stranger, 1), now=T0 + 10)
    peers.knowledge.receive(peers.sealed_by(second, 2), now=T0 + 10)
    assert [e.contributor for e in peers.knowledge.cache.entries(KEY)] == sorted(
        [first.id, second.id]
    )
    # persisted: a phone restarted has the same cache
    again = PhoneKnowledge(
        tmp_path / "knowledge.json",
        peers.phone,
        peers.trust,
        max_entries=8,
        limits=peers.host.settings.limits,
        replay=ReplayGuard(tmp_path / "replay.json"),
        max_age=None,
    )
    assert len(again.cache.entries(KEY)) == 2
    with pytest.raises(ReplayedSnapshot):  # and remembers what it accepted
        again.receive(peers.sealed_by(first, 1, shift=2), now=T0 + 10)


def test_each_home_is_offered_the_ensemble_without_its_own_knowledge(tmp_path: Path) -> None:
    peers = Peers(tmp_path)
    first, second = peers.homes
    assert peers.knowledge.offer_for(first.id, KEY, now=T0) is None  # nothing known yet
    peers.knowledge.learn_own(peers.host.slot(KEY))
    peers.knowledge.receive(peers.sealed_by(first, 1, shift=0), now=T0 + 10)
    peers.knowledge.receive(peers.sealed_by(second, 1, shift=1), now=T0 + 10)

    offered = peers.knowledge.offer_for(first.id, KEY, now=T0 + 20)
    assert offered is not None
    assert offered.info.kind is PayloadKind.KNOWLEDGE
    assert offered.info.size == len(offered.container)
    theirs = unpack_knowledge(offered.container, trust=peers.phone, expected_proxy=None)
    assert theirs.contributor == peers.phone.id  # signed and contributed by the phone
    expected = peers.knowledge.cache.ensemble(KEY, now=T0 + 20, exclude=frozenset({first.id}))
    assert expected is not None
    # int8 (the default): half a quantisation step, then rows renormalised
    np.testing.assert_allclose(theirs.knowledge.probabilities, expected, atol=1.5 / 127)
    with_first = peers.knowledge.cache.ensemble(KEY, now=T0 + 20)
    assert with_first is not None
    assert not np.allclose(expected, with_first, atol=1e-2)  # the first home's share is out
    later = peers.knowledge.offer_for(second.id, KEY, now=T0 + 20)
    assert later is not None
    assert later.info.version > offered.info.version  # a receiver never sees it as a replay
    # sealed again only when what it is made of changed: a home fetches it once
    assert peers.knowledge.offer_for(first.id, KEY, now=T0 + 30) is offered
    peers.knowledge.receive(peers.sealed_by(second, 2, shift=2), now=T0 + 40)
    newer = peers.knowledge.offer_for(first.id, KEY, now=T0 + 50)
    assert newer is not None
    assert newer.info.version > later.info.version


def test_distillation_pulls_towards_the_others_knowledge_on_the_proxy_set(tmp_path: Path) -> None:
    peers = Peers(tmp_path)
    slot = peers.host.slot(KEY)
    first = peers.homes[0]
    peers.knowledge.learn_own(slot)
    own_only = frozenset({peers.phone.id})
    assert peers.knowledge.distillation(KEY, now=T0, exclude=own_only) is None  # only its own
    peers.knowledge.receive(peers.sealed_by(first, 1, shift=2), now=T0 + 10)
    built = peers.knowledge.distillation(KEY, now=T0 + 10, exclude=own_only)
    assert built is not None
    distill, contributors = built
    proxy = proxy_set(slot.schema)
    assert contributors == 1
    np.testing.assert_array_equal(distill.x, proxy.x)
    teacher = unpack_knowledge(
        peers.sealed_by(first, 1, shift=2), trust=first, expected_proxy=None
    ).knowledge.probabilities
    # soft targets: the home's probabilities as carried (int8), not their argmax
    np.testing.assert_allclose(distill.targets, teacher, atol=2e-3)
    assert distill.weight == DISTILL_WEIGHT


def test_knowledge_cached_on_an_older_proxy_set_is_neither_offered_nor_distilled(
    tmp_path: Path,
) -> None:
    """A cache written before an update changed the key's proxy set (the 256 rows of an
    earlier default) is held, but nobody is offered it and nothing distils from it, until
    knowledge on the current set replaces it."""
    peers = Peers(tmp_path)
    first, second = peers.homes
    slot = peers.host.slot(KEY)
    older = knowledge_of(
        slot.spec,
        slot.weights,
        slot.schema,
        KEY,
        samples=100,
        score=0.7,
        trained_at=T0,
        proxy=proxy_set(slot.schema, size=256),
    )
    assert peers.knowledge.cache.add(first.id, older, received_at=T0)
    assert peers.knowledge.offer_for(second.id, KEY, now=T0 + 10) is None
    assert peers.knowledge.distillation(KEY, now=T0 + 10, exclude=frozenset()) is None
    peers.knowledge.receive(peers.sealed_by(second, 1), now=T0 + 10)
    (entry,) = peers.knowledge.cache.entries(KEY)
    assert entry.contributor == second.id
    assert peers.knowledge.offer_for(first.id, KEY, now=T0 + 20) is not None
    built = peers.knowledge.distillation(KEY, now=T0 + 20, exclude=frozenset())
    assert built is not None
    assert built[0].targets.shape == (proxy_set(slot.schema).size, 9)
