"""The wire format and who may speak: byte layouts, strict parsing, signatures, freshness,
replays, topics, configuration, and the specification in docs/protocol.md staying complete."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from pathlib import Path

import pytest
from mlmule_core.errors import (
    MalformedMessage,
    ProtocolError,
    ReplayedMessage,
    StaleMessage,
    UnauthenticatedMessage,
    UnexpectedMessage,
)
from mlmule_core.identity import Identity, verify
from mlmule_core.protocol import MAX_CHUNK_SIZE, Closed, Mode, ProtocolConfig, Publish, Topics
from mlmule_core.protocol.wire import (
    BODY_TYPES,
    CHUNK_HEADER_BYTES,
    SIGNING_CONTEXT,
    Abort,
    Body,
    Bye,
    Envelope,
    Manifest,
    Nack,
    Offer,
    OfferEntry,
    Request,
    Result,
    SnapshotInfo,
    decode_chunk,
    decode_control,
    encode_chunk,
    encode_control,
)
from test_protocol import OCCUPANCY, ROOM, SMALL, Net, control, controls, fresh, make_peers

SPEC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
SHA = "ab" * 32


def envelope_with(body: Body) -> Envelope:
    return Envelope("0f" * 16, "mulea", "homeb", "kitchen", 7, 1_700_000_000_123, body)


def wire_json(signer: Identity, envelope: Envelope) -> dict[str, object]:
    parsed = json.loads(encode_control(envelope, signer))
    assert isinstance(parsed, dict)
    return parsed


def reencode(raw: object) -> bytes:
    return json.dumps(raw, separators=(",", ":"), sort_keys=True).encode()


# ---------------------------------------------------------------------------------------------
# Byte layouts


def test_control_messages_are_canonical_json_signed_with_a_context_prefix() -> None:
    signer = Identity.generate(kind="mule", name="phone")
    body = Request(offer=2, want=(SHA,))
    payload = encode_control(envelope_with(body), signer)
    expected_unsigned = (
        '{"body":{"offer":2,"want":["' + SHA + '"]},"from":"mulea","protocol":1,'
        '"sent_at":1700000000123,"seq":7,"session":"' + "0f" * 16 + '","space":"kitchen",'
        '"to":"homeb","type":"request"}'
    ).encode()
    raw = json.loads(payload)
    signature = base64.b64decode(raw.pop("sig"))
    assert reencode(raw) == expected_unsigned
    verify(signer.public_key_bytes, SIGNING_CONTEXT + expected_unsigned, signature)
    # the wire form is itself canonical: keys sorted, no spaces, the signature as "sig"
    assert payload == reencode({**raw, "sig": base64.b64encode(signature).decode()})
    decoded = decode_control(payload, 64 * 1024)
    assert decoded.envelope == envelope_with(body)
    assert decoded.signed == SIGNING_CONTEXT + expected_unsigned


def test_every_body_round_trips() -> None:
    signer = Identity.generate(kind="space", name="home")
    snapshot = SnapshotInfo(OCCUPANCY, 3, SHA, 1234, "c0ffee00", 1_700_000_000)
    bodies = [
        Offer(
            1,
            (
                OfferEntry(OCCUPANCY, Mode.FIXED, snapshot, "cd" * 32),
                OfferEntry("activity/home", Mode.MOBILE),
            ),
        ),
        Request(1, (SHA, "cd" * 32)),
        Manifest("12" * 16, SHA, 1234, 1000, (SHA, "cd" * 32)),
        Nack("12" * 16, (0, 5)),
        Result("12" * 16, SHA, False, "stale"),
        Abort(None, SHA, "timeout"),
        Bye("done"),
    ]
    assert {body.TYPE for body in bodies} == set(BODY_TYPES)
    for body in bodies:
        envelope = envelope_with(body)
        assert decode_control(encode_control(envelope, signer), 64 * 1024).envelope == envelope


def test_chunk_frames_have_a_fixed_29_byte_header() -> None:
    transfer = "00112233445566778899aabbccddeeff"
    frame = encode_chunk(transfer, 5, 9, b"data")
    assert CHUNK_HEADER_BYTES == 29
    assert frame == b"MLMC\x01" + bytes.fromhex(transfer) + struct.pack(">II", 5, 9) + b"data"
    decoded = decode_chunk(frame)
    assert (decoded.transfer, decoded.index, decoded.total, decoded.data) == (
        transfer,
        5,
        9,
        b"data",
    )
    with pytest.raises(MalformedMessage):
        decode_chunk(frame[:20])
    with pytest.raises(MalformedMessage):
        decode_chunk(encode_chunk(transfer, 0, 1, bytes(MAX_CHUNK_SIZE + 1)))
    with pytest.raises(MalformedMessage) as version:
        decode_chunk(b"MLMC\x02" + frame[5:])
    assert version.value.reason == "unsupported_protocol"


# ---------------------------------------------------------------------------------------------
# Strict parsing


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda raw: raw.update(protocol=2), "unsupported_protocol"),
        (lambda raw: raw.update(type="gossip"), "unknown_type"),
        (lambda raw: raw.update(extra=1), "malformed_message"),
        (lambda raw: raw["body"].update(extra=1), "malformed_message"),
        (lambda raw: raw.pop("seq"), "malformed_message"),
        (lambda raw: raw.update(seq=True), "malformed_message"),
        (lambda raw: raw.update(seq=0), "malformed_message"),
        (lambda raw: raw.update(seq=2**53), "malformed_message"),
        (lambda raw: raw.update(session="XYZ"), "malformed_message"),
        (lambda raw: raw.update(space="kit/chen"), "malformed_message"),
        (lambda raw: raw.update(sig="not base64!"), "malformed_message"),
        (lambda raw: raw.update(sig=base64.b64encode(b"short").decode()), "malformed_message"),
        (lambda raw: raw.update(sig=5), "malformed_message"),
        (lambda raw: raw["body"].update(want=[SHA, SHA]), "malformed_message"),
        (lambda raw: raw["body"].update(want=["AB" * 32]), "malformed_message"),
        (lambda raw: raw.update(body=[]), "malformed_message"),
    ],
)
def test_malformed_control_messages_are_refused(change: object, reason: str) -> None:
    signer = Identity.generate(kind="mule", name="phone")
    raw = wire_json(signer, envelope_with(Request(1, (SHA,))))
    change(raw)
    with pytest.raises(MalformedMessage) as caught:
        decode_control(reencode(raw), 64 * 1024)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "payload",
    [
        b'{"a":1,"a":2}',
        b'{"protocol":1.0}',
        b'{"protocol":NaN}',
        b"\xff\xfe{}",
        b"[" * 100_000 + b"]" * 100_000,
        b"{}",
        b"",
    ],
)
def test_json_that_is_not_ours_is_refused(payload: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_control(payload, 10**6)


def test_oversized_control_messages_are_refused_before_parsing() -> None:
    with pytest.raises(MalformedMessage):
        decode_control(b"{" + b" " * 70_000 + b"}", 64 * 1024)


def test_offers_must_be_consistent() -> None:
    signer = Identity.generate(kind="mule", name="phone")
    entry = OfferEntry(OCCUPANCY, Mode.FIXED).to_json()
    raw = wire_json(signer, envelope_with(Offer(1, ())))
    raw["body"]["entries"] = [entry, entry]
    with pytest.raises(MalformedMessage):
        decode_control(reencode(raw), 64 * 1024)
    raw["body"]["entries"] = [{**entry, "mode": "sometimes"}]
    with pytest.raises(MalformedMessage):
        decode_control(reencode(raw), 64 * 1024)
    with pytest.raises(MalformedMessage):
        SnapshotInfo(OCCUPANCY, 1, SHA, 0, "c0ffee00", 0)  # never empty
    with pytest.raises(MalformedMessage):
        OfferEntry(
            "activity/kitchen", Mode.FIXED, SnapshotInfo(OCCUPANCY, 1, SHA, 1, "c0ffee00", 0)
        )
    with pytest.raises(MalformedMessage):
        OfferEntry("Occupancy Bedroom", Mode.FIXED)


# ---------------------------------------------------------------------------------------------
# Who may speak, and when


def opened() -> tuple[Net, Publish, str]:
    """An encounter where the space's first offer reached the mule; returns that offer."""
    net = Net(make_peers(allowed_spaces=frozenset({ROOM})), answer=False)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(1000))
    net.open()
    first = net.log[0]
    envelope = control(first)
    assert envelope is not None
    assert isinstance(envelope.body, Offer)
    return net, first, envelope.session


