"""The knowledge path measured (issue 13 section 4): weights against knowledge between homes
whose models cannot merge.

`python -m mlmule_bench.knowledge [--config tiny] [--seed N ...] [--jobs 2]` ->
`bench/results/knowledge.json` (`make bench-knowledge`).

**The heterogeneous setting.** Per task (occupancy: the spaces learn; phone activity: the
phones learn), every home has a model size (`families.FAMILY_PRESETS`: "compact" in even
homes, "large" in odd ones: a wide MLP for occupancy, the temporal `activity-tcn` for phone
activity) and a sensor set: homes `index % 4 in {2, 3}` have a reduced one (rooms without CO2,
illuminance, power or media sensors; phones without gyroscope or step counter), which the
product's room and phone schemas express as those roles unavailable (flag 0, neutral value).
So four kinds of home, each model size on both sensor sets; weights merge only within a model
size (the product's architecture hash, checked in the offer before anything moves).

**The methods**, on the same data, contacts (phones entering spaces, the learning benchmark's
visits; no relay places), start (each size's seeded weights) and budget (one round per
learner per day, as `learning.json`), every change judged by the product's promotion rule:

- `local`: nothing moves;
- `mlmule_weights`: weight snapshots, merged (freshness-aware strategy) only within a size,
  a space gating a guest's on its labels (the product's guest gate);
- `mlmule_knowledge`: knowledge snapshots (`core/knowledge.py`: int8 probabilities on the key's
  proxy set, signed); the learner distils from its cache;
- `mlmule_both`: both;
- `fedcache_real` (reference, simulator only): knowledge on the producers' real samples, which
  travel with it (what FedCache's hashes relate), the freshest `REAL_CONTRIBUTORS` kept; the
  learner distils on those samples instead of the proxy set, so the difference to
  `mlmule_knowledge` is what the proxy set costs. Its bytes are FedCache's: up, fp16
  probabilities and a 32-byte hash per sample; down, one soft target per related sample.

An encounter moves signed containers between the product's hosts directly (the protocol's
control messages are the same for every method and are not counted): the learner (a space in
fixed-data mode, a phone in mobile-data mode) sends what it serves, the other side (the phone
carrying, or the space relaying) sends what it carries: the weights the last learner served
(adopted, as a mule does, only within its size) and its knowledge cache combined without the
receiver's own contribution, signed by it as one knowledge snapshot, as the product's peers
without labels offer it (`knowledge.combined_knowledge`, `core/knowledge_offers.py`; their own
model, which has learnt nothing or is the last learner's, adds nothing here). Knowledge is
cached per contributor; a learner's next round (right after new knowledge if its budget
allows, else nightly) is the product's `ModelHost.train` with its cache's distillation term
(`train_numpy.Distillation` at `DISTILL_WEIGHT`: the proxy rows as weighted rows): the
promotion rule judges the distilled run as a distillation first and falls back to the plain
run. `mlmule_knowledge_w05` distils at
half that weight, to measure the product's choice.
"""

from __future__ import annotations

import os

from .training import SINGLE_THREADED

for _name, _value in SINGLE_THREADED.items():
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from mlmule_core import families  # noqa: E402
from mlmule_core.features import FeatureSchema  # noqa: E402
from mlmule_core.host import DISTILL_WEIGHT, ModelHost, score  # noqa: E402
from mlmule_core.identity import Identity, TrustStore  # noqa: E402
from mlmule_core.knowledge import (  # noqa: E402
    DEFAULT_KNOWLEDGE_COMPRESSION,
    DEFAULT_PROXY_SIZE,
    KNOWLEDGE_COMPRESSIONS,
    Knowledge,
    KnowledgeCache,
    KnowledgeCompression,
    combined_knowledge,
    knowledge_of,
    proxy_set,
    seal_knowledge,
    unpack_knowledge,
)
from mlmule_core.promotion import HeldOut  # noqa: E402
from mlmule_core.train_numpy import Distillation, NumpyBackend, Trainer  # noqa: E402
from mlmule_world.config import stream  # noqa: E402

