"""The methods, on identical data, contacts, models and training budget.

| method | who learns | how models move |
|---|---|---|
| local | each learner alone | never |
| centralized | a server per key, on pooled raw data | raw data to the server (upper bound) |
| fedavg | every learner, in rounds every T hours | server: sample-weighted mean of the round |
| fedavg_ft | as fedavg | as fedavg; a client serves its round's fine-tune of the global model |
| fedasync | every learner, at its own hour | server: staleness-weighted mixing per update |
| gossip | spaces (fixed data) or phones (mobile data) | pairwise means over ML Mule's contacts |
| mlmule* | spaces and phones | phones carry snapshots between spaces and relay spaces |

A *learner* is a space in fixed-data mode (occupancy, digits, paper) and a phone in mobile-data
mode (phone_activity). Every unit is scored with the model its learner serves (personalised);
server methods also score the server's model (global). Every merge goes through a strategy of
`mlmule_core.strategies`, every model through `ModelHost` (signed, verified, stored, versioned).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
from mlmule_core import families
from mlmule_core.families import FamilySpec
from mlmule_core.features import FeatureSchema
from mlmule_core.host import HostSettings
from mlmule_core.identity import TrustStore
from mlmule_core.promotion import Change, HeldOut, Labels, PromotionDecision, PromotionRule
from mlmule_core.protocol import (
    DEFAULT_EXCHANGE_MODE,
    MULE_EXCHANGE_MODE,
    MULE_OWN_EXCHANGE_MODE,
    Mode,
    PayloadKind,
)
from mlmule_core.snapshot import unpack
from mlmule_core.starter import starter_index
from mlmule_core.strategies import (
    AggregationContext,
    ModelState,
    Strategy,
    make_strategy,
    merged_state,
)
from mlmule_core.weights import Weights, weights_digest
from mlmule_world.config import stream

from .config import HOUR
from .data import RELAY_SPACE, Architecture, SpaceSite, TaskData, Unit, is_fixed
from .mobility import Meeting, Visit
from .peers import (
    WEIGHTS_ONLY,
    Exchanges,
    MuleApp,
    Peer,
    Population,
    SpaceApp,
    TrainNeed,
)
from .simulate import Method, Simulation

# The product's guest gate (`custom_components/mlmule/__init__.py`): a guest's snapshot may cost
# at most this much held-out accuracy.
GUEST_GATE_EPSILON = 0.02
HELD_OUT_FRACTION = 0.2  # the coordinator keeps the last fifth of its training set for the gate
# the strategy options that turn it on (`host_settings` in the integration)
GUEST_GATE = MappingProxyType({"gate": "guests", "gate_epsilon": GUEST_GATE_EPSILON})


def gate_evaluators(
    peer: Peer, unit: Unit, now: float, history: float
) -> dict[str, Callable[[Weights], float]]:
    """The gate's held-out data: the newest fifth of what the space would train on now."""
    x, y, _ = unit.window(now, history)
    held = int(y.size * HELD_OUT_FRACTION)
    if held == 0:
        return {}
    return {unit.context_key: peer.host.evaluator(unit.context_key, x[-held:], y[-held:])}


