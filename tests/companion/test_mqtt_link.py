"""The protocol over a real mosquitto: the mule's `MqttLink` against a space driven by the same
state machine over a bare paho client (as Home Assistant's MQTT adapter will drive it)."""

from __future__ import annotations

import getpass
import hashlib
import os
import queue
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mlmule_core.errors import IncompatibleSnapshot, ProtocolError
from mlmule_core.protocol import (
    Action,
    Closed,
    Completed,
    Deliver,
    Failed,
    Mode,
    ProtocolConfig,
    Publish,
    SpaceEndpoint,
    leader_of,
)
from mlmule_core.protocol.wire import decode_chunk, is_chunk
from paho.mqtt.enums import CallbackAPIVersion
from test_protocol import OCCUPANCY, PHONE_ACTIVITY, ROOM, Peers, make_peers, merged, snapshot_of

from mule_companion.mqtt_link import BrokerOptions, MqttLink, TlsOptions, Verdict
from tests.support.broker import Broker, free_port, mosquitto_binary

MIB = 2**20
WAIT = 20.0
# 32 KiB chunks: a 1 MiB snapshot travels as 32 of them, so there is a "middle" to kill it in.
LINK_CONFIG = ProtocolConfig(
    chunk_size=32 * 1024, retry_after=1.0, max_retries=30, transfer_timeout=60.0
)


