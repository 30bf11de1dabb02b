"""The encounter state machine on its own: whole encounters, lost and repeated messages, timers.

Two real endpoints with real Ed25519 identities talk through `Net`, an in-memory broker that
delivers in order and lets a test drop, repeat, reorder or alter messages on the way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import pytest
from mlmule_core.errors import (
    MalformedMessage,
    ProtocolError,
    ReplayedMessage,
    TransferError,
    UnexpectedMessage,
)
from mlmule_core.identity import Identity, TrustEntry, TrustStore
from mlmule_core.protocol import (
    Action,
    Closed,
    Completed,
    Deliver,
    Endpoint,
    Failed,
    Mode,
    MuleEndpoint,
    ProtocolConfig,
    Publish,
    SnapshotInfo,
    SpaceEndpoint,
    leader_of,
)
from mlmule_core.protocol.wire import (
    Abort,
    Body,
    Envelope,
    Manifest,
    Nack,
    Offer,
    OfferEntry,
    Request,
    Result,
    decode_chunk,
    decode_control,
    encode_chunk,
    encode_control,
    is_chunk,
)

T0 = 1_700_000_000.0
ROOM = "bedroom"
ARCH = "a1" * 16
OCCUPANCY = "occupancy/bedroom"
PHONE_ACTIVITY = "phone_activity/bedroom"


SMALL = ProtocolConfig(
    # 1 KiB chunks make many chunks out of a few KiB, and the timers tick in seconds.
    chunk_size=1024,
    max_payload=64 * 1024,
    max_chunks=64,
    retry_after=1.0,
    max_retries=4,
    transfer_timeout=30.0,
)


def small(**overrides: Any) -> ProtocolConfig:
    return replace(SMALL, **overrides)


Side = Literal["space", "mule"]


def snapshot_of(context_key: str, payload: bytes, version: int = 1) -> SnapshotInfo:
    sha = hashlib.sha256(payload).hexdigest()
    return SnapshotInfo(context_key, version, sha, len(payload), ARCH, int(T0) - 3600)


def merged(incoming: bytes, own: bytes) -> bytes:
    """Stands in for merge + train: new bytes of the incoming size that depend on both inputs."""
    seed = hashlib.sha256(incoming + own).digest()
    return (seed * (len(incoming) // 32 + 1))[: len(incoming)]


@dataclass
class Peers:
    home: Identity
    phone: Identity
    space: SpaceEndpoint
    mule: MuleEndpoint


def make_peers(
    config: ProtocolConfig = SMALL,
    *,
    space_config: ProtocolConfig | None = None,
    mule_config: ProtocolConfig | None = None,
    allowed_spaces: frozenset[str] | None = None,
) -> Peers:
    """A home and a phone that have paired, each with its endpoint."""
    home = Identity.generate(kind="space", name="home")
    phone = Identity.generate(kind="mule", name="phone")
    home_trust = TrustStore()
    home_trust.add(
        TrustEntry.for_key(
            phone.public_key_bytes,
            kind="mule",
            role="owner",
            label="phone",
            paired_at=T0,
            spaces=allowed_spaces,
        )
    )
    phone_trust = TrustStore()
    phone_trust.add(
        TrustEntry.for_key(
            home.public_key_bytes, kind="space", role="owner", label="home", paired_at=T0
        )
    )
    space = SpaceEndpoint(home, home_trust, config=space_config or config)
    mule = MuleEndpoint(phone, phone_trust, config=mule_config or config)
    return Peers(home, phone, space, mule)


def topic_matches(topic_filter: str, topic: str) -> bool:
    pattern, levels = topic_filter.split("/"), topic.split("/")
    if len(pattern) != len(levels):
        return False
    return all(p in ("+", t) for p, t in zip(pattern, levels, strict=True))


Tamper = Callable[[Publish], Iterable[Publish]]
ActionT = TypeVar("ActionT", Deliver, Completed, Failed, Closed)


@dataclass
class Net:
    """An in-memory broker between two endpoints, with a clock and the two callers.

    Each caller accepts what is delivered to it. As the leader of a key (`leader_of`), it
    answers the follower's snapshot with a merged one; as the follower, it keeps the answer.
    """

    peers: Peers
    now: float = T0
    tamper: Tamper | None = None
    settle: bool = True
    answer: bool = True
    events: list[tuple[Side, Action]] = field(default_factory=list)
    log: list[Publish] = field(default_factory=list)
    rejected: list[ProtocolError] = field(default_factory=list)
    held: dict[tuple[Side, str], tuple[SnapshotInfo, bytes]] = field(default_factory=dict)

    def endpoint(self, side: Side) -> Endpoint:
        return self.peers.space if side == "space" else self.peers.mule

    def give(self, side: Side, context_key: str, mode: Mode, payload: bytes | None) -> None:
        """What a side holds for a key (the space serves the key even with nothing yet)."""
        if payload is None:
            assert side == "space"
            self.peers.space.serve(ROOM, context_key, mode)
            return
        snapshot = snapshot_of(context_key, payload)
        self._hold(side, mode, snapshot, payload)

    def open(self, context_keys: list[str] | None = None) -> None:
        self.run("space", self.peers.space.open(ROOM, self.peers.phone.id, self.now, context_keys))

    def run(self, side: Side, actions: Iterable[Action]) -> None:
        self._process([(side, action) for action in actions])

    def inject(self, message: Publish) -> None:
        """Deliver `message` now, past the tamper hook (what follows from it passes it)."""
        self._process(self._deliver(message))

    def _process(self, queue: list[tuple[Side, Action]]) -> None:
        while queue:
            origin, action = queue.pop(0)
            if isinstance(action, Publish):
                assert action.qos == 1
                assert action.retain is False
                self.log.append(action)
                for message in self.tamper(action) if self.tamper else (action,):
                    queue += self._deliver(message)
            else:
                self.events.append((origin, action))
                queue += [(origin, follow) for follow in self._caller(origin, action)]

    def advance(self, seconds: float, *, steps: int = 1) -> None:
        for _ in range(steps):
            self.now += seconds / steps
            for side in ("space", "mule"):
                self.run(side, self.endpoint(side).tick(self.now))

    def got(self, side: Side, kind: type[ActionT]) -> list[ActionT]:
        """What one side's endpoint asked its caller to handle, of one kind, in order."""
        return [a for origin, a in self.events if origin == side and isinstance(a, kind)]

    def deliveries(self, side: Side) -> list[Deliver]:
        return self.got(side, Deliver)

    def failures(self, side: Side) -> list[Failed]:
        return self.got(side, Failed)

    def _deliver(self, message: Publish) -> list[tuple[Side, Action]]:
        for side in ("space", "mule"):
            endpoint = self.endpoint(side)
            if any(topic_matches(f, message.topic) for f in endpoint.subscriptions()):
                try:
                    actions = endpoint.receive(message.topic, message.payload, self.now)
                except ProtocolError as err:
                    self.rejected.append(err)
                    return []
                return [(side, action) for action in actions]
        raise AssertionError(f"nobody subscribes to {message.topic}")

    def _caller(self, side: Side, action: Action) -> list[Action]:
        if not isinstance(action, Deliver):
            return []
        endpoint = self.endpoint(side)
        follow: list[Action] = []
        if self.settle:
            follow += endpoint.settle(
                action.ref.session, action.transfer, accepted=True, reason="ok", now=self.now
            )
        key = action.snapshot.context_key
        if leader_of(action.mode).value == side and action.in_reply_to is None:
            if self.answer:
                own = self.held.get((side, key))
                payload = merged(action.payload, own[1] if own else b"")
                snapshot = snapshot_of(key, payload, action.snapshot.version + 1)
                self._hold(side, action.mode, snapshot, payload)
                follow += endpoint.reply(
                    action.ref.session,
                    snapshot,
                    payload,
                    in_reply_to=action.snapshot.sha256,
                    now=self.now,
                )
        else:
            self._hold(side, action.mode, action.snapshot, action.payload)
        return follow

    def _hold(self, side: Side, mode: Mode, snapshot: SnapshotInfo, payload: bytes) -> None:
        self.held[(side, snapshot.context_key)] = (snapshot, payload)
        if side == "space":
            self.peers.space.serve(ROOM, snapshot.context_key, mode, snapshot, payload)
        else:
            self.peers.mule.carry(snapshot, payload)