class PeerMethod(Method):
    """A method whose learners are product hosts; builds them on first use."""

    strategy = "mlmule"
    strategy_options: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    personal_head = False
    uses_relays = False  # the run's relay spaces are peers of this method
    # The product's promotion rule judges every change (ML Mule, and local learning as the
    # product does it in a home); the literature's baselines serve every change they make,
    # unless the configuration gives them the rule too (`baseline_promotion`).
    promotes = False
    # this method's own options of the promotion rule, over the configuration's
    promotion_options: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def __init__(self, sim: Simulation, root: Path) -> None:
        super().__init__(sim, root)
        data = sim.data
        self.fixed = is_fixed(data.task)
        architectures = {
            key: arch.personal() if self.personal_head else arch
            for key, arch in data.architectures.items()
        }
        self.architectures: dict[str, Architecture] = architectures
        self.relays = sim.relays if self.uses_relays else []
        self.population = Population(
            root,
            seed=sim.seed,
            start=sim.start,
            # a relay space is a paired home like any other
            homes=[*sim.homes, *self.relays],
            phones=sim.phones,
            architectures=architectures,
            settings=HostSettings(
                keep_versions=2,
                strategy=self.strategy,
                strategy_options=self.options(),
                promotion=(
                    replace(sim.config.promotion_rule(), **self.promotion_options)
                    if self.promotes or sim.config.baseline_promotion
                    else SERVE_EVERY_CHANGE
                ),
            ),
        )
        self._home_trust: dict[str, TrustStore] = {}
        self.spaces: dict[str, Peer] = {}  # "home/space" -> peer
        self.phones: dict[str, Peer] = {}

    def options(self) -> dict[str, Any]:
        """The strategy options of this method's hosts."""
        return dict(self.strategy_options)

    def home_trust(self, home: str) -> TrustStore:
        if home not in self._home_trust:
            self._home_trust[home] = self.population.home_trust(home)
        return self._home_trust[home]

    def space(self, site: SpaceSite) -> Peer:
        name = f"{site.home}/{site.space}"
        if name not in self.spaces:
            self.spaces[name] = self.population.space_peer(site, self.home_trust(site.home))
        return self.spaces[name]

    def phone(self, phone: str, *, carry_initial: bool) -> Peer:
        if phone not in self.phones:
            keys = [unit.context_key for unit in self.sim.units_by_learner.get(phone, [])]
            if carry_initial:
                keys = sorted({*keys, *self.architectures})
            self.phones[phone] = self.population.phone_peer(
                phone, keys, carry_initial=carry_initial
            )
        return self.phones[phone]

    def build_learners(self) -> dict[str, Peer]:
        """Every learner with the shared starting model: spaces, or phones."""
        if self.fixed:
            return {unit.learner: self.space(site_of(unit)) for unit in self.sim.data.units}
        return {
            learner: self.phone(learner, carry_initial=True)
            for learner in self.sim.units_by_learner
        }

    def learner_of(self, unit: Unit) -> Peer:
        return self.spaces[unit.learner] if self.fixed else self.phones[unit.learner]

    def train_leftovers(self, now: float) -> None:
        """The nightly round of every learner that has budget left in this period."""
        needs: list[TrainNeed] = []
        for unit in self.sim.data.units:
            need = self.sim.need(self.learner_of(unit), unit.context_key, unit, now)
            if need is not None:
                needs.append(need)
        self.sim.train(needs)

    def model_for(self, unit: Unit) -> tuple[FamilySpec, Weights]:
        slot = self.learner_of(unit).host.slot(unit.context_key)
        return slot.spec, slot.weights

    def details(self) -> dict[str, object]:
        """The hosts' counters and promotion verdicts, summed over every space and phone."""
        counters: dict[str, int] = {}
        promotions: dict[str, int] = {}
        for peer in [*self.spaces.values(), *self.phones.values()]:
            for name, value in peer.host.counters.items():
                counters[name] = counters.get(name, 0) + value
            for name, value in peer.host.promotions.items():
                promotions[name] = promotions.get(name, 0) + value
        return {
            "host_counters": dict(sorted(counters.items())),
            "promotions": dict(sorted(promotions.items())),
        }


class ServeEveryChange(PromotionRule):
    """No rule: every challenger is judged as if the host had no labels, and so served (the
    host still holds out the same latest fifth of each training window, so every method
    trains on the same data)."""

    def judge(
        self,
        predict: Callable[[Weights, HeldOut], Labels],
        metric: Callable[[Labels, Labels], float],
        current: Weights,
        challenger: Weights,
        window: HeldOut | None,
        *,
        context_key: str,
        change: Change,
        at: float,
    ) -> PromotionDecision:
        del window
        return super().judge(
            predict,
            metric,
            current,
            challenger,
            None,
            context_key=context_key,
            change=change,
            at=at,
        )


SERVE_EVERY_CHANGE = ServeEveryChange()


