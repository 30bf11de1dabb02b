"""Identities, signatures, pairing codes and the trust list (core/identity.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import string
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from mlmule_core.errors import (
    BadSignature,
    InvalidIdentity,
    InvalidPairingCode,
    MlmuleError,
    TrustError,
    UnknownSigner,
)
from mlmule_core.identity import (
    PAIRING_PREFIX,
    BrokerInfo,
    Identity,
    PairingCode,
    TrustEntry,
    TrustStore,
    identity_id,
    verify,
)

QR_ALPHANUMERIC = set(string.digits + string.ascii_uppercase + " $%*+-./:")
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- identities --------------------------------------------------------------------------------


def test_load_or_create_stores_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "home.pem"
    created = Identity.load_or_create(path, kind="space", name="Home")
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    loaded = Identity.load_or_create(path, kind="space", name="Home")
    assert loaded.id == created.id
    assert loaded.public_key_bytes == created.public_key_bytes
    # The file is standard PKCS#8 PEM that other tools read.
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) == (created.public_key_bytes)


def test_loading_tightens_a_key_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "mule.pem"
    Identity.load_or_create(path, kind="mule", name="Phone")
    os.chmod(path, 0o644)
    Identity.load_or_create(path, kind="mule", name="Phone")
    assert mode_of(path) == 0o600


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    Identity.load_or_create(tmp_path / "k.pem", kind="mule", name="Phone")
    assert mode_of(tmp_path) == 0o755


def test_a_corrupt_or_foreign_key_file_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(InvalidIdentity):
        Identity.load_or_create(garbage, kind="space", name="Home")
    ecdsa = tmp_path / "ecdsa.pem"
    ecdsa.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(InvalidIdentity, match="not an Ed25519 key"):
        Identity.load_or_create(ecdsa, kind="space", name="Home")


def test_the_id_is_short_base32_of_the_public_key_hash() -> None:
    identity = Identity.generate(kind="mule", name="Phone")
    expected = base64.b32encode(hashlib.sha256(identity.public_key_bytes).digest()[:10])
    assert identity.id == expected.decode().lower()
    assert len(identity.id) == 16
    assert identity.id == identity_id(identity.public_key_bytes)
    assert Identity.generate(kind="mule", name="Phone").id != identity.id


def test_raw_private_bytes_round_trip_and_bad_lengths_are_refused() -> None:
    identity = Identity.generate(kind="space", name="Home")
    again = Identity.from_private_bytes(identity.private_bytes(), kind="space", name="Home")
    assert again.id == identity.id
    with pytest.raises(InvalidIdentity):
        Identity.from_private_bytes(b"\x00" * 31, kind="space", name="Home")
    with pytest.raises(InvalidIdentity):
        Identity.generate(kind="server", name="x")  # type: ignore[arg-type]


def test_signatures_verify_and_any_change_breaks_them() -> None:
    identity = Identity.generate(kind="mule", name="Phone")
    data = b"a model snapshot"
    signature = identity.sign(data)
    verify(identity.public_key_bytes, data, signature)
    # the real library agrees
    Ed25519PublicKey.from_public_bytes(identity.public_key_bytes).verify(signature, data)
    with pytest.raises(BadSignature):
        verify(identity.public_key_bytes, data + b"!", signature)
    with pytest.raises(BadSignature):
        verify(identity.public_key_bytes, data, bytes([signature[0] ^ 1]) + signature[1:])
    other = Identity.generate(kind="mule", name="Other")
    with pytest.raises(BadSignature):
        verify(other.public_key_bytes, data, signature)
    with pytest.raises(BadSignature):
        verify(b"short", data, signature)
    with pytest.raises(BadSignature):
        verify(identity.public_key_bytes, data, signature[:63])


def test_an_identity_verifies_only_itself() -> None:
    identity = Identity.generate(kind="space", name="Home")
    assert identity.public_key_for(identity.id) == identity.public_key_bytes
    with pytest.raises(UnknownSigner):
        identity.public_key_for(Identity.generate(kind="space", name="Home").id)


# --- pairing codes -----------------------------------------------------------------------------


def home_code() -> PairingCode:
    home = Identity.generate(kind="space", name="Maison Dupré")
    broker = BrokerInfo("ha.local", 8883, tls=True, username="mlmule-phone")
    return PairingCode.for_identity(home, token=os.urandom(16), broker=broker)


def test_a_home_code_round_trips_with_its_broker_and_token() -> None:
    code = home_code()
    text = code.encode()
    assert text.startswith(PAIRING_PREFIX + "-")
    assert set(text) <= QR_ALPHANUMERIC
    decoded = PairingCode.decode(text)
    assert decoded == code
    assert decoded.peer_id == identity_id(code.public_key)
    assert decoded.broker is not None
    assert decoded.broker.tls


def test_a_mule_code_without_a_broker_is_short() -> None:
    mule = Identity.generate(kind="mule", name="Ana's phone")
    code = PairingCode.for_identity(mule)
    text = code.encode()
    assert PairingCode.decode(text) == code
    assert len(text) <= 110  # 53 bytes: prefix, base32 and dashes


def test_reading_forgives_case_spacing_and_look_alike_digits() -> None:
    code = home_code()
    text = code.encode()
    groups = text.split("-")
    sloppy = " ".join(groups).lower().replace("o", "0").replace("i", "1").replace("b", "8")
    assert PairingCode.decode(sloppy) == code


def test_every_single_character_typo_is_caught() -> None:
    text = home_code().encode()
    original = PairingCode.decode(text)
    caught = 0
    positions = [i for i, char in enumerate(text) if char in BASE32 and i >= len(PAIRING_PREFIX)]
    for position in positions:
        for replacement in BASE32:
            if replacement == text[position]:
                continue
            typo = text[:position] + replacement + text[position + 1 :]
            try:
                decoded = PairingCode.decode(typo)
            except InvalidPairingCode:
                caught += 1
            else:
                # Only a change in the last character's unused padding bits can decode, and
                # then it decodes to the very same code.
                assert decoded == original
                assert position == len(text) - 1
    print(f"caught {caught} of {len(positions) * 31} single-character typos")
    assert caught >= len(positions) * 31 - 31


def raw_code(payload: bytes) -> str:
    checksum = hashlib.sha256(payload).digest()[:4]
    return PAIRING_PREFIX + base64.b32encode(payload + checksum).decode().rstrip("=")


def test_a_newer_code_version_is_named_in_the_error() -> None:
    payload = bytes([2, 1]) + os.urandom(32) + b"\x00\x00\x00"
    with pytest.raises(InvalidPairingCode, match="version 2"):
        PairingCode.decode(raw_code(payload))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (bytes([1, 7]) + bytes(32) + b"\x00\x00\x00", "kind"),
        (bytes([1, 1]) + bytes(32) + b"\x00\x00\x04", "flags"),
        (bytes([1, 1]) + bytes(32) + b"\x00\x00\x02", "TLS without a broker"),
        (bytes([1, 1]) + bytes(32) + b"\x00\x00\x00\x00", "trailing"),
        (bytes([1, 1]) + bytes(32) + b"\x05ab", "ends early"),
        (bytes([1, 1]) + bytes(32) + b"\x02\xff\xfe\x00\x00", "UTF-8"),
    ],
)
def test_structurally_bad_codes_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidPairingCode, match=message):
        PairingCode.decode(raw_code(payload))


@pytest.mark.parametrize("text", ["", "HELLO", "MLMULE", "MLMULE-!!!!", "MLMULE-AAAA"])
def test_non_codes_are_refused(text: str) -> None:
    with pytest.raises(InvalidPairingCode):
        PairingCode.decode(text)


def test_codes_that_cannot_be_written_are_refused() -> None:
    key = Identity.generate(kind="mule", name="x").public_key_bytes
    with pytest.raises(InvalidPairingCode, match="name"):
        PairingCode("mule", key, "x" * 65).encode()
    with pytest.raises(InvalidPairingCode, match="token"):
        PairingCode("mule", key, "x", token=bytes(33)).encode()
    with pytest.raises(InvalidPairingCode, match="port"):
        PairingCode("space", key, "x", broker=BrokerInfo("h", 0, tls=False)).encode()
    with pytest.raises(InvalidPairingCode, match="32-byte"):
        PairingCode("space", key[:16], "x").encode()


names = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 64)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["space", "mule"]),
    key=st.binary(min_size=32, max_size=32),
    name=names,
    token=st.binary(max_size=32),
    broker=st.none()
    | st.builds(
        BrokerInfo,
        host=st.text(max_size=40).filter(lambda s: len(s.encode()) <= 253),
        port=st.integers(1, 65535),
        tls=st.booleans(),
        username=names,
    ),
)
def test_any_code_round_trips(
    kind: str, key: bytes, name: str, token: bytes, broker: BrokerInfo | None
) -> None:
    code = PairingCode(kind, key, name, token, broker)  # type: ignore[arg-type]
    assert PairingCode.decode(code.encode()) == code


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=120).map(raw_code))
def test_decoding_arbitrary_text_raises_only_typed_errors(text: str) -> None:
    try:
        code = PairingCode.decode(text)
    except InvalidPairingCode:
        return
    assert PairingCode.decode(code.encode()) == code


# --- trust list --------------------------------------------------------------------------------


def entry_for(
    identity: Identity, role: str = "guest", spaces: set[str] | None = None
) -> TrustEntry:
    return TrustEntry.for_key(
        identity.public_key_bytes,
        kind=identity.kind,
        role=role,  # type: ignore[arg-type]
        label=identity.name,
        paired_at=1_700_000_000.0,
        spaces=None if spaces is None else frozenset(spaces),
    )


def test_the_trust_list_decides_who_may_use_which_space(tmp_path: Path) -> None:
    store = TrustStore.load(tmp_path / "trust.json")
    owner_mule = Identity.generate(kind="mule", name="Owner")
    guest_mule = Identity.generate(kind="mule", name="Guest")
    stranger = Identity.generate(kind="mule", name="Stranger")
    store.add(entry_for(owner_mule, "owner"))
    store.add(entry_for(guest_mule, "guest", {"kitchen"}))
    assert store.is_allowed(owner_mule.id, "bedroom")
    assert store.is_allowed(guest_mule.id, "kitchen")
    assert not store.is_allowed(guest_mule.id, "bedroom")
    assert not store.is_allowed(stranger.id, "kitchen")
    assert store.public_key_for(guest_mule.id) == guest_mule.public_key_bytes
    with pytest.raises(UnknownSigner):
        store.public_key_for(stranger.id)
    assert len(store) == 2
    assert owner_mule.id in store


def test_the_trust_list_persists_every_change(tmp_path: Path) -> None:
    path = tmp_path / "state" / "trust.json"
    store = TrustStore.load(path)
    assert not path.exists()
    mule = Identity.generate(kind="mule", name="Phone")
    home = Identity.generate(kind="space", name="Home")
    store.add(entry_for(mule, "guest", {"kitchen", "office"}))
    store.add(entry_for(home, "owner"))
    assert mode_of(path) == 0o600
    reloaded = TrustStore.load(path)
    assert list(reloaded) == list(store)
    assert reloaded.get(mule.id) == store.get(mule.id)
    assert json.loads(path.read_text())["entries"][1]["spaces"] == "all"
    assert reloaded.remove(mule.id)
    assert not reloaded.remove(mule.id)
    assert [entry.peer_id for entry in TrustStore.load(path)] == [home.id]


def test_re_adding_a_peer_replaces_its_entry() -> None:
    store = TrustStore()
    mule = Identity.generate(kind="mule", name="Phone")
    store.add(entry_for(mule, "guest", {"kitchen"}))
    store.add(entry_for(mule, "owner"))
    assert len(store) == 1
    entry = store.get(mule.id)
    assert entry is not None
    assert entry.role == "owner"
    assert entry.spaces is None


def test_entries_must_agree_with_their_key() -> None:
    mule = Identity.generate(kind="mule", name="Phone")
    other = Identity.generate(kind="mule", name="Other")
    with pytest.raises(TrustError, match="does not belong"):
        TrustEntry(other.id, mule.public_key_bytes, "mule", "guest", "x", 0.0)
    with pytest.raises(TrustError):
        TrustEntry(mule.id, mule.public_key_bytes, "mule", "admin", "x", 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": 2, "entries": []}',
        '{"version": 1}',
        '{"version": 1, "entries": [1]}',
        '{"version": 1, "entries": [{"peer_id": "x"}]}',
        "[" * 100_000,
    ],
)
def test_a_malformed_trust_file_is_a_typed_error(text: str) -> None:
    with pytest.raises(TrustError):
        TrustStore.from_json(text)


def test_tampered_trust_entries_are_refused() -> None:
    mule = Identity.generate(kind="mule", name="Phone")
    good = entry_for(mule).to_json()
    for key, value in [
        ("public_key", "!!"),
        ("public_key", base64.b64encode(bytes(32)).decode()),
        ("spaces", "some"),
        ("spaces", [1]),
        ("paired_at", "yesterday"),
        ("paired_at", True),
        ("kind", "server"),
        ("label", None),
    ]:
        document = {"version": 1, "entries": [{**good, key: value}]}
        with pytest.raises(MlmuleError):
            TrustStore.from_json(json.dumps(document))