def control(message: Publish) -> Envelope | None:
    return None if is_chunk(message.payload) else decode_control(message.payload, 2**20).envelope


def body_of(message: Publish) -> Body | None:
    envelope = control(message)
    return None if envelope is None else envelope.body


def controls(messages: Iterable[Publish], sender: str | None = None) -> list[Envelope]:
    """The control messages among `messages`, optionally only those of one sender."""
    envelopes = [control(message) for message in messages]
    return [e for e in envelopes if e is not None and sender in (None, e.sender)]


def resign(message: Publish, signer: Identity, body: Body) -> Publish:
    """The same message with another body, validly signed: a peer that misbehaves."""
    envelope = control(message)
    assert envelope is not None
    return Publish(message.topic, encode_control(replace(envelope, body=body), signer))


def fresh(size: int) -> bytes:
    return os.urandom(size)


# ---------------------------------------------------------------------------------------------
# Whole encounters


def test_fixed_data_mode_mule_sends_space_merges_and_answers() -> None:
    net = Net(make_peers())
    space_model, mule_model = fresh(5000), fresh(7000)
    net.give("space", OCCUPANCY, Mode.FIXED, space_model)
    net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    net.open()

    [at_space] = net.deliveries("space")
    assert at_space.payload == mule_model
    assert at_space.snapshot.sha256 == hashlib.sha256(mule_model).hexdigest()
    assert at_space.in_reply_to is None
    [at_mule] = net.deliveries("mule")
    assert at_mule.payload == merged(mule_model, space_model)
    assert at_mule.in_reply_to == at_space.snapshot.sha256
    completed = net.got("mule", Completed) + net.got("space", Completed)
    assert [c.accepted for c in completed if isinstance(c, Completed)] == [True, True]
    assert net.peers.mule.carried(OCCUPANCY) == at_mule.snapshot
    # the space's own snapshot never travelled: the mule, a follower with a snapshot, skips it
    assert net.peers.mule.stats.bytes_received < len(space_model) + len(mule_model)
    assert not net.rejected


