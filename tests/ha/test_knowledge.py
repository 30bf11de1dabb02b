"""Knowledge exchange on a real Home Assistant core over a real mosquitto: a scripted phone on
its own paho client walks into a space, and the space caches and distils what it carries, or
refuses it and changes nothing."""

from __future__ import annotations

import hashlib
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from homeassistant.config_entries import ConfigSubentry
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.mlmule.const import (
    CONF_ADVANCED,
    CONF_EXCHANGE_MODE,
    CONF_HOME_NAME,
    CONF_INPUTS,
    CONF_MODEL_SIZE,
    CONF_OCCUPANCY_LABEL,
    CONF_OCCUPANCY_LABEL_STATE,
    CONF_PRESENCE,
    CONF_ROOM_KIND,
    CONF_ROOM_KINDS,
    CONF_SHARING,
    CONF_TASKS,
    CONF_TOPIC_PREFIX,
    DOMAIN,
    SUBENTRY_RELAY,
    SUBENTRY_SPACE,
)
from custom_components.mlmule.core import families
from custom_components.mlmule.core.host import ModelHost
from custom_components.mlmule.core.identity import Identity, PairingCode, TrustEntry, TrustStore
from custom_components.mlmule.core.knowledge import (
    knowledge_of,
    proxy_set,
    seal_knowledge,
    unpack_knowledge,
)
from custom_components.mlmule.core.onnx import load_model
from custom_components.mlmule.core.protocol import (
    Deliver,
    MuleEndpoint,
    PayloadKind,
    ProtocolConfig,
    SnapshotInfo,
)
from custom_components.mlmule.core.snapshot import inspect, signed_container
from custom_components.mlmule.core.starter import load_starter
from custom_components.mlmule.core.train_numpy import TrainConfig
from tests.ha.broker_phone import BrokerPhone, adopt, mqtt_broker
from tests.support.broker import Broker
from tests.support.models import learned_elsewhere

__all__ = ["mqtt_broker"]

SPACE_ID = "bedroom01"
KEY = "occupancy/bedroom"


@pytest.fixture
def hub(hass: HomeAssistant, mqtt_broker: Broker) -> MockConfigEntry:
    hass.states.async_set("binary_sensor.bed_motion", "off", {"device_class": "motion"})
    hass.states.async_set("sensor.alice_room", "kitchen")
    entry = MockConfigEntry(
        domain=DOMAIN, data={CONF_HOME_NAME: "Maple", CONF_TOPIC_PREFIX: "mlmule"}
    )
    entry.add_to_hass(hass)
    return entry


def space_subentry(mule_id: str, exchange_mode: str) -> ConfigSubentry:
    return ConfigSubentry(
        data={
            "name": "Bedroom",
            CONF_ROOM_KIND: "bedroom",
            CONF_TASKS: ["occupancy"],
            CONF_SHARING: "owners",
            CONF_MODEL_SIZE: "compact",
            CONF_EXCHANGE_MODE: exchange_mode,
            CONF_INPUTS: ["binary_sensor.bed_motion"],
            CONF_OCCUPANCY_LABEL: ["sensor.alice_room"],
            CONF_OCCUPANCY_LABEL_STATE: "bedroom",
            CONF_PRESENCE: {mule_id: {"entity": "sensor.alice_room", "state": "bedroom"}},
            CONF_ADVANCED: {
                "on_threshold": 0.6,
                "off_threshold": 0.4,
                "min_hold_seconds": 0,
                "max_unavailable_fraction": 0.5,
            },
        },
        subentry_type=SUBENTRY_SPACE,
        title="Bedroom",
        unique_id=None,
        subentry_id=SPACE_ID,
    )


