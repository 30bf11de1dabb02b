"""Knowledge snapshots on the wire: the `kind` of an offered snapshot, who offers knowledge to
whom, and knowledge transfers under the same limits, verdicts and idempotency as weights.

Two real endpoints with real identities talk through `test_protocol.Net`. Knowledge payloads are
opaque bytes here (the protocol never reads them); `test_e2e_knowledge.py` sends real ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlmule_core.errors import MalformedMessage, ProtocolError
from mlmule_core.identity import Identity
from mlmule_core.protocol import (
    Action,
    Completed,
    Deliver,
    Mode,
    PayloadKind,
    ProtocolConfig,
)
from mlmule_core.protocol.wire import (
    Envelope,
    Offer,
    OfferEntry,
    Request,
    SnapshotInfo,
    decode_control,
    encode_control,
)
from test_protocol import (
    ARCH,
    OCCUPANCY,
    PHONE_ACTIVITY,
    ROOM,
    SMALL,
    T0,
    Net,
    Side,
    controls,
    fresh,
    make_peers,
    small,
    snapshot_of,
)

SPEC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
OTHER_FAMILY = "b2" * 16  # knowledge crosses families: its arch is the producer's, not ours
BOTH = frozenset({PayloadKind.WEIGHTS, PayloadKind.KNOWLEDGE})
KNOWLEDGE_ONLY = frozenset({PayloadKind.KNOWLEDGE})
WEIGHTS_ONLY = frozenset({PayloadKind.WEIGHTS})


def knowledge_of(context_key: str, payload: bytes, version: int = 1) -> SnapshotInfo:
    sha = hashlib.sha256(payload).hexdigest()
    return SnapshotInfo(
        context_key, version, sha, len(payload), OTHER_FAMILY, int(T0) - 600, PayloadKind.KNOWLEDGE
    )


@dataclass
class KnowledgeNet(Net):
    """`Net`, whose callers cache knowledge instead of merging it: a delivered knowledge
    snapshot is settled by `verdict` (accepted unless it says otherwise) and never answered."""

    verdict: Callable[[Deliver], str] = field(default=lambda _delivery: "ok")
    cached: dict[Side, list[bytes]] = field(default_factory=lambda: {"space": [], "mule": []})

    def give_knowledge(self, side: Side, context_key: str, payload: bytes) -> None:
        snapshot = knowledge_of(context_key, payload)
        if side == "space":
            self.peers.space.serve_knowledge(ROOM, context_key, snapshot, payload)
        else:
            self.peers.mule.carry(snapshot, payload)

    def serve(
        self, context_key: str, mode: Mode, payload: bytes | None, kinds: frozenset[PayloadKind]
    ) -> None:
        snapshot = None if payload is None else snapshot_of(context_key, payload)
        self.peers.space.serve(ROOM, context_key, mode, snapshot, payload, kinds=kinds)
        if payload is not None:
            self.held[("space", context_key)] = (snapshot_of(context_key, payload), payload)

    def _caller(self, side: Side, action: Action) -> list[Action]:
        if not isinstance(action, Deliver) or action.snapshot.kind is PayloadKind.WEIGHTS:
            return super()._caller(side, action)
        reason = self.verdict(action)
        if reason == "ok":
            self.cached[side].append(action.payload)
        return self.endpoint(side).settle(
            action.ref.session,
            action.transfer,
            accepted=reason == "ok",
            reason=reason,
            now=self.now,
        )

    def delivered(self, side: Side, kind: PayloadKind) -> list[Deliver]:
        return [d for d in self.deliveries(side) if d.snapshot.kind is kind]


def knowledge_net(
    *,
    mule: frozenset[PayloadKind] = BOTH,
    mule_own: frozenset[PayloadKind] | None = None,
    config: ProtocolConfig = SMALL,
    **options: object,
) -> KnowledgeNet:
    peers = make_peers(config)
    peers.mule.kinds = mule
    peers.mule.own_kinds = mule_own
    return KnowledgeNet(peers, **options)  # type: ignore[arg-type]


def offers_of(net: Net, sender: str) -> list[Offer]:
    return [e.body for e in controls(net.log, sender) if isinstance(e.body, Offer)]


# ---------------------------------------------------------------------------------------------
# The wire


def test_weights_are_sent_as_before_and_knowledge_names_its_kind() -> None:
    weights = SnapshotInfo(OCCUPANCY, 3, "ab" * 32, 10, ARCH, 5)
    assert "kind" not in weights.to_json()  # byte-identical to what a peer before knowledge sent
    assert weights.kind is PayloadKind.WEIGHTS
    knowledge = knowledge_of(OCCUPANCY, b"k")
    assert knowledge.to_json()["kind"] == "knowledge"
    signer = Identity.generate(kind="space", name="home")
    offer = Offer(
        1,
        (
            OfferEntry(OCCUPANCY, Mode.FIXED, weights),
            OfferEntry(OCCUPANCY, Mode.FIXED, knowledge),  # a key's weights and its knowledge
        ),
    )
    envelope = Envelope("0f" * 16, signer.id, "mulea", ROOM, 1, 1_700_000_000_000, offer)
    parsed = decode_control(encode_control(envelope, signer), 64 * 1024).envelope.body
    assert parsed == offer
    assert [entry.kind for entry in offer.entries] == [PayloadKind.WEIGHTS, PayloadKind.KNOWLEDGE]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda s: s.update(kind="gradients"), "an unknown kind"),
        (lambda s: s.update(kind=None), "a null kind"),
        (lambda s: s.update(kind=1), "a kind that is not a string"),
    ],
)
def test_a_snapshot_of_an_unknown_kind_is_malformed(
    change: Callable[[dict[str, object]], None], why: str
) -> None:
    signer = Identity.generate(kind="space", name="home")
    offer = Offer(1, (OfferEntry(OCCUPANCY, Mode.FIXED, knowledge_of(OCCUPANCY, b"k")),))
    envelope = Envelope("0f" * 16, signer.id, "mulea", ROOM, 1, 1_700_000_000_000, offer)
    raw = json.loads(encode_control(envelope, signer))
    change(raw["body"]["entries"][0]["snapshot"])
    with pytest.raises(MalformedMessage) as refused:
        decode_control(json.dumps(raw).encode(), 64 * 1024)
    assert refused.value.reason == "malformed_message", why


def test_an_offer_names_each_key_s_weights_and_knowledge_at_most_once_in_one_mode() -> None:
    signer = Identity.generate(kind="space", name="home")
    knowledge = OfferEntry(OCCUPANCY, Mode.FIXED, knowledge_of(OCCUPANCY, b"k")).to_json()
    weights = OfferEntry(OCCUPANCY, Mode.FIXED).to_json()
    envelope = Envelope("0f" * 16, signer.id, "mulea", ROOM, 1, 1_700_000_000_000, Offer(1, ()))
    raw = json.loads(encode_control(envelope, signer))
    for entries in (
        [knowledge, {**knowledge, "snapshot": knowledge_of(OCCUPANCY, b"j").to_json()}],
        [weights, {**knowledge, "mode": "mobile"}],
    ):
        raw["body"]["entries"] = entries
        with pytest.raises(MalformedMessage):
            decode_control(json.dumps(raw).encode(), 64 * 1024)


# ---------------------------------------------------------------------------------------------
# Who offers knowledge, and who fetches it


def open_with(net: KnowledgeNet, kinds: frozenset[PayloadKind]) -> None:
    """The space serves both keys with `kinds`; both sides hold weights and knowledge of each."""
    for key, mode in ((OCCUPANCY, Mode.FIXED), (PHONE_ACTIVITY, Mode.MOBILE)):
        net.serve(key, mode, fresh(3000), kinds)
        net.give("mule", key, mode, fresh(2500))
        net.give_knowledge("space", key, fresh(700))
        net.give_knowledge("mule", key, fresh(600))
    net.open()


def test_both_sides_exchanging_both_get_the_others_knowledge_beside_the_weights() -> None:
    net = knowledge_net()
    open_with(net, BOTH)
    space_knowledge = {
        d.snapshot.context_key for d in net.delivered("space", PayloadKind.KNOWLEDGE)
    }
    mule_knowledge = {d.snapshot.context_key for d in net.delivered("mule", PayloadKind.KNOWLEDGE)}
    assert space_knowledge == mule_knowledge == {OCCUPANCY, PHONE_ACTIVITY}
    # the weights went as they always do: the follower's to the leader, the merge back
    weights_at_space = net.delivered("space", PayloadKind.WEIGHTS)
    assert {d.snapshot.context_key for d in weights_at_space} == {OCCUPANCY, PHONE_ACTIVITY}
    for delivery in net.deliveries("space") + net.deliveries("mule"):
        assert hashlib.sha256(delivery.payload).hexdigest() == delivery.snapshot.sha256
    assert len(net.cached["space"]) == len(net.cached["mule"]) == 2
    # knowledge was never answered with a merge: no snapshot in reply to one
    knowledge_shas = {
        d.snapshot.sha256
        for side in ("space", "mule")
        for d in net.delivered(side, PayloadKind.KNOWLEDGE)  # type: ignore[arg-type]
    }
    assert not any(d.in_reply_to in knowledge_shas for d in net.deliveries("mule"))
    assert net.failures("space") == net.failures("mule") == []
    assert not net.rejected


def test_the_space_s_first_offer_is_what_a_peer_before_knowledge_reads() -> None:
    net = knowledge_net()
    open_with(net, BOTH)
    first, second = offers_of(net, net.peers.home.id)[:2]
    # the opening offer holds weights only (no `kind` on the wire); knowledge follows on its own
    assert all(entry.kind is PayloadKind.WEIGHTS for entry in first.entries)
    assert b'"kind"' not in net.log[0].payload
    assert {entry.kind for entry in second.entries} == {PayloadKind.KNOWLEDGE}
    # the mule offers its knowledge only after the space offered some
    mule_offers = offers_of(net, net.peers.phone.id)
    assert all(entry.kind is PayloadKind.WEIGHTS for entry in mule_offers[0].entries)
    assert any(entry.kind is PayloadKind.KNOWLEDGE for entry in mule_offers[1].entries)


def test_a_mule_that_exchanges_weights_only_ignores_knowledge_and_offers_none() -> None:
    net = knowledge_net(mule=WEIGHTS_ONLY)
    open_with(net, BOTH)
    assert net.delivered("mule", PayloadKind.KNOWLEDGE) == []
    assert net.delivered("space", PayloadKind.KNOWLEDGE) == []
    mule_offers = offers_of(net, net.peers.phone.id)
    assert all(entry.kind is PayloadKind.WEIGHTS for o in mule_offers for entry in o.entries)
    # it answered the knowledge offer with an empty request, as the protocol requires
    requests = [
        e.body for e in controls(net.log, net.peers.phone.id) if isinstance(e.body, Request)
    ]
    assert Request(2, ()) in requests
    # and the weights went as without knowledge
    assert len(net.delivered("space", PayloadKind.WEIGHTS)) == 2
    assert len(net.delivered("mule", PayloadKind.WEIGHTS)) == 2


def test_a_mule_swaps_knowledge_alone_for_its_own_models_and_both_for_those_it_carries() -> None:
    """The companion's defaults: `own_exchange_mode` knowledge for the keys it learns itself
    (mobile-data mode), `exchange_mode` both for the spaces' models it carries."""
    net = knowledge_net(mule=BOTH, mule_own=KNOWLEDGE_ONLY)
    open_with(net, BOTH)
    for side in ("space", "mule"):
        assert {d.snapshot.context_key for d in net.delivered(side, PayloadKind.WEIGHTS)} == {
            OCCUPANCY
        }
        assert {d.snapshot.context_key for d in net.delivered(side, PayloadKind.KNOWLEDGE)} == {
            OCCUPANCY,
            PHONE_ACTIVITY,
        }
    # the mule did not even name its own model's weights in its offer
    first = offers_of(net, net.peers.phone.id)[0]
    assert {e.context_key for e in first.entries if e.snapshot is not None} == {OCCUPANCY}
    assert net.failures("space") == net.failures("mule") == []


