"""The two ends of the protocol: a home's spaces and a mule. Each routes, authenticates and
rate-limits messages for its encounters, and holds the snapshots it can offer.

Drive one from any transport: feed it `receive(topic, payload, now)` for every message on its
`subscriptions()`, call `tick(now)` every second or so, and carry out the actions it returns.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Protocol

from ..errors import (
    BadSignature,
    ProtocolError,
    StaleMessage,
    TransferError,
    UnauthenticatedMessage,
    UnexpectedMessage,
    UnknownSigner,
)
from ..identity import PeerKind, verify
from .actions import Action, EncounterRef
from .config import EndpointStats, ProtocolConfig
from .encounter import (
    BufferBudget,
    Encounter,
    Holding,
    Kinds,
    MlMulePolicy,
    RecentHashes,
    Shared,
    WantPolicy,
    check_offer_size,
)
from .wire import (
    RESERVED_HOME_ID,
    Envelope,
    Mode,
    Offer,
    OfferEntry,
    PayloadKind,
    Signer,
    SnapshotInfo,
    check_context_key,
    check_id,
    decode_chunk,
    decode_control,
    is_chunk,
)

_TOKEN_BYTES = 16


class PeerTrust(Protocol):
    """Who may talk to this endpoint (`identity.TrustStore` is one)."""

    def public_key_for(self, key_id: str) -> bytes:
        """The peer's Ed25519 public key; raises `UnknownSigner` for a peer not paired."""
        ...

    def is_allowed(self, peer_id: str, space_id: str) -> bool: ...


def check_kinds(kinds: Collection[PayloadKind]) -> Kinds:
    """The payload kinds a side exchanges: weights, knowledge or both, never none."""
    chosen = frozenset(PayloadKind(kind) for kind in kinds)
    if not chosen:
        raise ProtocolError("a side exchanges weights, knowledge or both", reason="bad_config")
    return chosen


def check_holding(snapshot: SnapshotInfo, payload: bytes, config: ProtocolConfig) -> Holding:
    """A snapshot and its bytes, checked to agree and to fit the payload limit."""
    if len(payload) != snapshot.size or hashlib.sha256(payload).hexdigest() != snapshot.sha256:
        raise ProtocolError(
            "the payload's size or sha256 is not the snapshot's", reason="payload_mismatch"
        )
    if snapshot.size > config.max_payload:
        raise TransferError(
            f"a snapshot of {snapshot.size} bytes exceeds {config.max_payload}", reason="too_large"
        )
    return snapshot, payload