class PahoSpace:
    """A space endpoint over a bare paho client: subscribe, feed, publish, tick, and settle."""

    def __init__(self, endpoint: SpaceEndpoint, host: str, port: int) -> None:
        self.endpoint = endpoint
        self.events: queue.Queue[Action] = queue.Queue()
        self.chunks_received = 0
        self.pause_after_chunks: int | None = None  # block the network thread there...
        self.paused = threading.Event()
        self.resume = threading.Event()  # ...until this is set
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-space")
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda client, *_: client.subscribe(
            [(topic, 1) for topic in endpoint.subscriptions()]
        )
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_disconnect = lambda *_: self._subscribed.clear()
        self.client.on_message = self._on_message
        self.client.connect_async(host, port)
        self.client.loop_start()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()
        assert self._subscribed.wait(WAIT)

    def call(self, operation: Callable[[float], list[Action]]) -> None:
        with self._lock:
            self._carry_out(operation(time.time()))

    def stop(self) -> None:
        self._stop.set()
        self.resume.set()
        self._ticker.join()
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(
        self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        payload = bytes(message.payload)
        if is_chunk(payload):
            self.chunks_received += 1
            if self.chunks_received == self.pause_after_chunks:
                self.paused.set()
                self.resume.wait()
        with self._lock:
            try:
                actions = self.endpoint.receive(message.topic, payload, time.time())
            except ProtocolError:
                return  # a duplicate after a reconnect, or a chunk of a finished transfer
            self._carry_out(actions)

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            self.call(self.endpoint.tick)

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.client.publish(
                    action.topic, action.payload, qos=action.qos, retain=action.retain
                )
            else:
                self.events.put(action)


@dataclass
class Exchange:
    """A space and a mule on one broker, with the ML Mule callers on both sides."""

    peers: Peers
    space: PahoSpace
    link: MqttLink = field(init=False)
    at_mule: queue.Queue[Deliver] = field(default_factory=queue.Queue)
    mule_events: queue.Queue[Action] = field(default_factory=queue.Queue)
    at_space: list[Deliver] = field(default_factory=list)
    mule_override: Callable[[Deliver], Verdict] | None = None  # replaces the ML Mule caller

    def mule_decides(self, delivery: Deliver) -> Verdict:
        """The mule's caller: as the leader it trains and answers; otherwise it carries it."""
        self.at_mule.put(delivery)
        if self.mule_override is not None:
            return self.mule_override(delivery)
        if leader_of(delivery.mode).value == "mule" and delivery.in_reply_to is None:
            answer = merged(delivery.payload, b"mule")
            snapshot = snapshot_of(delivery.snapshot.context_key, answer, 2)
            return Verdict(accepted=True, reply=(snapshot, answer))
        self.link.carry(delivery.snapshot, delivery.payload)
        return Verdict(accepted=True)

    def give(self, side: str, context_key: str, mode: Mode, payload: bytes | None) -> None:
        if side == "space":
            snapshot = None if payload is None else snapshot_of(context_key, payload)
            self.peers.space.serve(ROOM, context_key, mode, snapshot, payload)
        else:
            assert payload is not None
            self.link.carry(snapshot_of(context_key, payload), payload)

    def open(self) -> None:
        self.space.call(lambda now: self.peers.space.open(ROOM, self.peers.phone.id, now))

    def run_space_until(self, done: Callable[[], bool], timeout: float = WAIT) -> None:
        """Act as the space's caller until `done()`: settle, and answer as the leader."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the exchange did not finish in time"
            try:
                event = self.space.events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            assert not isinstance(event, Failed), f"the space saw a failure: {event.reason}"
            if isinstance(event, Deliver):
                self.at_space.append(event)
                self.space.call(lambda now, d=event: self._space_settles(d, now))

    def _space_settles(self, delivery: Deliver, now: float) -> list[Action]:
        space, ref = self.peers.space, delivery.ref
        actions = space.settle(ref.session, delivery.transfer, accepted=True, reason="ok", now=now)
        if leader_of(delivery.mode).value == "space" and delivery.in_reply_to is None:
            answer = merged(delivery.payload, b"space")
            snapshot = snapshot_of(delivery.snapshot.context_key, answer, 2)
            actions += space.reply(
                ref.session, snapshot, answer, in_reply_to=delivery.snapshot.sha256, now=now
            )
        return actions


@pytest.fixture
def exchange(mosquitto: Broker) -> Iterator[Exchange]:
    peers = make_peers(LINK_CONFIG)
    exchange = Exchange(peers, PahoSpace(peers.space, mosquitto.host, mosquitto.port))
    exchange.link = MqttLink(
        peers.mule,
        BrokerOptions(mosquitto.host, mosquitto.port, reconnect_min_delay=1, reconnect_max_delay=2),
        on_delivery=exchange.mule_decides,
        on_event=exchange.mule_events.put,
        tick_interval=0.2,
    )
    exchange.link.start()
    assert exchange.link.wait_ready(WAIT)
    yield exchange
    exchange.space.stop()
    exchange.link.stop()
    assert_nothing_retained(mosquitto)


def assert_nothing_retained(broker: Broker) -> None:
    """A fresh subscriber to everything gets no message: none was retained."""
    received: queue.Queue[str] = queue.Queue()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-retained-check")
    client.on_message = lambda _c, _u, message: received.put(message.topic)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe("#", qos=1)
        assert subscribed.wait(WAIT)
        try:
            topic = received.get(timeout=0.5)
        except queue.Empty:
            return
        pytest.fail(f"a retained message is left on {topic}")
    finally:
        client.disconnect()
        client.loop_stop()


def completed_on_mule(exchange: Exchange) -> list[Completed]:
    events: list[Completed] = []
    while not exchange.mule_events.empty():
        event = exchange.mule_events.get()
        assert not isinstance(event, Failed), f"the mule saw a failure: {event.reason}"
        if isinstance(event, Completed):
            events.append(event)
    return events


def test_fixed_data_mode_moves_a_mebibyte_each_way(exchange: Exchange) -> None:
    mule_model = os.urandom(MIB)
    exchange.give("space", OCCUPANCY, Mode.FIXED, os.urandom(MIB))
    exchange.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    exchange.open()
    exchange.run_space_until(lambda: exchange.at_mule.qsize() == 1)

    [at_space] = exchange.at_space
    assert at_space.payload == mule_model
    answer = exchange.at_mule.get_nowait()
    assert answer.payload == merged(mule_model, b"space")
    assert hashlib.sha256(answer.payload).hexdigest() == answer.snapshot.sha256
    assert answer.in_reply_to == at_space.snapshot.sha256
    deadline = time.monotonic() + WAIT
    while exchange.peers.space.stats.transfers_completed < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the mule's verdict on the answer is on its way
    assert exchange.peers.space.stats.transfers_completed == 1
    assert [c.accepted for c in completed_on_mule(exchange)] == [True]
    assert exchange.peers.mule.carried(OCCUPANCY) == answer.snapshot


def test_mobile_data_mode_moves_a_mebibyte_each_way(exchange: Exchange) -> None:
    space_model = os.urandom(MIB)
    exchange.give("space", PHONE_ACTIVITY, Mode.MOBILE, space_model)
    exchange.give("mule", PHONE_ACTIVITY, Mode.MOBILE, os.urandom(MIB))
    exchange.open()
    exchange.run_space_until(lambda: len(exchange.at_space) == 1)

    at_mule = exchange.at_mule.get_nowait()
    assert at_mule.payload == space_model
    [at_space] = exchange.at_space
    assert at_space.payload == merged(space_model, b"mule")
    assert at_space.in_reply_to == at_mule.snapshot.sha256
    deadline = time.monotonic() + WAIT
    while not exchange.link.stats.transfers_completed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exchange.link.stats.transfers_completed == 1


def test_a_broker_killed_mid_transfer_comes_back_and_the_transfer_completes(
    exchange: Exchange, mosquitto: Broker
) -> None:
    mule_model = os.urandom(MIB)
    exchange.give("space", OCCUPANCY, Mode.FIXED, None)
    exchange.give("mule", OCCUPANCY, Mode.FIXED, mule_model)
    exchange.space.pause_after_chunks = 4
    exchange.open()
    assert exchange.space.paused.wait(WAIT)
    # 4 of 32 chunks are in; the broker dies without a word and comes back on the same port
    assert mosquitto.process is not None
    mosquitto.process.kill()
    mosquitto.process.wait()
    mosquitto.process = None
    mosquitto.start()
    exchange.space.resume.set()

    exchange.run_space_until(lambda: exchange.at_mule.qsize() == 1, timeout=40.0)
    [at_space] = exchange.at_space
    assert at_space.payload == mule_model
    assert hashlib.sha256(at_space.payload).hexdigest() == at_space.snapshot.sha256
    assert exchange.link.connections >= 2
    assert exchange.at_mule.get_nowait().payload == merged(mule_model, b"space")
    # the transfer resumed: the space asked for the chunks the dead broker lost
    assert exchange.peers.space.stats.nacks_sent >= 1
    assert exchange.link.stats.chunks_resent > 0
    assert exchange.link.stats.transfers_failed == 0


def test_the_link_ignores_retained_messages(exchange: Exchange, mosquitto: Broker) -> None:
    inbox = exchange.peers.mule.topics.to_mule(
        exchange.peers.phone.id, exchange.peers.home.id, ROOM
    )
    planted = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-planter")
    planted.connect(mosquitto.host, mosquitto.port)
    planted.loop_start()
    try:
        planted.publish(inbox, b'{"planted":true}', qos=1, retain=True).wait_for_publish(WAIT)
        before = exchange.link.stats.messages_rejected
        # a new connection of the link gets the retained message, and must not even parse it
        exchange.link.stop()
        exchange.link.start()
        assert exchange.link.wait_ready(WAIT)
        time.sleep(0.3)
        assert exchange.link.stats.messages_rejected == before
        assert exchange.link.stats.messages_received == 0
    finally:
        planted.publish(inbox, b"", qos=1, retain=True).wait_for_publish(WAIT)  # clear it
        planted.disconnect()
        planted.loop_stop()


def test_the_mule_can_answer_later_and_close_the_session(exchange: Exchange) -> None:
    """The companion may train after settling, then answer and end the encounter itself."""
    space_model = os.urandom(200_000)
    exchange.give("space", PHONE_ACTIVITY, Mode.MOBILE, space_model)
    exchange.mule_override = lambda _delivery: Verdict(accepted=True)
    exchange.open()
    delivery = exchange.at_mule.get(timeout=WAIT)
    trained = merged(delivery.payload, b"later")
    exchange.link.reply(
        delivery.ref.session,
        snapshot_of(PHONE_ACTIVITY, trained, 2),
        trained,
        in_reply_to=delivery.snapshot.sha256,
    )
    exchange.run_space_until(lambda: len(exchange.at_space) == 1)
    assert exchange.at_space[0].payload == trained
    exchange.link.close_session(delivery.ref.session, "done")
    closed = exchange.space.events.get(timeout=WAIT)
    assert isinstance(closed, Closed)
    assert closed.reason == "done"


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (IncompatibleSnapshot("another architecture"), "incompatible"),
        (RuntimeError("bug"), "internal_error"),
    ],
)
def test_a_failing_delivery_handler_rejects_the_snapshot(
    exchange: Exchange, failure: Exception, reason: str
) -> None:
    def fail(_delivery: Deliver) -> Verdict:
        raise failure

    exchange.mule_override = fail
    exchange.give("space", OCCUPANCY, Mode.FIXED, os.urandom(50_000))  # the mule has none
    exchange.open()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        event = exchange.space.events.get(timeout=WAIT)
        if isinstance(event, Completed):
            break
    assert isinstance(event, Completed)
    assert (event.accepted, event.reason) == (False, reason)


# ---------------------------------------------------------------------------------------------
# Credentials and TLS


def write_tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """A certificate authority and a broker certificate for 127.0.0.1."""
    now = datetime.now(UTC)

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        issuer_key: ec.EllipticCurvePrivateKey,
        *,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, broker_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_cert = certificate("test ca", ca_key, "test ca", ca_key, ca=True)
    broker_cert = certificate("127.0.0.1", broker_key, "test ca", ca_key, ca=False)
    paths = directory / "ca.pem", directory / "broker.pem", directory / "broker.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(broker_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        broker_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """mosquitto with TLS and a password file (user `phone`, password `s3cret`)."""
    ca, cert, key = write_tls_material(tmp_path)
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "phone", "s3cret"], check=True)
    passwords.chmod(0o600)
    port = free_port()
    config = tmp_path / "secure.conf"
    config.write_text(
        # as root mosquitto would switch to its own user, who cannot read pytest's temporaries
        f"user {getpass.getuser()}\n"
        f"listener {port} 127.0.0.1\n"
        f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
        f"persistence false\nlog_dest file {tmp_path / 'secure.log'}\n"
    )
    process = subprocess.Popen([mosquitto_binary(), "-c", str(config)])
    try:
        deadline = time.monotonic() + WAIT
        while process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        assert process.poll() is None, (tmp_path / "secure.log").read_text()
        yield port, ca
    finally:
        process.terminate()
        process.wait(5)


def test_the_link_connects_with_tls_and_a_password_and_not_without(
    secure_broker: tuple[int, Path],
) -> None:
    port, ca = secure_broker
    peers = make_peers(LINK_CONFIG)

    def link_with(password: str) -> MqttLink:
        options = BrokerOptions(
            "127.0.0.1", port, username="phone", password=password, tls=TlsOptions(ca_certs=str(ca))
        )
        return MqttLink(peers.mule, options, on_delivery=lambda _d: Verdict(True))

    good = link_with("s3cret")
    good.start()
    try:
        assert good.wait_ready(WAIT)
    finally:
        good.stop()
    wrong = link_with("guess")
    wrong.start()
    try:
        assert not wrong.wait_ready(2.0)
        assert wrong.connections == 0
    finally:
        wrong.stop()


def test_chunks_of_a_snapshot_stay_within_the_limit() -> None:
    # The whole exchange never sends a chunk larger than 256 KiB, whatever the configured size.
    config = ProtocolConfig()
    peers = make_peers(config)
    payload = os.urandom(3 * MIB)
    peers.mule.carry(snapshot_of(OCCUPANCY, payload), payload)
    peers.space.serve(ROOM, OCCUPANCY, Mode.FIXED)
    sent: list[Publish] = []
    now = time.time()
    pending: list[Action] = list(peers.space.open(ROOM, peers.phone.id, now))
    while pending:
        action = pending.pop(0)
        if isinstance(action, Publish):
            sent.append(action)
            receiver = peers.mule if "/mules/" in action.topic else peers.space
            pending += receiver.receive(action.topic, action.payload, now)
    frames = [decode_chunk(m.payload) for m in sent if is_chunk(m.payload)]
    assert len(frames) == 12
    assert max(len(frame.data) for frame in frames) == 256 * 1024