def make_phone(
    tmp_path: Path, home: Identity, broker: Broker, *, model_size: str = "compact"
) -> BrokerPhone:
    """A phone that trusts the home and carries a model of `model_size` learned elsewhere; it
    exchanges weights and knowledge, and verifies the knowledge it is given."""
    identity = Identity.generate(kind="mule", name="alice-phone")
    trust = TrustStore()
    trust.add(
        TrustEntry.for_key(
            home.public_key_bytes, kind="space", role="owner", label="home", paired_at=time.time()
        )
    )
    host = ModelHost(tmp_path / "phone", identity, trust)
    host.install(
        learned_elsewhere(load_model(load_starter(KEY, model_size=model_size).onnx_bytes)),  # type: ignore[arg-type]
        context_key=KEY,
        samples=400,
        data_time=time.time(),
    )
    endpoint = MuleEndpoint(
        identity,
        trust,
        config=ProtocolConfig(prefix="mlmule"),
        kinds=(PayloadKind.WEIGHTS, PayloadKind.KNOWLEDGE),
    )
    slot = host.slot(KEY)
    endpoint.carry(slot.offer(), slot.container)
    return BrokerPhone(identity, host, endpoint, broker, on_deliver=take_knowledge)


def take_knowledge(phone: BrokerPhone, action: Deliver) -> tuple[bool, str]:
    """Verify the space's knowledge (signed by the paired home, on the key's proxy set)."""
    if action.snapshot.kind is not PayloadKind.KNOWLEDGE:
        return adopt(phone, action)
    snapshot = unpack_knowledge(action.payload, trust=phone.host.trust, expected_proxy=None)
    return snapshot.meta.context_key == action.snapshot.context_key, "cached"


def phone_knowledge(phone: BrokerPhone, *, version: int, proxy_seed: str = "") -> bytes:
    """The phone's model's knowledge of KEY, sealed by the phone."""
    slot = phone.host.slot(KEY)
    knowledge = knowledge_of(
        slot.spec,
        slot.weights,
        slot.schema,
        KEY,
        samples=400,
        score=0.8,
        trained_at=time.time(),
        proxy=proxy_set(slot.schema, seed=proxy_seed),
    )
    return seal_knowledge(knowledge, phone.identity, version=version, created_at=time.time())


def carry_knowledge(phone: BrokerPhone, container: bytes) -> None:
    """Offer `container` as the phone's knowledge of KEY (its header read, nothing verified)."""
    header = inspect(container)["header"]
    assert isinstance(header, dict)
    info = SnapshotInfo(
        context_key=KEY,
        version=int(header["version"]),  # type: ignore[arg-type]
        sha256=hashlib.sha256(container).hexdigest(),
        size=len(container),
        arch=str(header["arch_hash"]),
        data_time=int(header["data_time"]),  # type: ignore[arg-type]
        kind=PayloadKind.KNOWLEDGE,
    )
    with phone.lock:
        phone.endpoint.carry(info, container)


def forged(phone: BrokerPhone, **changes: Any) -> bytes:
    """The phone's knowledge with header fields changed or removed (None), signed again."""
    container = phone_knowledge(phone, version=5)
    frame = inspect(container)
    header = dict(frame["header"])  # type: ignore[arg-type]
    body = container[-int(frame["body_bytes"]) :]  # type: ignore[call-overload]
    for name, value in changes.items():
        if value is None:
            header.pop(name)
        else:
            header[name] = value
    if "proxy_size" in changes:
        body = bytes(2 * int(changes["proxy_size"]))  # fp16 zeros: a row per proxy input
        header["tensors"] = [{**header["tensors"][0], "shape": [changes["proxy_size"], 1]}]  # type: ignore[index,dict-item]
    header.pop("body_sha256")
    return signed_container(header, body, phone.identity, phone.host.settings.limits)


async def trained(hass: HomeAssistant, hub: MockConfigEntry) -> None:
    """The space has trained on labelled minutes (seeded, drawn around the schema's mean):
    what its distillations are judged on."""
    space = hub.runtime_data.spaces[SPACE_ID]
    schema = space.host.slot(KEY).schema
    rng = np.random.default_rng(3)
    z = rng.normal(size=(1500, schema.n_inputs)).astype(np.float32)
    mean, std = families.input_normalisation(schema)  # per input, every lag
    x = mean + z * std
    y = (z[:, 0] + 0.5 * z[:, 1] > 0).astype(np.int64)

    def train() -> None:
        space.host.train(KEY, x, y, config=TrainConfig(max_epochs=3, seed=0), data_time=time.time())

    await hass.async_add_executor_job(train)