def test_mobile_data_mode_space_sends_mule_trains_and_answers() -> None:
    net = Net(make_peers())
    space_model, mule_model = fresh(6000), fresh(4000)
    net.give("space", PHONE_ACTIVITY, Mode.MOBILE, space_model)
    net.give("mule", PHONE_ACTIVITY, Mode.MOBILE, mule_model)
    net.open()

    [at_mule] = net.deliveries("mule")
    assert at_mule.payload == space_model
    [at_space] = net.deliveries("space")
    assert at_space.payload == merged(space_model, mule_model)
    assert at_space.in_reply_to == hashlib.sha256(space_model).hexdigest()
    assert net.peers.space.stats.transfers_completed == 1
    assert net.peers.mule.stats.transfers_completed == 1
    assert not net.rejected


def test_one_encounter_covers_several_keys_in_both_modes() -> None:
    net = Net(make_peers())
    keys = {
        "occupancy/bedroom": Mode.FIXED,
        "activity/bedroom": Mode.FIXED,
        "phone_activity/bedroom": Mode.MOBILE,
    }
    for key, mode in keys.items():
        net.give("space", key, mode, fresh(3000))
        net.give("mule", key, mode, fresh(2500))
    net.open()

    assert sorted(d.snapshot.context_key for d in net.deliveries("space")) == sorted(keys)
    assert sorted(d.snapshot.context_key for d in net.deliveries("mule")) == sorted(keys)
    for delivery in net.deliveries("space") + net.deliveries("mule"):
        assert hashlib.sha256(delivery.payload).hexdigest() == delivery.snapshot.sha256
    assert not net.failures("space")
    assert not net.failures("mule")


def test_a_mule_with_nothing_gets_the_space_snapshot_and_a_space_with_nothing_the_mules() -> None:
    net = Net(make_peers())
    space_model, mule_model = fresh(3000), fresh(3000)
    net.give("space", OCCUPANCY, Mode.FIXED, space_model)  # the mule carries nothing for it
    net.give("space", PHONE_ACTIVITY, Mode.MOBILE, None)  # the space has nothing for it
    net.give("mule", PHONE_ACTIVITY, Mode.MOBILE, mule_model)
    net.open()

    [at_mule] = net.deliveries("mule")
    assert (at_mule.snapshot.context_key, at_mule.payload) == (OCCUPANCY, space_model)
    [at_space] = net.deliveries("space")
    assert (at_space.snapshot.context_key, at_space.payload) == (PHONE_ACTIVITY, mule_model)
    assert net.peers.mule.carried(OCCUPANCY) == at_mule.snapshot


def test_a_rejected_snapshot_reaches_the_sender_with_its_reason() -> None:
    net = Net(make_peers(), settle=False)
    net.give("space", OCCUPANCY, Mode.FIXED, fresh(2000))
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(2000))
    net.open()
    [delivery] = net.deliveries("space")
    net.run(
        "space",
        net.peers.space.settle(
            delivery.ref.session, delivery.transfer, accepted=False, reason="stale", now=net.now
        ),
    )
    [completed] = net.got("mule", Completed)
    assert (completed.accepted, completed.reason) == (False, "stale")
    # settling again, or after the session ended, does nothing
    assert (
        net.peers.space.settle(
            delivery.ref.session, delivery.transfer, accepted=True, reason="ok", now=net.now
        )
        == []
    )
    assert (
        net.peers.space.settle("0" * 32, delivery.transfer, accepted=True, reason="ok", now=net.now)
        == []
    )


def test_closing_ends_both_sides_and_the_space_can_open_again() -> None:
    net = Net(make_peers())
    net.give("space", OCCUPANCY, Mode.FIXED, fresh(1000))
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(1000))
    net.open()
    assert net.peers.space.open(ROOM, net.peers.phone.id, net.now) == []  # one at a time
    [ref] = net.peers.space.active_sessions()
    net.run("space", net.peers.space.close(ref.session, "done", net.now))
    assert [a.reason for a in net.got("space", Closed) + net.got("mule", Closed)] == [
        "done",
        "done",
    ]
    assert net.peers.space.active_sessions() == net.peers.mule.active_sessions() == []
    net.open()
    assert len(net.peers.space.active_sessions()) == 1
    assert net.peers.mule.active_sessions() == net.peers.space.active_sessions()


# ---------------------------------------------------------------------------------------------
# Lost, repeated and reordered messages


def test_every_message_twice_still_transfers_each_snapshot_once() -> None:
    net = Net(make_peers(), tamper=lambda message: (message, message))
    mule_model = fresh(9000)
    net.give("space", OCCUPANCY, Mode.FIXED, fresh(9000))
    net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    net.open()
    assert [d.payload for d in net.deliveries("space")] == [mule_model]
    assert len(net.deliveries("mule")) == 1
    assert len(net.got("space", Completed)) == len(net.got("mule", Completed)) == 1
    # a repeated control message is refused as a replay; a repeated chunk is just ignored
    assert net.rejected
    # (and a chunk repeated after its transfer completed is refused as unknown)
    assert all(
        isinstance(err, ReplayedMessage) or err.reason == "unknown_transfer" for err in net.rejected
    )


