"""Knowledge (core/knowledge.py): the proxy set, the signed knowledge container, the cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlmule_core.errors import (
    BadSignature,
    CorruptStateFile,
    IncompatibleSnapshot,
    MalformedSnapshot,
    PoisonedSnapshot,
    ReplayedSnapshot,
    SnapshotFromFuture,
    SnapshotTooLarge,
    StaleSnapshot,
    UnknownSigner,
    UnsupportedSnapshotFormat,
    WrongPayload,
    WrongProxySet,
)
from mlmule_core.families import DEFAULT_MODEL_SIZE, MODEL_SIZES, ModelSize
from mlmule_core.features import ROOM_FEATURES, FeatureSchema
from mlmule_core.identity import Identity, TrustEntry, TrustStore
from mlmule_core.knowledge import (
    DEFAULT_PROXY_SIZE,
    Knowledge,
    KnowledgeCache,
    knowledge_of,
    payload_kind,
    proxy_id,
    proxy_set,
    seal_knowledge,
    unpack_knowledge,
)
from mlmule_core.snapshot import ReplayGuard, SnapshotLimits, SnapshotMeta, pack, unpack
from mlmule_core.starter import load_starter

from tests.support.forge import resigned, split

NOW = 1_760_000_000.0
HOME = Identity.from_private_bytes(bytes(range(32)), kind="space", name="Home")
MULE = Identity.from_private_bytes(bytes(range(1, 33)), kind="mule", name="Phone")
STRANGER = Identity.from_private_bytes(bytes(range(2, 34)), kind="mule", name="Stranger")
TRUST = TrustStore(
    entries=[
        TrustEntry.for_key(
            MULE.public_key_bytes, kind="mule", role="owner", label="Phone", paired_at=NOW
        )
    ]
)
OCCUPANCY = "occupancy/bedroom"
ACTIVITY = "activity/kitchen"


def schema(window: tuple[int, ...] = (0,)) -> FeatureSchema:
    """A fixed room schema: its statistics are part of the expected digest below."""
    n = len(ROOM_FEATURES)
    return FeatureSchema(
        "room-v1",
        ROOM_FEATURES,
        tuple(0.5 + 0.25 * i for i in range(n)),
        tuple(1.0 + 0.125 * i for i in range(n)),
        window,
    )


def starter_knowledge(
    context_key: str, *, score: float | None = 0.8, model_size: ModelSize = DEFAULT_MODEL_SIZE
) -> Knowledge:
    model = load_starter(context_key, model_size=model_size)
    return knowledge_of(
        model.spec,
        model.weights,
        model.schema,
        context_key,
        samples=120,
        score=score,
        trained_at=NOW - 3600,
    )


def expected(context_key: str) -> dict[str, str]:
    return {context_key: proxy_set(load_starter(context_key).schema).id}


def sealed(
    knowledge: Knowledge, *, version: int = 1, signer: Identity = MULE, **kwargs: Any
) -> bytes:
    return seal_knowledge(knowledge, signer, version=version, created_at=NOW, **kwargs)


# --- the proxy set ---------------------------------------------------------------------------

# sha256 of proxy_set(schema((0, 5)), size=64).x (the same under numpy 2.3 on Python 3.13 and
# numpy 2.4 on 3.11): fixed, so a change to the generator (which
# every peer must make at once, bumping PROXY_GENERATOR) cannot pass unnoticed.
PROXY_DIGEST = "bb98ce67de67290a92a1d1f8a8afe2634f473d10c1087328ef5abc57cd9edd24"
PROXY_ID = "ec19cc517a4a32719d77dfc3d1445fa4"


def test_the_proxy_set_is_fixed_by_the_schema_alone() -> None:
    proxy = proxy_set(schema((0, 5)), size=64)
    assert proxy.x.shape == (64, 2 * len(ROOM_FEATURES))
    assert proxy.x.dtype == np.float32
    assert hashlib.sha256(proxy.x.tobytes()).hexdigest() == PROXY_DIGEST
    assert proxy.id == PROXY_ID == proxy_id(schema((0, 5)), size=64)
    assert not proxy.x.flags.writeable


def test_the_proxy_set_is_shared_by_windows_and_differs_by_statistics_size_and_seed() -> None:
    wide = proxy_set(schema((0, 5, 15)))
    narrow = proxy_set(schema((0,)))
    n = len(ROOM_FEATURES)
    # the window picks lags out of one set of rows: same id, same frame at lag 0
    assert wide.id == narrow.id
    np.testing.assert_array_equal(wide.x[:, :n], narrow.x)
    assert not np.array_equal(wide.x[:, n : 2 * n], narrow.x)
    other_stats = dataclasses.replace(schema(), mean=(0.0,) * n)
    assert proxy_set(other_stats).id != narrow.id
    assert proxy_set(schema(), size=32).id != narrow.id
    assert proxy_set(schema(), seed="b").id != narrow.id
    assert narrow.size == DEFAULT_PROXY_SIZE


def test_proxy_rows_look_like_frames() -> None:
    x = proxy_set(schema((0, 30)), size=512).x.astype(np.float64)
    columns = {name: i for i, name in enumerate(ROOM_FEATURES)}
    # time features lie on the unit circle and step back by the lag
    for pair in (("tod_sin", "tod_cos"), ("dow_sin", "dow_cos")):
        radius = x[:, columns[pair[0]]] ** 2 + x[:, columns[pair[1]]] ** 2
        np.testing.assert_allclose(radius, 1.0, atol=1e-6)
    for flag in ("motion_available", "motion_on", "weekend", "media_playing"):
        assert set(np.unique(x[:, columns[flag]])) <= {0.0, 1.0}
    counts = x[:, columns["motion_count_15m"]]
    assert (counts >= 0).all()
    assert np.array_equal(counts, np.round(counts))
    assert (x[:, columns["co2_ppm"]] >= 0).all()
    assert (x[:, columns["humidity_pct"]] <= 100).all()
    # a lag's frame keeps most of the row's draw, not all of it
    n = len(ROOM_FEATURES)
    co2 = columns["co2_ppm"]
    correlation = np.corrcoef(x[:, co2], x[:, n + co2])[0, 1]
    assert 0.5 < correlation < 0.95


def test_a_bad_proxy_size_is_refused() -> None:
    with pytest.raises(MalformedSnapshot):
        proxy_set(schema(), size=0)


# --- the container ----------------------------------------------------------------------------


@pytest.mark.parametrize("context_key", [OCCUPANCY, ACTIVITY])
@pytest.mark.parametrize("compression", ["fp16", "int8"])
def test_knowledge_round_trips_within_rounding(context_key: str, compression: Any) -> None:
    knowledge = starter_knowledge(context_key)
    container = sealed(knowledge, compression=compression)
    assert payload_kind(container) == "knowledge"
    received = unpack_knowledge(container, trust=TRUST, expected_proxy=expected(context_key))
    got = received.knowledge
    # int8: half a step of 1/127 per value, then rows renormalised
    tolerance = 1e-3 if compression == "fp16" else 1.5 / 127
    np.testing.assert_allclose(got.probabilities, knowledge.probabilities, atol=tolerance)
    if got.n_outputs > 1:
        np.testing.assert_allclose(got.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (got.proxy_id, got.family, got.score) == (knowledge.proxy_id, knowledge.family, 0.8)
    assert (got.samples, got.trained_at) == (120, NOW - 3600)
    assert received.contributor == MULE.id == received.origin
    assert received.compression == compression


@pytest.mark.parametrize("model_size", MODEL_SIZES)
def test_knowledge_is_far_smaller_than_the_weights_it_stands_for(model_size: ModelSize) -> None:
    """Issue 13: for the largest family, the default knowledge snapshot is at least 10 times
    smaller than the weight snapshot it replaces (as a host exports it, uncompressed)."""
    for context_key in (OCCUPANCY, ACTIVITY):
        model = load_starter(context_key, model_size=model_size)
        meta = SnapshotMeta(
            model.spec.task,
            context_key,
            model.arch_hash,
            model.schema.schema_hash(),
            NOW,
            NOW - 3600,
            120,
            1,
        )
        weights = len(pack(model.onnx_bytes, meta, MULE))
        knowledge = starter_knowledge(context_key, model_size=model_size)
        default = len(sealed(knowledge))
        fp16 = len(sealed(knowledge, compression="fp16"))
        # the body is proxy_size x n_outputs x 1 (int8, the default) or 2 bytes, plus a header
        # of under 1 KiB
        body = DEFAULT_PROXY_SIZE * knowledge.n_outputs
        assert body < default < body + 1024
        assert body * 2 < fp16 < body * 2 + 1024
        assert weights >= 10 * default, (context_key, model_size, weights, default)


def test_a_relayed_contribution_names_its_producer() -> None:
    container = sealed(starter_knowledge(OCCUPANCY), lineage=("producerhome2345",))
    received = unpack_knowledge(container, trust=TRUST, expected_proxy=None)
    assert received.contributor == "producerhome2345"


def test_the_weights_reader_refuses_knowledge_and_the_other_way_round() -> None:
    container = sealed(starter_knowledge(OCCUPANCY))
    with pytest.raises(WrongPayload) as refused:
        unpack(container, trust=TRUST, expected_arch=None, now=NOW)
    assert refused.value.reason == "wrong_payload"
    model = load_starter(OCCUPANCY)
    meta = SnapshotMeta("occupancy", OCCUPANCY, model.arch_hash, "s", NOW, NOW, 1, 1)
    weights = pack(model.onnx_bytes, meta, MULE)
    assert payload_kind(weights) == "weights"
    with pytest.raises(WrongPayload):
        unpack_knowledge(weights, trust=TRUST, expected_proxy=None, now=NOW)


def test_a_reader_that_predates_knowledge_refuses_it_by_its_critical_fields() -> None:
    _, header, _, _ = split(sealed(starter_knowledge(OCCUPANCY)))
    assert {"payload", "proxy_id"} <= set(header["critical"])
    assert header["payload"] == "knowledge"
    # what an old reader sees: critical fields it does not know (here: a newer payload kind)
    future = resigned(
        sealed(starter_knowledge(OCCUPANCY)), _set("payload", "gradients"), signer=MULE
    )
    with pytest.raises(UnsupportedSnapshotFormat) as refused:
        payload_kind(future)
    assert refused.value.unknown_fields == ("payload",)


def _set(key: str, value: Any) -> Any:
    def edit(header: dict[str, Any]) -> None:
        header[key] = value

    return edit


def test_every_bad_container_is_refused_with_its_reason() -> None:
    # fp16, whose bodies are easy to poison value by value; the default int8 below
    good = sealed(starter_knowledge(ACTIVITY), compression="fp16")
    proxy = expected(ACTIVITY)
    _, _, body, _ = split(good)
    int8 = sealed(starter_knowledge(ACTIVITY))
    _, _, int8_body, _ = split(int8)
    n = np.frombuffer(body, "<f2").astype(np.float32)
    nan_body = n.copy()
    nan_body[3] = np.nan
    not_distribution = n.copy()
    not_distribution[:9] = 0.5
    negative = n.copy()
    negative[0] = -0.5
    cases: list[tuple[bytes, type[Exception], str]] = [
        (good[:40], MalformedSnapshot, "malformed"),
        (b"NOTMLM" + good[6:], MalformedSnapshot, "malformed"),
        (good[:-1] + bytes([good[-1] ^ 1]), BadSignature, "bad_signature"),
        (sealed(starter_knowledge(ACTIVITY), signer=STRANGER), UnknownSigner, "unknown_signer"),
        (resigned(good, _set("proxy_id", "f" * 32), signer=MULE), WrongProxySet, "wrong_proxy_set"),
        (
            resigned(good, _set("context_key", "activity/office"), signer=MULE),
            IncompatibleSnapshot,
            "incompatible",
        ),
        (resigned(good, _set("proxy_id", "x"), signer=MULE), MalformedSnapshot, "malformed"),
        (resigned(good, _set("n_outputs", 3), signer=MULE), MalformedSnapshot, "malformed"),
        (resigned(good, _set("proxy_size", 10**6), signer=MULE), SnapshotTooLarge, "too_large"),
        (resigned(good, _set("score", 2.0), signer=MULE), MalformedSnapshot, "malformed"),
        (resigned(good, _set("compression", "none"), signer=MULE), MalformedSnapshot, "malformed"),
        (resigned(good, body=body[:-2], signer=MULE), MalformedSnapshot, "malformed"),
        (
            resigned(good, body=nan_body.astype("<f2").tobytes(), signer=MULE),
            PoisonedSnapshot,
            "poisoned",
        ),
        (
            resigned(good, body=not_distribution.astype("<f2").tobytes(), signer=MULE),
            PoisonedSnapshot,
            "poisoned",
        ),
        (
            resigned(good, body=negative.astype("<f2").tobytes(), signer=MULE),
            PoisonedSnapshot,
            "poisoned",
        ),
        (
            resigned(int8, body=b"\x80" + int8_body[1:], signer=MULE),
            PoisonedSnapshot,
            "poisoned",
        ),
        (
            resigned(good, _set("created_at", NOW + 3600), signer=MULE),
            SnapshotFromFuture,
            "from_future",
        ),
    ]
    for container, error, reason in cases:
        with pytest.raises(error) as refused:
            unpack_knowledge(container, trust=TRUST, expected_proxy=proxy, now=NOW)
        assert refused.value.reason == reason
    with pytest.raises(SnapshotTooLarge):
        unpack_knowledge(
            good, trust=TRUST, expected_proxy=proxy, limits=SnapshotLimits(max_bytes=1024)
        )
    with pytest.raises(StaleSnapshot):
        unpack_knowledge(good, trust=TRUST, expected_proxy=proxy, now=NOW + 10**7, max_age=86400)


def test_a_replayed_container_is_refused_and_recorded_only_when_accepted(tmp_path: Path) -> None:
    guard = ReplayGuard(tmp_path / "replay.json")
    first = sealed(starter_knowledge(OCCUPANCY), version=3, compression="fp16")
    poisoned = resigned(
        first, _set("version", 4), signer=MULE, body=b"\xff\x7f" * DEFAULT_PROXY_SIZE
    )
    with pytest.raises(PoisonedSnapshot):
        unpack_knowledge(poisoned, trust=TRUST, expected_proxy=None, now=NOW, replay=guard)
    assert guard.highest(MULE.id, OCCUPANCY) is None
    unpack_knowledge(first, trust=TRUST, expected_proxy=None, now=NOW, replay=guard)
    with pytest.raises(ReplayedSnapshot) as refused:
        unpack_knowledge(first, trust=TRUST, expected_proxy=None, now=NOW, replay=guard)
    assert refused.value.reason == "replayed"


def test_sealing_refuses_what_a_receiver_would_refuse() -> None:
    knowledge = starter_knowledge(ACTIVITY)
    bad = dataclasses.replace(knowledge, probabilities=knowledge.probabilities * 2)
    with pytest.raises(PoisonedSnapshot):
        sealed(bad)
    with pytest.raises(MalformedSnapshot):
        sealed(knowledge, compression="none")


# --- the cache --------------------------------------------------------------------------------


def knowledge(value: float, *, trained_at: float, score: float | None = 0.8) -> Knowledge:
    probabilities = np.full((8, 1), value, dtype=np.float32)
    return Knowledge(
        OCCUPANCY, "occupancy", "a" * 32, "f" * 64, probabilities, 10, score, trained_at
    )


def test_the_cache_keeps_the_latest_knowledge_per_contributor(tmp_path: Path) -> None:
    cache = KnowledgeCache(tmp_path / "knowledge.json")
    assert cache.add("alice", knowledge(0.2, trained_at=NOW - 100), received_at=NOW)
    assert not cache.add("alice", knowledge(0.9, trained_at=NOW - 100), received_at=NOW)
    assert not cache.add("alice", knowledge(0.9, trained_at=NOW - 200), received_at=NOW)
    assert cache.add("alice", knowledge(0.4, trained_at=NOW - 50), received_at=NOW)
    [entry] = cache.entries(OCCUPANCY)
    assert entry.knowledge.probabilities[0, 0] == pytest.approx(0.4)
    assert "probabilities" not in json.dumps(cache.as_dict())


def test_the_ensemble_weighs_freshness_and_score() -> None:
    cache = KnowledgeCache()
    assert cache.ensemble(OCCUPANCY, now=NOW) is None
    cache.add("fresh", knowledge(1.0, trained_at=NOW, score=0.8), received_at=NOW)
    cache.add("old", knowledge(0.0, trained_at=NOW - 3 * 86400, score=0.8), received_at=NOW)
    # the one trained a half-life ago counts half: (1 * 1 + 0.5 * 0) / 1.5
    ensemble = cache.ensemble(OCCUPANCY, now=NOW)
    assert ensemble is not None
    np.testing.assert_allclose(ensemble, 2 / 3, rtol=1e-6)
    cache.add("poor", knowledge(0.0, trained_at=NOW, score=0.2), received_at=NOW)
    ensemble = cache.ensemble(OCCUPANCY, now=NOW)
    assert ensemble is not None
    np.testing.assert_allclose(ensemble, 0.8 / (0.8 + 0.4 + 0.2), rtol=1e-6)
    only = cache.ensemble(OCCUPANCY, now=NOW, exclude=frozenset({"old", "poor"}))
    assert only is not None
    np.testing.assert_allclose(only, 1.0)


def test_the_cache_is_bounded_and_evicts_the_least_weighted() -> None:
    cache = KnowledgeCache(max_entries=3, max_keys=2)
    for index in range(3):
        cache.add(f"c{index}", knowledge(0.5, trained_at=NOW - index * 3600), received_at=NOW)
    # a fresher contributor evicts the stalest; a staler one than all is not kept
    assert cache.add("new", knowledge(0.5, trained_at=NOW), received_at=NOW)
    assert [e.contributor for e in cache.entries(OCCUPANCY)] == ["c0", "c1", "new"]
    assert not cache.add("ancient", knowledge(0.5, trained_at=NOW - 10**6), received_at=NOW)
    for key in ("occupancy/office", "occupancy/kitchen"):
        other = dataclasses.replace(knowledge(0.5, trained_at=NOW), context_key=key)
        cache.add("c0", other, received_at=NOW)
    assert cache.context_keys() == ["occupancy/kitchen", "occupancy/office"]


def test_knowledge_on_a_new_proxy_set_replaces_the_old_rows() -> None:
    cache = KnowledgeCache()
    cache.add("alice", knowledge(0.5, trained_at=NOW - 10), received_at=NOW)
    renewed = dataclasses.replace(
        knowledge(0.5, trained_at=NOW),
        proxy_id="b" * 32,
        probabilities=np.zeros((4, 1), np.float32),
    )
    cache.add("bob", renewed, received_at=NOW)
    assert [e.contributor for e in cache.entries(OCCUPANCY)] == ["bob"]


def test_the_cache_persists_atomically_and_survives_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "knowledge.json"
    cache = KnowledgeCache(path)
    cache.add("alice", knowledge(0.25, trained_at=NOW - 10, score=None), received_at=NOW)
    cache.add("bob", starter_knowledge(ACTIVITY), received_at=NOW)
    again = KnowledgeCache(path)
    assert again.corrupt is None
    assert again.as_dict() == cache.as_dict()
    restored = again.entries(ACTIVITY)[0].knowledge
    np.testing.assert_array_equal(
        restored.probabilities, cache.entries(ACTIVITY)[0].knowledge.probabilities
    )
    assert [p.name for p in tmp_path.iterdir()] == ["knowledge.json"]  # no temporaries left
    for damage in (
        "{not json",
        json.dumps({"version": 9}),
        json.dumps({"version": 1, "keys": {"k": [{"shape": [2, 2]}]}}),
    ):
        path.write_text(damage)
        broken = KnowledgeCache(path)
        assert isinstance(broken.corrupt, CorruptStateFile)
        assert broken.context_keys() == []
        assert (tmp_path / "knowledge.json.corrupt").read_text() == damage
        assert not path.exists()


SPEC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_the_specifications_knowledge_test_vector_is_what_the_code_seals() -> None:
    spec = SPEC.read_text(encoding="utf-8")
    key = Identity.from_private_bytes(bytes(range(32)), kind="space", name="test vector")
    probabilities = np.array([[0.75, 0.25, 0.0], [0.125, 0.5, 0.375]], np.float32)
    vector = Knowledge(
        "activity/kitchen",
        "activity",
        "00112233445566778899aabbccddeeff",
        "5f1c2a9e0b7d4c31",
        probabilities,
        480,
        0.8125,
        1732262400.0,
        schema_hash="9e3d1b7a20c4f658",
        data_time=1732258800.0,
    )
    container = seal_knowledge(vector, key, version=12, created_at=1732266000.0, compression="fp16")
    _, header, body, _ = split(container)
    assert len(container) == 681
    assert f"\n`{hashlib.sha256(container).hexdigest()}`." in spec
    assert "\n" + json.dumps(header, sort_keys=True, separators=(",", ":")) + "\n" in spec
    assert f"body `{body.hex()}`" in spec
    assert container[:12].hex() == "4d4c4d554c4500010000024d"
    trusted = unpack_knowledge(container, trust=key, expected_proxy=None, now=1732266000.0)
    np.testing.assert_array_equal(trusted.knowledge.probabilities, probabilities)
