"""The simulated peers: the product's hosts, identities and protocol endpoints, wired in memory.

Every space and every phone of a run is a `ModelHost` (the peer logic Home Assistant and the
companion run) in a temporary directory, signing with its own Ed25519 identity and trusting
exactly the peers it is paired with. ML Mule encounters run the product's `SpaceEndpoint` and
`MuleEndpoint` state machines: each `Publish` an endpoint asks for is handed to the other
endpoint at once (an in-memory broker), so every control message is signed and checked and
every snapshot is chunked, reassembled, hash-checked and verified, as over MQTT.

What a space and a mule do with a delivered snapshot is the application's part. Here it follows
the integration's `exchange.py` (a space merges, trains, answers) and the mule's role in
`docs/protocol.md` (adopt the answer in fixed-data mode; merge, train and answer in
mobile-data mode). Knowledge, where a method exchanges it, moves as in the product: a space
offers through `core/knowledge_offers.py` and caches what phones bring in its host; a phone
keeps the companion's `PhoneKnowledge`; a learner's next round distils (`Simulation
.distillation_for`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from mlmule_core import families
from mlmule_core.errors import MlmuleError
from mlmule_core.features import FeatureSchema
from mlmule_core.host import CACHED, HELD_BEFORE, UNCHANGED, HostSettings, ModelHost, Outcome
from mlmule_core.identity import Identity, PeerKind, TrustEntry, TrustRole, TrustStore
from mlmule_core.knowledge_offers import KnowledgeOffers
from mlmule_core.promotion import HeldOut
from mlmule_core.protocol import (
    Action,
    Closed,
    Completed,
    Deliver,
    Failed,
    Mode,
    MuleEndpoint,
    PayloadKind,
    Publish,
    SnapshotInfo,
    SpaceEndpoint,
)
from mlmule_core.protocol.wire import is_chunk
from mlmule_core.train_numpy import Distillation, TrainConfig, TrainReport
from mlmule_core.weights import Weights
from mlmule_world.config import stream

from mule_companion.knowledge import PhoneKnowledge

from .data import RELAY_SPACE, Architecture, SpaceSite, Unit

SERVER = "server"


# --- accounting ---------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What a method moved and spent. Bytes are every payload on the wire: for ML Mule the
    signed control messages and chunk frames, for the other methods the snapshot containers."""

    bytes_moved: int = 0
    control_bytes: int = 0
    chunk_bytes: int = 0
    transfers: int = 0  # snapshots delivered whole to a peer
    exchanges: int = 0  # contacts in which at least one snapshot moved
    encounters: int = 0  # contacts tried (sessions opened, rounds held, meetings)
    raw_samples_moved: int = 0  # labelled samples that left the place they were sensed
    train_rounds: int = 0
    train_steps: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    unchanged: int = 0  # models that came back to their producer (`ModelHost.receive`)

    def reject(self, reason: str) -> None:
        code = str(reason)  # strategy reasons are StrEnum members
        self.rejected[code] = self.rejected.get(code, 0) + 1

    def trained(self, report: TrainReport) -> None:
        self.train_rounds += 1
        self.train_steps += report.steps

    def as_dict(self) -> dict[str, object]:
        return {
            "bytes_moved": self.bytes_moved,
            "control_bytes": self.control_bytes,
            "chunk_bytes": self.chunk_bytes,
            "transfers": self.transfers,
            "exchanges": self.exchanges,
            "encounters": self.encounters,
            "raw_samples_moved": self.raw_samples_moved,
            "train_rounds": self.train_rounds,
            "train_steps": self.train_steps,
            "rejected": dict(sorted(self.rejected.items())),
            "unchanged": self.unchanged,
        }


# --- training requests --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainNeed:
    """One training round a peer must run before the simulation can go on."""

    peer: Peer
    context_key: str
    x: np.ndarray
    y: np.ndarray
    data_time: float
    config: TrainConfig
    now: float
    distill: Distillation | None = None  # a distilling round: towards the learner's knowledge