from .config import DAY, BenchConfig, Budget  # noqa: E402
from .data import Architecture, TaskData, Unit, build_task, build_world, held_out_start  # noqa: E402
from .methods import GUEST_GATE, PeerMethod, gate_evaluators  # noqa: E402
from .mobility import Visit, visits  # noqa: E402
from .peers import Peer, Population, TrainNeed, seeded_identity  # noqa: E402
from .results import spread, write_json  # noqa: E402
from .simulate import MethodRun, Simulation  # noqa: E402
from .training import LocalExecutor, Outcome  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
TASKS = ("occupancy", "phone_activity")
# setting -> (task, heterogeneous): the heterogeneous homes under the task's name, and the
# control where every home runs the default size on the world's own sensors
SETTINGS = {
    "occupancy": ("occupancy", True),
    "phone_activity": ("phone_activity", True),
    "occupancy_uniform": ("occupancy", False),
    "phone_activity_uniform": ("phone_activity", False),
}
METHODS = (
    "local",
    "mlmule_weights",
    "mlmule_knowledge",
    "mlmule_both",
    "mlmule_knowledge_fp16",
    "mlmule_knowledge_w05",
    "fedcache_real",
)
MODES = {
    "mlmule_weights": ("weights",),
    "mlmule_knowledge": ("knowledge",),
    "mlmule_both": ("weights", "knowledge"),
    "mlmule_knowledge_fp16": ("knowledge",),
    "mlmule_knowledge_w05": ("knowledge",),
    "fedcache_real": ("real",),
}
# method -> (proxy rows, compression) of its knowledge snapshots, where not the product's
# defaults (int8 on DEFAULT_PROXY_SIZE rows): the defaults before they were measured
OTHER_KNOWLEDGE_FORMAT: dict[str, tuple[int, KnowledgeCompression]] = {
    "mlmule_knowledge_fp16": (256, "fp16")
}
# method -> its distillation term's weight, where not the product's (`host.DISTILL_WEIGHT`)
OTHER_DISTILL_WEIGHT = {"mlmule_knowledge_w05": 0.5}
REAL_ROWS = DEFAULT_PROXY_SIZE  # fedcache_real: the real samples a producer's knowledge covers
REAL_CONTRIBUTORS = 4  # fedcache_real: the freshest contributors a peer keeps samples of
SCORED_MIN = 10  # fewer held-out samples: knowledge goes unscored
HASH_BYTES = 32  # fedcache_real: what relates one sample (FedCache sends a hash per sample)
# Reduced sensor sets: the roles such a home lacks, as the product's schemas express a missing
# role (its columns at the value the extractor gives an unavailable one).
MISSING = {
    "occupancy": {
        "illuminance_available": 0.0,
        "illuminance_log": float(np.log1p(50.0)),
        "co2_available": 0.0,
        "co2_ppm": 600.0,
        "co2_slope": 0.0,
        "power_available": 0.0,
        "power_above_baseline_log": 0.0,
        "media_available": 0.0,
        "media_playing": 0.0,
    },
    "phone_activity": {"gyro_energy": 0.0, "step_rate": 0.0},
}

# The default run: about 28 CPU-minutes (15-20 minutes on two idle cores, --jobs 2).
DEFAULT = BenchConfig(name="knowledge", homes=12, days=30, test_days=7, relays=False)
TINY = BenchConfig(
    name="knowledge-tiny",
    homes=4,
    days=6,
    test_days=2,
    group_size=2,
    visit_rate=6.0,
    seeds=(0,),
    room_kinds=("bedroom",),
    sample_minutes=15,
    budget=Budget(epochs=2, history_days=3.0, min_samples=10),
    exchange_cooldown_hours=2.0,
    relays=False,
)
# The learning benchmark's world (20 homes x 60 days, no relay places: this benchmark has none),
# to compare with its rows: about 9 minutes for phone_activity_uniform and four methods.
LEARNING_WORLD = BenchConfig(name="knowledge-learning-world", relays=False)
PRESETS = {"default": DEFAULT, "tiny": TINY, "learning_world": LEARNING_WORLD}

FloatArray = npt.NDArray[np.float32]


# --- the heterogeneous setting ------------------------------------------------------------------


def model_size_of_home(index: int) -> str:
    return "large" if index % 2 else "compact"


def reduced_sensors(index: int) -> bool:
    return index % 4 >= 2


@dataclass(frozen=True)
class Setting:
    """One task's data with every home's architecture and sensor set."""

    data: TaskData
    schema: FeatureSchema
    arch_of_home: dict[str, Architecture]
    size_of_home: dict[str, str]
    reduced_homes: frozenset[str]


def heterogeneous(
    config: BenchConfig, task: str, seed: int, *, mixed: bool = True
) -> tuple[Setting, list[Visit], Any]:
    """The task's homes with their sizes and sensor sets (`mixed`), or all of the default size
    on the world's own sensors."""
    world = build_world(config, seed)
    data = build_task(config, world, task, seed)
    (key,) = data.context_keys
    base = data.architectures[key]
    schema = base.schema
    archs: dict[str, Architecture] = {}
    for size in families.MODEL_SIZES:
        spec = families.preset_spec(size, task, schema, base.spec.labels)
        initial = families.init_weights(spec, stream(seed, "init", key, size), schema)
        archs[size] = Architecture(spec, schema, initial)
    sizes = {
        home.home_id: model_size_of_home(home.index) if mixed else families.DEFAULT_MODEL_SIZE
        for home in world.homes
    }
    reduced = frozenset(
        home.home_id for home in world.homes if mixed and reduced_sensors(home.index)
    )
    columns = missing_columns(schema, MISSING[task])
    units = tuple(mask(unit, columns) if unit.home in reduced else unit for unit in data.units)
    data = replace(data, units=units)
    setting = Setting(
        data, schema, {home: archs[size] for home, size in sizes.items()}, sizes, reduced
    )
    return setting, visits(config, world, data, held_out_start(config, world)), world