class Endpoint(ABC):
    """What both ends share: sessions, authentication, replay protection, timers."""

    role: PeerKind

    def __init__(
        self,
        identity: Signer,
        trust: PeerTrust,
        *,
        config: ProtocolConfig | None = None,
        policy: WantPolicy | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        kinds: Collection[PayloadKind] = (PayloadKind.WEIGHTS,),
    ) -> None:
        self.config = config or ProtocolConfig()
        self.kinds = check_kinds(kinds)  # what it exchanges unless told otherwise per key
        self.topics = self.config.topics
        self.identity_id = check_id(identity.id, "identity id")
        self.stats = EndpointStats()
        self._trust = trust
        self._random_bytes = random_bytes
        self._shared = Shared(
            config=self.config,
            signer=identity,
            policy=policy or MlMulePolicy(),
            stats=self.stats,
            random_token=self._token,
            recent=RecentHashes(self.config.remembered_snapshots),
            buffers=BufferBudget(self.config.max_buffered_bytes),
        )
        self._sessions: dict[str, Encounter] = {}
        self._by_pair: dict[tuple[str, str, str], str] = {}  # (home, space, mule) -> session
        self._ended: OrderedDict[str, float] = OrderedDict()  # session -> when it ended

    # -- for the transport ----------------------------------------------------------------

    @abstractmethod
    def subscriptions(self) -> list[str]:
        """The topic filters to subscribe to, at QoS 1."""

    def receive(self, topic: str, payload: bytes, now: float) -> list[Action]:
        """Handle one message. Raises a `ProtocolError` subclass for a message it drops."""
        self.stats.bytes_received += len(payload)
        try:
            actions = self._receive(topic, payload, now)
        except ProtocolError:
            self.stats.messages_rejected += 1
            raise
        self.stats.messages_received += 1
        return actions

    def tick(self, now: float) -> list[Action]:
        """Run the timers of every session; call it about once a second."""
        actions: list[Action] = []
        for encounter in list(self._sessions.values()):
            actions += encounter.tick(now)
            self._forget_if_closed(encounter, now)
        horizon = now - self.config.freshness
        while self._ended and next(iter(self._ended.values())) < horizon:
            self._ended.popitem(last=False)
        return actions

    # -- for the caller -------------------------------------------------------------------

    def settle(
        self, session: str, transfer: str, *, accepted: bool, reason: str, now: float
    ) -> list[Action]:
        """Return the verdict on a `Deliver`ed snapshot: accepted, or rejected with a reason
        code (an error's `reason`). Does nothing if the session has ended meanwhile."""
        encounter = self._sessions.get(session)
        if encounter is None:
            return []
        return encounter.settle(transfer, accepted, "ok" if accepted else reason, now)

    def reply(
        self,
        session: str,
        snapshot: SnapshotInfo,
        payload: bytes,
        *,
        in_reply_to: str | None,
        now: float,
    ) -> list[Action]:
        """Offer a snapshot made during the encounter, e.g. by merging the peer's (whose sha256
        goes in `in_reply_to`). Does nothing if the session has ended meanwhile."""
        encounter = self._sessions.get(session)
        if encounter is None:
            return []
        held = check_holding(snapshot, payload, self.config)
        return encounter.reply(*held, in_reply_to, now)

    def close(self, session: str, reason: str, now: float) -> list[Action]:
        """End a session, telling the peer (`bye`)."""
        encounter = self._sessions.get(session)
        if encounter is None:
            return []
        actions = encounter.close(reason, now)
        self._forget_if_closed(encounter, now)
        return actions

    def active_sessions(self) -> list[EncounterRef]:
        return [encounter.ref for encounter in self._sessions.values()]

    @property
    def buffered_bytes(self) -> int:
        """Bytes held in reassembly buffers right now, across all sessions."""
        return self._shared.buffers.used

    # -- internals ------------------------------------------------------------------------

    @abstractmethod
    def _peer_of(self, topic: str) -> tuple[str, str, str]:
        """(home, space, mule) of an inbox topic."""

    @abstractmethod
    def _accept_session(
        self, envelope: Envelope, pair: tuple[str, str, str], now: float
    ) -> list[Action]:
        """Handle the first message of a session this endpoint does not know."""

    @abstractmethod
    def _current(self, space: str, context_key: str, kind: PayloadKind) -> Holding | None:
        """What this side holds now for a context key in a space, of one payload kind."""

    def _kinds_for(self, space: str, context_key: str, mode: Mode) -> Kinds:
        """The payload kinds this side exchanges for a context key in a space, in `mode`."""
        return self.kinds

    def _receive(self, topic: str, payload: bytes, now: float) -> list[Action]:
        pair = self._peer_of(topic)
        if is_chunk(payload):
            frame = decode_chunk(payload)
            session = self._by_pair.get(pair)
            if session is None:
                raise UnexpectedMessage(f"no transfer {frame.transfer}", reason="unknown_transfer")
            return self._sessions[session].receive_chunk(frame, now)
        signed = decode_control(payload, self.config.max_control_bytes)
        envelope = signed.envelope
        home, space, mule = pair
        peer = mule if self.role is PeerKind.SPACE else home
        if (
            envelope.sender != peer
            or envelope.recipient != self.identity_id
            or envelope.space != space
        ):
            raise UnexpectedMessage(
                "the message's sender, recipient or space is not its topic's", reason="misaddressed"
            )
        self._authenticate(peer, space)
        try:
            verify(self._trust.public_key_for(peer), signed.signed, signed.signature)
        except BadSignature as err:
            raise UnauthenticatedMessage(str(err), reason="bad_signature") from err
        if abs(now * 1000 - envelope.sent_at_ms) > self.config.freshness * 1000:
            raise StaleMessage(f"sent {envelope.sent_at_ms / 1000 - now:+.0f} s from now")
        encounter = self._sessions.get(envelope.session)
        if encounter is None:
            if envelope.session in self._ended:
                raise UnexpectedMessage("that session has ended", reason="session_closed")
            return self._accept_session(envelope, pair, now)
        if (encounter.ref.home, encounter.ref.space, encounter.ref.mule) != pair:
            raise UnexpectedMessage("that session belongs to another peer", reason="misaddressed")
        actions = encounter.receive(envelope, now)
        self._forget_if_closed(encounter, now)
        return actions

    def _authenticate(self, peer: str, space: str) -> None:
        """Raise unless `peer` is paired and allowed in `space`."""
        try:
            self._trust.public_key_for(peer)
        except UnknownSigner as err:
            raise UnauthenticatedMessage(f"{peer} is not paired", reason="unknown_peer") from err
        if not self._trust.is_allowed(peer, space):
            raise UnauthenticatedMessage(f"{peer} may not use space {space}", reason="not_allowed")

    def _start(
        self,
        pair: tuple[str, str, str],
        session: str,
        modes: dict[str, Mode],
        topic_out: str,
        now: float,
    ) -> tuple[Encounter, list[Action]]:
        """A new encounter with `pair`, superseding an older one with the same peer."""
        actions: list[Action] = []
        previous = self._by_pair.get(pair)
        if previous is not None:
            old = self._sessions[previous]
            actions += old.close("superseded", now, tell_peer=False)
            self._forget_if_closed(old, now)
        if len(self._sessions) >= self.config.max_sessions:
            raise UnexpectedMessage("too many encounters at once", reason="too_many_sessions")
        home, space, mule = pair

        def kinds(context_key: str) -> Kinds:
            return self._kinds_for(space, context_key, modes[context_key])

        def current(context_key: str, kind: PayloadKind) -> Holding | None:
            return self._current(space, context_key, kind) if kind in kinds(context_key) else None

        encounter = Encounter(
            self._shared,
            ref=EncounterRef(session, home, space, mule),
            role=self.role,
            topic_out=topic_out,
            modes=modes,
            current=current,
            kinds=kinds,
            now=now,
        )
        self._sessions[session] = encounter
        self._by_pair[pair] = session
        return encounter, actions

    def _forget_if_closed(self, encounter: Encounter, now: float) -> None:
        if encounter.closed:
            ref = encounter.ref
            self._sessions.pop(ref.session, None)
            if self._by_pair.get((ref.home, ref.space, ref.mule)) == ref.session:
                del self._by_pair[(ref.home, ref.space, ref.mule)]
            self._ended[ref.session] = now

    def _token(self) -> str:
        return self._random_bytes(_TOKEN_BYTES).hex()