def test_chunks_in_reverse_order_reassemble() -> None:
    held_back: list[Publish] = []

    def reverse_chunks(message: Publish) -> list[Publish]:
        if is_chunk(message.payload):
            held_back.append(message)
            index, total = decode_chunk(message.payload).index, decode_chunk(message.payload).total
            return list(reversed(held_back)) if index == total - 1 else []
        return [message]

    net = Net(make_peers(), tamper=reverse_chunks)
    mule_model = fresh(10_000)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    net.open()
    assert [d.payload for d in net.deliveries("space")] == [mule_model]


def test_a_lost_chunk_is_asked_for_again_and_only_it_is_resent() -> None:
    lost: list[int] = []

    def lose_chunk_three(message: Publish) -> list[Publish]:
        if is_chunk(message.payload) and decode_chunk(message.payload).index == 3 and not lost:
            lost.append(3)
            return []
        return [message]

    net = Net(make_peers(), tamper=lose_chunk_three)
    mule_model = fresh(8000)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    net.open()
    assert net.deliveries("space") == []
    net.advance(SMALL.retry_after)
    assert [d.payload for d in net.deliveries("space")] == [mule_model]
    assert net.peers.space.stats.nacks_sent == 1
    assert net.peers.mule.stats.chunks_resent == 1


def test_a_lost_manifest_is_requested_again() -> None:
    first_send: list[Publish] = []

    def lose_first_send(message: Publish) -> list[Publish]:
        """The manifest and its chunks go down with the broker; what is re-sent arrives."""
        body = body_of(message)
        if (isinstance(body, Manifest) and not first_send) or (
            is_chunk(message.payload) and len(first_send) < 6
        ):
            first_send.append(message)
            return []
        return [message]

    net = Net(make_peers(), tamper=lose_first_send)
    mule_model = fresh(5000)  # a manifest and 5 chunks
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    net.open()
    assert len(first_send) == 6
    net.advance(SMALL.retry_after)  # the space asks again; the mule sends the manifest again
    assert net.deliveries("space") == []
    net.advance(SMALL.retry_after)  # no chunks follow a repeated manifest: the space nacks them
    assert [d.payload for d in net.deliveries("space")] == [mule_model]
    assert net.peers.space.stats.nacks_sent == 1
    assert net.peers.mule.stats.chunks_resent == 5


def test_a_lost_verdict_is_repeated_when_the_sender_asks() -> None:
    dropped: list[Body] = []

    def lose_first_result(message: Publish) -> list[Publish]:
        body = body_of(message)
        if isinstance(body, Result) and not dropped:
            dropped.append(body)
            return []
        return [message]

    net = Net(make_peers(), tamper=lose_first_result, answer=False)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(3000))
    net.open()
    assert dropped
    assert net.got("mule", Completed) == []
    net.advance(SMALL.retry_after)
    [completed] = net.got("mule", Completed)
    assert completed.accepted


def test_a_slow_verdict_keeps_the_sender_waiting_without_failing() -> None:
    net = Net(make_peers(), settle=False, answer=False)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(3000))
    net.open()
    [delivery] = net.deliveries("space")
    # the space's caller takes 20 s (far beyond retry_after x max_retries) to decide
    net.advance(20.0, steps=20)
    assert net.failures("mule") == []
    net.run(
        "space",
        net.peers.space.settle(
            delivery.ref.session, delivery.transfer, accepted=True, reason="ok", now=net.now
        ),
    )
    assert len(net.got("mule", Completed)) == 1


def test_a_lost_opening_offer_is_repeated() -> None:
    lost: list[bool] = []

    def lose_first(message: Publish) -> list[Publish]:
        if not lost:
            lost.append(True)
            return []
        return [message]

    net = Net(make_peers(), tamper=lose_first)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(2000))
    net.open()
    assert net.peers.mule.active_sessions() == []
    net.advance(SMALL.retry_after)
    assert len(net.deliveries("space")) == 1


# ---------------------------------------------------------------------------------------------
# A misbehaving or broken sender


def test_a_payload_that_does_not_match_its_hash_fails_on_both_sides() -> None:
    peers = make_peers()

    def swap_payload(message: Publish) -> list[Publish]:
        """The mule's transfer carries other bytes under the offered hash, each chunk's hash
        consistent with the bytes, so only the whole-payload check can notice."""
        body = body_of(message)
        if isinstance(body, Manifest):
            other = fresh(body.size)
            cut = [other[i : i + body.chunk_size] for i in range(0, body.size, body.chunk_size)]
            forged = Manifest(
                body.transfer,
                body.sha256,
                body.size,
                body.chunk_size,
                tuple(hashlib.sha256(part).hexdigest() for part in cut),
            )
            replaced[body.transfer] = cut
            return [resign(message, peers.phone, forged)]
        if is_chunk(message.payload):
            frame = decode_chunk(message.payload)
            data = replaced[frame.transfer][frame.index]
            return [
                Publish(message.topic, encode_chunk(frame.transfer, frame.index, frame.total, data))
            ]
        return [message]

    replaced: dict[str, list[bytes]] = {}
    net = Net(peers, tamper=swap_payload)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(4000))
    net.open()
    assert net.deliveries("space") == []
    [failed] = net.failures("space")
    assert isinstance(failed.error, TransferError)
    assert failed.reason == "hash_mismatch"
    assert failed.context_key == OCCUPANCY
    [told] = net.failures("mule")
    assert told.reason == "hash_mismatch"
    assert net.peers.space.buffered_bytes == 0


