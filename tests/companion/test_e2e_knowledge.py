"""End to end, knowledge: the installed companion exchanging knowledge snapshots with a home
over a real mosquitto, caching and distilling them, and refusing bad ones.

The home is `tests.support.space_peer.SpacePeer` exchanging knowledge only: it offers the
knowledge of its model (sealed by `mlmule_core.knowledge`), and verifies and caches the phone's
(`unpack_knowledge`, as the integration does). The phone is `mlmule-companion run` with
`exchange_mode: knowledge`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from mlmule_core.identity import Identity
from mlmule_core.knowledge import (
    KnowledgeCache,
    knowledge_of,
    proxy_set,
    seal_knowledge,
    unpack_knowledge,
)
from mlmule_core.protocol import Completed, Deliver, Mode, PayloadKind, SnapshotInfo
from mlmule_core.starter import starter_index

from mule_companion.knowledge import expected_proxies
from tests.support import forge
from tests.support.broker import Broker
from tests.support.companion_process import CompanionProcess
from tests.support.e2e import (
    BEDROOM,
    KITCHEN,
    KITCHEN_SPACE,
    bedroom_data,
    carried,
    encounter,
    new_home,
    new_phone,
    phone,
    sessions,
)
from tests.support.phone_log import recent_world, write_phone_log
from tests.support.space_peer import SpacePeer

__all__ = ["phone"]  # the fixture

KNOWLEDGE_ONLY = frozenset({PayloadKind.KNOWLEDGE})
BOTH = frozenset(PayloadKind)


class KnowledgeHome:
    """A home's side of knowledge exchanges: it seals its model's knowledge, offers it, and
    verifies and caches what the phone offers (refusing what fails, with the reason)."""

    def __init__(self, home: SpacePeer, kinds: frozenset[PayloadKind] = KNOWLEDGE_ONLY) -> None:
        self.home = home
        self.cache = KnowledgeCache()
        self.refused: list[str] = []
        self.sizes: list[int] = []  # bytes of each knowledge snapshot the phone delivered
        home.endpoint.kinds = kinds  # what every space of this home exchanges from now
        settle_weights = home._settle

        def settle(delivery: Deliver) -> None:
            if delivery.snapshot.kind is not PayloadKind.KNOWLEDGE:
                settle_weights(delivery)
                return
            self.sizes.append(len(delivery.payload))
            try:
                snapshot = unpack_knowledge(
                    delivery.payload, trust=home.trust, expected_proxy=expected_proxies()
                )
            except Exception as err:
                reason = getattr(err, "reason", "internal_error")
                self.refused.append(reason)
                accepted = False
            else:
                self.cache.add(snapshot.contributor, snapshot.knowledge, received_at=time.time())
                accepted, reason = True, "ok"
            ref = delivery.ref
            home.call(
                lambda now: home.endpoint.settle(
                    ref.session, delivery.transfer, accepted=accepted, reason=reason, now=now
                )
            )

        home._settle = settle  # type: ignore[method-assign]

    def own(
        self, context_key: str, *, version: int, signer: Identity | None = None, **kw: object
    ) -> bytes:
        """The knowledge of the home's model of `context_key`, sealed (by `signer`, default the
        home); `kw` may give another proxy set."""
        slot = self.home.host.slot(context_key)
        knowledge = knowledge_of(
            slot.spec,
            slot.weights,
            slot.schema,
            context_key,
            samples=slot.meta.samples,
            score=0.8,
            trained_at=time.time() - 60,
            **kw,  # type: ignore[arg-type]
        )
        return seal_knowledge(
            knowledge, signer or self.home.identity, version=version, created_at=time.time()
        )

    def offer(self, space: str, context_key: str, container: bytes) -> None:
        info = forge_info(context_key, container)
        with self.home._lock:
            self.home.endpoint.serve_knowledge(space, context_key, info, container)

    def verdict(self, sha256: str) -> Completed | None:
        done = [
            e for e in self.home.events if isinstance(e, Completed) and e.snapshot.sha256 == sha256
        ]
        return done[0] if done else None


def forge_info(context_key: str, container: bytes) -> SnapshotInfo:
    """How an offer names a knowledge container (its header read without verifying it: a bad
    one must reach the phone to be refused there)."""
    _, header, _, _ = forge.split(container)
    return SnapshotInfo(
        context_key=context_key,
        version=int(header["version"]),
        sha256=hashlib.sha256(container).hexdigest(),
        size=len(container),
        arch=str(header["arch_hash"]),
        data_time=int(header["data_time"]),
        kind=PayloadKind.KNOWLEDGE,
    )


def weights_taken(home: SpacePeer) -> int:
    """Weights snapshots of the home's the phone accepted (`e2e.answers_taken` counts all)."""
    return sum(
        1
        for e in home.events
        if isinstance(e, Completed) and e.accepted and e.snapshot.kind is PayloadKind.WEIGHTS
    )