async def start(
    hass: HomeAssistant,
    hub: MockConfigEntry,
    tmp_path: Path,
    broker: Broker,
    exchange_mode: str,
    *,
    model_size: str = "compact",
) -> BrokerPhone:
    """Set up the hub, pair the phone, add the space with the phone's presence, connect it."""
    assert await hass.config_entries.async_setup(hub.entry_id)
    await hass.async_block_till_done()
    phone = make_phone(tmp_path, hub.runtime_data.identity, broker, model_size=model_size)
    await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(phone.identity).encode(), "role": "owner"},
        blocking=True,
        return_response=True,
    )
    hass.config_entries.async_add_subentry(hub, space_subentry(phone.identity.id, exchange_mode))
    await hass.async_block_till_done(wait_background_tasks=True)
    assert SPACE_ID in hub.runtime_data.spaces
    await hass.async_add_executor_job(phone.connect)
    return phone


async def walk_in(hass: HomeAssistant, phone: BrokerPhone, done: object) -> None:
    """The phone's presence fires; wait (off the event loop) until `done()` holds."""
    hass.states.async_set("sensor.alice_room", "bedroom")
    await hass.async_add_executor_job(phone.wait_for, done)
    await hass.async_block_till_done(wait_background_tasks=True)


async def test_weights_travel_over_a_real_broker(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path, mqtt_broker: Broker
) -> None:
    phone = await start(hass, hub, tmp_path, mqtt_broker, "weights")
    try:
        space = hub.runtime_data.spaces[SPACE_ID]
        await walk_in(hass, phone, lambda: bool(phone.completed) and len(phone.delivered) == 2)
    finally:
        await hass.async_add_executor_job(phone.stop)
    assert [c.accepted for c in phone.completed] == [True]
    assert space.host.counters["merged"] == 1
    # the phone took the space's merge back (and declined its phone-activity model)
    taken = {
        d.snapshot.context_key: (d, accepted, reason) for d, accepted, reason in phone.delivered
    }
    delivery, accepted, reason = taken[KEY]
    assert accepted, reason
    assert delivery.snapshot.sha256 == space.host.slot(KEY).snapshot.sha256


async def walk_out(hass: HomeAssistant) -> None:
    hass.states.async_set("sensor.alice_room", "kitchen")
    await hass.async_block_till_done(wait_background_tasks=True)


def knowledge_verdicts(phone: BrokerPhone) -> list[tuple[bool, str]]:
    with phone.lock:
        return [
            (c.accepted, c.reason)
            for c in phone.completed
            if c.snapshot.kind is PayloadKind.KNOWLEDGE and c.snapshot.context_key == KEY
        ]


def state(hass: HomeAssistant, entity_id: str) -> Any:
    current = hass.states.get(entity_id)
    assert current is not None, entity_id
    return current