def test_chunks_with_a_wrong_total_are_refused_and_the_transfer_still_completes() -> None:
    def add_liars(message: Publish) -> list[Publish]:
        if is_chunk(message.payload):
            frame = decode_chunk(message.payload)
            liar = encode_chunk(frame.transfer, frame.index, frame.total + 1, frame.data)
            return [Publish(message.topic, liar), message]
        return [message]

    net = Net(make_peers(), tamper=add_liars)
    mule_model = fresh(4500)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    net.open()
    assert [d.payload for d in net.deliveries("space")] == [mule_model]
    reasons = {err.reason for err in net.rejected}
    assert reasons == {"chunk_total_mismatch"}
    assert all(isinstance(err, TransferError) for err in net.rejected)


def test_a_manifest_with_a_wrong_total_fails_the_transfer() -> None:
    peers = make_peers()

    def drop_a_chunk_hash(message: Publish) -> list[Publish]:
        body = body_of(message)
        if isinstance(body, Manifest):
            short = Manifest(
                body.transfer, body.sha256, body.size, body.chunk_size, body.chunks[:-1]
            )
            return [resign(message, peers.phone, short)]
        return [message]

    net = Net(peers, tamper=drop_a_chunk_hash)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(4000))
    net.open()
    [failed] = net.failures("space")
    assert failed.reason == "wrong_total"
    assert [f.reason for f in net.failures("mule")] == ["wrong_total"]


def test_a_chunk_storm_fails_the_transfer_with_too_many_chunks() -> None:
    def flood(message: Publish) -> list[Publish]:
        if is_chunk(message.payload) and decode_chunk(message.payload).index == 0:
            return [message] * 100
        return [message]

    net = Net(make_peers(), tamper=flood)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(3000))  # 3 chunks: budget 3 x 3 + 16 frames
    net.open()
    [failed] = net.failures("space")
    assert isinstance(failed.error, TransferError)
    assert failed.reason == "too_many_chunks"
    assert net.deliveries("space") == []
    # what still arrives for the dead transfer is refused, cheaply
    assert any(err.reason == "unknown_transfer" for err in net.rejected)
    assert net.peers.space.buffered_bytes == 0


def test_corrupted_chunks_are_dropped_and_fetched_again() -> None:
    corrupted: set[int] = set()

    def flip_a_bit(message: Publish) -> list[Publish]:
        if is_chunk(message.payload):
            frame = decode_chunk(message.payload)
            if frame.index % 2 == 0 and frame.index not in corrupted:
                corrupted.add(frame.index)
                data = bytes([frame.data[0] ^ 1]) + frame.data[1:]
                return [
                    Publish(
                        message.topic, encode_chunk(frame.transfer, frame.index, frame.total, data)
                    )
                ]
        return [message]

    net = Net(make_peers(), tamper=flip_a_bit)
    mule_model = fresh(6000)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    net.open()
    assert {err.reason for err in net.rejected} == {"chunk_hash_mismatch"}
    net.advance(SMALL.retry_after)
    assert [d.payload for d in net.deliveries("space")] == [mule_model]
    assert net.peers.mule.stats.chunks_resent == len(corrupted)


# ---------------------------------------------------------------------------------------------
# Limits


def test_an_offer_larger_than_the_receiver_accepts_is_not_requested() -> None:
    small_space = small(max_payload=4096, max_chunks=4, max_control_bytes=8192)
    net = Net(make_peers(space_config=small_space))
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(5000))
    net.open()
    assert net.deliveries("space") == []
    requests = [body_of(m) for m in net.log if isinstance(body_of(m), Request)]
    assert requests
    assert all(isinstance(r, Request) and r.want == () for r in requests)
    assert not any(is_chunk(m.payload) for m in net.log)


def test_a_manifest_larger_than_offered_is_refused() -> None:
    peers = make_peers()

    def inflate(message: Publish) -> list[Publish]:
        body = body_of(message)
        if isinstance(body, Manifest):
            bigger = Manifest(
                body.transfer,
                body.sha256,
                body.size + 1024,
                body.chunk_size,
                (*body.chunks, body.chunks[0]),
            )
            return [resign(message, peers.phone, bigger)]
        return [message]

    net = Net(peers, tamper=inflate)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(3000))
    net.open()
    assert [f.reason for f in net.failures("space")] == ["size_mismatch"]


def test_snapshots_over_the_limit_cannot_be_offered() -> None:
    peers = make_peers(small(max_payload=2048, max_chunks=2, max_control_bytes=8192))
    payload = fresh(3000)
    with pytest.raises(TransferError) as caught:
        peers.mule.carry(snapshot_of(OCCUPANCY, payload), payload)
    assert caught.value.reason == "too_large"
    with pytest.raises(ProtocolError) as mismatch:
        peers.mule.carry(snapshot_of(OCCUPANCY, payload[:1000]), payload[:999])
    assert mismatch.value.reason == "payload_mismatch"