def import_home_model(
    phone: CompanionProcess, home: SpacePeer, context_key: str, path: Path
) -> None:
    """The phone starts out with the home's model (as after a first weights exchange)."""
    path.write_bytes(home.host.export(context_key))
    phone.cli("snapshot", "import", str(path))


def kitchen_phone(
    tmp_path: Path, home: SpacePeer, phone: CompanionProcess, **settings: object
) -> str:
    """Pair a phone set up with `settings` that logged a week in the home's kitchen, which
    serves its phone-activity model (mobile-data mode); returns the phone's id."""
    mule = home.pair_mule(new_phone(phone, training={"window_days": 28}, **settings))
    phone.pair(home.home_code())
    world, shift = recent_world(days=7)
    log = tmp_path / "phone.csv"
    write_phone_log(log, world, shift, home_id=home.identity.id, spaces={"kitchen": KITCHEN_SPACE})
    phone.cli("log-data", str(log))
    home.serve(KITCHEN_SPACE, KITCHEN, Mode.MOBILE)
    return mule


def test_two_peers_exchange_knowledge_the_phone_caches_and_distils_in_mobile_data_mode(
    tmp_path: Path, mosquitto: Broker, phone: CompanionProcess
) -> None:
    home = new_home(tmp_path, mosquitto, "home")
    knowing = KnowledgeHome(home)
    try:
        mule = kitchen_phone(tmp_path, home, phone, exchange_mode="knowledge")
        import_home_model(phone, home, KITCHEN, tmp_path / "kitchen.snap")
        before = carried(phone, KITCHEN)
        space_knowledge = knowing.own(KITCHEN, version=1)
        knowing.offer(KITCHEN_SPACE, KITCHEN, space_knowledge)
        phone.start()
        phone.wait_connected()

        def settled() -> bool:
            """Distilled, and the home holds what the phone knew before and, if the
            distillation was served, after it (offered at once)."""
            record = phone.activity().get("distillation", {}).get(KITCHEN, {})
            if not record.get("runs"):
                return False
            return len(knowing.sizes) == 1 + int(record["served"])

        encounter(home, KITCHEN_SPACE, mule, settled)
        phone.wait_for(lambda: sessions(phone, home) == 1, 10, "the phone did not see the bye")
        assert phone.stop() == 0
    finally:
        home.stop()

    # the home took the phone's knowledge: its own model's, without the home's echoed back
    [entry] = knowing.cache.entries(KITCHEN)
    assert entry.contributor == mule
    assert knowing.refused == []
    # knowledge only: no weights moved either way, and knowledge is small
    sent = [e for e in home.events if isinstance(e, Completed)]
    assert [e.snapshot.kind for e in sent] == [PayloadKind.KNOWLEDGE]
    weights_size = len(home.host.export(KITCHEN))
    assert max(knowing.sizes) < weights_size / 2, (knowing.sizes, weights_size)
    # each delivery, control messages included, costs less than one weights snapshot
    assert home.bytes_received < len(knowing.sizes) * weights_size, home.bytes_received
    status = phone.status()
    knowledge = status["knowledge"]
    assert knowledge["exchange_mode"] == "knowledge"
    assert {e["contributor"] for e in knowledge["cache"][KITCHEN]} == {home.identity.id, mule}
    record = knowledge["distillation"][KITCHEN]
    assert record["runs"] == 1
    assert record["last_contributors"] == 1  # the home's; its own model is not a teacher
    assert record["last_samples"] > 30
    decision = record["last_decision"]
    assert decision is not None
    after = carried(phone, KITCHEN)
    # the same promotion rule as any change: served means a new version, kept means none
    if record["served"]:
        assert after["version"] == before["version"] + 1
    else:
        assert after["sha256"] == before["sha256"]
    home_activity = status["homes"][0]
    assert home_activity["knowledge_received"] == 1
    assert home_activity["knowledge_sent"] >= 1
    assert (home_activity["received"], home_activity["sent"]) == (0, 0)
    text = phone.cli("status").stdout
    assert "Knowledge (exchange mode knowledge, own models knowledge): 1 models cached" in text
    assert f"distilled {KITCHEN}: 1 runs" in text


