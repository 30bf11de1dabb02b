"""The mule's link to one home broker: paho-mqtt 2.x running the protocol's state machine.

One `MqttLink` per home broker (visited homes have their own brokers and credentials). It
subscribes to the mule's inbox, feeds every message to the endpoint, publishes what the endpoint
asks for, runs its timers, and hands delivered snapshots to the caller on a worker thread, so a
slow caller never stalls the network. Each endpoint call and the publishes it leads to happen
under one lock: control messages leave in sequence order, whichever thread caused them.

Sessions are clean (MQTT 3.1.1 `clean_session`): after a reconnect the link subscribes afresh and
the protocol asks again for whatever was lost, so the broker never queues chunks for a phone
that is away.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import paho.mqtt.client as mqtt
from mlmule_core.errors import MlmuleError, ProtocolError
from mlmule_core.protocol import (
    Action,
    Closed,
    Completed,
    Deliver,
    EndpointStats,
    Failed,
    MuleEndpoint,
    Publish,
    SnapshotInfo,
)
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

_LOGGER = logging.getLogger(__name__)

Event = Completed | Failed | Closed


@dataclass(frozen=True)
class TlsOptions:
    """TLS to the broker. Without `ca_certs` the system's certificate authorities are used."""

    ca_certs: str | None = None
    certfile: str | None = None  # a client certificate, if the broker asks for one
    keyfile: str | None = None
    verify_hostname: bool = True  # off only for a self-signed broker reached by a bare address

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_certs)
        if self.certfile is not None:
            context.load_cert_chain(self.certfile, self.keyfile)
        context.check_hostname = self.verify_hostname
        return context


