"""A deterministic mutation fuzz of the snapshot decoder, bounded to about ten seconds.

Seeds are valid snapshots in every compression. Each case applies one mutation: byte and bit
flips, splices from another snapshot, inserted or deleted runs, edits of the two length
fields, truncations; or, signed again with a trusted key so that the checks behind the
signature are reached, mutations of the header text or the body. Every case must end in a
typed `SnapshotError` or in an accepted snapshot; raw mutations must never be accepted unless
they left the bytes unchanged. The outcomes are counted and printed.
"""

from __future__ import annotations

import hashlib
import random
import resource
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from mlmule_core.errors import SnapshotError
from mlmule_core.snapshot import COMPRESSIONS, pack, unpack
from test_snapshot import ACT, EXPECTED, MULE, NOW, OCC, TRUST, make_meta

from tests.support.forge import envelope, split

BUDGET_SECONDS = 10.0
MAX_CASES = 50_000
SEEDS = [
    pack(model.onnx_bytes, make_meta(model), MULE, compression=compression)
    for model in (OCC, ACT)
    for compression in COMPRESSIONS
]

Mutation = Callable[[random.Random, bytes, bytes], bytes]


def flip_bytes(rng: random.Random, data: bytes, _: bytes) -> bytes:
    mutated = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        mutated[rng.randrange(len(mutated))] ^= rng.randint(1, 255)
    return bytes(mutated)


def flip_bit(rng: random.Random, data: bytes, _: bytes) -> bytes:
    mutated = bytearray(data)
    mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
    return bytes(mutated)


def splice(rng: random.Random, data: bytes, other: bytes) -> bytes:
    start = rng.randrange(len(data))
    length = rng.randint(1, 256)
    source = rng.randrange(len(other))
    return data[:start] + other[source : source + length] + data[start + length :]


def insert_or_delete(rng: random.Random, data: bytes, _: bytes) -> bytes:
    start = rng.randrange(len(data))
    if rng.random() < 0.5:
        return data[:start] + rng.randbytes(rng.randint(1, 64)) + data[start:]
    return data[:start] + data[start + rng.randint(1, 64) :]


def edit_lengths(rng: random.Random, data: bytes, _: bytes) -> bytes:
    mutated = bytearray(data)
    header_length = struct.unpack_from(">I", data, 8)[0]
    offset = rng.choice([8, 12 + header_length])  # the header length or the body length
    current = struct.unpack_from(">I", data, offset)[0]
    value = rng.choice(
        [
            current + rng.randint(-16, 16),
            rng.randrange(2**32),
            0,
            2**32 - 1,
            len(data),
            current * 2,
        ]
    )
    struct.pack_into(">I", mutated, offset, value % 2**32)
    return bytes(mutated)


def truncate(rng: random.Random, data: bytes, _: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def resign_header(rng: random.Random, data: bytes, _: bytes) -> bytes:
    """Mutate the header's JSON text itself, then sign the result correctly."""
    header_length = struct.unpack_from(">I", data, 8)[0]
    text = bytearray(data[12 : 12 + header_length])
    for _ in range(rng.randint(1, 4)):
        text[rng.randrange(len(text))] = rng.choice(b'{}[]":,0123456789.-eE ntrufalsx\\')
    body = split(data)[2]
    unsigned = (
        data[:8] + struct.pack(">I", len(text)) + bytes(text) + struct.pack(">I", len(body)) + body
    )
    return unsigned + MULE.sign(unsigned)


def resign_body(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """Mutate the body (the ONNX graph or the tensor section), then sign it correctly."""
    _, header, body, _ = split(data)
    if rng.random() < 0.7:
        mutated = flip_bytes(rng, body, other)
    else:
        mutated = splice(rng, body, split(other)[2])
    header["body_sha256"] = hashlib.sha256(mutated).hexdigest()
    return envelope(header, mutated, MULE)


RAW: list[Mutation] = [flip_bytes, flip_bit, splice, insert_or_delete, edit_lengths, truncate]
SIGNED: list[Mutation] = [resign_header, resign_body]


def outcome(data: bytes) -> tuple[str, Any]:
    try:
        snapshot = unpack(data, trust=TRUST, expected_arch=EXPECTED, now=NOW)
    except SnapshotError as err:
        return err.reason, None
    return "accepted", snapshot


def test_mutation_fuzz_ends_every_case_typed() -> None:
    rng = random.Random(20250114)
    counts: Counter[str] = Counter()
    by_mutation: Counter[str] = Counter()
    slowest = 0.0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    cases = 0
    while cases < MAX_CASES and time.monotonic() - started < BUDGET_SECONDS:
        seed, other = rng.choice(SEEDS), rng.choice(SEEDS)
        signed = rng.random() < 0.4
        mutation = rng.choice(SIGNED if signed else RAW)
        mutated = mutation(rng, seed, other)
        case_start = time.monotonic()
        result, snapshot = outcome(mutated)
        slowest = max(slowest, time.monotonic() - case_start)
        if result == "accepted":
            if not signed:
                # a raw mutation can only pass if it changed nothing
                assert mutated == seed, mutation.__name__
            assert all(np.isfinite(v).all() for v in snapshot.model.initializers.values())
        counts[result] += 1
        by_mutation[f"{mutation.__name__}:{'ok' if result == 'accepted' else 'refused'}"] += 1
        cases += 1
    rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(
        f"\nsnapshot fuzz: {cases} cases in {time.monotonic() - started:.1f} s, "
        f"slowest case {slowest * 1000:.1f} ms, peak RSS growth {rss_growth_mib:.0f} MiB"
    )
    print(f"  outcomes: {dict(sorted(counts.items()))}")
    print(f"  mutations: {dict(sorted(by_mutation.items()))}")
    assert cases >= 1000
    # the checks behind the signature were reached, not just the signature
    for reason in ("bad_signature", "malformed", "onnx_malformed"):
        assert counts[reason] > 0, reason
    assert rss_growth_mib < 256