def test_a_message_with_a_broken_signature_is_refused() -> None:
    net, first, _ = opened()
    raw = json.loads(first.payload)
    raw["seq"] = 99  # a change the signature does not cover
    with pytest.raises(UnauthenticatedMessage) as caught:
        net.peers.mule.receive(first.topic, reencode(raw), net.now)
    assert caught.value.reason == "bad_signature"


def test_messages_from_strangers_or_to_others_are_refused() -> None:
    net, first, session = opened()
    stranger = Identity.generate(kind="space", name="elsewhere")
    envelope = control(first)
    assert envelope is not None
    topics = net.peers.mule.topics
    forged = Envelope(
        session, stranger.id, envelope.recipient, ROOM, 2, envelope.sent_at_ms, Bye("done")
    )
    their_topic = topics.to_mule(net.peers.phone.id, stranger.id, ROOM)
    with pytest.raises(UnauthenticatedMessage) as unknown:
        net.peers.mule.receive(their_topic, encode_control(forged, stranger), net.now)
    assert unknown.value.reason == "unknown_peer"
    # signed by the stranger but sent on the real home's topic: the sender is not the topic's
    with pytest.raises(UnexpectedMessage) as misaddressed:
        net.peers.mule.receive(first.topic, encode_control(forged, stranger), net.now)
    assert misaddressed.value.reason == "misaddressed"
    assert len(net.peers.mule.active_sessions()) == 1