def test_a_space_that_exchanges_weights_only_sends_and_gets_no_knowledge() -> None:
    net = knowledge_net()
    open_with(net, WEIGHTS_ONLY)
    assert not any(b'"kind"' in message.payload for message in net.log)
    assert net.delivered("space", PayloadKind.KNOWLEDGE) == []
    assert net.delivered("mule", PayloadKind.KNOWLEDGE) == []
    assert len(net.delivered("space", PayloadKind.WEIGHTS)) == 2


def test_a_space_that_exchanges_knowledge_only_neither_offers_nor_fetches_weights() -> None:
    net = knowledge_net()
    open_with(net, KNOWLEDGE_ONLY)
    first = offers_of(net, net.peers.home.id)[0]
    assert all(entry.snapshot is None for entry in first.entries)
    assert net.delivered("space", PayloadKind.WEIGHTS) == []
    assert net.delivered("mule", PayloadKind.WEIGHTS) == []
    assert len(net.delivered("space", PayloadKind.KNOWLEDGE)) == 2
    assert len(net.delivered("mule", PayloadKind.KNOWLEDGE)) == 2


def test_knowledge_seen_in_an_earlier_encounter_is_not_fetched_again() -> None:
    net = knowledge_net()
    net.serve(OCCUPANCY, Mode.FIXED, None, BOTH)
    net.give_knowledge("space", OCCUPANCY, fresh(700))
    net.give_knowledge("mule", OCCUPANCY, fresh(600))
    net.open()
    assert len(net.delivered("space", PayloadKind.KNOWLEDGE)) == 1
    [ref] = net.peers.space.active_sessions()
    net.run("space", net.peers.space.close(ref.session, "done", net.now))

    net.now += 60
    net.open()  # nothing new on either side: only control messages move
    assert len(net.delivered("space", PayloadKind.KNOWLEDGE)) == 1
    assert len(net.delivered("mule", PayloadKind.KNOWLEDGE)) == 1
    newer = fresh(650)
    net.give_knowledge("mule", OCCUPANCY, newer)  # the phone met others meanwhile
    [ref] = net.peers.space.active_sessions()
    net.run("space", net.peers.space.close(ref.session, "done", net.now))
    net.now += 60
    net.open()
    assert net.delivered("space", PayloadKind.KNOWLEDGE)[-1].payload == newer