def test_concurrent_transfers_are_capped_and_all_complete() -> None:
    config = small(max_transfers=2)
    net = Net(make_peers(config), answer=False)
    keys = [f"occupancy/room_{n}" for n in range(6)]
    for key in keys:
        net.give("space", key, Mode.FIXED, None)
        net.give("mule", key, Mode.FIXED, fresh(2000))
    in_flight, peak = set(), 0

    def watch(message: Publish) -> list[Publish]:
        nonlocal peak
        body = body_of(message)
        if isinstance(body, Manifest):
            in_flight.add(body.transfer)
            peak = max(peak, len(in_flight))
        elif isinstance(body, Result):
            in_flight.discard(body.transfer)
        return [message]

    net.tamper = watch
    net.open()
    assert sorted(d.snapshot.context_key for d in net.deliveries("space")) == sorted(keys)
    assert peak == 2


def test_reassembly_memory_is_bounded_across_sessions() -> None:
    config = small(max_payload=4096, max_chunks=4, max_control_bytes=8192, max_buffered_bytes=6000)
    net = Net(make_peers(config), settle=False, answer=False)
    keys = ["occupancy/room_a", "occupancy/room_b"]
    for key in keys:
        net.give("space", key, Mode.FIXED, None)
        net.give("mule", key, Mode.FIXED, fresh(4000))
    net.tamper = lambda message: [] if is_chunk(message.payload) else [message]  # never complete
    net.open()
    assert [f.reason for f in net.failures("space")] == ["busy"]
    assert net.peers.space.buffered_bytes == 4000


# ---------------------------------------------------------------------------------------------
# Timers


def test_a_transfer_that_stalls_times_out_on_both_sides() -> None:
    config = small(max_retries=100, transfer_timeout=5.0)
    net = Net(make_peers(config))
    net.tamper = lambda message: [] if is_chunk(message.payload) else [message]
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(3000))
    net.open()
    net.advance(6.0, steps=6)
    assert [f.reason for f in net.failures("space")] == ["timeout"]
    assert [f.reason for f in net.failures("mule")] == ["timeout"]
    assert net.peers.space.buffered_bytes == 0
    assert net.peers.space.stats.nacks_sent >= 3


def test_a_silent_peer_ends_the_session() -> None:
    net = Net(make_peers())
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.tamper = lambda message: []  # the phone is not there
    net.open()
    net.advance(SMALL.retry_after * (SMALL.max_retries + 1), steps=SMALL.max_retries + 1)
    [closed] = net.got("space", Closed)
    assert closed.reason == "peer_silent"
    assert net.peers.space.active_sessions() == []
    offers = [e for e in controls(net.log) if isinstance(e.body, Offer)]
    assert len(offers) == 1 + SMALL.max_retries


def test_an_idle_session_ends_on_both_sides() -> None:
    config = small(session_timeout=60.0)
    net = Net(make_peers(config))
    net.give("space", OCCUPANCY, Mode.FIXED, fresh(1000))
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(1000))
    net.open()
    net.advance(61.0, steps=2)
    assert [a.reason for a in net.got("space", Closed)] == ["idle_timeout"]
    assert [a.reason for a in net.got("mule", Closed)] == ["idle_timeout"]
    assert net.peers.mule.active_sessions() == []


def test_closing_with_transfers_in_flight_fails_them() -> None:
    net = Net(make_peers(), answer=False)
    net.tamper = lambda message: [] if is_chunk(message.payload) else [message]
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(3000))
    net.open()
    [ref] = net.peers.space.active_sessions()
    net.run("space", net.peers.space.close(ref.session, "presence_left", net.now))
    assert [f.reason for f in net.failures("space")] == ["presence_left"]
    assert [f.reason for f in net.failures("mule")] == ["presence_left"]
    assert net.peers.space.buffered_bytes == 0


# ---------------------------------------------------------------------------------------------
# Idempotency by snapshot hash


def test_the_same_snapshot_offered_again_in_a_session_is_not_fetched_again() -> None:
    net = Net(make_peers(), answer=False)
    mule_model = fresh(3000)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    net.open()
    [ref] = net.peers.mule.active_sessions()
    snapshot = snapshot_of(OCCUPANCY, mule_model)
    net.run(
        "mule",
        net.peers.mule.reply(ref.session, snapshot, mule_model, in_reply_to=None, now=net.now),
    )
    assert len(net.deliveries("space")) == 1
    assert net.peers.space.stats.transfers_delivered == 1


def test_a_snapshot_seen_in_an_earlier_encounter_is_answered_without_fetching_it() -> None:
    net = Net(make_peers())
    space_model, mule_model = fresh(3000), fresh(3000)
    net.give("space", OCCUPANCY, Mode.FIXED, space_model)
    net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    net.open()
    [first_answer] = net.deliveries("mule")
    [ref] = net.peers.space.active_sessions()
    net.run("space", net.peers.space.close(ref.session, "done", net.now))

    # The mule comes back carrying exactly what the space gave it; meanwhile the space trained.
    newer = fresh(3000)
    net.give("space", OCCUPANCY, Mode.FIXED, newer)
    bytes_before = net.peers.space.stats.bytes_received
    net.now += 60
    net.open()
    assert len(net.deliveries("space")) == 1  # still only the first visit's
    assert net.peers.space.stats.bytes_received - bytes_before < 2000  # control messages only
    second_answer = net.deliveries("mule")[-1]
    assert second_answer.payload == newer
    assert second_answer.in_reply_to == first_answer.snapshot.sha256