def site_of(unit: Unit) -> SpaceSite:
    home, space = unit.learner.split("/")
    return SpaceSite(home, space, unit.context_key)


# --- the baselines ----------------------------------------------------------------------------


class Local(PeerMethod):
    name = "local"
    promotes = True

    def __init__(self, sim: Simulation, root: Path) -> None:
        super().__init__(sim, root)
        self.build_learners()

    def on_period_end(self, now: float) -> None:
        self.train_leftovers(now)


class Centralized(PeerMethod):
    """Everyone's raw labelled data pooled at a server, one model per key: the upper bound."""

    name = "centralized"
    has_global = True  # every learner is served the server's model

    def __init__(self, sim: Simulation, root: Path) -> None:
        super().__init__(sim, root)
        self.server = self.population.server_peer(self.architectures)
        self.pooled = {key: pool(key, sim.data.units) for key in self.architectures}
        self._uploaded = 0

    def on_period_end(self, now: float) -> None:
        # the raw samples sensed since the last upload leave their homes
        sensed = sum(unit.samples_before(now) for unit in self.pooled.values())
        self.sim.ledger.raw_samples_moved += sensed - self._uploaded
        self._uploaded = sensed
        needs = [
            need
            for key, unit in self.pooled.items()
            if (need := self.sim.need(self.server, key, unit, now)) is not None
        ]
        self.sim.train(needs)

    def model_for(self, unit: Unit) -> tuple[FamilySpec, Weights]:
        return self.global_model(unit)

    def global_model(self, unit: Unit) -> tuple[FamilySpec, Weights]:
        slot = self.server.host.slot(unit.context_key)
        return slot.spec, slot.weights


def pool(context_key: str, units: Sequence[Unit]) -> Unit:
    """The units of one key as one time-ordered data set."""
    chosen = [unit for unit in units if unit.context_key == context_key]
    times = np.concatenate([unit.times for unit in chosen])
    order = np.argsort(times, kind="stable")
    return Unit(
        unit_id=f"pooled/{context_key}",
        context_key=context_key,
        learner="server",
        home="server",
        times=times[order],
        x=np.concatenate([unit.x for unit in chosen])[order],
        y=np.concatenate([unit.y for unit in chosen])[order],
        y_true=np.concatenate([unit.y_true for unit in chosen])[order],
        x_test=np.concatenate([unit.x_test for unit in chosen]),
        y_test=np.concatenate([unit.y_test for unit in chosen]),
        kept=all(unit.kept for unit in chosen),
    )