# ---------------------------------------------------------------------------------------------
# The same limits and verdicts as weights


def test_knowledge_over_the_sender_s_own_limit_cannot_be_offered() -> None:
    net = knowledge_net(config=small(max_payload=1024, max_chunks=4))
    net.serve(OCCUPANCY, Mode.FIXED, None, BOTH)
    with pytest.raises(ProtocolError) as space_refused:
        net.give_knowledge("space", OCCUPANCY, fresh(2000))
    with pytest.raises(ProtocolError) as mule_refused:
        net.give_knowledge("mule", OCCUPANCY, fresh(2000))
    assert space_refused.value.reason == mule_refused.value.reason == "too_large"


def test_an_oversized_knowledge_offer_is_not_fetched_and_a_forged_manifest_is_refused() -> None:
    space_config = small(max_payload=8192, max_chunks=8)
    mule_config = small(max_payload=1024, max_chunks=1, chunk_size=1024)
    peers = make_peers(space_config=space_config, mule_config=mule_config)
    peers.mule.kinds = BOTH
    net = KnowledgeNet(peers)
    net.serve(OCCUPANCY, Mode.FIXED, None, BOTH)
    net.give_knowledge("space", OCCUPANCY, fresh(5000))
    net.give_knowledge("mule", OCCUPANCY, fresh(500))
    net.open()
    assert net.delivered("mule", PayloadKind.KNOWLEDGE) == []  # 5000 bytes > its 1024
    assert len(net.delivered("space", PayloadKind.KNOWLEDGE)) == 1
    assert Request(2, ()) in [e.body for e in controls(net.log, peers.phone.id)]