@dataclass(frozen=True)
class _Served:
    """What a space exchanges for one context key, and what it offers."""

    mode: Mode
    weights: Holding | None
    knowledge: Holding | None
    kinds: Kinds


def _checked_holding(
    context_key: str,
    kind: PayloadKind,
    snapshot: SnapshotInfo | None,
    payload: bytes | None,
    config: ProtocolConfig,
) -> Holding | None:
    check_context_key(context_key)
    if snapshot is None:
        return None
    if payload is None or snapshot.context_key != context_key or snapshot.kind is not kind:
        raise ProtocolError(
            f"a served snapshot needs its payload, key and kind ({kind})",
            reason="payload_mismatch",
        )
    return check_holding(snapshot, payload, config)


class SpaceEndpoint(Endpoint):
    """The spaces of one home, which share its identity; a space starts each encounter."""

    role = PeerKind.SPACE

    def __init__(
        self,
        identity: Signer,
        trust: PeerTrust,
        *,
        config: ProtocolConfig | None = None,
        policy: WantPolicy | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        kinds: Collection[PayloadKind] = (PayloadKind.WEIGHTS,),
    ) -> None:
        super().__init__(
            identity, trust, config=config, policy=policy, random_bytes=random_bytes, kinds=kinds
        )
        if self.identity_id == RESERVED_HOME_ID:
            raise ProtocolError(
                f"a home cannot be called {RESERVED_HOME_ID!r}", reason="bad_config"
            )
        self._served: dict[str, dict[str, _Served]] = {}

    def subscriptions(self) -> list[str]:
        return [self.topics.home_filter(self.identity_id)]

    def serve(
        self,
        space: str,
        context_key: str,
        mode: Mode,
        snapshot: SnapshotInfo | None = None,
        payload: bytes | None = None,
        *,
        kinds: Collection[PayloadKind] | None = None,
    ) -> None:
        """Let `space` exchange `context_key` in `mode`, offering the weights `snapshot` (None:
        not yet trained). Call again whenever the space's snapshot for the key changes.

        `kinds` is what the space exchanges for the key (default: the endpoint's): without
        weights it neither offers nor fetches weights; with knowledge it offers what
        `serve_knowledge` gave it and fetches the mule's knowledge."""
        check_id(space, "space id")
        held = _checked_holding(context_key, PayloadKind.WEIGHTS, snapshot, payload, self.config)
        previous = self._served.get(space, {}).get(context_key)
        self._served.setdefault(space, {})[context_key] = _Served(
            Mode(mode),
            held,
            None if previous is None else previous.knowledge,
            self.kinds if kinds is None else check_kinds(kinds),
        )

    def serve_knowledge(
        self, space: str, context_key: str, snapshot: SnapshotInfo, payload: bytes
    ) -> None:
        """Offer `snapshot`, a knowledge snapshot, for a key `space` serves (`serve` first), from
        the next encounter on; call again whenever it changes."""
        served = self._served.get(space, {}).get(context_key)
        if served is None:
            raise ProtocolError(
                f"space {space} does not serve {context_key}", reason="unknown_context"
            )
        held = _checked_holding(context_key, PayloadKind.KNOWLEDGE, snapshot, payload, self.config)
        self._served[space][context_key] = replace(served, knowledge=held)

    def open(
        self, space: str, mule: str, now: float, context_keys: list[str] | None = None
    ) -> list[Action]:
        """Start an encounter because presence saw `mule` in `space`: offer what the space has
        for the context keys (all it serves by default). Does nothing while one is going on."""
        pair = (self.identity_id, space, check_id(mule, "mule id"))
        if pair in self._by_pair:
            return []
        self._authenticate(mule, space)
        served = self._served.get(space, {})
        keys = list(served) if context_keys is None else context_keys
        if not keys or any(key not in served for key in keys):
            raise ProtocolError(f"space {space} does not serve {keys}", reason="unknown_context")
        modes = {key: served[key].mode for key in keys}
        topic_out = self.topics.to_mule(mule, self.identity_id, space)
        encounter, actions = self._start(pair, self._token(), modes, topic_out, now)
        holdings: list[tuple[OfferEntry, bytes | None]] = []
        knowledge: list[tuple[OfferEntry, bytes | None]] = []
        for key in keys:
            entry = served[key]
            weights = self._current(space, key, PayloadKind.WEIGHTS)
            snapshot, payload = weights if weights is not None else (None, None)
            holdings.append((OfferEntry(key, entry.mode, snapshot), payload))
            held = self._current(space, key, PayloadKind.KNOWLEDGE)
            if held is not None:
                knowledge.append((OfferEntry(key, entry.mode, held[0]), held[1]))
        actions += encounter.offer(holdings, now)
        if knowledge:
            # an offer of their own: a mule that predates knowledge refuses an offer that names
            # any, and must still open the session and exchange weights with the first
            actions += encounter.offer(knowledge, now)
        return actions

    def _peer_of(self, topic: str) -> tuple[str, str, str]:
        space, mule = self.topics.parse_to_space(topic, self.identity_id)
        return self.identity_id, space, mule

    def _accept_session(
        self, envelope: Envelope, pair: tuple[str, str, str], now: float
    ) -> list[Action]:
        raise UnexpectedMessage("mules do not start encounters", reason="unknown_session")

    def _current(self, space: str, context_key: str, kind: PayloadKind) -> Holding | None:
        served = self._served.get(space, {}).get(context_key)
        if served is None or kind not in served.kinds:
            return None
        return served.weights if kind is PayloadKind.WEIGHTS else served.knowledge

    def _kinds_for(self, space: str, context_key: str, mode: Mode) -> Kinds:
        served = self._served.get(space, {}).get(context_key)
        return self.kinds if served is None else served.kinds