def test_a_repeated_request_starts_no_second_transfer() -> None:
    def repeat_requests(message: Publish) -> list[Publish]:
        return [message, message] if isinstance(body_of(message), Request) else [message]

    net = Net(make_peers(), tamper=repeat_requests, answer=False)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(3000))
    net.open()
    manifests = [m for m in net.log if isinstance(body_of(m), Manifest)]
    assert len(manifests) == 1
    assert len(net.deliveries("space")) == 1


# ---------------------------------------------------------------------------------------------
# Stray messages


def test_stray_messages_raise_typed_errors_and_change_nothing() -> None:
    net = Net(make_peers())
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(2000))
    net.open()
    space, mule = net.peers.space, net.peers.mule
    inbox = space.topics.to_space(net.peers.home.id, ROOM, net.peers.phone.id)
    stray_chunk = encode_chunk("ab" * 16, 0, 1, b"x")
    with pytest.raises(UnexpectedMessage) as unknown:
        space.receive(inbox, stray_chunk, net.now)
    assert unknown.value.reason == "unknown_transfer"
    for garbage in (b"", b"\x00\x01", b"{", b"[]", b'{"a":1}', bytes(range(256))):
        with pytest.raises(MalformedMessage):
            space.receive(inbox, garbage, net.now)
    with pytest.raises(MalformedMessage):
        space.receive("elsewhere/topic", b"{}", net.now)
    # a mule cannot start a session: only spaces open encounters
    envelope = controls(net.log, sender=net.peers.phone.id)[0]
    fake = Envelope(
        "cd" * 16, envelope.sender, envelope.recipient, ROOM, 1, envelope.sent_at_ms, envelope.body
    )
    with pytest.raises(UnexpectedMessage) as unstarted:
        space.receive(inbox, encode_control(fake, net.peers.phone), net.now)
    assert unstarted.value.reason == "unknown_session"
    assert space.stats.messages_rejected >= 8
    assert len(mule.active_sessions()) == 1


# ---------------------------------------------------------------------------------------------
# Edges: timeouts on each side, queues, and peers that break the rules


def drop(predicate: Callable[[Publish], bool]) -> Tamper:
    return lambda message: [] if predicate(message) else [message]


def to_mule(message: Publish) -> bool:
    return "/mules/" in message.topic


def test_a_sender_that_never_hears_a_verdict_gives_up() -> None:
    net = Net(make_peers(small(max_retries=100, transfer_timeout=5.0)), answer=False)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(3000))
    net.tamper = drop(lambda m: is_chunk(m.payload) or isinstance(body_of(m), Manifest))
    net.open()
    net.tamper = drop(to_mule)  # from now on the mule hears nothing
    net.advance(6.0, steps=6)
    [failed] = net.failures("mule")
    assert (failed.reason, failed.context_key) == ("timeout", OCCUPANCY)
    assert [f.reason for f in net.failures("space")] == ["timeout"]


def test_requests_that_never_start_time_out_and_free_the_senders_queue() -> None:
    net = Net(make_peers(small(max_retries=100, transfer_timeout=5.0, max_transfers=1)))
    keys = ["occupancy/room_a", "occupancy/room_b"]
    for key in keys:
        net.give("space", key, Mode.FIXED, None)
        net.give("mule", key, Mode.FIXED, fresh(2000))
    net.tamper = drop(lambda m: is_chunk(m.payload))
    net.open()  # one transfer starts (and starves), the other waits in the mule's queue
    net.advance(6.0, steps=6)
    assert sorted(f.context_key or "" for f in net.failures("space")) == keys
    assert sorted(f.context_key or "" for f in net.failures("mule")) == keys
    assert {f.reason for f in net.failures("space") + net.failures("mule")} == {"timeout"}


@pytest.mark.parametrize(
    ("space_config", "mule_config", "reason"),
    [
        (
            small(max_chunks=8, max_payload=8192),
            small(chunk_size=256, max_chunks=64, max_payload=16_000),
            "too_many_chunks",
        ),
        (small(max_transfers=1), small(max_transfers=2), "busy"),
    ],
)
def test_manifests_beyond_the_receivers_limits_are_refused(
    space_config: ProtocolConfig, mule_config: ProtocolConfig, reason: str
) -> None:
    net = Net(make_peers(space_config=space_config, mule_config=mule_config), settle=False)
    for key in ("occupancy/room_a", "occupancy/room_b"):
        net.give("space", key, Mode.FIXED, None)
        net.give("mule", key, Mode.FIXED, fresh(3000))
    net.tamper = drop(lambda m: is_chunk(m.payload))
    net.open()
    assert reason in [f.reason for f in net.failures("space")]
    assert reason in [f.reason for f in net.failures("mule")]


def test_a_forged_manifest_over_the_size_limit_is_refused() -> None:
    peers = make_peers(space_config=small(max_payload=4096, max_chunks=4, max_control_bytes=8192))

    def inflate(message: Publish) -> list[Publish]:
        body = body_of(message)
        if isinstance(body, Manifest):
            big = Manifest(body.transfer, body.sha256, 10**6, body.chunk_size, body.chunks)
            return [resign(message, peers.phone, big)]
        return [message]

    net = Net(peers, tamper=inflate)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(3000))
    net.open()
    assert [f.reason for f in net.failures("space")] == ["too_large"]