def missing_columns(schema: FeatureSchema, values: Mapping[str, float]) -> dict[int, float]:
    """Windowed column -> the value of a missing sensor (lag-major blocks of the features)."""
    n = len(schema.features)
    return {
        lag * n + schema.features.index(name): value
        for lag in range(len(schema.window))
        for name, value in values.items()
    }


def mask(unit: Unit, columns: Mapping[int, float]) -> Unit:
    x, x_test = unit.x.copy(), unit.x_test.copy()
    for column, value in columns.items():
        x[:, column] = value
        x_test[:, column] = value
    return replace(unit, x=x, x_test=x_test)


class HeteroPopulation(Population):
    """Each peer runs its home's model size (a phone its owner's)."""

    def __init__(self, *args: Any, arch_of_home: Mapping[str, Architecture], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.arch_of_home = dict(arch_of_home)

    def home_of(self, name: str) -> str:
        return self.phone_home.get(name) or name.split("/", 1)[0]

    def known_arch_of(self, name: str) -> dict[str, str]:
        arch = self.arch_of_home[self.home_of(name)]
        return {key: families.arch_hash(arch.spec, arch.schema) for key in self.architectures}

    def install(self, peer: Peer, context_key: str) -> None:
        arch = self.arch_of_home[self.home_of(peer.name)]
        model = families.build_onnx(arch.spec, arch.initial, arch.schema)
        peer.host.install(model, context_key=context_key, data_time=self.start, now=self.start)


# --- distillation --------------------------------------------------------------------------------


class KnowledgeExecutor(LocalExecutor):
    """Rounds in this process, as the learning benchmark runs them (`ModelHost.train`, with the
    learner's distillation term where it has one); the wall time of each round is recorded,
    plain and distilling apart."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {"train": [], "distil": []}

    def run(self, needs: Sequence[TrainNeed]) -> list[Outcome]:
        return [self._timed(need) for need in needs]

    def _timed(self, need: TrainNeed) -> Outcome:
        began = time.perf_counter()
        outcome = self._one(need)
        self.seconds["train" if need.distill is None else "distil"].append(
            time.perf_counter() - began
        )
        return outcome


# --- the methods ---------------------------------------------------------------------------------


@dataclass
class Carried:
    """What a non-learner (a phone in fixed-data mode, a space in mobile-data mode) holds for
    the learners it meets: a knowledge cache, and FedCache's real-sample entries."""

    cache: KnowledgeCache = field(default_factory=KnowledgeCache)
    real: dict[str, tuple[FloatArray, FloatArray, float]] = field(default_factory=dict)


class HeteroMethod(PeerMethod):
    """A method on the heterogeneous setting: hosts of each home's size, promotion rule on."""

    promotes = True
    # the product's guest gate on a space's labels (fixed-data mode), as the learning
    # benchmark's `mlmule`: weights only (knowledge is judged by the promotion rule alone)
    strategy_options = GUEST_GATE
    modes: tuple[str, ...] = ()

    def __init__(self, sim: Simulation, root: Path) -> None:
        super().__init__(sim, root)
        setting: Setting = sim.setting  # type: ignore[attr-defined]
        self.setting = setting
        self.population = HeteroPopulation(
            root,
            seed=sim.seed,
            start=sim.start,
            homes=sim.homes,
            phones=sim.phones,
            architectures=self.architectures,
            settings=self.population.settings,
            arch_of_home=setting.arch_of_home,
        )
        (self.key,) = sim.data.context_keys
        rows, self.compression = OTHER_KNOWLEDGE_FORMAT.get(
            self.name, (DEFAULT_PROXY_SIZE, DEFAULT_KNOWLEDGE_COMPRESSION)
        )
        self.proxy = proxy_set(setting.schema, size=rows)
        self.distill_weight = OTHER_DISTILL_WEIGHT.get(self.name, DISTILL_WEIGHT)
        self.units = {unit.learner: unit for unit in sim.data.units}
        self.learners = self.build_learners()
        # mobile-data mode: the spaces relay (and, with weights, merge) what phones bring
        self.relays: dict[str, Peer] = {}
        if not self.fixed:
            for site in sim.data.sites:
                self.relays[f"{site.home}/{site.space}"] = self.space(site)
        else:
            for phone in sim.phones:
                self.phone(phone, carry_initial=False)
        self.caches: dict[str, KnowledgeCache] = {}  # learner -> its knowledge cache
        self.carried: dict[str, Carried] = {}  # non-learner -> what it relays
        self.real: dict[str, dict[str, tuple[FloatArray, FloatArray, float]]] = {}
        self.knowledge_bytes: list[int] = []
        self.weights_bytes: list[int] = []
        self.versions: dict[str, int] = {}
        self.last_sent: dict[tuple[str, str], object] = {}  # (sender, receiver) -> what
        self.delivered: dict[str, set[bytes]] = {}  # peer -> hashes of snapshots it has had
        sim.distillation_for = self.distillation

    # -- what moves

    def on_visits(self, visits: Sequence[Visit]) -> None:
        if not self.modes:
            return
        self.sim.drive(self.encounter(visit) for visit in visits)

    def encounter(self, visit: Visit) -> Any:
        site_name = f"{visit.home}/{visit.space}"
        if self.fixed:
            learner = self.spaces.get(site_name)
            other = self.phones[visit.phone]
            unit = self.units.get(site_name)
        else:
            learner = self.phones.get(visit.phone)
            other = self.relays.get(site_name)
            unit = self.units.get(visit.phone)
        if learner is None or other is None or unit is None:
            return
        now = visit.time
        self.labels_before_training(learner, unit, now)
        moved = 0
        if "weights" in self.modes:
            moved += self.weights_in(learner, other, unit, now)
        moved += self.knowledge_in(learner, other, now)
        need = self.sim.need(learner, self.key, unit, now) if moved else None
        if need is not None:
            report = yield need
            del report
        if "weights" in self.modes:
            moved += self.weights_out(learner, other, now)
        moved += self.knowledge_out(learner, other, now)
        self.sim.ledger.encounters += 1
        self.sim.ledger.exchanges += moved > 0

    def labels_before_training(self, learner: Peer, unit: Unit, now: float) -> None:
        """As the learning benchmark: a host that has not trained (nor distilled) yet judges a
        merge on every labelled sample it holds."""
        if learner.host.counters["trained"] or learner.host.counters["distilled"]:
            return
        x, y, _ = unit.window(now, self.sim.history)
        if y.size:
            learner.host.hold_out(self.key, HeldOut.of(x, y))

    def _moved(self, payload: bytes | int, sizes: list[int]) -> int:
        size = payload if isinstance(payload, int) else len(payload)
        sizes.append(size)
        self.sim.ledger.bytes_moved += size
        self.sim.ledger.chunk_bytes += size
        self.sim.ledger.transfers += 1
        return 1

    def fresh(self, receiver: Peer, payload: bytes) -> bool:
        """Whether `receiver` lacks this snapshot: the offer names its hash, and a snapshot
        a peer has had is not fetched again (the protocol's idempotency)."""
        digest = hashlib.sha256(payload).digest()
        seen = self.delivered.setdefault(receiver.name, set())
        if digest in seen:
            return False
        seen.add(digest)
        return True

    def same_size(self, a: Peer, b: Peer) -> bool:
        return a.host.expected_arch().get(self.key) == b.host.expected_arch().get(self.key)

    def weights_in(self, learner: Peer, other: Peer, unit: Unit, now: float) -> int:
        """The other side's weights, merged by the learner: only within a model size (the
        offer names the architecture, so nothing else is fetched); a space gates a guest's on
        its labels."""
        if not other.host.has(self.key) or not self.same_size(learner, other):
            return 0
        payload = other.host.export(self.key)
        if not self.fresh(learner, payload):
            return 0
        outcome = learner.host.receive(
            payload,
            now=now,
            guest=other.home != learner.home,
            evaluators=gate_evaluators(learner, unit, now, self.sim.history)
            if self.fixed
            else None,
        )
        if not outcome.accepted and outcome.reason not in {"unchanged", "held_before"}:
            self.sim.ledger.reject(outcome.reason)
        return self._moved(payload, self.weights_bytes)

    def weights_out(self, learner: Peer, other: Peer, now: float) -> int:
        """The learner's model to the other side: a phone adopts it (its size only), a relay
        space merges it."""
        if not self.same_size(learner, other):
            return 0
        payload = learner.host.export(self.key)
        if not self.fresh(other, payload):
            return 0
        if self.fixed:
            outcome = other.host.adopt(payload, now=now)
        else:
            outcome = other.host.receive(payload, now=now, guest=other.home != learner.home)
        if not outcome.accepted and outcome.reason not in {"unchanged", "held_before"}:
            self.sim.ledger.reject(outcome.reason)
        return self._moved(payload, self.weights_bytes)

    def carried_of(self, peer: Peer) -> Carried:
        return self.carried.setdefault(peer.name, Carried())

    def cache_of(self, peer: Peer) -> KnowledgeCache:
        return self.caches.setdefault(peer.name, KnowledgeCache())

    def knowledge_in(self, learner: Peer, other: Peer, now: float) -> int:
        """The ensemble the other side carries, as one knowledge snapshot it signs, into the
        learner's cache (FedCache reference: the real-sample entries it carries)."""
        carried = self.carried_of(other)
        own = learner.host.identity.id
        if "real" in self.modes:
            entries = [v for k, v in carried.real.items() if k != own]
            state = tuple(sorted((k, v[2]) for k, v in carried.real.items() if k != own))
            if not entries or self.last_sent.get((other.name, learner.name)) == state:
                return 0
            self.last_sent[(other.name, learner.name)] = state
            held = self.real.setdefault(learner.name, {})
            for contributor, entry in carried.real.items():
                if contributor != own:
                    held[contributor] = entry
            freshest(held)
            # FedCache hands a device one soft target per sample of its own it relates
            n_outputs = entries[0][1].shape[1]
            return self._moved(REAL_ROWS * n_outputs * 2, self.knowledge_bytes)
        if "knowledge" not in self.modes:
            return 0
        entries = [e for e in carried.cache.entries(self.key) if e.contributor != own]
        state = tuple(sorted((e.contributor, e.knowledge.trained_at) for e in entries))
        if not entries or self.last_sent.get((other.name, learner.name)) == state:
            return 0  # nothing the learner has not had from this peer
        self.last_sent[(other.name, learner.name)] = state
        knowledge = combined_knowledge(entries, now=now)
        assert knowledge is not None
        container = self.seal(other, knowledge, now)
        self._moved(container, self.knowledge_bytes)
        snapshot = unpack_knowledge(
            container,
            trust=learner.host.trust,
            expected_proxy={self.key: self.proxy.id},
            now=now,
        )
        self.cache_of(learner).add(snapshot.contributor, snapshot.knowledge, received_at=now)
        return 1

    def knowledge_out(self, learner: Peer, other: Peer, now: float) -> int:
        """The learner's own knowledge (its served model on the proxy set), signed, into the
        other side's cache, which relays it."""
        slot = learner.host.slot(self.key)
        if self.last_sent.get((learner.name, other.name)) == slot.version:
            return 0  # the other side holds this model's knowledge already
        if "real" in self.modes:
            self.last_sent[(learner.name, other.name)] = slot.version
            unit = self.units[learner.name]
            x, _, _ = unit.window(now, self.sim.history)
            if not len(x):
                return 0
            rows = x[-REAL_ROWS:]
            p = families.forward(slot.spec, slot.weights, rows)
            carried = self.carried_of(other).real
            carried[learner.host.identity.id] = (rows, p, now)
            freshest(carried)
            return self._moved(real_bytes(rows, p), self.knowledge_bytes)
        if "knowledge" not in self.modes:
            return 0
        self.last_sent[(learner.name, other.name)] = slot.version
        window = learner.host.window(self.key)
        knowledge = knowledge_of(
            slot.spec,
            slot.weights,
            slot.schema,
            self.key,
            samples=slot.meta.samples,
            # its own held-out score, as the product's host states it
            score=(
                score(slot.spec, slot.weights, window.x, window.y)
                if window is not None and window.y.size >= SCORED_MIN
                else None
            ),
            trained_at=slot.meta.trained_at or slot.meta.created_at,
            proxy=self.proxy,
        )
        container = self.seal(learner, knowledge, now)
        self._moved(container, self.knowledge_bytes)
        snapshot = unpack_knowledge(
            container, trust=other.host.trust, expected_proxy={self.key: self.proxy.id}, now=now
        )
        self.carried_of(other).cache.add(snapshot.contributor, snapshot.knowledge, received_at=now)
        return 1

    def seal(self, peer: Peer, knowledge: Knowledge, now: float) -> bytes:
        version = self.versions.get(peer.name, 0) + 1
        self.versions[peer.name] = version
        return seal_knowledge(
            knowledge,
            peer.host.identity,
            version=version,
            created_at=now,
            compression=self.compression,
        )

    # -- distillation

    def distillation(self, learner: Peer, key: str, now: float) -> Distillation | None:
        """What a learner's round distils towards: its cache's ensemble on the proxy set (the
        FedCache reference: the real samples it holds, with their producers' predictions)."""
        if "real" in self.modes:
            entries = self.real.get(learner.name)
            if not entries:
                return None
            x = np.concatenate([e[0] for e in entries.values()])
            p = np.concatenate([e[1] for e in entries.values()])
            return Distillation(x, p, self.distill_weight)
        cache = self.caches.get(learner.name)
        ensemble = (
            cache.ensemble(key, now=now, exclude=frozenset({learner.host.identity.id}))
            if cache is not None
            else None
        )
        return (
            None if ensemble is None else Distillation(self.proxy.x, ensemble, self.distill_weight)
        )

    def on_period_end(self, now: float) -> None:
        self.train_leftovers(now)

    def details(self) -> dict[str, object]:
        details = super().details()
        details["knowledge_container_bytes"] = _median(self.knowledge_bytes)
        details["weights_container_bytes"] = _median(self.weights_bytes)
        return details


def freshest(entries: dict[str, tuple[FloatArray, FloatArray, float]]) -> None:
    """Keep the `REAL_CONTRIBUTORS` freshest contributors' real-sample entries."""
    for contributor in sorted(entries, key=lambda name: entries[name][2])[:-REAL_CONTRIBUTORS]:
        del entries[contributor]


def real_bytes(x: FloatArray, p: FloatArray) -> int:
    """What FedCache uploads for these samples: fp16 probabilities and a hash per sample."""
    return int(p.size * 2 + len(x) * HASH_BYTES)


def _median(values: Sequence[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def method_class(name: str) -> type[HeteroMethod]:
    return type(name, (HeteroMethod,), {"name": name, "modes": MODES.get(name, ())})


# --- a run ---------------------------------------------------------------------------------------


def run_setting(
    config: BenchConfig, name: str, seed: int, methods: Sequence[str]
) -> dict[str, Any]:
    """Every method on one setting and seed, from the same world, homes and contacts."""
    task, mixed = SETTINGS[name]
    setting, visit_list, world = heterogeneous(config, task, seed, mixed=mixed)
    executor = KnowledgeExecutor()
    simulation = Simulation(
        config,
        setting.data,
        seed=seed,
        start=world.start,
        end=held_out_start(config, world),
        homes=[home.home_id for home in world.homes],
        phones={person.phone_id: person.home_id for person in world.people},
        visits=visit_list,
        meetings=[],
        executor=executor,
    )
    simulation.setting = setting  # type: ignore[attr-defined]
    runs = {}
    for method in methods:
        executor.seconds = {"train": [], "distil": []}
        run: MethodRun = simulation.run(method_class(method))
        runs[method] = {
            "final": run.final,
            "regressions": run.regressions,
            "model_changes": run.model_changes,
            "ledger": run.ledger.as_dict(),
            "round_seconds": {kind: _median(values) for kind, values in executor.seconds.items()},
            "rounds": {kind: len(values) for kind, values in executor.seconds.items()},
            "details": run.details,
            "wall_seconds": run.wall_seconds,
            "final_by_size": {
                size: float(np.mean(scores))
                for size in families.MODEL_SIZES
                if (
                    scores := [
                        v
                        for unit_id, v in run.final_units.items()
                        if setting.size_of_home[unit_home(setting, unit_id)] == size
                    ]
                )
            },
        }
    return {"setting": name, "seed": seed, "units": len(setting.data.units), "runs": runs}


def unit_home(setting: Setting, unit_id: str) -> str:
    return next(unit.home for unit in setting.data.units if unit.unit_id == unit_id)


def _run_pair(args: tuple[dict[str, Any], str, int, tuple[str, ...]]) -> dict[str, Any]:
    logging.getLogger("mlmule_core").setLevel(logging.ERROR)
    document, name, seed, methods = args
    return run_setting(BenchConfig.from_json(document), name, seed, methods)


# --- distillation time, HA side (numpy) and phone side (torch) ---------------------------------


def distillation_times(config: BenchConfig, seed: int, repeats: int = 3) -> dict[str, Any]:
    """One distillation round per task and model size on a learner's full training window,
    towards a peer's knowledge on the proxy set, with the product's trainer: numpy (what HA
    runs) and torch (the companion's `TorchBackend`, when torch is installed).
    Median seconds of `repeats`."""
    try:
        from mlmule_models.train import TorchBackend  # noqa: PLC0415
    except ImportError:
        TorchBackend = None  # noqa: N806
    times: dict[str, Any] = {"torch_available": TorchBackend is not None}
    for task in TASKS:
        setting, _, world = heterogeneous(config, task, seed)
        unit = max(setting.data.units, key=lambda u: u.y.size)
        x, y, _ = unit.window(held_out_start(config, world), config.budget.history_days * DAY)
        proxy = proxy_set(setting.schema)
        train_config = config.budget.train_config(seed)
        for size in families.MODEL_SIZES:
            arch = next(
                a for h, a in setting.arch_of_home.items() if setting.size_of_home[h] == size
            )
            distill = Distillation(
                proxy.x, families.forward(arch.spec, arch.initial, proxy.x), DISTILL_WEIGHT
            )
            entry: dict[str, Any] = {"samples": int(y.size), "proxy": proxy.size}
            for label, backend in (("numpy", NumpyBackend), ("torch", TorchBackend)):
                if backend is None:
                    entry[label] = None
                    continue
                seconds = []
                for _ in range(repeats):
                    began = time.perf_counter()
                    Trainer(
                        arch.spec,
                        arch.initial,
                        x,
                        y,
                        train_config,
                        distill=distill,
                        backend=backend,
                    ).result()
                    seconds.append(time.perf_counter() - began)
                entry[label] = statistics.median(seconds)
            times[f"{task}/{size}"] = entry
    return times


# --- snapshot sizes -----------------------------------------------------------------------------


def snapshot_sizes(config: BenchConfig, seed: int) -> dict[str, Any]:
    """Bytes of one signed snapshot per task: the weights of each model size, as a host
    exports them (uncompressed, the product's default, and fp16/int8), and one knowledge
    snapshot (int8, the default, and fp16) on the key's proxy set, and on proxy sets of other
    sizes."""
    sizes: dict[str, Any] = {}
    identity = seeded_identity(seed, "space", "sizes")
    for task in TASKS:
        setting, _, world = heterogeneous(config, task, seed)
        (key,) = setting.data.context_keys
        entry: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as root:
            for size in families.MODEL_SIZES:
                arch = next(
                    a for h, a in setting.arch_of_home.items() if setting.size_of_home[h] == size
                )
                host = ModelHost(Path(root) / size, identity, TrustStore())
                model = families.build_onnx(arch.spec, arch.initial, arch.schema)
                host.install(model, context_key=key, data_time=world.start, now=world.start)
                entry[size] = {
                    "weights": len(host.export(key, compression="none")),
                    "weights_fp16": len(host.export(key, compression="fp16")),
                    "weights_int8": len(host.export(key, compression="int8")),
                    "parameters": int(sum(v.size for v in arch.initial.values())),
                }
            # knowledge of the largest size's starting model
            entry["knowledge"] = {
                compression: _knowledge_bytes(
                    arch,
                    key,
                    identity,
                    world.start,
                    compression=compression,
                    rows=DEFAULT_PROXY_SIZE,
                )
                for compression in KNOWLEDGE_COMPRESSIONS
            }
            entry["knowledge_by_proxy_size"] = {
                compression: {
                    str(rows): _knowledge_bytes(
                        arch, key, identity, world.start, compression=compression, rows=rows
                    )
                    for rows in (64, 128, 256)
                }
                for compression in KNOWLEDGE_COMPRESSIONS
            }
        sizes[task] = entry
    return sizes


def _knowledge_bytes(
    arch: Architecture,
    key: str,
    identity: Identity,
    at: float,
    *,
    compression: KnowledgeCompression,
    rows: int,
) -> int:
    """Bytes of one signed knowledge snapshot of `arch`'s starting model on `rows` proxy rows."""
    knowledge = knowledge_of(
        arch.spec,
        arch.initial,
        arch.schema,
        key,
        samples=0,
        score=None,
        trained_at=at,
        proxy=proxy_set(arch.schema, size=rows),
    )
    return len(
        seal_knowledge(knowledge, identity, version=1, created_at=at, compression=compression)
    )


# --- the document --------------------------------------------------------------------------------


def summarise(
    config: BenchConfig, pairs: Sequence[Mapping[str, Any]], methods: Sequence[str]
) -> dict[str, Any]:
    per_method: dict[str, dict[str, Any]] = {}
    for method in methods:
        per_method[method] = {}
        for task in SETTINGS:
            runs = [p["runs"][method] for p in pairs if p["setting"] == task]
            if not runs:
                continue
            exchanges = [r["ledger"]["exchanges"] for r in runs]
            moved = [r["ledger"]["bytes_moved"] for r in runs]
            per_method[method][task] = {
                "final": spread([r["final"] for r in runs]),
                "final_by_size": {
                    size: spread([r["final_by_size"][size] for r in runs])
                    for size in families.MODEL_SIZES
                    if size in runs[0]["final_by_size"]
                },
                "regressions": spread([r["regressions"] for r in runs]),
                "model_changes": spread([r["model_changes"] for r in runs]),
                "bytes_moved": spread(moved),
                "exchanges": spread(exchanges),
                "bytes_per_exchange": spread(
                    [m / e if e else 0.0 for m, e in zip(moved, exchanges, strict=True)]
                ),
                "container_bytes": {
                    kind: _median(
                        [v for r in runs if (v := r["details"][f"{kind}_container_bytes"])]
                    )
                    for kind in ("weights", "knowledge")
                },
                "round_seconds": {
                    kind: _median([v for r in runs if (v := r["round_seconds"][kind])])
                    for kind in ("train", "distil")
                },
                "rounds": {
                    kind: spread([r["rounds"][kind] for r in runs]) for kind in ("train", "distil")
                },
                "promotions": _sum_counts([r["details"]["promotions"] for r in runs]),
                "rejected": _sum_counts([r["ledger"]["rejected"] for r in runs]),
                "wall_seconds": spread([r["wall_seconds"] for r in runs]),
            }
    return {
        "schema": "mlmule-bench-knowledge/1",
        "generated_by": "python -m mlmule_bench.knowledge",
        "config": config.to_json(),
        "setting": {
            "model_size": "compact in even homes, large in odd ones (families.FAMILY_PRESETS)",
            "reduced_sensors": "homes with index % 4 in {2, 3}",
            "missing_features": {task: sorted(MISSING[task]) for task in TASKS},
            "uniform": "<task>_uniform: every home compact, the world's own sensors (control)",
            "distill_weight": DISTILL_WEIGHT,
            "distill_weight_variants": OTHER_DISTILL_WEIGHT,
        },
        "seeds": list(config.seeds),
        "metric": {
            name: {"occupancy": "balanced accuracy", "phone_activity": "macro F1"}[task]
            for name, (task, _) in SETTINGS.items()
        },
        "per_method": per_method,
        "headline": headline(per_method),
    }


def _sum_counts(counts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for name, value in count.items():
            total[name] = total.get(name, 0) + value
    return dict(sorted(total.items()))


def headline(per_method: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """FedCache's claim on our data: knowledge against weights, bytes per exchange and final."""
    out: dict[str, Any] = {}
    weights, knowledge = (
        per_method.get("mlmule_weights", {}),
        per_method.get("mlmule_knowledge", {}),
    )
    for task in SETTINGS:
        if task not in weights or task not in knowledge:
            continue
        w, k = weights[task], knowledge[task]
        w_bpe, k_bpe = w["bytes_per_exchange"]["median"], k["bytes_per_exchange"]["median"]
        w_box, k_box = w["container_bytes"]["weights"], k["container_bytes"]["knowledge"]
        out[task] = {
            "bytes_per_exchange_ratio": w_bpe / k_bpe if k_bpe else None,
            "snapshot_ratio": w_box / k_box if w_box and k_box else None,
            "final_weights": w["final"]["median"],
            "final_knowledge": k["final"]["median"],
            "final_local": per_method.get("local", {}).get(task, {}).get("final", {}).get("median"),
        }
    return out


def markdown_tables(document: Mapping[str, Any]) -> str:
    """The README's tables of a knowledge.json."""
    lines: list[str] = []
    for task in SETTINGS:
        if not any(task in by_setting for by_setting in document["per_method"].values()):
            continue
        metric = document["metric"][task]
        lines += [
            f"| {task} ({metric}) | final | compact homes | large homes | regressions "
            "| bytes per exchange | MB moved | distilling rounds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, by_setting in document["per_method"].items():
            entry = by_setting.get(task)
            if entry is None:
                continue
            final = entry["final"]
            sizes = {
                size: f"{entry['final_by_size'][size]['median']:.3f}"
                if size in entry["final_by_size"]
                else "-"
                for size in families.MODEL_SIZES
            }
            lines.append(
                f"| {method} | {final['median']:.3f} [{final['min']:.3f}-{final['max']:.3f}] "
                f"| {sizes['compact']} | {sizes['large']} "
                f"| {entry['regressions']['median']:.0f} of "
                f"{entry['model_changes']['median']:.0f} "
                f"| {entry['bytes_per_exchange']['median']:.0f} "
                f"| {entry['bytes_moved']['median'] / 1e6:.2f} "
                f"| {entry['rounds']['distil']['median']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger("mlmule_core").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(
        prog="python -m mlmule_bench.knowledge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default="default", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, action="append", dest="seeds")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=", ".join(SETTINGS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "knowledge.json")
    parser.add_argument("--table", action="store_true", help="print --out's tables, run nothing")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_tables(json.loads(args.out.read_text(encoding="utf-8"))))
        return 0
    config = PRESETS[args.config]
    if args.seeds:
        config = replace(config, seeds=tuple(args.seeds))
    tasks = [t for t in args.settings.split(",") if t]
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = sorted({*tasks} - set(SETTINGS)) + sorted({*methods} - set(METHODS))
    if unknown:
        parser.error(f"unknown settings or methods {unknown}")
    began = time.perf_counter()
    jobs = [(config.to_json(), task, seed, methods) for task in tasks for seed in config.seeds]
    if args.jobs > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            pairs = list(pool.map(_run_pair, jobs))
    else:
        pairs = [_run_pair(job) for job in jobs]
    document = summarise(config, pairs, methods)
    document["distillation_seconds"] = distillation_times(config, config.seeds[0])
    document["snapshot_bytes"] = snapshot_sizes(config, config.seeds[0])
    document["runs"] = pairs
    document["wall_seconds"] = time.perf_counter() - began
    write_json(args.out, document)
    print(json.dumps(document["headline"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