def test_refused_knowledge_reaches_the_sender_with_its_reason() -> None:
    net = knowledge_net(verdict=lambda d: "wrong_proxy_set")
    net.serve(OCCUPANCY, Mode.FIXED, None, BOTH)
    net.give_knowledge("space", OCCUPANCY, fresh(700))
    net.give_knowledge("mule", OCCUPANCY, fresh(600))
    net.open()
    results = [
        (c.snapshot.kind, c.accepted, c.reason)
        for c in net.got("mule", Completed) + net.got("space", Completed)
    ]
    assert results == [(PayloadKind.KNOWLEDGE, False, "wrong_proxy_set")] * 2
    assert net.cached == {"space": [], "mule": []}


def test_knowledge_of_another_family_than_ours_is_fetched() -> None:
    net = knowledge_net()
    net.serve(OCCUPANCY, Mode.FIXED, fresh(3000), BOTH)  # our weights: arch ARCH
    net.give_knowledge("mule", OCCUPANCY, fresh(600))  # theirs made by OTHER_FAMILY
    net.give_knowledge("space", OCCUPANCY, fresh(700))
    net.open()
    [delivery] = net.delivered("space", PayloadKind.KNOWLEDGE)
    assert delivery.snapshot.arch == OTHER_FAMILY != ARCH