async def test_a_larger_phones_knowledge_is_cached_and_distilled(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path, mqtt_broker: Broker
) -> None:
    # the space runs compact models and exchanges knowledge only; the phone carries a large
    # model, whose weights the space could never merge
    phone = await start(hass, hub, tmp_path, mqtt_broker, "knowledge", model_size="large")
    space = hub.runtime_data.spaces[SPACE_ID]
    try:
        await trained(hass, hub)
        before = space.host.slot(KEY)
        assert phone.host.slot(KEY).meta.arch_hash != before.meta.arch_hash
        carry_knowledge(phone, phone_knowledge(phone, version=1))
        await walk_in(
            hass,
            phone,
            lambda: (
                bool(knowledge_verdicts(phone))
                and any(d.snapshot.context_key == KEY for d, _, _ in phone.delivered)
            ),
        )
        await hass.async_block_till_done(wait_background_tasks=True)
    finally:
        await hass.async_add_executor_job(phone.stop)

    # the phone's knowledge was verified and cached under its contributor, on disk too (an
    # accepted verdict reaches the phone as "ok")
    assert knowledge_verdicts(phone) == [(True, "ok")]
    (entry,) = space.host.knowledge.entries(KEY)
    assert entry.contributor == phone.identity.id
    assert entry.knowledge.family == phone.host.slot(KEY).meta.arch_hash
    saved = json.loads((space.host.root / "knowledge.json").read_text())
    assert [e["contributor"] for e in saved["keys"][KEY]] == [phone.identity.id]
    # no weights travelled either way: this space exchanges knowledge only
    assert space.host.counters["received"] == 0
    assert all(d.snapshot.kind is PayloadKind.KNOWLEDGE for d, _, _ in phone.delivered)
    # the phone got the space's knowledge of its compact model, and it verified
    taken = [(d, ok) for d, ok, _ in phone.delivered if d.snapshot.context_key == KEY]
    assert [(d.snapshot.arch, ok) for d, ok in taken] == [(before.meta.arch_hash, True)]

    # distilled in chunks, and judged by the promotion rule with both scores
    summary = space.state.distillation[KEY]
    assert summary.contributors == 1
    decision = summary.decision
    assert decision is not None
    assert decision.change == "distill"
    assert decision.current_score is not None
    assert decision.challenger_score is not None
    after = space.host.slot(KEY)
    if decision.served:
        assert after.version == before.version + 1
    else:
        assert after.container == before.container

    cache = state(hass, "sensor.bedroom_knowledge_cache")
    assert cache.state == "1"
    (shown,) = cache.attributes["contributors"][KEY]
    assert shown["contributor"] == "alice-phone"
    assert shown["score"] == pytest.approx(0.8)
    promotion = cache.attributes["last_distillation"][KEY]["promotion"]
    assert promotion["reason"] == decision.verdict.value
    assert promotion["challenger_score"] == pytest.approx(decision.challenger_score, abs=1e-6)
    assert state(hass, "sensor.bedroom_knowledge_snapshots_rejected").state == "0"


@pytest.mark.parametrize(
    "attack", ["malformed", "wrong_proxy_set", "unknown_signer", "too_large", "replayed"]
)
async def test_bad_knowledge_is_refused_and_changes_nothing(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path, mqtt_broker: Broker, attack: str
) -> None:
    phone = await start(hass, hub, tmp_path, mqtt_broker, "both")
    space = hub.runtime_data.spaces[SPACE_ID]
    try:
        await trained(hass, hub)
        if attack == "replayed":
            # a first snapshot is cached; another one signed with its version is a replay
            carry_knowledge(phone, phone_knowledge(phone, version=7))
            await walk_in(hass, phone, lambda: bool(knowledge_verdicts(phone)))
            await walk_out(hass)
            assert knowledge_verdicts(phone) == [(True, "ok")]
            with phone.lock:
                phone.completed.clear()
            bad = phone_knowledge(phone, version=7)
        elif attack == "malformed":
            bad = forged(phone, proxy_id=None)
        elif attack == "wrong_proxy_set":
            bad = phone_knowledge(phone, version=5, proxy_seed="another set")
        elif attack == "unknown_signer":
            mallory = Identity.generate(kind="mule", name="mallory")
            slot = phone.host.slot(KEY)
            knowledge = knowledge_of(
                slot.spec,
                slot.weights,
                slot.schema,
                KEY,
                samples=1,
                score=None,
                trained_at=time.time(),
            )
            bad = seal_knowledge(knowledge, mallory, version=5, created_at=time.time())
        else:  # more proxy rows than any proxy set has: refused before anything is decoded
            bad = forged(phone, proxy_size=5000)
        cached_before = [e.knowledge.trained_at for e in space.host.knowledge.entries(KEY)]
        model_before = space.host.slot(KEY).container
        carry_knowledge(phone, bad)
        await walk_in(hass, phone, lambda: bool(knowledge_verdicts(phone)))
    finally:
        await hass.async_add_executor_job(phone.stop)

    assert knowledge_verdicts(phone) == [(False, attack)]
    assert [e.knowledge.trained_at for e in space.host.knowledge.entries(KEY)] == cached_before
    assert space.host.slot(KEY).container == model_before
    assert space.knowledge.rejections == {attack: 1}
    rejected = state(hass, "sensor.bedroom_knowledge_snapshots_rejected")
    assert rejected.state == "1"
    assert rejected.attributes["reasons"] == {attack: 1}


