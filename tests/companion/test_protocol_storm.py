"""Property tests: whatever a broker or a hostile client does to the messages, an encounter ends
with the right bytes or a typed error, releases its buffers, and never hangs."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlmule_core.errors import ProtocolError, TransferError
from mlmule_core.protocol import Closed, Mode, Publish
from mlmule_core.protocol.wire import decode_chunk, encode_chunk, is_chunk
from test_protocol import OCCUPANCY, SMALL, Net, make_peers, merged

STORM_CASES = 150
LOSSY_CASES = 100
ROUNDS = 6
_SETTINGS = settings(
    max_examples=STORM_CASES,
    deadline=None,
    derandomize=True,  # the same cases on every run, so CI is repeatable
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FRAME_FATES = (
    *("deliver", "deliver", "drop", "repeat", "wrong_total", "bad_index", "corrupt", "cut"),
    "flood",
)


def forged(message: Publish, fate: str, rng: random.Random) -> list[Publish]:
    """What a fate makes of one chunk: nothing, copies, or a frame that lies about itself."""
    frame = decode_chunk(message.payload)
    total, index, data = frame.total, frame.index, frame.data
    if fate == "drop":
        return []
    if fate == "repeat":
        return [message] * rng.randint(2, 4)
    if fate == "flood":
        return [message] * rng.randint(20, 80)
    if fate == "wrong_total":
        total = rng.choice([0, total - 1, total + 1, 2**32 - 1])
    elif fate == "bad_index":
        index = rng.choice([total, total + 1, 2**32 - 1])
    elif fate == "corrupt":
        position = rng.randrange(len(data))
        data = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
    elif fate == "cut":
        data = data[: rng.randrange(len(data))]
    if fate == "deliver":
        return [message]
    return [Publish(message.topic, encode_chunk(frame.transfer, index, total, data)), message]


def test_chunk_storms_end_with_the_right_bytes_or_a_typed_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    outcomes: Counter[str] = Counter()

    @_SETTINGS
    @given(data=st.data(), size=st.integers(1, 24 * 1024), seed=st.integers(0, 2**32))
    def storm(data: st.DataObject, size: int, seed: int) -> None:
        rng = random.Random(seed)
        payload = rng.randbytes(size)
        held: list[Publish] = []

        def hold_chunks(message: Publish) -> list[Publish]:
            if is_chunk(message.payload):
                held.append(message)
                return []
            return [message]

        net = Net(make_peers(), tamper=hold_chunks, answer=False)
        net.give("space", OCCUPANCY, Mode.FIXED, None)
        net.give("mule", OCCUPANCY, Mode.FIXED, payload)
        net.open()
        for _ in range(ROUNDS):
            frames, held[:] = data.draw(st.permutations(held)), []
            fates = data.draw(
                st.lists(st.sampled_from(FRAME_FATES), min_size=len(frames), max_size=len(frames))
            )
            for message, fate in zip(frames, fates, strict=True):
                for arriving in forged(message, fate, rng):
                    net.inject(arriving)
            if net.deliveries("space") or net.failures("space"):
                break
            net.advance(SMALL.retry_after)
        if not (net.deliveries("space") or net.failures("space")):
            held.clear()
            net.tamper = lambda message: []  # the broker is gone for good
            net.advance(SMALL.transfer_timeout, steps=10)

        deliveries, failures = net.deliveries("space"), net.failures("space")
        assert len(deliveries) + len(failures) == 1
        if deliveries:
            assert deliveries[0].payload == payload
            outcomes["delivered"] += 1
        else:
            # a bad transfer fails on its own; a peer that stays silent ends the whole session
            error = failures[0].error
            assert isinstance(error, TransferError) or error.reason == "peer_silent", error
            outcomes[f"failed: {failures[0].reason}"] += 1
        assert all(isinstance(err, ProtocolError) for err in net.rejected)
        assert net.peers.space.buffered_bytes == 0

    storm()
    with capsys.disabled():
        print(f"\nchunk storms: {sum(outcomes.values())} cases, {dict(sorted(outcomes.items()))}")
    assert outcomes["delivered"] > 0
    assert sum(outcomes.values()) == STORM_CASES


def test_lossy_brokers_never_leave_an_encounter_hanging(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes: Counter[str] = Counter()

    @settings(_SETTINGS, max_examples=LOSSY_CASES)
    @given(data=st.data(), seed=st.integers(0, 2**32))
    def lossy(data: st.DataObject, seed: int) -> None:
        rng = random.Random(seed)
        space_model, mule_model = (
            rng.randbytes(rng.randint(1, 6000)),
            rng.randbytes(rng.randint(1, 6000)),
        )
        fates = st.sampled_from(("deliver", "deliver", "deliver", "drop", "repeat"))

        def lossy_broker(message: Publish) -> list[Publish]:
            fate = data.draw(fates)
            return [] if fate == "drop" else [message] * (2 if fate == "repeat" else 1)

        net = Net(make_peers(), tamper=lossy_broker)
        net.give("space", OCCUPANCY, Mode.FIXED, space_model)
        net.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
        net.open()
        net.advance(SMALL.transfer_timeout * 2, steps=60)
        net.tamper = lambda message: []
        net.advance(SMALL.session_timeout + 1, steps=2)

        for side in ("space", "mule"):
            assert net.endpoint(side).active_sessions() == []
            assert net.endpoint(side).buffered_bytes == 0
        assert all(isinstance(err, ProtocolError) for err in net.rejected)
        for delivery in net.deliveries("space"):
            assert delivery.payload == mule_model
        for delivery in net.deliveries("mule"):
            assert delivery.payload == merged(mule_model, space_model)
        for failure in net.failures("space") + net.failures("mule"):
            assert isinstance(failure.error, ProtocolError)
        closed = {action.reason for _, action in net.events if isinstance(action, Closed)}
        both_ways = len(net.deliveries("space")) == len(net.deliveries("mule")) == 1
        outcomes["exchanged both ways" if both_ways else f"ended: {sorted(closed)}"] += 1

    lossy()
    with capsys.disabled():
        print(f"\nlossy brokers: {sum(outcomes.values())} cases, {dict(sorted(outcomes.items()))}")
    assert outcomes["exchanged both ways"] > 0