def test_endpoints_refuse_knowledge_they_cannot_serve() -> None:
    peers = make_peers()
    payload = fresh(100)
    with pytest.raises(ProtocolError) as unserved:
        peers.space.serve_knowledge(ROOM, OCCUPANCY, knowledge_of(OCCUPANCY, payload), payload)
    assert unserved.value.reason == "unknown_context"
    peers.space.serve(ROOM, OCCUPANCY, Mode.FIXED)
    with pytest.raises(ProtocolError) as as_weights:  # knowledge is not served as weights...
        peers.space.serve(ROOM, OCCUPANCY, Mode.FIXED, knowledge_of(OCCUPANCY, payload), payload)
    assert as_weights.value.reason == "payload_mismatch"
    with pytest.raises(ProtocolError) as as_knowledge:  # ...nor weights as knowledge
        peers.space.serve_knowledge(ROOM, OCCUPANCY, snapshot_of(OCCUPANCY, payload), payload)
    assert as_knowledge.value.reason == "payload_mismatch"
    with pytest.raises(ProtocolError) as nothing:
        peers.space.serve(ROOM, OCCUPANCY, Mode.FIXED, kinds=())
    assert nothing.value.reason == "bad_config"


# ---------------------------------------------------------------------------------------------
# The specification


def test_the_specification_describes_kind_and_its_test_vector_is_what_the_code_sends() -> None:
    spec = SPEC.read_text(encoding="utf-8")
    offer_section = spec.split("### `offer`")[1].split("### `request`")[0]
    assert "`kind`" in offer_section
    key = Identity.from_private_bytes(bytes(range(32)), kind="space", name="test vector")
    knowledge = SnapshotInfo(
        OCCUPANCY,
        12,
        hashlib.sha256(b"k").hexdigest(),
        2071,
        "9e3d1b7a20c4f658",
        1732262400,
        PayloadKind.KNOWLEDGE,
    )
    envelope = Envelope(
        "3f9a6c0e2b7d41d8a5c09e1f6b2d7a44",
        key.id,
        "x7k2m9q4w1e8r5t3",
        "bedroom",
        2,
        1732266000000,
        Offer(2, (OfferEntry(OCCUPANCY, Mode.FIXED, knowledge),)),
    )
    wire = encode_control(envelope, key).decode()
    assert f"\n{wire}\n" in spec
    assert re.search(r"`kind`.*weights.*knowledge", offer_section, re.S)