class ServerMethod(PeerMethod):
    """Clients train, a server merges. A unit's personalised score is its client's model (what
    the client serves); its global score is the server's model."""

    has_global = True

    def __init__(self, sim: Simulation, root: Path) -> None:
        super().__init__(sim, root)
        self.learners = self.build_learners()
        self.server = self.population.server_peer(self.architectures)
        self._downloaded: dict[tuple[str, str], int] = {}  # (learner, key) -> server version

    def download(self, peer: Peer, context_key: str, now: float) -> None:
        """The client takes the server's model, unless it already has this version."""
        version = self.server.host.slot(context_key).version
        if self._downloaded.get((peer.name, context_key), 0) >= version:
            return
        self._downloaded[(peer.name, context_key)] = version
        payload = self.server.host.export(context_key)
        outcome = peer.host.adopt(payload, now=now)
        if not outcome.accepted:
            self.sim.ledger.reject(outcome.reason)
        self._moved(payload)

    def _moved(self, payload: bytes) -> None:
        self.sim.ledger.bytes_moved += len(payload)
        self.sim.ledger.chunk_bytes += len(payload)
        self.sim.ledger.transfers += 1

    def upload(self, need: TrainNeed, now: float) -> ModelState:
        """A client's trained model as the server receives it: its snapshot, verified, counted
        with the samples of this round (FedAvg's `n_k`), not the running total in its
        metadata, which re-counts every round's data (and would outgrow the header)."""
        server = self.server.host
        payload = need.peer.host.export(need.context_key)
        self._moved(payload)
        self.sim.ledger.encounters += 1
        self.sim.ledger.exchanges += 1
        # no replay guard: a server knows its clients by their connections, and the spaces of
        # one home share an identity
        snapshot = unpack(
            payload, trust=server.trust, expected_arch=server.expected_arch(), now=now
        )
        _, _, weights = families.from_onnx(snapshot.model)
        return ModelState(
            weights=weights,
            created_at=snapshot.meta.created_at,
            data_time=snapshot.meta.data_time,
            samples=int(need.y.shape[0]),
            version=snapshot.meta.version,
            origin=snapshot.origin,
            lineage=snapshot.meta.lineage,
        )

    def merge(self, context_key: str, updates: Sequence[ModelState], now: float) -> None:
        """Merge updates into the server's model with this method's strategy, as its next
        version (`merged_state` keeps the product's metadata rules)."""
        server = self.server.host
        slot = server.slot(context_key)
        current = self.server_state(slot.state())
        result = self.server_strategy(context_key).aggregate(
            current,
            updates,
            now=now,
            context=AggregationContext(shared=families.shared_names(slot.spec)),
        )
        for decision in result.decisions:
            if not decision.accepted:
                self.sim.ledger.reject(decision.reason)
        if result.changed:
            server.commit(
                context_key,
                merged_state(current, updates, result, now=now, origin=server.identity.id),
            )

    def server_state(self, state: ModelState) -> ModelState:
        return state

    def server_strategy(self, context_key: str) -> Strategy:
        raise NotImplementedError

    def global_model(self, unit: Unit) -> tuple[FamilySpec, Weights]:
        slot = self.server.host.slot(unit.context_key)
        return slot.spec, slot.weights


class FedAvg(ServerMethod):
    """McMahan et al.: every T hours each client trains from the global model, the server
    takes the mean of the clients' models weighted by the samples of the round, and every
    client takes (and serves) the new global model."""

    name = "fedavg"
    serves_fine_tune = False

    def on_hour(self, now: float) -> None:
        every = self.sim.config.fedavg_every_hours * HOUR
        if round((now - self.sim.start) / HOUR) % round(every / HOUR) == 0:
            self.round(now - 1.0)

    def round(self, now: float) -> None:
        if self.serves_fine_tune:
            # the client kept its fine-tune since the last round: it starts from the global
            for unit in self.sim.data.units:
                self.download(self.learner_of(unit), unit.context_key, now)
        needs = [
            need
            for unit in self.sim.data.units
            if (need := self.sim.need(self.learner_of(unit), unit.context_key, unit, now))
            is not None
        ]
        trained = [
            need for need, report in zip(needs, self.sim.train(needs), strict=True) if report
        ]
        for key in self.architectures:
            updates = [self.upload(need, now) for need in trained if need.context_key == key]
            if updates:
                self.merge(key, updates, now)
        if not self.serves_fine_tune:
            for unit in self.sim.data.units:
                self.download(self.learner_of(unit), unit.context_key, now)

    def server_state(self, state: ModelState) -> ModelState:
        # the global model itself has no weight in a round: only the clients' updates count
        return replace(state, samples=0)

    def server_strategy(self, context_key: str) -> Strategy:
        return make_strategy("fedavg")


class FedAvgFineTuned(FedAvg):
    """FedAvg with local fine-tuning (as in FedPer/Ditto evaluations): the same rounds and the
    same global model, but each client serves its round's fine-tune of the global model on its
    own data until the next round, instead of the global model."""

    name = "fedavg_ft"
    serves_fine_tune = True