def test_a_mule_is_refused_in_spaces_it_is_not_allowed_in() -> None:
    net, _, _ = opened()
    net.peers.space.serve("office", OCCUPANCY, Mode.FIXED)
    with pytest.raises(UnauthenticatedMessage) as refused:
        net.peers.space.open("office", net.peers.phone.id, net.now)
    assert refused.value.reason == "not_allowed"
    with pytest.raises(UnauthenticatedMessage) as unknown:
        net.peers.space.open(ROOM, Identity.generate(kind="mule", name="x").id, net.now)
    assert unknown.value.reason == "unknown_peer"


def test_replayed_and_stale_messages_are_refused() -> None:
    net, first, session = opened()
    mule = net.peers.mule
    with pytest.raises(ReplayedMessage):
        mule.receive(first.topic, first.payload, net.now)
    later = next(
        m for m in net.log if control(m) is not None and m.topic == first.topic and m is not first
    )
    with pytest.raises(ReplayedMessage):
        mule.receive(later.topic, later.payload, net.now)
    home = net.peers.home
    envelope = control(first)
    assert envelope is not None
    for skew in (-SMALL.freshness - 1, SMALL.freshness + 1):
        old = Envelope(
            session,
            envelope.sender,
            envelope.recipient,
            ROOM,
            50,
            int((net.now + skew) * 1000),
            Bye("x"),
        )
        with pytest.raises(StaleMessage):
            mule.receive(first.topic, encode_control(old, home), net.now)
    # after the session ends, its opening offer cannot start it again...
    net.run("space", net.peers.space.close(session, "done", net.now))
    with pytest.raises(UnexpectedMessage) as ended:
        mule.receive(first.topic, first.payload, net.now)
    assert ended.value.reason == "session_closed"
    # ...and once that memory has been dropped, the offer is too old anyway
    net.advance(SMALL.freshness + 1)
    with pytest.raises(StaleMessage):
        mule.receive(first.topic, first.payload, net.now)


def test_a_new_opening_offer_from_the_same_space_supersedes_the_old_session() -> None:
    net, first, _ = opened()
    envelope = control(first)
    assert envelope is not None
    newer = Envelope(
        "ee" * 16, envelope.sender, envelope.recipient, ROOM, 1, envelope.sent_at_ms, envelope.body
    )
    actions = net.peers.mule.receive(first.topic, encode_control(newer, net.peers.home), net.now)
    assert [a.reason for a in actions if isinstance(a, Closed)] == ["superseded"]
    assert [ref.session for ref in net.peers.mule.active_sessions()] == ["ee" * 16]


def test_a_mule_answers_only_for_the_keys_the_space_asked_about() -> None:
    net = Net(make_peers(), answer=False)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(500))
    net.give("mule", "activity/office", Mode.FIXED, fresh(500))  # another home's room
    net.open()
    sent = controls(net.log, sender=net.peers.phone.id)
    offers = [envelope.body for envelope in sent if isinstance(envelope.body, Offer)]
    keys = {entry.context_key for offer in offers for entry in offer.entries}
    assert keys == {OCCUPANCY}


# ---------------------------------------------------------------------------------------------
# Topics and configuration