async def test_changing_the_model_size_starts_from_that_sizes_starter(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path, mqtt_broker: Broker
) -> None:
    phone = await start(hass, hub, tmp_path, mqtt_broker, "knowledge")
    await hass.async_add_executor_job(phone.stop)
    space = hub.runtime_data.spaces[SPACE_ID]
    assert space.host.slot(KEY).meta.arch_hash == load_starter(KEY).arch_hash
    subentry = hub.subentries[SPACE_ID]
    hass.config_entries.async_update_subentry(
        hub, subentry, data={**subentry.data, CONF_MODEL_SIZE: "large"}
    )
    await hass.async_block_till_done(wait_background_tasks=True)
    space = hub.runtime_data.spaces[SPACE_ID]
    slot = space.host.slot(KEY)
    assert space.settings.model_size == "large"
    assert slot.meta.arch_hash == load_starter(KEY, model_size="large").arch_hash
    assert slot.version == 2  # versions never go back
    # the phones' own model stays in the size phones run
    mobile = space.host.slot("phone_activity/bedroom")
    assert mobile.meta.arch_hash == load_starter("phone_activity/bedroom").arch_hash


async def test_a_relay_keeps_knowledge_and_hands_it_back(
    hass: HomeAssistant, hub: MockConfigEntry, tmp_path: Path, mqtt_broker: Broker
) -> None:
    assert await hass.config_entries.async_setup(hub.entry_id)
    await hass.async_block_till_done()
    phone = make_phone(tmp_path, hub.runtime_data.identity, mqtt_broker, model_size="large")
    await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(phone.identity).encode(), "role": "guest"},
        blocking=True,
        return_response=True,
    )
    hass.config_entries.async_add_subentry(
        hub,
        ConfigSubentry(
            data={
                "name": "Office",
                CONF_TASKS: ["occupancy"],
                CONF_ROOM_KINDS: ["bedroom"],
                CONF_SHARING: "guests",
                CONF_PRESENCE: {
                    phone.identity.id: {"entity": "sensor.alice_room", "state": "bedroom"}
                },
            },
            subentry_type=SUBENTRY_RELAY,
            title="Office",
            unique_id=None,
            subentry_id="office01",
        ),
    )
    await hass.async_block_till_done(wait_background_tasks=True)
    relay = hub.runtime_data.relays["office01"]
    own = phone_knowledge(phone, version=1)
    carry_knowledge(phone, own)
    await hass.async_add_executor_job(phone.connect)

    def handed() -> list[Any]:
        with phone.lock:
            return [
                d for d, ok, _ in phone.delivered if ok and d.snapshot.kind is PayloadKind.KNOWLEDGE
            ]

    try:
        await walk_in(hass, phone, lambda: bool(knowledge_verdicts(phone)) and bool(handed()))
    finally:
        await hass.async_add_executor_job(phone.stop)

    assert knowledge_verdicts(phone) == [(True, "ok")]
    (entry,) = relay.host.knowledge.entries(KEY)
    assert entry.contributor == phone.identity.id
    assert relay.host.start_distillation(KEY) is None  # no labels to distil with
    # the relay knew no one else's knowledge, so it handed the phone its own model's (and
    # never hands a phone its own knowledge back)
    (delivery,) = handed()
    back = unpack_knowledge(delivery.payload, trust=phone.host.trust, expected_proxy=None)
    assert back.contributor == hub.runtime_data.identity.id
    # another phone is handed what this one knew, passed on in the relay home's name (its
    # own model, a starter, has learnt nothing to add)
    passed_on = await hass.async_add_executor_job(
        partial(
            relay.knowledge.offer,
            KEY,
            now=relay.clock.now(),
            receiver="another-phone",
            labelled=False,
        )
    )
    passed = unpack_knowledge(passed_on.container, trust=phone.host.trust, expected_proxy=None)
    sent = unpack_knowledge(own, trust=phone.identity, expected_proxy=None)
    assert passed.contributor == hub.runtime_data.identity.id
    # re-sealed in int8 (the default): half a quantisation step, then rows renormalised
    np.testing.assert_allclose(
        passed.knowledge.probabilities, sent.knowledge.probabilities, atol=1.5 / 127
    )
    assert state(hass, "sensor.office_knowledge_cache").state == "1"