class FedAsync(ServerMethod):
    """Xie et al.: each client trains at its own hour of the period, from the model it
    downloads, and the server mixes each update in as it arrives (product strategy `fedasync`)."""

    name = "fedasync"

    def __init__(self, sim: Simulation, root: Path) -> None:
        super().__init__(sim, root)
        self.strategies = {key: make_strategy("fedasync") for key in self.architectures}
        hours = int(sim.config.budget.period_hours)
        self.slot_hour = {
            unit.unit_id: int(stream(sim.seed, "fedasync-slot", unit.unit_id).integers(hours))
            for unit in sim.data.units
        }

    def on_hour(self, now: float) -> None:
        hour = round((now - self.sim.start) / HOUR) % int(self.sim.config.budget.period_hours)
        due = [unit for unit in self.sim.data.units if self.slot_hour[unit.unit_id] == hour]
        needs = []
        for unit in due:
            peer = self.learner_of(unit)
            self.download(peer, unit.context_key, now)
            need = self.sim.need(peer, unit.context_key, unit, now)
            if need is not None:
                needs.append(need)
        for need, report in zip(needs, self.sim.train(needs), strict=True):
            if report is not None:
                self.merge(need.context_key, [self.upload(need, now)], now)

    def server_strategy(self, context_key: str) -> Strategy:
        return self.strategies[context_key]


class Gossip(PeerMethod):
    """Decentralised learning by pairwise averaging (Hegedus et al.) with equal weights, over
    the contacts ML Mule gets, store-and-forward: no server, no freshness rule, no promotion.

    Phones carry models. A phone entering a space (fixed-data mode) and two phones meeting at a
    place where ML Mule could exchange (a home of the run, a relay place) average what they
    hold: both take the mean (one that holds nothing takes a copy). A home's space learns what
    another home knows only when a phone brings it in: the exchange between two homes
    completes when their phones meet and then come home, not at once. In mobile-data mode the
    phones are the learners and average when they meet.
    """

    name = "gossip"
    uses_meetings = True

    def __init__(self, sim: Simulation, root: Path) -> None:
        super().__init__(sim, root)
        self.learners = self.build_learners()
        self.space_keys = {(site.home, site.space): site.context_key for site in sim.data.sites}
        for phone in sim.phones:
            self.phone(phone, carry_initial=not self.fixed)

    def on_visits(self, visits: Sequence[Visit]) -> None:
        if not self.fixed:
            return  # spaces do not learn in mobile-data mode
        for visit in visits:
            key = self.space_keys.get((visit.home, visit.space))
            space = self.learners.get(f"{visit.home}/{visit.space}")
            if key is not None and space is not None:
                self.exchange(space, self.phones[visit.phone], key, visit.time)

    def on_meeting(self, meeting: Meeting) -> None:
        self.sim.ledger.encounters += 1
        a, b = self.phones[meeting.phone_a], self.phones[meeting.phone_b]
        for key in self.architectures:
            self.exchange(a, b, key, meeting.time)

    def exchange(self, a: Peer, b: Peer, context_key: str, now: float) -> None:
        """Both take the mean of what they hold; one holding nothing takes the other's."""
        ledger = self.sim.ledger
        if not (a.host.has(context_key) or b.host.has(context_key)):
            return
        if not b.host.has(context_key) or not a.host.has(context_key):
            giver, taker = (a, b) if a.host.has(context_key) else (b, a)
            payload = giver.host.export(context_key)
            outcome = taker.host.adopt(payload, now=now)
            if not outcome.accepted:
                ledger.reject(outcome.reason)
                return
            moved = [len(payload)]
        elif average_pair(a, b, context_key, now):
            moved = [len(a.host.export(context_key)), len(b.host.export(context_key))]
        else:
            return
        ledger.bytes_moved += sum(moved)
        ledger.chunk_bytes += sum(moved)
        ledger.transfers += len(moved)
        ledger.exchanges += 1

    def on_period_end(self, now: float) -> None:
        self.train_leftovers(now)