@dataclass(frozen=True)
class BrokerOptions:
    """Where and how to reach one home's broker."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: TlsOptions | None = None
    client_id: str = ""  # empty: derived from the mule's id
    keepalive: int = 30
    reconnect_min_delay: int = 1  # seconds; doubles after each failed attempt...
    reconnect_max_delay: int = 60  # ...up to this


@dataclass(frozen=True)
class Verdict:
    """The caller's decision on a delivered snapshot, and optionally its answer to it.

    `reply` is a snapshot made from the delivered one (merged and trained): the link offers it
    to the peer as the answer to it.
    """

    accepted: bool
    reason: str = "ok"
    reply: tuple[SnapshotInfo, bytes] | None = None


DeliveryHandler = Callable[[Deliver], Verdict]
EventHandler = Callable[[Event], None]
PublishTap = Callable[[Publish], None]


class MqttLink:
    """Runs a mule's `endpoint` over paho-mqtt against one broker until `stop()`.

    `on_delivery` runs on the link's worker thread for every snapshot that arrives and returns
    a `Verdict`; raising an `MlmuleError` rejects the snapshot with the error's reason.
    `on_event` (same thread) learns the peer's verdicts on what this side sent, failures and
    ended sessions. Both may call back into the link. `on_publish` sees every message the
    link publishes, in order, as it leaves (the companion's debug dump). `on_connection` learns
    when the link becomes ready (True) or loses the broker (False), on paho's thread.
    """

    def __init__(
        self,
        endpoint: MuleEndpoint,
        broker: BrokerOptions,
        *,
        on_delivery: DeliveryHandler,
        on_event: EventHandler | None = None,
        on_publish: PublishTap | None = None,
        on_connection: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
        tick_interval: float = 0.5,
    ) -> None:
        self.endpoint = endpoint
        self.broker = broker
        self._on_delivery = on_delivery
        self._on_event = on_event
        self._on_publish = on_publish
        self._on_connection = on_connection
        self._clock = clock
        self._tick_interval = tick_interval
        self._lock = threading.RLock()
        self._work: queue.Queue[Deliver | Event | None] = queue.Queue()
        self._stopping = threading.Event()
        self._wake = threading.Event()  # a message arrived: the timers may have work again
        self._ready = threading.Event()
        self._connections = 0
        self._threads: list[threading.Thread] = []
        self._client = self._make_client()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with back-off until it works) and start the
        timers and the worker."""
        self._stopping.clear()
        self._client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive)
        self._client.loop_start()
        for name, target in (("tick", self._tick_loop), ("work", self._work_loop)):
            thread = threading.Thread(target=target, name=f"mlmule-link-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect and stop every thread the link started."""
        self._stopping.set()
        self._wake.set()
        self._work.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        self._client.disconnect()
        self._client.loop_stop()
        self._ready.clear()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until connected and subscribed, so that spaces can reach the mule."""
        return self._ready.wait(timeout)

    @property
    def connected(self) -> bool:
        """Connected and subscribed right now."""
        return self._ready.is_set()

    @property
    def connections(self) -> int:
        """How many times the link has connected (more than once: it reconnected)."""
        return self._connections

    @property
    def stats(self) -> EndpointStats:
        with self._lock:
            return replace(self.endpoint.stats)

    # -- calls into the endpoint, from any thread -----------------------------------------

    def reply(
        self, session: str, snapshot: SnapshotInfo, payload: bytes, *, in_reply_to: str | None
    ) -> None:
        """Offer a snapshot in a running session (see `Endpoint.reply`)."""
        with self._lock:
            now = self._clock()
            self._carry_out(
                self.endpoint.reply(session, snapshot, payload, in_reply_to=in_reply_to, now=now)
            )

    def close_session(self, session: str, reason: str) -> None:
        with self._lock:
            self._carry_out(self.endpoint.close(session, reason, self._clock()))

    def close_sessions(self, reason: str) -> int:
        """End every open session, as `close_session` does; returns how many there were."""
        with self._lock:
            refs = self.endpoint.active_sessions()
            for ref in refs:
                self._carry_out(self.endpoint.close(ref.session, reason, self._clock()))
        return len(refs)

    def carry(self, snapshot: SnapshotInfo, payload: bytes) -> None:
        """Carry `snapshot` from now on (see `MuleEndpoint.carry`)."""
        with self._lock:
            self.endpoint.carry(snapshot, payload)

    # -- paho callbacks (network thread) --------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        broker = self.broker
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=broker.client_id or f"mlmule-{self.endpoint.identity_id}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls is not None:
            client.tls_set_context(broker.tls.context())
        client.reconnect_delay_set(broker.reconnect_min_delay, broker.reconnect_max_delay)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        if reason.is_failure:
            _LOGGER.warning("broker %s refused the connection: %s", self.broker.host, reason)
            return
        self._connections += 1
        client.subscribe([(topic, 1) for topic in self.endpoint.subscriptions()])

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Any,
    ) -> None:
        if any(reason.is_failure for reason in reasons):
            _LOGGER.error("broker %s refused the subscription: %s", self.broker.host, reasons)
            return
        self._ready.set()
        if self._on_connection is not None:
            self._on_connection(True)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Any,
    ) -> None:
        self._ready.clear()
        if self._on_connection is not None:
            self._on_connection(False)
        if not self._stopping.is_set():
            _LOGGER.info("lost broker %s (%s); reconnecting", self.broker.host, reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            # The protocol never retains; a retained message is stale or planted.
            _LOGGER.debug("ignoring a retained message on %s", message.topic)
            return
        with self._lock:
            try:
                payload = bytes(message.payload)
                actions = self.endpoint.receive(message.topic, payload, self._clock())
            except ProtocolError as err:
                _LOGGER.debug("dropped a message on %s: %s (%s)", message.topic, err, err.reason)
                return
            self._carry_out(actions)
        self._wake.set()

    # -- timers and the worker ------------------------------------------------------------

    def _tick_loop(self) -> None:
        """Run the endpoint's timers while a session is open; sleep until a message otherwise,
        so an idle phone is not woken twice a second for nothing."""
        while not self._stopping.is_set():
            with self._lock:
                active = bool(self.endpoint.active_sessions())
            self._wake.wait(self._tick_interval if active else None)
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._lock:
                self._carry_out(self.endpoint.tick(self._clock()))

    def _work_loop(self) -> None:
        while (item := self._work.get()) is not None:
            if isinstance(item, Deliver):
                self._settle(item)
            elif self._on_event is not None:
                try:
                    self._on_event(item)
                except Exception:
                    _LOGGER.exception("the event handler failed on %s", item)

    def _settle(self, delivery: Deliver) -> None:
        try:
            verdict = self._on_delivery(delivery)
        except MlmuleError as err:
            verdict = Verdict(accepted=False, reason=err.reason)
        except Exception:
            _LOGGER.exception("the delivery handler failed on %s", delivery.snapshot.sha256)
            verdict = Verdict(accepted=False, reason="internal_error")
        ref = delivery.ref
        with self._lock:
            now = self._clock()
            actions = self.endpoint.settle(
                ref.session,
                delivery.transfer,
                accepted=verdict.accepted,
                reason=verdict.reason,
                now=now,
            )
            if verdict.reply is not None:
                snapshot, payload = verdict.reply
                actions += self.endpoint.reply(
                    ref.session, snapshot, payload, in_reply_to=delivery.snapshot.sha256, now=now
                )
            self._carry_out(actions)

    def _carry_out(self, actions: list[Action]) -> None:
        """Publish now (under the lock, so in order); queue the rest for the worker."""
        for action in actions:
            if isinstance(action, Publish):
                self._client.publish(action.topic, action.payload, qos=action.qos, retain=False)
                if self._on_publish is not None:
                    self._on_publish(action)
            else:
                self._work.put(action)


def probe(broker: BrokerOptions, timeout: float = 5.0) -> str | None:
    """Try to connect once: None if the broker accepted us, else why not, in a few words."""
    outcome: queue.Queue[str | None] = queue.Queue()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=broker.client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)

    def connected(
        _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        outcome.put(f"the broker refused the login: {reason}" if reason.is_failure else None)

    client.on_connect = connected
    try:
        if broker.tls is not None:
            client.tls_set_context(broker.tls.context())
        client.connect(broker.host, broker.port, keepalive=max(5, int(timeout)))
    except (OSError, ssl.SSLError, ValueError) as err:
        return f"cannot reach {broker.host}:{broker.port}: {err}"
    client.loop_start()
    try:
        return outcome.get(timeout=timeout)
    except queue.Empty:
        return f"no answer from {broker.host}:{broker.port} within {timeout:g} s"
    finally:
        client.disconnect()
        client.loop_stop()
