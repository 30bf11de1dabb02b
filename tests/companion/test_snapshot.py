"""The signed snapshot container (core/snapshot.py): layout, trust, limits, compression, replays."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mlmule_core.errors import (
    BadSignature,
    CorruptStateFile,
    IncompatibleSnapshot,
    MalformedSnapshot,
    PoisonedSnapshot,
    ReplayedSnapshot,
    SnapshotError,
    SnapshotFromFuture,
    SnapshotModelInvalid,
    SnapshotTooLarge,
    StaleSnapshot,
    UnknownSigner,
    UnsupportedSnapshotFormat,
)
from mlmule_core.identity import Identity, TrustEntry, TrustStore
from mlmule_core.snapshot import (
    COMPRESSIONS,
    FORMAT_VERSION,
    ReplayGuard,
    SnapshotLimits,
    SnapshotMeta,
    inspect,
    pack,
    unpack,
    verify_container,
)
from onnx import numpy_helper
from test_snapshot_models import ACTIVITY_SHAPE, Canonical, canonical, initializers_of, mlp, run

from tests.support import forge
from tests.support.forge import split

NOW = 1_760_000_000.0
OCC = canonical()
ACT = canonical(ACTIVITY_SHAPE)
MODEL = OCC.onnx_bytes
CONTEXT = OCC.context_key
ARCH = OCC.arch_hash
EXPECTED = {OCC.context_key: OCC.arch_hash, ACT.context_key: ACT.arch_hash}

HOME = Identity.generate(kind="space", name="Home")
MULE = Identity.generate(kind="mule", name="Phone")
STRANGER = Identity.generate(kind="mule", name="Stranger")


def make_meta(model: Canonical = OCC, **changes: Any) -> SnapshotMeta:
    fields: dict[str, Any] = {
        "task": model.task,
        "context_key": model.context_key,
        "arch_hash": model.arch_hash,
        "schema_hash": model.schema_hash,
        "created_at": NOW - 60,
        "data_time": NOW - 120,
        "samples": 1440,
        "version": 7,
        "lineage": (f"{HOME.id}@6", f"{MULE.id}@3"),
        "extra": {"note": "ünïcode", "epochs": 3},
    }
    fields.update(changes)
    return SnapshotMeta(**fields)


def trust_of(*identities: Identity) -> TrustStore:
    store = TrustStore()
    for identity in identities:
        store.add(
            TrustEntry.for_key(
                identity.public_key_bytes,
                kind=identity.kind,
                role="owner",
                label=identity.name,
                paired_at=NOW,
            )
        )
    return store


TRUST = trust_of(MULE, HOME)


def open_any(data: bytes, **overrides: Any) -> Any:
    options: dict[str, Any] = {"trust": TRUST, "expected_arch": EXPECTED, "now": NOW}
    options.update(overrides)
    return unpack(data, **options)


# --- the documented layout, written independently of the module -----------------------------------


def resigned(
    data: bytes,
    edit: Callable[[dict[str, Any]], None] = lambda header: None,
    *,
    body: bytes | None = None,
    signer: Identity = MULE,
    version: int = 1,
) -> bytes:
    """`data` with its header edited and/or body replaced, correctly signed (by MULE)."""
    return forge.resigned(data, edit, signer=signer, body=body, version=version)


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(tensor for tensor in model.graph.initializer if tensor.name == name)


# --- round trips ----------------------------------------------------------------------------------


def test_an_uncompressed_snapshot_round_trips_exactly() -> None:
    meta = make_meta()
    data = pack(MODEL, meta, MULE)
    snapshot = open_any(data)
    assert snapshot.onnx_bytes == MODEL
    assert snapshot.meta == meta
    assert snapshot.origin == MULE.id
    assert snapshot.sha256 == hashlib.sha256(data).hexdigest()
    assert snapshot.size == len(data)
    assert snapshot.compression == "none"
    assert snapshot.format_version == FORMAT_VERSION
    assert set(snapshot.model.initializers) == set(initializers_of(MODEL))


def test_any_onnx_model_travels_when_the_receiver_only_looks() -> None:
    model = mlp(metadata={"producer": "onnx.helper"})
    data = pack(model, make_meta(), MULE)
    assert open_any(data, expected_arch=None).onnx_bytes == model
    # a peer about to merge wants the canonical model of the architecture
    with pytest.raises(SnapshotModelInvalid) as caught:
        open_any(data)
    assert caught.value.reason == "non_canonical"


def test_the_container_has_the_documented_layout_and_signature() -> None:
    data = pack(MODEL, make_meta(), MULE)
    version, header, body, signature = split(data)
    assert version == 1
    assert body == MODEL
    assert header["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header["origin"] == MULE.id
    assert header["version"] == 7
    assert header["lineage"] == list(make_meta().lineage)
    # the header is canonical JSON: sorted keys, no spaces, UTF-8
    header_length = struct.unpack_from(">I", data, 8)[0]
    raw_header = data[12 : 12 + header_length]
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert raw_header == canonical.encode()
    Ed25519PublicKey.from_public_bytes(MULE.public_key_bytes).verify(signature, data[:-64])


@pytest.mark.parametrize("compression", ["fp16", "int8"])
@pytest.mark.parametrize("sizes", [(32, 32, 16, 1), ACTIVITY_SHAPE])
@pytest.mark.parametrize("builder", ["canonical", "onnx.helper"])
def test_compressed_snapshots_unpack_to_float32_models_that_still_agree(
    compression: str, sizes: tuple[int, ...], builder: str
) -> None:
    reference = canonical(sizes)
    model = reference.onnx_bytes if builder == "canonical" else mlp(sizes, metadata={"k": "v"})
    expected_arch = EXPECTED if builder == "canonical" else None
    meta = make_meta(reference)
    plain = pack(model, meta, MULE)
    data = pack(model, meta, MULE, compression=compression)  # type: ignore[arg-type]
    assert len(data) < len(plain)
    snapshot = open_any(data, expected_arch=expected_arch)
    assert snapshot.compression == compression
    proto = onnx.load_from_string(snapshot.onnx_bytes)
    onnx.checker.check_model(proto, full_check=True)
    assert [value.name for value in proto.graph.input] == ["features"]
    assert {m.key: m.value for m in proto.metadata_props} == {
        m.key: m.value for m in onnx.load_from_string(model).metadata_props
    }
    original, restored = initializers_of(model), initializers_of(snapshot.onnx_bytes)
    assert set(original) == set(restored)
    for name, value in original.items():
        assert restored[name].dtype == np.float32
        assert restored[name].shape == value.shape
        if value.ndim < 2:
            # biases, normalisation and calibration travel exactly
            np.testing.assert_array_equal(restored[name], value)
    features = np.random.default_rng(1).normal(0, 3, size=(256, sizes[0])).astype(np.float32)
    expected, got = run(model, features), run(snapshot.onnx_bytes, features)
    # the accuracy cost (measured in bench/bench_snapshot.py): small, and predictions agree
    tolerance = 2e-3 if compression == "fp16" else 0.1
    assert np.abs(expected - got).max() < tolerance
    if sizes[-1] == 1:
        agreement = np.mean((expected > 0.5) == (got > 0.5))
    else:
        agreement = np.mean(expected.argmax(axis=1) == got.argmax(axis=1))
    assert agreement >= 0.95


def test_int8_is_symmetric_per_tensor_with_the_peak_at_127() -> None:
    model = MODEL
    data = pack(model, make_meta(), MULE, compression="int8")
    _, header, _, _ = split(data)
    restored = initializers_of(open_any(data).onnx_bytes)
    for entry in header["tensors"]:
        original = initializers_of(model)[entry["name"]]
        assert entry["dtype"] == "int8"
        assert entry["scale"] == pytest.approx(np.abs(original).max() / 127, rel=1e-6)
        error = np.abs(restored[entry["name"]] - original).max()
        assert error <= entry["scale"] / 2 * 1.001
    assert {entry["name"] for entry in header["tensors"]} == {
        "body.0.weight",
        "body.1.weight",
        "head.weight",
    }


def test_an_all_zero_matrix_quantises_to_zero_scale() -> None:
    model = onnx.load_from_string(MODEL)
    weight = initializer(model, "body.0.weight")
    weight.CopyFrom(numpy_helper.from_array(np.zeros((32, 32), np.float32), weight.name))
    data = pack(model.SerializeToString(), make_meta(), MULE, compression="int8")
    assert split(data)[1]["tensors"][0]["scale"] == 0.0
    assert not initializers_of(open_any(data).onnx_bytes)[weight.name].any()


def test_float16_overflow_is_refused_rather_than_sent_as_infinity() -> None:
    model = onnx.load_from_string(MODEL)
    weight = initializer(model, "body.0.weight")
    big = np.full((32, 32), 1e6, np.float32)
    weight.CopyFrom(numpy_helper.from_array(big, weight.name))
    with pytest.raises(SnapshotError) as caught:
        pack(model.SerializeToString(), make_meta(), MULE, compression="fp16")
    assert caught.value.reason == "compression_overflow"
    # int8 has no such range problem
    assert open_any(pack(model.SerializeToString(), make_meta(), MULE, compression="int8"))


def test_inspect_reads_the_header_without_trust() -> None:
    data = pack(MODEL, make_meta(), MULE, compression="fp16")
    shown = inspect(data)
    assert shown["verified"] is False
    assert shown["format_version"] == 1
    assert shown["sha256"] == hashlib.sha256(data).hexdigest()
    assert shown["size"] == len(data)
    header = shown["header"]
    assert isinstance(header, dict)
    assert header["origin"] == MULE.id
    assert header["context_key"] == CONTEXT
    # a stranger's snapshot can be inspected, but not unpacked
    foreign = pack(MODEL, make_meta(), STRANGER)
    assert inspect(foreign)["header"]["origin"] == STRANGER.id  # type: ignore[index]
    with pytest.raises(UnknownSigner):
        open_any(foreign)


def test_verify_container_checks_trust_without_decoding_the_model() -> None:
    data = resigned(pack(MODEL, make_meta(), MULE), body=b"not onnx at all")
    info = verify_container(data, trust=TRUST)
    assert info.origin == MULE.id
    assert info.meta.version == 7
    with pytest.raises(SnapshotModelInvalid):
        open_any(data)


# --- trust ----------------------------------------------------------------------------------------


def test_an_identity_trusts_its_own_snapshots() -> None:
    data = pack(MODEL, make_meta(), HOME)
    assert open_any(data, trust=HOME).origin == HOME.id
    with pytest.raises(UnknownSigner):
        open_any(pack(MODEL, make_meta(), MULE), trust=HOME)


def test_a_stranger_cannot_sign_in_a_trusted_peers_name() -> None:
    data = pack(MODEL, make_meta(), STRANGER)
    forged = bytearray(data)
    start = forged.index(STRANGER.id.encode())
    forged[start : start + 16] = MULE.id.encode()
    with pytest.raises(BadSignature):
        open_any(bytes(forged))


@pytest.mark.parametrize("where", ["header", "body", "signature"])
def test_any_flipped_bit_breaks_the_signature(where: str) -> None:
    data = bytearray(pack(MODEL, make_meta(), MULE))
    header_length = struct.unpack_from(">I", data, 8)[0]
    position = {"header": 12 + header_length // 2, "body": len(data) - 500, "signature": -10}
    data[position[where]] ^= 0x04
    with pytest.raises((BadSignature, MalformedSnapshot)):
        open_any(bytes(data))


# --- versions and unknown fields ------------------------------------------------------------------


def test_a_newer_format_version_is_refused_with_what_this_peer_reads() -> None:
    data = resigned(pack(MODEL, make_meta(), MULE), version=2)
    with pytest.raises(UnsupportedSnapshotFormat) as caught:
        open_any(data)
    assert caught.value.supported_versions == (1,)
    assert caught.value.reason == "unsupported_version"
    with pytest.raises(UnsupportedSnapshotFormat):
        inspect(data)


def test_unknown_optional_fields_are_ignored_and_unknown_critical_ones_refused() -> None:
    base = pack(MODEL, make_meta(), MULE)

    def add_optional(header: dict[str, Any]) -> None:
        header["privacy_budget"] = {"epsilon": 3.0}

    assert open_any(resigned(base, add_optional)).meta == make_meta()

    def add_critical(header: dict[str, Any]) -> None:
        header["privacy_budget"] = {"epsilon": 3.0}
        header["critical"] = ["privacy_budget", "samples"]

    with pytest.raises(UnsupportedSnapshotFormat) as caught:
        open_any(resigned(base, add_critical))
    assert caught.value.unknown_fields == ("privacy_budget",)

    def known_critical(header: dict[str, Any]) -> None:
        header["critical"] = ["samples", "lineage"]

    assert open_any(resigned(base, known_critical)).meta == make_meta()


def test_an_unknown_compression_is_refused_as_unsupported() -> None:
    def int4(header: dict[str, Any]) -> None:
        header["compression"] = "int4"
        header["tensors"] = []

    with pytest.raises(UnsupportedSnapshotFormat) as caught:
        open_any(resigned(pack(MODEL, make_meta(), MULE), int4))
    assert caught.value.unknown_fields == ("compression",)


# --- compatibility, time, replays -----------------------------------------------------------------


def test_the_architecture_must_be_the_one_expected_for_the_context_key() -> None:
    data = pack(MODEL, make_meta(), MULE)
    with pytest.raises(IncompatibleSnapshot, match="does not serve"):
        open_any(data, expected_arch={ACT.context_key: ACT.arch_hash})
    with pytest.raises(IncompatibleSnapshot, match="architecture"):
        open_any(data, expected_arch={CONTEXT: ACT.arch_hash})
    assert open_any(data, expected_arch=None).meta.arch_hash == ARCH


def test_the_model_must_be_what_the_header_says() -> None:
    # the activity model under the occupancy header: its own arch hash gives it away
    with pytest.raises(IncompatibleSnapshot, match="own architecture hash"):
        pack(ACT.onnx_bytes, make_meta(), MULE)
    swapped = resigned(pack(MODEL, make_meta(), MULE), body=ACT.onnx_bytes)
    with pytest.raises(IncompatibleSnapshot):
        open_any(swapped)
    with pytest.raises(IncompatibleSnapshot):
        open_any(swapped, expected_arch=None)
    # the right architecture, but a header that misstates the schema or the task
    wrong_schema = pack(MODEL, make_meta(schema_hash="0" * 64), MULE)
    with pytest.raises(IncompatibleSnapshot, match="schema"):
        open_any(wrong_schema)
    assert open_any(wrong_schema, expected_arch=None)
    model = mlp(metadata={"mlmule.arch_hash": "e" * 64})  # onnx.helper, not canonical
    with pytest.raises(IncompatibleSnapshot):
        pack(model, make_meta(), MULE)


def test_stale_and_future_snapshots_are_refused() -> None:
    data = pack(MODEL, make_meta(created_at=NOW - 60, data_time=NOW - 3600), MULE)
    assert open_any(data, max_age=3601.0)
    with pytest.raises(StaleSnapshot):
        open_any(data, max_age=3599.0)
    future = pack(MODEL, make_meta(created_at=NOW + 3600, data_time=NOW), MULE)
    with pytest.raises(SnapshotFromFuture):
        open_any(future)
    assert open_any(future, limits=SnapshotLimits(max_clock_skew=7200))


def test_replays_and_older_versions_are_refused_and_remembered(tmp_path: Path) -> None:
    path = tmp_path / "replay.json"
    guard = ReplayGuard(path)
    v7 = pack(MODEL, make_meta(version=7), MULE)
    assert open_any(v7, replay_guard=guard).meta.version == 7
    with pytest.raises(ReplayedSnapshot):
        open_any(v7, replay_guard=guard)
    with pytest.raises(ReplayedSnapshot):
        open_any(pack(MODEL, make_meta(version=6), MULE), replay_guard=guard)
    # other origins and other context keys are counted apart
    assert open_any(pack(MODEL, make_meta(version=1), HOME), replay_guard=guard)
    assert open_any(pack(ACT.onnx_bytes, make_meta(ACT, version=1), MULE), replay_guard=guard)
    # it survives a restart
    reloaded = ReplayGuard(path)
    assert reloaded.highest(MULE.id, CONTEXT) == 7
    with pytest.raises(ReplayedSnapshot):
        open_any(v7, replay_guard=reloaded)
    assert open_any(pack(MODEL, make_meta(version=8), MULE), replay_guard=reloaded)


def test_a_rejected_snapshot_does_not_advance_the_replay_guard() -> None:
    guard = ReplayGuard()
    bad = resigned(pack(MODEL, make_meta(version=9), MULE), body=b"junk")
    with pytest.raises(SnapshotModelInvalid):
        open_any(bad, replay_guard=guard)
    assert guard.highest(MULE.id, CONTEXT) is None
    assert open_any(pack(MODEL, make_meta(version=9), MULE), replay_guard=guard)


@pytest.mark.parametrize(
    "text",
    ["nope", "[]", '{"version": 2, "seen": {}}', '{"version": 1, "seen": {"a": {"b": "1"}}}'],
)
def test_a_corrupt_replay_file_is_an_error_not_a_reset(tmp_path: Path, text: str) -> None:
    path = tmp_path / "replay.json"
    path.write_text(text)
    with pytest.raises(CorruptStateFile):
        ReplayGuard(path)


# --- limits and poison ----------------------------------------------------------------------------


def test_size_limits_are_enforced_on_both_sides() -> None:
    data = pack(ACT.onnx_bytes, make_meta(ACT), MULE)
    small = SnapshotLimits(max_bytes=len(data) - 1)
    with pytest.raises(SnapshotTooLarge):
        open_any(data, limits=small)
    with pytest.raises(SnapshotTooLarge):
        pack(ACT.onnx_bytes, make_meta(ACT), MULE, limits=small)
    few = SnapshotLimits(max_tensors=5)
    with pytest.raises(SnapshotTooLarge):
        open_any(data, limits=few)
    narrow = SnapshotLimits(max_tensor_elements=96 * 64 - 1)
    with pytest.raises(SnapshotTooLarge):
        open_any(data, limits=narrow)
    compressed = pack(ACT.onnx_bytes, make_meta(ACT), MULE, compression="int8")
    with pytest.raises(SnapshotTooLarge):
        open_any(compressed, limits=narrow)
    with pytest.raises(SnapshotTooLarge):
        open_any(data, limits=SnapshotLimits(max_header_bytes=100))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_poison(bad: float) -> None:
    model = onnx.load_from_string(MODEL)
    bias = initializer(model, "body.0.bias")
    values = numpy_helper.to_array(bias).copy()
    values[3] = bad
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    poisoned = model.SerializeToString()
    with pytest.raises(PoisonedSnapshot):
        pack(poisoned, make_meta(), MULE)
    with pytest.raises(PoisonedSnapshot):
        open_any(resigned(pack(MODEL, make_meta(), MULE), body=poisoned))


def test_non_finite_int8_scales_and_float16_values_are_poison() -> None:
    int8 = pack(MODEL, make_meta(), MULE, compression="int8")

    def nan_scale(header: dict[str, Any]) -> None:
        header["tensors"][0]["scale"] = 1e309  # json writes inf as a number too large: Infinity

    with pytest.raises((PoisonedSnapshot, MalformedSnapshot)):
        open_any(resigned(int8, nan_scale))

    fp16 = pack(MODEL, make_meta(), MULE, compression="fp16")
    body = bytearray(split(fp16)[2])
    first_tensor = len(body) - (32 * 32 + 16 * 32 + 16) * 2
    body[first_tensor : first_tensor + 2] = np.array([np.inf], "<f2").tobytes()
    with pytest.raises(PoisonedSnapshot):
        open_any(resigned(fp16, body=bytes(body)))


def test_a_tensor_section_that_disagrees_with_the_graph_is_refused() -> None:
    data = pack(MODEL, make_meta(), MULE, compression="int8")

    def transpose(header: dict[str, Any]) -> None:
        header["tensors"][0]["shape"] = [16, 64]

    with pytest.raises(SnapshotModelInvalid):
        open_any(resigned(data, transpose))

    def rename(header: dict[str, Any]) -> None:
        header["tensors"][0]["name"] = "body.0.bias"

    with pytest.raises(SnapshotModelInvalid):
        open_any(resigned(data, rename))

    def grow(header: dict[str, Any]) -> None:
        header["tensors"][0]["shape"] = [3000, 32]

    with pytest.raises(MalformedSnapshot):
        open_any(resigned(data, grow))

    def twice(header: dict[str, Any]) -> None:
        header["tensors"].append(header["tensors"][0])

    with pytest.raises(MalformedSnapshot):
        open_any(resigned(data, twice))

    def drop_section(header: dict[str, Any]) -> None:
        del header["tensors"]

    with pytest.raises(MalformedSnapshot):
        open_any(resigned(data, drop_section))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"context_key": "occupancy"}, "context_key"),
        ({"context_key": "activity/kitchen"}, "not one of task"),
        ({"task": "Occupancy!"}, "task"),
        ({"data_time": NOW}, "dated after"),
        ({"created_at": math.nan}, "JSON"),
        ({"created_at": -5.0}, "after 1970"),
        ({"samples": -1}, "samples"),
        ({"version": 2**63}, "version"),
        ({"samples": True}, "samples"),
        ({"lineage": ("x",) * 300}, "lineage"),
        ({"lineage": ("",)}, "lineage"),
        ({"arch_hash": "has space"}, "arch_hash"),
        ({"extra": {"when": object()}}, "JSON"),
    ],
)
def test_metadata_a_reader_would_refuse_is_never_packed(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(MalformedSnapshot, match=message):
        pack(MODEL, make_meta(**changes), MULE)


@pytest.mark.parametrize(
    "raw_header",
    [
        b'{"origin":"x","origin":"y"}',
        b'{"created_at":NaN}',
        b"[1,2]",
        b"\xff\xfe",
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_headers_that_are_not_strict_json_are_malformed(raw_header: bytes) -> None:
    body = b"x"
    unsigned = b"MLMULE" + struct.pack(">HI", 1, len(raw_header)) + raw_header
    unsigned += struct.pack(">I", len(body)) + body
    with pytest.raises(MalformedSnapshot):
        open_any(unsigned + MULE.sign(unsigned))


def test_every_rejection_has_a_stable_reason() -> None:
    reasons = {
        cls.reason
        for cls in (
            BadSignature,
            UnknownSigner,
            MalformedSnapshot,
            SnapshotTooLarge,
            PoisonedSnapshot,
            IncompatibleSnapshot,
            StaleSnapshot,
            SnapshotFromFuture,
            ReplayedSnapshot,
            UnsupportedSnapshotFormat,
            SnapshotModelInvalid,
        )
    }
    assert len(reasons) == 11


def test_pack_refuses_an_unknown_compression() -> None:
    with pytest.raises(MalformedSnapshot):
        pack(MODEL, make_meta(), MULE, compression="zip")  # type: ignore[arg-type]


def test_all_compressions_are_listed() -> None:
    assert COMPRESSIONS == ("none", "fp16", "int8")