def test_topics_nest_under_the_prefix_and_parse_back() -> None:
    topics = Topics("home/ml")
    assert topics.to_space("h1", "kitchen", "m1") == "home/ml/h1/kitchen/mule/m1"
    assert topics.to_mule("m1", "h1", "kitchen") == "home/ml/mules/m1/space/h1/kitchen"
    assert topics.parse_to_space("home/ml/h1/kitchen/mule/m1", "h1") == ("kitchen", "m1")
    assert topics.parse_to_mule("home/ml/mules/m1/space/h1/kitchen", "m1") == ("h1", "kitchen")
    assert topics.home_filter("h1") == "home/ml/h1/+/mule/+"
    assert topics.mule_filter("m1") == "home/ml/mules/m1/space/+/+"
    for bad in ("home/ml/h2/kitchen/mule/m1", "home/ml/h1/kitchen/mule/m1/x", "other/h1/k/mule/m"):
        with pytest.raises(MalformedMessage):
            topics.parse_to_space(bad, "h1")
    for prefix in ("", "/ml", "ml/", "ml/#", "ml/+/x", "a b"):
        with pytest.raises(MalformedMessage):
            Topics(prefix)


@pytest.mark.parametrize(
    "overrides",
    [
        {"chunk_size": MAX_CHUNK_SIZE + 1},
        {"chunk_size": 8},
        {"chunk_size": 1024},  # 4 MiB would need 4096 chunks
        {"max_chunks": 2000},  # manifests of 2000 hashes do not fit 64 KiB
        {"max_transfers": 0},
        {"retry_after": 0.0},
        {"max_buffered_bytes": 1024},
        {"prefix": "a/#"},
    ],
)
def test_inconsistent_configurations_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises((ProtocolError, MalformedMessage)):
        ProtocolConfig(**overrides)


def test_the_defaults_follow_the_issue() -> None:
    config = ProtocolConfig()
    assert config.max_payload == 4 * 2**20
    assert config.chunk_size == MAX_CHUNK_SIZE == 256 * 1024
    assert config.prefix == "mlmule"


# ---------------------------------------------------------------------------------------------
# The specification


def test_the_specification_describes_every_message_and_field() -> None:
    spec = SPEC.read_text(encoding="utf-8")
    signer = Identity.generate(kind="space", name="home")
    envelope_fields = set(wire_json(signer, envelope_with(Bye("done"))))
    for name in envelope_fields:
        assert f"`{name}`" in spec, f"envelope field {name} is not in docs/protocol.md"
    for kind, body_type in BODY_TYPES.items():
        section = re.search(rf"^### `{kind}`\n(.*?)(?=^### |\Z)", spec, re.S | re.M)
        assert section, f"docs/protocol.md has no section for {kind}"
        fields = set(body_type.__dataclass_fields__) - {"TYPE"}
        json_names = {"number": "offer"}
        for field_name in fields:
            shown = json_names.get(field_name, field_name)
            assert f"`{shown}`" in section.group(1), f"{kind}.{shown} is not described"
    offer_section = spec.split("### `offer`")[1].split("### `request`")[0]
    snapshot = SnapshotInfo(OCCUPANCY, 1, SHA, 1, "c0ffee00", 0)
    for name in [*OfferEntry(OCCUPANCY, Mode.FIXED).to_json(), *snapshot.to_json()]:
        assert f"`{name}`" in offer_section, f"offer entry field {name} is not described"
    for limit in ProtocolConfig.__dataclass_fields__:
        assert f"`{limit}`" in spec, f"the limit {limit} is not in docs/protocol.md"


def test_the_specifications_test_vector_is_what_the_code_sends() -> None:
    spec = SPEC.read_text(encoding="utf-8")
    key = Identity.from_private_bytes(bytes(range(32)), kind="space", name="test vector")
    assert key.id == "kzdvvj2umnduyauf"
    snapshot = SnapshotInfo(
        OCCUPANCY, 12, hashlib.sha256(b"x").hexdigest(), 48213, "5f1c2a9e0b7d4c31", 1732262400
    )
    offer = Offer(
        1,
        (
            OfferEntry(OCCUPANCY, Mode.FIXED, snapshot),
            OfferEntry("phone_activity/bedroom", Mode.MOBILE),
        ),
    )
    envelope = Envelope(
        "3f9a6c0e2b7d41d8a5c09e1f6b2d7a44",
        key.id,
        "x7k2m9q4w1e8r5t3",
        "bedroom",
        1,
        1732266000000,
        offer,
    )
    wire = encode_control(envelope, key).decode()
    assert f"\n{wire}\n" in spec
    assert Topics().to_mule("x7k2m9q4w1e8r5t3", key.id, "bedroom") in spec
    header = encode_chunk("00112233445566778899aabbccddeeff", 2, 5, b"").hex()
    assert header == "4d4c4d430100112233445566778899aabbccddeeff0000000200000005"
    assert "4d4c4d4301 00112233445566778899aabbccddeeff 00000002 00000005" in spec