class MuleEndpoint(Endpoint):
    """A phone's end: answers the spaces that open encounters, offering what it carries.

    One endpoint serves one broker; a mule that visits several homes runs one per home broker.
    """

    role = PeerKind.MULE

    def __init__(
        self,
        identity: Signer,
        trust: PeerTrust,
        *,
        config: ProtocolConfig | None = None,
        policy: WantPolicy | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        kinds: Collection[PayloadKind] = (PayloadKind.WEIGHTS,),
        own_kinds: Collection[PayloadKind] | None = None,
    ) -> None:
        """`kinds`: what the mule exchanges for the models it carries between spaces
        (fixed-data mode); `own_kinds`: for the models it learns itself (mobile-data mode),
        default the same."""
        super().__init__(
            identity, trust, config=config, policy=policy, random_bytes=random_bytes, kinds=kinds
        )
        self.own_kinds = None if own_kinds is None else check_kinds(own_kinds)
        self._carried: dict[tuple[str, PayloadKind], Holding] = {}

    def subscriptions(self) -> list[str]:
        return [self.topics.mule_filter(self.identity_id)]

    def kinds_in(self, mode: Mode) -> Kinds:
        """The payload kinds this mule exchanges for a key in `mode`."""
        if mode is Mode.MOBILE and self.own_kinds is not None:
            return self.own_kinds
        return self.kinds

    def carry(self, snapshot: SnapshotInfo, payload: bytes) -> None:
        """Carry `snapshot` for its context key from now on, instead of any earlier one of its
        kind (weights or knowledge: the mule carries one of each per key)."""
        held = check_holding(snapshot, payload, self.config)
        self._carried[(snapshot.context_key, snapshot.kind)] = held

    def carried(
        self, context_key: str, kind: PayloadKind = PayloadKind.WEIGHTS
    ) -> SnapshotInfo | None:
        held = self._carried.get((context_key, kind))
        return None if held is None else held[0]

    def _peer_of(self, topic: str) -> tuple[str, str, str]:
        home, space = self.topics.parse_to_mule(topic, self.identity_id)
        return home, space, self.identity_id

    def _accept_session(
        self, envelope: Envelope, pair: tuple[str, str, str], now: float
    ) -> list[Action]:
        offer = envelope.body
        if not isinstance(offer, Offer) or offer.number != 1:
            raise UnexpectedMessage(
                "a session starts with the space's first offer", reason="unknown_session"
            )
        check_offer_size(offer, self.config)
        home, space, _ = pair
        topic_out = self.topics.to_space(home, space, self.identity_id)
        modes = {entry.context_key: entry.mode for entry in offer.entries}
        encounter, actions = self._start(pair, envelope.session, modes, topic_out, now)
        holdings: list[tuple[OfferEntry, bytes | None]] = []
        for key, mode in modes.items():
            held = (
                self._current(space, key, PayloadKind.WEIGHTS)
                if PayloadKind.WEIGHTS in self.kinds_in(mode)
                else None
            )
            snapshot, payload = held if held is not None else (None, None)
            holdings.append((OfferEntry(key, mode, snapshot), payload))
        # Our offer goes first, so the answer to the space's offer knows what we carry. Our
        # knowledge waits until the space has offered its own (`Encounter._offer_knowledge_back`).
        actions += encounter.offer(holdings, now)
        return actions + encounter.receive(envelope, now)

    def _current(self, space: str, context_key: str, kind: PayloadKind) -> Holding | None:
        return self._carried.get((context_key, kind))

    def _kinds_for(self, space: str, context_key: str, mode: Mode) -> Kinds:
        return self.kinds_in(mode)