def average_pair(a: Peer, b: Peer, context_key: str, now: float) -> bool:
    """Both peers take the equal-weight mean of their shared parameters (each keeps its own
    personal ones) as their next version; False if they already agree."""
    slot_a, slot_b = a.host.slot(context_key), b.host.slot(context_key)
    if weights_digest(slot_a.weights) == weights_digest(slot_b.weights):
        return False
    context = AggregationContext(shared=families.shared_names(slot_a.spec))
    # equal weights: each state counts as one sample for the mean
    state_a, state_b = replace(slot_a.state(), samples=1), replace(slot_b.state(), samples=1)
    for peer, own, other, slot in ((a, state_a, state_b, slot_a), (b, state_b, state_a, slot_b)):
        result = make_strategy("fedavg").aggregate(own, [other], now=now, context=context)
        meta = slot.meta
        peer.host.commit(
            context_key,
            ModelState(
                weights=result.weights,
                created_at=now,
                data_time=max(meta.data_time, other.data_time),
                samples=meta.samples,  # averaging adds no data
                version=meta.version + 1,
                origin=peer.host.identity.id,
                lineage=(*meta.lineage, other.origin),
            ),
        )
    return True


# --- ML Mule ------------------------------------------------------------------------------------


class MLMule(PeerMethod):
    """The protocol: a phone entering a space runs an encounter through the product's
    endpoints; the leader merges with the freshness-aware strategy, trains, and answers.

    Relay spaces (the world's shared places, when the run has them): a space with no sensors
    and no labels that keeps, merges and hands back the snapshots of the keys it relays; it
    starts with none and takes the first one a phone brings.
    """

    name = "mlmule"
    uses_relays = True
    promotes = True
    # the product's guest gate (`host_settings` in the integration): it judges a guest's model
    # on the space's labels; in mobile-data mode a space has none (no evaluators: the gate
    # keeps every merge) and phones take no guests
    strategy_options = GUEST_GATE
    mule_carries: str | None = None  # None: the configuration's
    # what the spaces and the phones swap: the product's defaults (both, and knowledge alone
    # for a phone's own models); knowledge moves for the keys whose proxy set a phone knows
    # (`knowledge_schemas`), weights alone elsewhere
    exchange_kinds = DEFAULT_EXCHANGE_MODE.kinds
    phone_kinds = MULE_EXCHANGE_MODE.kinds
    phone_own_kinds = MULE_OWN_EXCHANGE_MODE.kinds
    # an ablation whose knob acts only where spaces train: in mobile-data mode its run is
    # ML Mule's step for step
    fixed_data_only = False
    # an ablation whose knob acts only where knowledge moves
    knowledge_only = False

    @classmethod
    def same_run_as(cls, data: TaskData) -> str | None:
        idle = (cls.fixed_data_only and not is_fixed(data.task)) or (
            cls.knowledge_only and not knowledge_schemas(data.architectures)
        )
        return MLMule.name if idle else None

    def __init__(self, sim: Simulation, root: Path) -> None:
        super().__init__(sim, root)
        self.units = {unit.learner: unit for unit in sim.data.units}
        self.sites: dict[tuple[str, str], list[SpaceSite]] = {}
        for site in sim.data.sites:
            self.sites.setdefault((site.home, site.space), []).append(site)
            self.space(site)
        for place in self.relays:
            for key in sim.data.relay_keys():
                site = SpaceSite(place, relay_space_id(key), key)
                self.sites.setdefault((place, RELAY_SPACE), []).append(site)
                self.spaces[f"{place}/{site.space}"] = self.population.relay_peer(
                    site, self.home_trust(place)
                )
        for phone in sim.phones:
            # in mobile-data mode a phone learns from the start; in fixed-data mode it carries
            # only what spaces give it
            self.phone(phone, carry_initial=not self.fixed)
        self.exchanges = Exchanges(
            self.population,
            sim.ledger,
            training_for=sim.need,
            evaluators=self.evaluators if "gate" in self.strategy_options else None,
            seed=sim.seed,
            history=sim.history,
            mule_carries=self.mule_carries or sim.config.mule_carries,
            kinds=self.exchange_kinds,
            phone_kinds=self.phone_kinds,
            phone_own_kinds=self.phone_own_kinds,
            knowledge_schemas=knowledge_schemas(self.architectures),
        )
        sim.distillation_for = self.exchanges.distillation

    def options(self) -> dict[str, Any]:
        return {**self.sim.config.mlmule_options, **self.strategy_options}

    def on_visits(self, visits: Sequence[Visit]) -> None:
        self.sim.drive(
            self.exchanges.run(
                space_app(self, site, self.units),
                MuleApp(self.phones[visit.phone], self.mule_units(visit.phone)),
                visit.time,
            )
            for visit in visits
            for site in self.sites.get((visit.home, visit.space), [])
        )

    def mule_units(self, phone: str) -> dict[str, Unit]:
        if self.fixed:
            return {}
        return {unit.context_key: unit for unit in self.sim.units_by_learner.get(phone, [])}

    def evaluators(
        self, peer: Peer, unit: Unit, now: float
    ) -> dict[str, Callable[[Weights], float]]:
        return gate_evaluators(peer, unit, now, self.sim.history)

    def on_hour(self, now: float) -> None:
        self.exchanges.tick(now)

    def on_period_end(self, now: float) -> None:
        self.train_leftovers(now)


