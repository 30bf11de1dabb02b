"""A home's spaces on a real broker, run as the Home Assistant integration runs them.

`SpacePeer` drives the core's `SpaceEndpoint` and a `ModelHost` over a bare paho client, with the
application logic of `custom_components/mlmule/exchange.py`: a delivered snapshot is verified and
merged, the verdict is returned, and in fixed-data mode the space trains on its own data and sends
the merged, trained model back. End-to-end tests and the companion benchmark use it as the far
side of a real companion process.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
from mlmule_core.errors import ProtocolError
from mlmule_core.host import ModelHost, Outcome
from mlmule_core.identity import BrokerInfo, Identity, PairingCode, TrustEntry, TrustStore
from mlmule_core.onnx import load_model
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
)
from mlmule_core.protocol.wire import is_chunk
from mlmule_core.starter import load_starter, starter_index
from mlmule_core.train_numpy import TrainConfig
from paho.mqtt.enums import CallbackAPIVersion

WAIT = 30.0
# the space's own training after a merge: short, as HA's bounded training chunks are
# No validation split of its own: of these few minutes, the latest fifth can be all one class,
# on which the trainer's calibration collapses (the promotion rule then keeps the current model);
# the promotion rule's held-out minutes judge the result instead.
SPACE_TRAINING = TrainConfig(max_epochs=2, batch_size=128, val_fraction=0.0)


@dataclass
class Received:
    """A snapshot the space got from a mule, and what became of it."""

    delivery: Deliver
    outcome: Outcome


@dataclass
class SpacePeer:
    """The spaces of one home: its identity, trust list, models and MQTT client."""

    root: Path
    broker_host: str
    broker_port: int
    name: str = "home"
    config: ProtocolConfig = field(default_factory=ProtocolConfig)
    identity: Identity = field(init=False)

    def __post_init__(self) -> None:
        self.identity = Identity.generate(kind="space", name=self.name)
        self.trust = TrustStore(self.root / "trust.json")
        self.host = ModelHost(
            self.root / "host",
            self.identity,
            self.trust,
            known_arch={key: entry.arch_hash for key, entry in starter_index().items()},
        )
        self.endpoint = SpaceEndpoint(self.identity, self.trust, config=self.config)
        self.own_data: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = {}
        self.modes: dict[tuple[str, str], Mode] = {}
        self.received: list[Received] = []
        self.events: list[Completed | Failed | Closed] = []
        self.messages: list[str] = []  # topics of every message that reached the space
        self.chunks_received = 0
        self.bytes_received = 0  # payload bytes the mules sent this home
        self.bytes_sent = 0  # payload bytes this home sent the mules
        self.pause_after_chunks: int | None = None  # hold the network thread there...
        self.paused = threading.Event()
        self.resume = threading.Event()  # ...until this is set
        self._lock = threading.RLock()
        self._deliveries: queue.Queue[Deliver | None] = queue.Queue()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"space-{self.identity.id}"
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda client, *_: client.subscribe(
            [(topic, 1) for topic in self.endpoint.subscriptions()]
        )
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_disconnect = lambda *_: self._subscribed.clear()
        self.client.on_message = self._on_message
        self.client.connect_async(self.broker_host, self.broker_port)
        self.client.loop_start()
        self._threads = [
            threading.Thread(target=self._tick, daemon=True),
            threading.Thread(target=self._work, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        assert self._subscribed.wait(WAIT), "the space could not subscribe"

    # -- pairing and serving --------------------------------------------------------------

    def home_code(self) -> str:
        """What `mlmule.pair_mule` returns: the home's key and broker."""
        broker = BrokerInfo(self.broker_host, self.broker_port, tls=False)
        return PairingCode.for_identity(self.identity, broker=broker).encode()

    def pair_mule(self, mule_code: str, *, role: str = "owner") -> str:
        """Trust the phone of `mule_code` in every space; returns its id."""
        code = PairingCode.decode(mule_code)
        entry = TrustEntry.for_key(
            code.public_key, kind="mule", role=role, label=code.name, paired_at=time.time()
        )
        self.trust.add(entry)
        return entry.peer_id

    def serve(
        self,
        space: str,
        context_key: str,
        mode: Mode,
        own_data: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None,
    ) -> None:
        """Serve `context_key` in `space`, from its starter model if the home has none yet.

        `own_data` is what the space trains on after merging a phone's model (fixed mode).
        """
        with self._lock:
            if not self.host.has(context_key):
                starter = load_starter(context_key)
                now = time.time()
                self.host.install(
                    load_model(starter.onnx_bytes),
                    context_key=context_key,
                    samples=100,
                    data_time=now,
                    now=now,
                )
            if own_data is not None:
                self.own_data[context_key] = own_data
            self.modes[(space, context_key)] = mode
            self._offer(space, context_key)

    def _offer(self, space: str, context_key: str) -> None:
        slot = self.host.slot(context_key)
        self.endpoint.serve(
            space, context_key, self.modes[(space, context_key)], slot.offer(), slot.container
        )

    def train(self, context_key: str) -> None:
        """The space trains on its own data (as it does on a schedule) and offers the result."""
        with self._lock:
            x, y = self.own_data[context_key]
            self.host.train(context_key, x, y, config=SPACE_TRAINING, data_time=time.time())
            self._reoffer(context_key)

    def _reoffer(self, context_key: str) -> None:
        for space, served in list(self.modes):
            if served == context_key:
                self._offer(space, context_key)

    def open(self, space: str, mule: str) -> None:
        """Presence saw `mule` in `space`: start an encounter (raises if the mule is unknown)."""
        self.call(lambda now: self.endpoint.open(space, mule, now))

    def close(self, space: str) -> None:
        """Presence ended: close the encounters in `space`."""
        for ref in self.endpoint.active_sessions():
            if ref.space == space:
                self.call(lambda now, s=ref.session: self.endpoint.close(s, "done", now))

    def version(self, context_key: str) -> int:
        with self._lock:
            return self.host.slot(context_key).version

    def wait_for(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out; the space got {[r.outcome for r in self.received]} and "
                    f"events {self.events}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self.resume.set()
        self._deliveries.put(None)
        for thread in self._threads:
            thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    # -- the transport --------------------------------------------------------------------

    def call(self, operation: Callable[[float], list[Action]]) -> None:
        with self._lock:
            self._carry_out(operation(time.time()))

    def _on_message(
        self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        payload = bytes(message.payload)
        self.messages.append(message.topic)
        self.bytes_received += len(payload)
        if is_chunk(payload):
            self.chunks_received += 1
            if self.chunks_received == self.pause_after_chunks:
                self.paused.set()
                self.resume.wait()
        with self._lock:
            try:
                actions = self.endpoint.receive(message.topic, payload, time.time())
            except ProtocolError:
                return  # a duplicate after a reconnect, or a stray message: dropped
            self._carry_out(actions)

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            self.call(self.endpoint.tick)

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.client.publish(action.topic, action.payload, qos=action.qos, retain=False)
                self.bytes_sent += len(action.payload)
            elif isinstance(action, Deliver):
                self._deliveries.put(action)
            else:
                self.events.append(action)

    # -- the application ------------------------------------------------------------------

    def _work(self) -> None:
        while (delivery := self._deliveries.get()) is not None:
            self._settle(delivery)

    def _settle(self, delivery: Deliver) -> None:
        ref = delivery.ref
        entry = self.trust.get(ref.mule)
        with self._lock:
            outcome = self.host.receive(
                delivery.payload, guest=entry is not None and entry.role == "guest"
            )
            self.received.append(Received(delivery, outcome))
            self.call(
                lambda now: self.endpoint.settle(
                    ref.session,
                    delivery.transfer,
                    accepted=outcome.accepted,
                    reason=outcome.reason,
                    now=now,
                )
            )
            key = outcome.context_key
            if outcome.accepted and key is not None:
                if delivery.mode is Mode.FIXED and outcome.changed and key in self.own_data:
                    x, y = self.own_data[key]
                    self.host.train(key, x, y, config=SPACE_TRAINING, data_time=time.time())
                self._reoffer(key)
            # as exchange.py: after a merge or a refusal the mule gets what the space serves
            slot = self.host.answer(outcome) if delivery.mode is Mode.FIXED else None
            if slot is not None:
                self.call(
                    lambda now: self.endpoint.reply(
                        ref.session,
                        slot.offer(),
                        slot.container,
                        in_reply_to=delivery.snapshot.sha256,
                        now=now,
                    )
                )