def test_peers_that_break_the_rules_get_typed_errors() -> None:
    net = Net(make_peers(small(max_offers=2)), settle=False, answer=False)
    mule_model = fresh(2000)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    net.open()
    [delivery] = net.deliveries("space")
    session, space, mule, phone = (
        delivery.ref.session,
        net.peers.space,
        net.peers.mule,
        net.peers.phone,
    )
    inbox = space.topics.to_space(net.peers.home.id, ROOM, phone.id)
    sent = controls(net.log, sender=phone.id)
    seq = [max(e.seq for e in sent)]

    def from_mule(body: Body) -> list[Action]:
        seq[0] += 1
        envelope = Envelope(
            session, phone.id, net.peers.home.id, ROOM, seq[0], int(net.now * 1000), body
        )
        return space.receive(inbox, encode_control(envelope, phone), net.now)

    with pytest.raises(MalformedMessage):  # a key the space did not offer
        from_mule(Offer(9, (OfferEntry("activity/office", Mode.FIXED),)))
    with pytest.raises(MalformedMessage):  # a mode the space did not say
        from_mule(Offer(9, (OfferEntry(OCCUPANCY, Mode.MOBILE),)))
    with pytest.raises(UnexpectedMessage) as nack:
        from_mule(Nack("77" * 16, (0,)))
    assert nack.value.reason == "unknown_transfer"
    # asking for a snapshot the space never offered gets an abort back, not the snapshot
    [reply] = from_mule(Request(1, ("99" * 32,)))
    assert isinstance(reply, Publish)
    answer = control(reply)
    assert answer is not None
    assert isinstance(answer.body, Abort)
    assert (answer.body.sha256, answer.body.reason) == ("99" * 32, "not_offered")
    from_mule(Offer(2, ()))
    with pytest.raises(UnexpectedMessage) as offers:
        from_mule(Offer(3, ()))
    assert offers.value.reason == "too_many_offers"
    with pytest.raises(ProtocolError) as unknown_key:
        mule.reply(
            session,
            snapshot_of("activity/office", mule_model),
            mule_model,
            in_reply_to=None,
            now=net.now,
        )
    assert unknown_key.value.reason == "unknown_context"


def test_a_verdict_or_nack_that_does_not_fit_the_transfer_is_refused() -> None:
    net = Net(make_peers(), settle=False, answer=False)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, fresh(2000))
    net.open()
    [delivery] = net.deliveries("space")
    home, phone = net.peers.home, net.peers.phone
    inbox = net.peers.mule.topics.to_mule(phone.id, home.id, ROOM)
    last = max(e.seq for e in controls(net.log, sender=home.id))
    for offset, body in enumerate(
        [Result(delivery.transfer, "00" * 32, True, "ok"), Nack(delivery.transfer, (2, 99))],
        start=1,
    ):
        envelope = Envelope(
            delivery.ref.session, home.id, phone.id, ROOM, last + offset, int(net.now * 1000), body
        )
        with pytest.raises(MalformedMessage):
            net.peers.mule.receive(inbox, encode_control(envelope, home), net.now)


def test_forgotten_snapshots_are_fetched_again() -> None:
    net = Net(make_peers(small(remembered_snapshots=1)), answer=False)
    first, second = fresh(1000), fresh(1000)
    net.give("space", OCCUPANCY, Mode.FIXED, None)
    net.give("space", "activity/bedroom", Mode.FIXED, None)
    net.give("mule", OCCUPANCY, Mode.FIXED, first)
    net.give("mule", "activity/bedroom", Mode.FIXED, second)
    for _ in range(2):
        net.open()
        [ref] = net.peers.space.active_sessions()
        net.run("space", net.peers.space.close(ref.session, "done", net.now))
        net.now += 10
    # only the newest hash is remembered: the other one travels again on the second visit
    assert sorted(d.payload for d in net.deliveries("space")) == sorted([first, second, first])


def test_endpoints_refuse_what_they_cannot_serve_or_hold() -> None:
    peers = make_peers(mule_config=small(max_sessions=1))
    payload = fresh(100)
    with pytest.raises(ProtocolError) as no_payload:
        peers.space.serve(ROOM, OCCUPANCY, Mode.FIXED, snapshot_of(OCCUPANCY, payload))
    assert no_payload.value.reason == "payload_mismatch"
    with pytest.raises(ProtocolError) as other_key:
        peers.space.serve(
            ROOM, OCCUPANCY, Mode.FIXED, snapshot_of("activity/bedroom", payload), payload
        )
    assert other_key.value.reason == "payload_mismatch"
    with pytest.raises(ProtocolError) as nothing:
        peers.space.open(ROOM, peers.phone.id, T0)
    assert nothing.value.reason == "unknown_context"
    peers.space.serve(ROOM, OCCUPANCY, Mode.FIXED)
    peers.space.serve("office", OCCUPANCY, Mode.FIXED)
    with pytest.raises(ProtocolError) as unserved:
        peers.space.open(ROOM, peers.phone.id, T0, ["activity/bedroom"])
    assert unserved.value.reason == "unknown_context"
    # one session at a time for this mule: a second space's opening offer is refused
    net = Net(peers)
    net.open()
    net.run("space", peers.space.open("office", peers.phone.id, net.now))
    assert [err.reason for err in net.rejected] == ["too_many_sessions"]
    assert [ref.space for ref in peers.mule.active_sessions()] == [ROOM]