def knowledge_schemas(architectures: Mapping[str, Architecture]) -> dict[str, FeatureSchema]:
    """The keys knowledge can move for, with their models' schemas: those the product's phones
    know the proxy set of (a starter's; the benchmark's research tasks have none)."""
    starters = starter_index()
    return {key: arch.schema for key, arch in architectures.items() if key in starters}


def relay_space_id(context_key: str) -> str:
    """A relay's space id for one key it relays (a space serves one key per room kind)."""
    return f"{RELAY_SPACE}-{context_key.split('/', 1)[1]}"


def space_app(method: PeerMethod, site: SpaceSite, units: Mapping[str, Unit]) -> SpaceApp:
    return SpaceApp(
        method.spaces.get(f"{site.home}/{site.space}") or method.space(site),
        site,
        units.get(f"{site.home}/{site.space}") if method.fixed else None,
        Mode.FIXED if method.fixed else Mode.MOBILE,
    )


class MLMuleNoRelay(MLMule):
    name = "mlmule_no_relay"
    uses_relays = False


class MLMuleCarryMerge(MLMule):
    """The paper's mule: it carries its own running merge of the spaces' answers."""

    name = "mlmule_carry_merge"
    mule_carries = "merge"
    # in mobile-data mode the phone trains and merges itself: what it carries from a space is
    # the same either way (`Exchanges._mule_delivered`)
    fixed_data_only = True


class MLMuleNoFilter(MLMule):
    name = "mlmule_no_filter"
    strategy_options = MappingProxyType({**MLMule.strategy_options, "freshness_filter": False})


class MLMulePersonal(MLMule):
    name = "mlmule_personal"
    personal_head = True


class MLMuleNoFineTune(MLMule):
    """A merge the promotion rule refuses is dropped, not fine-tuned at the next training."""

    name = "mlmule_no_fine_tune"
    promotion_options = MappingProxyType({"fine_tune_refused": False})


class MLMuleWeightsOnly(MLMule):
    """Spaces and phones swap weights alone (ML Mule before knowledge)."""

    name = "mlmule_weights_only"
    exchange_kinds = phone_kinds = phone_own_kinds = WEIGHTS_ONLY
    knowledge_only = True


class MLMuleKnowledgeOnly(MLMule):
    """Spaces and phones swap knowledge alone: no weights move (so relay spaces, which start
    without a model, never hold one)."""

    name = "mlmule_knowledge_only"
    exchange_kinds = phone_kinds = phone_own_kinds = frozenset({PayloadKind.KNOWLEDGE})
    knowledge_only = True


class MLMuleNoGate(MLMule):
    """Guests' snapshots merge without the validation gate (the promotion rule still judges)."""

    name = "mlmule_no_gate"
    strategy_options = MappingProxyType({})
    fixed_data_only = True


METHOD_CLASSES: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        Local,
        Centralized,
        FedAvg,
        FedAvgFineTuned,
        FedAsync,
        Gossip,
        MLMule,
        MLMuleNoRelay,
        MLMuleCarryMerge,
        MLMuleNoFilter,
        MLMulePersonal,
        MLMuleNoGate,
        MLMuleNoFineTune,
        MLMuleWeightsOnly,
        MLMuleKnowledgeOnly,
    )
}