@pytest.mark.parametrize("kinds", [KNOWLEDGE_ONLY, BOTH], ids=["knowledge", "both"])
def test_a_large_phone_without_a_model_starts_from_its_own_starter_and_learns_from_knowledge(
    tmp_path: Path, mosquitto: Broker, phone: CompanionProcess, kinds: frozenset[PayloadKind]
) -> None:
    home = new_home(tmp_path, mosquitto, "home")
    # knowledge only: no weights to adopt; both: the space's compact weights do not fit
    knowing = KnowledgeHome(home, kinds)
    try:
        # the home: compact; the phone takes the weights of its own model where they are offered
        mule = kitchen_phone(tmp_path, home, phone, model_size="large", own_exchange_mode="both")
        knowing.offer(KITCHEN_SPACE, KITCHEN, knowing.own(KITCHEN, version=1))
        phone.start()
        phone.wait_connected()

        def distilled() -> bool:
            return bool(phone.activity().get("distillation", {}).get(KITCHEN, {}).get("runs"))

        encounter(home, KITCHEN_SPACE, mule, distilled)
        phone.wait_for(lambda: sessions(phone, home) == 1, 10, "the phone did not see the bye")
        assert phone.stop() == 0
    finally:
        home.stop()

    assert weights_taken(home) == 0
    refused = phone.status()["homes"][0]["refused"]
    assert refused == (1 if kinds == BOTH else 0)  # the compact weights: incompatible
    # the phone runs a model of its own size, the large starter's architecture, whatever it served
    exported = tmp_path / "carried.snap"
    phone.cli("snapshot", "export", KITCHEN, "-o", str(exported))
    _, header, _, _ = forge.split(exported.read_bytes())
    large = starter_index(model_size="large")[KITCHEN].arch_hash
    assert header["arch_hash"] == large != starter_index()[KITCHEN].arch_hash
    record = phone.status()["knowledge"]["distillation"][KITCHEN]
    assert record["runs"] == 1
    assert record["last_contributors"] == 1  # the home's compact model taught the large one
    assert record["last_decision"]["change"] == "distill"