# A generator of the training rounds it needs; each gets its report (None: not trained).
Training = Generator[TrainNeed, TrainReport | None, None]


class Budget:
    """At most one training round per learner and context key per budget period."""

    def __init__(self, start: float, period: float) -> None:
        self._start = start
        self._period = period
        self._spent: dict[tuple[str, str], int] = {}

    def period(self, now: float) -> int:
        return int((now - self._start) // self._period)

    def available(self, learner: str, context_key: str, now: float) -> bool:
        return self._spent.get((learner, context_key), -1) < self.period(now)

    def spend(self, learner: str, context_key: str, now: float) -> None:
        self._spent[(learner, context_key)] = self.period(now)


# --- identities ---------------------------------------------------------------------------------


def seeded_identity(seed: int, kind: str, name: str) -> Identity:
    """A reproducible identity: the same run signs the same bytes."""
    raw = stream(seed, "identity", kind, name).bytes(32)
    return Identity.from_private_bytes(raw, kind=PeerKind(kind), name=name)


def trust_of(identities: Iterable[tuple[Identity, TrustRole]], now: float) -> TrustStore:
    store = TrustStore()
    for identity, role in identities:
        store.add(
            TrustEntry.for_key(
                identity.public_key_bytes,
                kind=identity.kind,
                role=role,
                label=identity.name,
                paired_at=now,
            )
        )
    return store


@dataclass
class Peer:
    """A host with the names the simulation knows it by."""

    name: str
    home: str  # a space's home, a phone's owner's home
    host: ModelHost


class Population:
    """Every identity and host of one method's run, in its own directory."""

    def __init__(
        self,
        root: Path,
        *,
        seed: int,
        start: float,
        homes: Iterable[str],
        phones: Mapping[str, str],  # phone -> owner's home
        architectures: Mapping[str, Architecture],
        settings: HostSettings,
    ) -> None:
        self.root = root
        self.start = start
        self.settings = settings
        self.architectures = dict(architectures)
        self.home_identity = {home: seeded_identity(seed, "space", home) for home in homes}
        self.phone_identity = {
            phone: seeded_identity(seed, "mule", phone) for phone in sorted(phones)
        }
        self.phone_home = dict(phones)
        self.server_identity = seeded_identity(seed, "space", SERVER)
        self.known_arch = {
            key: families.arch_hash(arch.spec, arch.schema) for key, arch in architectures.items()
        }
        self.home_of_id = {identity.id: home for home, identity in self.home_identity.items()}

    # Trust: a home trusts every phone (its residents as owners, the others as guests) and the
    # server; a phone trusts every home, every other phone (gossip) and the server.

    def home_trust(self, home: str) -> TrustStore:
        phones: list[tuple[Identity, TrustRole]] = [
            (identity, TrustRole.OWNER if self.phone_home[phone] == home else TrustRole.GUEST)
            for phone, identity in self.phone_identity.items()
        ]
        return trust_of([*phones, (self.server_identity, TrustRole.OWNER)], self.start)

    def phone_trust(self, phone: str) -> TrustStore:
        homes: list[tuple[Identity, TrustRole]] = [
            (identity, TrustRole.OWNER if self.phone_home[phone] == home else TrustRole.GUEST)
            for home, identity in self.home_identity.items()
        ]
        others: list[tuple[Identity, TrustRole]] = [
            (identity, TrustRole.GUEST)
            for name, identity in self.phone_identity.items()
            if name != phone
        ]
        return trust_of([*homes, *others, (self.server_identity, TrustRole.OWNER)], self.start)

    def host(
        self, name: str, identity: Identity, trust: TrustStore, *, source: str = ""
    ) -> ModelHost:
        """`source`: the space, for a host that signs with its home's key (as the integration
        names each space's snapshots)."""
        return ModelHost(
            self.root / name.replace("/", "__"),
            identity,
            trust,
            replace(self.settings, source=source),
            known_arch=self.known_arch_of(name),
        )

    def known_arch_of(self, name: str) -> dict[str, str]:
        """The architecture hash of each key, as the host `name` runs it."""
        del name
        return self.known_arch

    def install(self, peer: Peer, context_key: str) -> None:
        arch = self.architectures[context_key]
        model = families.build_onnx(arch.spec, arch.initial, arch.schema)
        peer.host.install(model, context_key=context_key, data_time=self.start, now=self.start)

    def space_peer(self, site: SpaceSite, trust: TrustStore) -> Peer:
        identity = self.home_identity[site.home]
        host = self.host(f"{site.home}/{site.space}", identity, trust, source=site.space)
        peer = Peer(f"{site.home}/{site.space}", site.home, host)
        self.install(peer, site.context_key)
        return peer

    def relay_peer(self, site: SpaceSite, trust: TrustStore) -> Peer:
        """A relay space: the place's identity, no model until a phone brings one."""
        identity = self.home_identity[site.home]
        name = f"{site.home}/{site.space}"
        return Peer(name, site.home, self.host(name, identity, trust, source=site.space))

    def phone_peer(self, phone: str, keys: Iterable[str], *, carry_initial: bool) -> Peer:
        host = self.host(phone, self.phone_identity[phone], self.phone_trust(phone))
        peer = Peer(phone, self.phone_home[phone], host)
        if carry_initial:
            for key in keys:
                self.install(peer, key)
        return peer

    def server_peer(self, keys: Iterable[str]) -> Peer:
        trust = trust_of(
            [
                *((identity, TrustRole.OWNER) for identity in self.home_identity.values()),
                *((identity, TrustRole.OWNER) for identity in self.phone_identity.values()),
            ],
            self.start,
        )
        peer = Peer(SERVER, SERVER, self.host(SERVER, self.server_identity, trust))
        for key in keys:
            self.install(peer, key)
        return peer


# --- the in-memory broker and the ML Mule exchange ------------------------------------------------


@dataclass(frozen=True)
class SpaceApp:
    """What the exchange needs from the simulation about one space."""

    peer: Peer
    site: SpaceSite
    unit: Unit | None  # its data in fixed-data mode; None for a relay space
    mode: Mode


@dataclass(frozen=True)
class MuleApp:
    peer: Peer
    units: Mapping[str, Unit]  # its data per context key in mobile-data mode


TrainingFor = Callable[[Peer, str, Unit, float], TrainNeed | None]
Evaluators = Callable[[Peer, Unit, float], Mapping[str, Callable[[Weights], float]]]
WEIGHTS_ONLY = frozenset({PayloadKind.WEIGHTS})
KNOWLEDGE_ENTRIES = 32  # the companion's default `knowledge.max_entries`


class Exchanges:
    """Runs ML Mule encounters between space and mule endpoints, through an in-memory broker.

    `run` is a generator: it yields each training round the encounter needs and resumes with
    its report, so the simulation can batch the rounds of encounters that happen together.
    """

    def __init__(
        self,
        population: Population,
        ledger: Ledger,
        *,
        training_for: TrainingFor,
        evaluators: Evaluators | None,
        seed: int,
        history: float,
        mule_carries: str = "answer",
        kinds: frozenset[PayloadKind] = WEIGHTS_ONLY,
        phone_kinds: frozenset[PayloadKind] | None = None,
        phone_own_kinds: frozenset[PayloadKind] | None = None,
        knowledge_schemas: Mapping[str, FeatureSchema] | None = None,
    ) -> None:
        """`kinds`: what the spaces exchange, `phone_kinds` what the phones do for the spaces'
        models they carry and `phone_own_kinds` for their own (mobile-data mode; defaults: the
        same as the spaces); knowledge only for the keys of `knowledge_schemas` (those a phone
        knows the proxy set of: the product's starters'), weights alone for the others."""
        self.population = population
        self.history = history  # how far back a host's labelled samples reach
        # fixed-data mode: a phone carries the last space's answer, or merges it into its own
        self.mule_carries = mule_carries
        self.ledger = ledger
        self._training_for = training_for
        self._evaluators = evaluators
        self.kinds = kinds
        self.phone_kinds = kinds if phone_kinds is None else phone_kinds
        self.knowledge_schemas = dict(knowledge_schemas or {})
        # without a proxy set (the research tasks) knowledge cannot move: there a phone swaps
        # weights for its own models, as ML Mule did before knowledge
        own = kinds if phone_own_kinds is None else phone_own_kinds
        self.phone_own_kinds = own if self.knowledge_schemas else WEIGHTS_ONLY
        self.space_endpoints = {
            home: SpaceEndpoint(
                identity,
                population.home_trust(home),
                random_bytes=stream(seed, "sessions", home).bytes,
                kinds=kinds,
            )
            for home, identity in population.home_identity.items()
        }
        self.offers: dict[str, KnowledgeOffers] = {}  # space peer -> its knowledge offers
        self.phone_knowledge: dict[str, PhoneKnowledge] = {}
        self.mule_endpoints: dict[str, MuleEndpoint] = {}
        self._seed = seed
        # (phone, key) -> the space a phone's current model came from, as that space signed it
        self._origin: dict[tuple[str, str], tuple[str, str, int, SnapshotInfo, bytes]] = {}

    def mule_endpoint(self, mule: MuleApp) -> MuleEndpoint:
        endpoint = self.mule_endpoints.get(mule.peer.name)
        if endpoint is None:
            identity = self.population.phone_identity[mule.peer.name]
            endpoint = MuleEndpoint(
                identity,
                self.population.phone_trust(mule.peer.name),
                random_bytes=stream(self._seed, "sessions", mule.peer.name).bytes,
                kinds=self.phone_kinds,
                own_kinds=self.phone_own_kinds,
            )
            self.mule_endpoints[mule.peer.name] = endpoint
        return endpoint

    def knowledge_of(self, phone: Peer) -> PhoneKnowledge:
        """The phone's knowledge cache and offers, as the companion keeps them."""
        held = self.phone_knowledge.get(phone.name)
        if held is None:
            host = phone.host
            held = PhoneKnowledge(
                host.root / "knowledge.json",
                host.identity,
                host.trust,
                max_entries=KNOWLEDGE_ENTRIES,
                limits=host.settings.limits,
                replay=host.replay_guard,
                max_age=host.settings.max_age_seconds,
                schemas=self.knowledge_schemas,
            )
            self.phone_knowledge[phone.name] = held
        return held

    def key_kinds(self, context_key: str) -> frozenset[PayloadKind]:
        return self.kinds if context_key in self.knowledge_schemas else WEIGHTS_ONLY

    def distillation(self, peer: Peer, context_key: str, now: float) -> Distillation | None:
        """The term a learner's next round distils towards: a phone's from its knowledge cache
        (without its own), a space's from its host's; None where no knowledge moves."""
        if PayloadKind.KNOWLEDGE not in self.key_kinds(context_key):
            return None
        held = self.phone_knowledge.get(peer.name)
        if held is not None:
            built = held.distillation(
                context_key, now=now, exclude=frozenset({peer.host.identity.id})
            )
            return None if built is None else built[0]
        return peer.host.distillation(context_key, now=now)

    def tick(self, now: float) -> None:
        """Let the endpoints forget sessions that ended long ago (they keep none open)."""
        for endpoint in [*self.space_endpoints.values(), *self.mule_endpoints.values()]:
            endpoint.tick(now)

    def run(self, space: SpaceApp, mule: MuleApp, now: float) -> Training:
        """One encounter: the space opens it, both sides exchange until nothing is left."""
        key = space.site.context_key
        home = self.space_endpoints[space.site.home]
        phone = self.mule_endpoint(mule)
        self._serve(home, space, mule, now)
        self._carry(phone, space, mule, now)
        self.ledger.encounters += 1
        queue: deque[tuple[str, Action]] = deque(
            ("space", action)
            for action in home.open(space.site.space, self._mule_id(mule), now, [key])
        )
        delivered = 0
        while queue:
            side, action = queue.popleft()
            if isinstance(action, Publish):
                self._count(action.payload)
                target = phone if side == "space" else home
                other = "mule" if side == "space" else "space"
                queue.extend(
                    (other, follow) for follow in target.receive(action.topic, action.payload, now)
                )
            elif isinstance(action, Deliver):
                delivered += 1
                if side == "space":
                    follow = yield from self._space_delivered(home, space, mule, action, now)
                else:
                    follow = yield from self._mule_delivered(phone, space, mule, action, now)
                queue.extend((side, action) for action in follow)
            elif (isinstance(action, Completed) and not action.accepted) or isinstance(
                action, Failed
            ):
                self.ledger.reject(action.reason)
            if not queue:
                # everything has been answered: the space ends the encounter
                queue.extend(
                    ("space", follow)
                    for follow in home.close(self._session(home, space, mule), "done", now)
                    if not isinstance(follow, Closed)
                )
        self.ledger.transfers += delivered
        self.ledger.exchanges += delivered > 0

    def _carry(self, phone: MuleEndpoint, space: SpaceApp, mule: MuleApp, now: float) -> None:
        """What the mule offers: back in the space its model came from, that space's own
        snapshot (the space knows its hash, so nothing moves unless the space has a newer
        model); anywhere else, its own re-signed copy, which the other space can verify. Where
        it exchanges knowledge, what it knows without this home's share (`offer_for`)."""
        key = space.site.context_key
        has = mule.peer.host.has(key)
        phone_kinds = self.phone_own_kinds if space.mode is Mode.MOBILE else self.phone_kinds
        if PayloadKind.KNOWLEDGE in phone_kinds & self.key_kinds(key):
            knowledge = self.knowledge_of(mule.peer)
            if has:
                knowledge.learn_own(mule.peer.host.slot(key))
            home_id = self.population.home_identity[space.site.home].id
            sealed = knowledge.offer_for(home_id, key, now=now)
            if sealed is not None:
                phone.carry(sealed.info, sealed.container)
        if not has:
            return
        slot = mule.peer.host.slot(key)
        origin = self._origin.get((mule.peer.name, key))
        if origin is not None and origin[:3] == (space.site.home, space.site.space, slot.version):
            phone.carry(origin[3], origin[4])
        else:
            phone.carry(slot.offer(), slot.container)

    # -- the space's application

    def _space_delivered(
        self,
        home: SpaceEndpoint,
        space: SpaceApp,
        mule: MuleApp,
        action: Deliver,
        now: float,
    ) -> Generator[TrainNeed, TrainReport | None, list[Action]]:
        key = space.site.context_key
        peer = space.peer
        if action.snapshot.kind is PayloadKind.KNOWLEDGE:
            return (yield from self._space_knowledge(home, space, mule, action, now))
        guest = mule.peer.home != space.site.home
        evaluators = (
            self._evaluators(peer, space.unit, now)
            if self._evaluators is not None and space.unit is not None
            else None
        )
        self._labels_before_training(peer, key, space.unit, now)
        outcome = take(peer, action.payload, now, self.ledger, guest=guest, evaluators=evaluators)
        follow = home.settle(
            action.ref.session,
            action.transfer,
            accepted=outcome.accepted,
            reason=outcome.reason,
            now=now,
        )
        if outcome.reason == "merged" and action.mode is Mode.FIXED and space.unit is not None:
            need = self._training_for(peer, key, space.unit, now)
            if need is not None:
                yield need
        if not peer.host.has(key):
            return follow
        self._serve(home, space, mule, now)
        # as exchange.py: after a merge and after a refusal alike, the space answers with what
        # it serves (`ModelHost.answer`), so the mule carries it; nothing when the mule carries
        # it already (or a relay has just taken it as its first model)
        answer = peer.host.answer(outcome) if action.mode is Mode.FIXED else None
        if answer is not None and outcome.reason != "adopted":
            follow += home.reply(
                action.ref.session,
                answer.offer(),
                answer.container,
                in_reply_to=action.snapshot.sha256,
                now=now,
            )
        return follow

    def _space_knowledge(
        self,
        home: SpaceEndpoint,
        space: SpaceApp,
        mule: MuleApp,
        action: Deliver,
        now: float,
    ) -> Generator[TrainNeed, TrainReport | None, list[Action]]:
        """A phone's knowledge: the space caches it (`receive_knowledge`, as the integration,
        distilling apart) and, where it learns the key, distils in its next round."""
        peer = space.peer
        outcome = peer.host.receive_knowledge(action.payload, now=now, distill=False)
        if not outcome.accepted:
            self.ledger.reject(outcome.reason)
        follow = home.settle(
            action.ref.session,
            action.transfer,
            accepted=outcome.accepted,
            reason=outcome.reason,
            now=now,
        )
        if outcome.reason == CACHED and action.mode is Mode.FIXED and space.unit is not None:
            need = self._training_for(peer, space.site.context_key, space.unit, now)
            if need is not None:
                yield need
                self._serve(home, space, mule, now)
        return follow

    # -- the mule's application

    def _mule_delivered(
        self,
        phone: MuleEndpoint,
        space: SpaceApp,
        mule: MuleApp,
        action: Deliver,
        now: float,
    ) -> Generator[TrainNeed, TrainReport | None, list[Action]]:
        key = space.site.context_key
        peer = mule.peer
        if action.snapshot.kind is PayloadKind.KNOWLEDGE:
            return (yield from self._mule_knowledge(phone, space, mule, action, now))
        carries_merge = self.mule_carries == "merge" and action.mode is Mode.FIXED
        if (action.mode is Mode.FIXED and not carries_merge) or not peer.host.has(key):
            # the space's answer (or the first model of a key): carried as it is
            outcome = peer.host.adopt(action.payload, now=now)
            if outcome.accepted:
                self._origin[(peer.name, key)] = (
                    space.site.home,
                    space.site.space,
                    peer.host.slot(key).version,
                    action.snapshot,
                    action.payload,
                )
        else:
            self._labels_before_training(peer, key, mule.units.get(key), now)
            outcome = take(peer, action.payload, now, self.ledger)
        follow = phone.settle(
            action.ref.session,
            action.transfer,
            accepted=outcome.accepted,
            reason=outcome.reason,
            now=now,
        )
        if not outcome.accepted:
            return follow
        received_version = peer.host.slot(key).version
        if action.mode is Mode.MOBILE:
            unit = mule.units.get(key)
            if unit is not None:
                need = self._training_for(peer, key, unit, now)
                if need is not None:
                    yield need
        slot = peer.host.slot(key)
        # the space holds what the phone carries if it sent it and the phone did not train
        space_holds_it = (
            outcome.reason in {UNCHANGED, "adopted"} and slot.version == received_version
        )
        if action.mode is Mode.MOBILE and not space_holds_it:
            follow += phone.reply(
                action.ref.session,
                slot.offer(),
                slot.container,
                in_reply_to=action.snapshot.sha256,
                now=now,
            )
        return follow

    def _mule_knowledge(
        self,
        phone: MuleEndpoint,
        space: SpaceApp,
        mule: MuleApp,
        action: Deliver,
        now: float,
    ) -> Generator[TrainNeed, TrainReport | None, list[Action]]:
        """A space's knowledge: the phone caches it and, in mobile-data mode, distils in its
        next round; a distillation it serves goes back to the space at once (as the agent)."""
        key = space.site.context_key
        knowledge = self.knowledge_of(mule.peer)
        try:
            _, changed = knowledge.receive(action.payload, now=now)
        except MlmuleError as err:
            self.ledger.reject(err.reason)
            return phone.settle(
                action.ref.session, action.transfer, accepted=False, reason=err.reason, now=now
            )
        follow = phone.settle(
            action.ref.session, action.transfer, accepted=True, reason="ok", now=now
        )
        unit = mule.units.get(key)
        if not (changed and action.mode is Mode.MOBILE and unit is not None):
            return follow
        if not mule.peer.host.has(key):
            return follow
        version = mule.peer.host.slot(key).version
        need = self._training_for(mule.peer, key, unit, now)
        if need is None:
            return follow
        yield need
        slot = mule.peer.host.slot(key)
        if slot.version == version:
            return follow
        knowledge.learn_own(slot)
        home_id = self.population.home_identity[space.site.home].id
        sealed = knowledge.offer_for(home_id, key, now=now)
        if sealed is not None:
            follow += phone.reply(
                action.ref.session, sealed.info, sealed.container, in_reply_to=None, now=now
            )
        return follow

    # -- helpers

    def _labels_before_training(self, peer: Peer, key: str, unit: Unit | None, now: float) -> None:
        """A host that has not trained yet judges a merge on every labelled sample it holds:
        no model it serves was trained on them (after its first training, the training's own
        split takes over)."""
        if unit is None or peer.host.counters["trained"]:
            return
        x, y, _ = unit.window(now, self.history)
        if y.size:
            peer.host.hold_out(key, HeldOut.of(x, y))

    def _serve(self, home: SpaceEndpoint, space: SpaceApp, mule: MuleApp, now: float) -> None:
        """What the space offers the mule: its model, and its knowledge where it exchanges
        knowledge (without the mule's own share, as the integration offers it)."""
        key = space.site.context_key
        kinds = self.key_kinds(key)
        if not space.peer.host.has(key):  # a relay space that has not been brought one yet
            home.serve(space.site.space, key, space.mode, kinds=kinds)
            return
        slot = space.peer.host.slot(key)
        home.serve(space.site.space, key, space.mode, slot.offer(), slot.container, kinds=kinds)
        if PayloadKind.KNOWLEDGE in kinds:
            offers = self.offers.get(space.peer.name)
            if offers is None:
                relay = space.site.space.startswith(RELAY_SPACE)
                offers = self.offers[space.peer.name] = KnowledgeOffers(
                    space.peer.host, relay=relay
                )
            sealed = offers.offer(
                key, now=now, receiver=self._mule_id(mule), labelled=space.unit is not None
            )
            home.serve_knowledge(space.site.space, key, sealed.info, sealed.container)

    def _mule_id(self, mule: MuleApp) -> str:
        return self.population.phone_identity[mule.peer.name].id

    def _session(self, home: SpaceEndpoint, space: SpaceApp, mule: MuleApp) -> str:
        mule_id = self._mule_id(mule)
        for ref in home.active_sessions():
            if ref.space == space.site.space and ref.mule == mule_id:
                return ref.session
        return ""

    def _count(self, payload: bytes) -> None:
        self.ledger.bytes_moved += len(payload)
        if is_chunk(payload):
            self.ledger.chunk_bytes += len(payload)
        else:
            self.ledger.control_bytes += len(payload)


def take(
    peer: Peer,
    payload: bytes,
    now: float,
    ledger: Ledger,
    *,
    guest: bool = False,
    evaluators: Mapping[str, Callable[[Weights], float]] | None = None,
) -> Outcome:
    """Merge a delivered snapshot with the peer's strategy (`ModelHost.receive`), counting
    rejections and the peer's own models coming back."""
    outcome = peer.host.receive(payload, guest=guest, now=now, evaluators=evaluators)
    if outcome.reason in {UNCHANGED, HELD_BEFORE}:
        ledger.unchanged += 1
    elif not outcome.accepted:
        ledger.reject(outcome.reason)
    return outcome