def test_bad_knowledge_is_refused_like_bad_weights_and_changes_nothing(
    tmp_path: Path, mosquitto: Broker, phone: CompanionProcess
) -> None:
    home = new_home(tmp_path, mosquitto, "home")
    knowing = KnowledgeHome(home)
    stranger = Identity.generate(kind="space", name="stranger")
    try:
        mule = home.pair_mule(new_phone(phone, exchange_mode="knowledge"))
        phone.pair(home.home_code())
        bedroom_data(home)
        import_home_model(phone, home, BEDROOM, tmp_path / "bedroom.snap")
        model = carried(phone, BEDROOM)
        phone.start()
        phone.wait_connected()
        good = knowing.own(BEDROOM, version=5)
        schema = home.host.slot(BEDROOM).schema
        bad = {
            "malformed": forge.resigned(
                knowing.own(BEDROOM, version=6),
                lambda h: h.update(proxy_size=7),
                signer=home.identity,
            ),
            "wrong_proxy_set": knowing.own(
                BEDROOM, version=7, proxy=proxy_set(schema, seed="another place")
            ),
            "unknown_signer": knowing.own(BEDROOM, version=8, signer=stranger),
            "too_large": forge.resigned(
                knowing.own(BEDROOM, version=9),
                lambda h: h.update(proxy_size=1_000_000),
                signer=home.identity,
            ),
            "replayed": knowing.own(BEDROOM, version=5),  # new predictions, an old version
        }
        # the good one first, so that the replay has something to replay
        for reason, container in [("ok", good), *bad.items()]:
            knowing.offer("bedroom", BEDROOM, container)
            sha = hashlib.sha256(container).hexdigest()
            encounter(home, "bedroom", mule, lambda s=sha: knowing.verdict(s) is not None)
            verdict = knowing.verdict(sha)
            assert verdict is not None
            assert (verdict.accepted, verdict.reason) == (reason == "ok", reason), reason
        phone.wait_for(lambda: sessions(phone, home) == 6, 10, "the phone did not see the byes")
        assert phone.stop() == 0
    finally:
        home.stop()

    status = phone.status()
    [activity] = status["homes"]
    assert activity["knowledge_received"] == 1
    assert activity["knowledge_refused"] == 5
    refusals = [e for e in phone.activity()["events"] if e["event"] == "refused knowledge"]
    assert sorted(e["detail"].split()[1] for e in refusals) == sorted(bad)
    # only the good knowledge is cached, beside the phone's own; the model is the one it had
    cached = status["knowledge"]["cache"][BEDROOM]
    assert {e["contributor"] for e in cached} == {home.identity.id, mule}
    assert carried(phone, BEDROOM)["sha256"] == model["sha256"]
    assert status["knowledge"]["distillation"] == {}  # fixed-data mode: the phone cannot judge


def test_in_both_modes_weights_and_knowledge_travel_side_by_side(
    tmp_path: Path, mosquitto: Broker, phone: CompanionProcess
) -> None:
    home = new_home(tmp_path, mosquitto, "home")
    knowing = KnowledgeHome(home, BOTH)
    try:
        mule = home.pair_mule(new_phone(phone, exchange_mode="both"))
        phone.pair(home.home_code())
        bedroom_data(home)
        knowing.offer("bedroom", BEDROOM, knowing.own(BEDROOM, version=1))
        phone.start()
        phone.wait_connected()
        # first visit: the phone, carrying nothing, takes the space's model and its knowledge
        encounter(
            home,
            "bedroom",
            mule,
            lambda: (
                weights_taken(home) == 1
                and phone.activity()
                .get("homes", {})
                .get(home.identity.id, {})
                .get("knowledge_received")
                == 1
            ),
        )
        home.train(BEDROOM)  # the space moves on
        # second visit: the phone brings back the model and offers its knowledge
        encounter(
            home,
            "bedroom",
            mule,
            lambda: weights_taken(home) == 2 and bool(knowing.cache.entries(BEDROOM)),
        )
        phone.wait_for(lambda: sessions(phone, home) == 2, 10, "the phone did not see the byes")
        assert phone.stop() == 0
    finally:
        home.stop()
    [received] = home.received  # the weights path, as without knowledge
    assert received.outcome.accepted, received.outcome
    assert received.outcome.origin == mule
    [entry] = knowing.cache.entries(BEDROOM)
    assert entry.contributor == mule
    status = phone.status()
    [activity] = status["homes"]
    assert (activity["received"], activity["knowledge_received"]) == (2, 1)
    assert activity["sent"] == 1
    assert activity["knowledge_sent"] >= 1
    assert carried(phone, BEDROOM)["version"] == 2
    assert {e["contributor"] for e in status["knowledge"]["cache"][BEDROOM]} == {
        home.identity.id,
        mule,
    }
