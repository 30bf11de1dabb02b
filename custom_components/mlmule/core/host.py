"""A model host: the snapshots one peer keeps, and everything it does with them.

A space (in Home Assistant), a mule (the phone companion) and every peer of the benchmark's
simulator are model hosts. A host keeps one current model per context key in a versioned store,
predicts with it, trains it warm-started on its own data, merges snapshots it receives with its
aggregation strategy, and exports its current model as a snapshot signed by its own identity.

Every snapshot that arrives is verified (`snapshot.unpack`: signature, trust, limits, architecture,
replay, staleness) before the strategy sees it; a rejection is counted by reason and leaves the
current model exactly as it was. Every new version is written to the store before it becomes
current, so a crash never loses or corrupts a model.

Every change to a served model (training, a merge, an adopt, an import) is a challenger that the
promotion rule (`core/promotion.py`) judges against the current model on the host's held-out
window before it is written; the decision is logged, counted and kept for `status()`.

One lock per host serialises every change to a slot, the store and the host's state, so a version
check and the write it guards are atomic together: executor jobs (a merge, a training commit, an
export, a rollback) may call a host from several threads at once. Only training itself, the slow
part, runs outside the lock, and its commit finds out whether the model moved meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import families
from .blas import pin_blas_threads
from .errors import MlmuleError, SnapshotError
from .families import FamilySpec
from .features import FeatureSchema
from .identity import Identity, Verifier
from .knowledge import (
    DEFAULT_KNOWLEDGE_COMPRESSION,
    KnowledgeCache,
    KnowledgeCompression,
    KnowledgeSnapshot,
    knowledge_of,
    proxy_set,
    seal_knowledge,
    unpack_knowledge,
)
from .metrics import balanced_accuracy, macro_f1
from .onnx import OnnxModel, Session, create_session
from .promotion import Change, HeldOut, PromotionDecision, PromotionRule, split_holdout
from .protocol import SnapshotInfo
from .snapshot import (
    DEFAULT_LIMITS,
    Compression,
    ReplayGuard,
    Snapshot,
    SnapshotHeader,
    SnapshotLimits,
    SnapshotMeta,
    pack,
    seal,
    source_extra,
    unpack,
)
from .storage import atomic_write_text
from .store import SnapshotStore, StoreError
from .strategies import (
    AggregationContext,
    AggregationResult,
    ModelState,
    Strategy,
    make_strategy,
    merged_state,
)
from .train_numpy import (
    BackendFactory,
    Distillation,
    NumpyBackend,
    TrainConfig,
    Trainer,
    TrainReport,
)
from .weights import FloatArray, Weights, weights_digest

_LOGGER = logging.getLogger(__name__)
HOST_STATE_FILE = "host.json"
HOST_STATE_VERSION = 1
KNOWLEDGE_FILE = "knowledge.json"
# Outcomes of received knowledge that changes no model: kept in the cache for later
# distillations (no labels here, or the caller distils in chunks), or not newer than the cached.
CACHED = "cached"
# How many of its own past models per context key a host recognises when they come back.
HELD_DIGESTS = 32
# Outcomes of a host's own model coming back: its current one, or one it has since replaced.
UNCHANGED = "unchanged"
HELD_BEFORE = "held_before"
# the distillation term's weight against the labelled loss (train_numpy.Distillation)
DISTILL_WEIGHT = 1.0


class HostError(MlmuleError):
    """An operation on a context key this host does not serve, or has no model for."""

    reason = "host"


@dataclass(frozen=True)
class HostSettings:
    """How a host stores, merges and bounds what it keeps."""

    keep_versions: int = 5
    max_store_bytes: int | None = None
    strategy: str = "mlmule"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    limits: SnapshotLimits = DEFAULT_LIMITS
    # a hard ceiling on data age; the strategy's adaptive filter decides below it
    max_age_seconds: float | None = 90 * 86400.0
    compression: Compression = "none"
    backend: str = "auto"
    max_lineage: int = 64
    # which of the signer's models this host keeps: several spaces of one home sign with the
    # home's key, so their versions are told apart by source (the space id)
    source: str = ""
    # "now" for data and model times (a replay's scene clock in a sped-up demo); protocol
    # timers stay on the wall clock
    clock: Callable[[], float] = time.time
    # judges every challenger against the served model
    promotion: PromotionRule = field(default_factory=PromotionRule)


@dataclass(frozen=True)
class Outcome:
    """What became of one received snapshot."""

    accepted: bool
    reason: str
    context_key: str | None = None
    origin: str | None = None
    received_version: int | None = None
    version: int | None = None  # the host's version after the merge
    weight: float = 0.0
    sha256: str = ""
    detail: str = ""  # the human explanation, for logs
    decision: PromotionDecision | None = None  # the promotion rule's, when it judged a change

    @property
    def changed(self) -> bool:
        """Whether the host's model changed (not rejected, and not its own model back)."""
        return self.accepted and self.reason not in {UNCHANGED, HELD_BEFORE}


@dataclass
class ModelSlot:
    """The current model of one context key, decoded, with its inference session."""

    snapshot: Snapshot
    container: bytes
    spec: FamilySpec
    schema: FeatureSchema
    weights: Weights
    backend: str = "auto"
    _session: Session | None = None

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, container: bytes, backend: str) -> ModelSlot:
        # a received or sealed snapshot was read back canonically already: no second decode
        canonical = snapshot.canonical or families.from_onnx(snapshot.model)
        spec, schema, weights = canonical
        return cls(snapshot, container, spec, schema, weights, backend)

    @property
    def meta(self) -> SnapshotMeta:
        return self.snapshot.meta

    @property
    def context_key(self) -> str:
        return self.snapshot.meta.context_key

    @property
    def version(self) -> int:
        return self.snapshot.meta.version

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = create_session(self.snapshot.model, self.backend)
        return self._session

    def predict(self, features: npt.ArrayLike) -> FloatArray:
        """Class probabilities for raw (unnormalised) feature rows: [N, 1] binary, else [N, K]."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.spec.n_inputs:
            raise HostError(f"{self.context_key} expects [N, {self.spec.n_inputs}] features")
        pin_blas_threads()
        outputs = self.session.run({families.INPUT_NAME: x})
        return np.asarray(outputs[families.OUTPUT_NAME], dtype=np.float32)

    def offer(self) -> SnapshotInfo:
        """How the encounter protocol describes this slot's stored container."""
        return SnapshotInfo(
            context_key=self.context_key,
            version=self.version,
            sha256=self.snapshot.sha256,
            size=len(self.container),
            arch=self.meta.arch_hash,
            data_time=int(self.meta.data_time),
        )

    def state(self, *, guest: bool = False) -> ModelState:
        meta = self.meta
        return ModelState(
            weights=self.weights,
            created_at=meta.created_at,
            data_time=meta.data_time,
            samples=meta.samples,
            version=meta.version,
            origin=self.snapshot.origin,
            lineage=meta.lineage,
            guest=guest,
            trained_at=meta.trained_at,
        )


def saved_promotions(root: Path) -> tuple[dict[str, int], dict[str, PromotionDecision]]:
    """The promotion verdict counts and last decision per key that the host under `root` saved:
    read-only, for a status shown while the host runs elsewhere."""
    try:
        document = json.loads((root / HOST_STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}, {}
    if not isinstance(document, dict) or document.get("version") != HOST_STATE_VERSION:
        return {}, {}
    counts = document.get("promotions", {})
    valid = isinstance(counts, dict)
    return ({str(k): int(v) for k, v in counts.items()} if valid else {}), _decisions(document)


def _decisions(document: dict[str, Any]) -> dict[str, PromotionDecision]:
    decisions: dict[str, PromotionDecision] = {}
    raw = document.get("decisions", {})
    if isinstance(raw, dict):
        for key, entry in raw.items():
            # a damaged entry is a lost line of status, never a reason not to load the models
            with contextlib.suppress(KeyError, TypeError, ValueError):
                decisions[str(key)] = PromotionDecision.from_dict(str(key), entry)
    return decisions


def predicted(
    spec: FamilySpec, weights: Mapping[str, FloatArray], x: FloatArray
) -> npt.NDArray[np.int64]:
    """The classes `weights` predict for `x`."""
    pin_blas_threads()
    return families.predict_classes(spec, families.forward(spec, weights, x))


def score(spec: FamilySpec, weights: Mapping[str, FloatArray], x: FloatArray, y: Any) -> float:
    """The task's held-out score: balanced accuracy (binary) or macro-F1 (multi-class)."""
    classes = predicted(spec, weights, x)
    labels = np.asarray(y, dtype=np.int64)
    return balanced_accuracy(labels, classes) if spec.binary else macro_f1(labels, classes)


@dataclass(frozen=True)
class FineTuning:
    """A second run of a training, started from a merge the promotion rule refused
    (`PromotionRule.fine_tune_refused`): `start` is that merge, with its metadata."""

    start: ModelState
    trainer: Trainer


class TrainingJob:
    """A warm-started training run that advances in bounded chunks and commits once at the end."""

    def __init__(
        self,
        host: ModelHost,
        context_key: str,
        trainer: Trainer,
        *,
        samples: int,
        data_time: float,
        window: HeldOut | None = None,
        labelled: HeldOut | None = None,
        change: Change = Change.TRAINING,
        fine_tuning: FineTuning | None = None,
        distilling: Trainer | None = None,
    ) -> None:
        """`window`: the latest labelled samples, kept out of `trainer`'s data, on which the
        promotion rule judges the result (`promotion.split_holdout`); `labelled`: every
        labelled sample of the run, window included, on which later merges are judged (see
        `ModelHost.hold_out`). `change`: training, or distillation (`start_distillation`).
        `fine_tuning`: the same training from a refused merge, run after `trainer` (see
        `commit`). `distilling`: the same training with a distillation term, from the served
        model, judged as a distillation before `trainer` (see `commit`)."""
        self._host = host
        self.change = change
        self.context_key = context_key
        self._trainer = trainer
        self._samples = samples
        self._data_time = data_time
        self._window = window
        self._labelled = labelled
        self._fine_tuning = fine_tuning
        self._distilling = distilling
        self._base_version = host.slot(context_key).version
        self.decision: PromotionDecision | None = None

    @property
    def trainers(self) -> tuple[Trainer, ...]:
        """The runs of this job, in the order they train."""
        tuning = () if self._fine_tuning is None else (self._fine_tuning.trainer,)
        distilling = () if self._distilling is None else (self._distilling,)
        return (self._trainer, *tuning, *distilling)

    @property
    def steps(self) -> int:
        return sum(trainer.steps for trainer in self.trainers)

    def run(self, *, max_seconds: float | None = None, max_steps: int | None = None) -> bool:
        """Train for at most this long; returns True when training is finished."""
        for trainer in self.trainers:
            if not trainer.done:
                trainer.run(max_seconds=max_seconds, max_steps=max_steps)
                break
        return all(trainer.done for trainer in self.trainers)

    def commit(self, *, now: float | None = None) -> TrainReport:
        """Finish training, and store the result as the host's next version if the promotion
        rule serves it (`decision` says what it decided). With a fine-tuned refused merge, that
        one is judged first and the plain training only if it is refused: the merge carries
        what the host's window cannot show, and the plain run keeps the host learning. A
        distilling run is judged next, as a distillation: knowledge never costs the host its
        own training either."""
        host = self._host
        with host.lock:
            slot = host.slot(self.context_key)
            if slot.version != self._base_version:
                # a merge landed while training ran: keep the merge, train again next time
                raise HostError(
                    f"{self.context_key} changed during training (v{self._base_version} -> "
                    f"v{slot.version}); the result was discarded",
                    reason="superseded",
                )
            now = host.settings.clock() if now is None else now
            if self._window is not None:
                host.hold_out(self.context_key, self._window, labelled=self._labelled)
            host.counters["distilled" if self.change is Change.DISTILL else "trained"] += 1
            runs = [(slot.state(), self._trainer, self.change)]
            if self._distilling is not None:
                host.counters["distilled"] += 1
                runs.insert(0, (slot.state(), self._distilling, Change.DISTILL))
            if self._fine_tuning is not None:
                runs.insert(0, (self._fine_tuning.start, self._fine_tuning.trainer, self.change))
            for start, trainer, change in runs:
                weights, report = trainer.result()
                self.decision = host.judge(self.context_key, change, weights, now=now)
                if self.decision.served:
                    if self._fine_tuning is not None and trainer is self._fine_tuning.trainer:
                        host.counters["fine_tuned_merges"] += 1
                    host.commit(
                        self.context_key,
                        ModelState(
                            weights=weights,
                            created_at=now,
                            data_time=max(start.data_time, self._data_time),
                            # the window overlaps what the model already learned from: see
                            # merged_state
                            samples=max(start.samples, self._samples),
                            version=slot.version + 1,
                            origin=host.identity.id,
                            lineage=(*start.lineage, host.identity.id),
                            trained_at=now,
                        ),
                    )
                    break
            host.save_state()
        return report


class ModelHost:
    """The models one peer keeps, under `root`, signed with its `identity`."""

    def __init__(
        self,
        root: Path,
        identity: Identity,
        trust: Verifier,
        settings: HostSettings | None = None,
        *,
        known_arch: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        # architectures of context keys this host may start carrying (the starter models')
        self.known_arch = dict(known_arch or {})
        self.identity = identity
        self.trust = trust
        self.settings = settings or HostSettings()
        self.store = SnapshotStore(
            root / "snapshots",
            keep_versions=self.settings.keep_versions,
            max_bytes=self.settings.max_store_bytes,
        )
        self.replay_guard = ReplayGuard(root / "replay.json")
        # every change to a slot, the store and the state below holds it (reentrant: a merge
        # writes through `commit`)
        self.lock = threading.RLock()
        self.counters: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        # promotion verdicts by reason, and the last decision per context key
        self.promotions: Counter[str] = Counter()
        self.decisions: dict[str, PromotionDecision] = {}
        self.last_outcomes: list[Outcome] = []
        # per context key: the latest labelled samples that the served model's training did not
        # see, and every labelled sample of that training (see `hold_out`)
        self._windows: dict[str, HeldOut] = {}
        self._labelled: dict[str, HeldOut] = {}
        self._slots: dict[str, ModelSlot] = {}
        self._strategies: dict[str, Strategy] = {}
        self._strategy_state: dict[str, object] = {}
        # digests of the models this host held lately, per context key, the current one last
        self._held: dict[str, deque[str]] = {}
        # per context key: the latest merge the promotion rule refused, which the next training
        # also fine-tunes (PromotionRule.fine_tune_refused)
        self._refused: dict[str, ModelState] = {}
        # the latest knowledge of each contributor per context key (receive_knowledge)
        self.knowledge = KnowledgeCache(root / KNOWLEDGE_FILE)
        self._load_state()
        if self.knowledge.corrupt is not None:
            self.counters["knowledge_cache_corrupt"] += 1
        for context_key in self.store.context_keys():
            self._load_slot(context_key)

    # ---- what is served

    def context_keys(self) -> list[str]:
        return sorted(self._slots)

    def slot(self, context_key: str) -> ModelSlot:
        try:
            return self._slots[context_key]
        except KeyError:
            raise HostError(f"no model for {context_key!r}") from None

    def has(self, context_key: str) -> bool:
        return context_key in self._slots

    def expected_arch(self) -> dict[str, str]:
        """The architecture each acceptable context key must have: served ones, then known ones."""
        served = {key: slot.meta.arch_hash for key, slot in self._slots.items()}
        return {**self.known_arch, **served}

    def install(
        self,
        model: OnnxModel,
        *,
        context_key: str,
        samples: int = 0,
        data_time: float = 0.0,
        now: float | None = None,
        replace: bool = False,
    ) -> ModelSlot:
        """Serve `context_key` starting from a canonical model (a starter model, or an import).

        An existing model is kept unless `replace`; then the installed one is a challenger
        (`Change.IMPORT`) and, if the promotion rule serves it, the next version, so versions
        never go back. Returns the slot served afterwards.
        """
        with self.lock:
            if context_key in self._slots and not replace:
                return self._slots[context_key]
            spec, schema, weights = families.from_onnx(model)
            if spec.task != context_key.split("/", 1)[0]:
                raise HostError(f"a {spec.task} model cannot serve {context_key!r}")
            now = self.settings.clock() if now is None else now
            previous = self._slots.get(context_key)
            if (
                previous is not None
                and not self.judge(context_key, Change.IMPORT, weights, now=now).served
            ):
                self.save_state()
                return previous
            slot = self._write(
                spec,
                schema,
                ModelState(
                    weights=weights,
                    created_at=now,
                    data_time=data_time,
                    samples=samples,
                    version=previous.version + 1 if previous else 1,
                    origin=self.identity.id,
                    lineage=(),
                ),
                context_key=context_key,
            )
            self.save_state()
            return slot

    # ---- inference

    def predict(self, context_key: str, features: npt.ArrayLike) -> FloatArray:
        return self.slot(context_key).predict(features)

    def evaluator(
        self, context_key: str, x: npt.ArrayLike, y: npt.ArrayLike
    ) -> Callable[[Weights], float]:
        """A held-out score of candidate weights on this host's recent data (for the gate)."""
        spec = self.slot(context_key).spec
        features = np.ascontiguousarray(x, dtype=np.float32)
        labels = np.asarray(y, dtype=np.int64)
        return lambda weights: score(spec, weights, features, labels)

    # ---- promotion

    def hold_out(
        self, context_key: str, window: HeldOut, *, labelled: HeldOut | None = None
    ) -> None:
        """Judge the next changes of `context_key` on what the host knows: training on
        `window`, the latest labelled samples, which it does not train on (training sets it
        from its own split); a merge, an adopt or an import on `labelled` (default `window`),
        every labelled sample the host holds. The challenger of a merge was not trained on
        them, and the larger set decides where the window alone is a handful of samples; that
        the served model was trained on most of them only favours keeping it."""
        with self.lock:
            self._windows[context_key] = window
            self._labelled[context_key] = window if labelled is None else labelled

    def window(self, context_key: str, change: Change = Change.TRAINING) -> HeldOut | None:
        """Where a `change` of `context_key` is judged (see `hold_out`); None: nowhere yet."""
        own = change in {Change.TRAINING, Change.DISTILL}  # trained on the rest of the labels
        windows = self._windows if own else self._labelled
        return windows.get(context_key)

    def judge(
        self,
        context_key: str,
        change: Change,
        challenger: Weights,
        *,
        now: float,
        window: HeldOut | None = None,
    ) -> PromotionDecision:
        """The promotion rule's decision on replacing the served model by `challenger`, on
        `window` (default: where this host judges a `change`, `window()`); logged and counted."""
        with self.lock:
            slot = self.slot(context_key)
            spec = slot.spec
            decision = self.settings.promotion.judge(
                lambda weights, held: predicted(spec, weights, held.x),
                balanced_accuracy if spec.binary else macro_f1,
                slot.weights,
                challenger,
                self.window(context_key, change) if window is None else window,
                context_key=context_key,
                change=change,
                at=now,
            )
            self.promotions[decision.verdict.value] += 1
            self.decisions[context_key] = decision
        _LOGGER.log(logging.INFO if decision.served else logging.WARNING, "%s", decision.describe())
        return decision

    def answer(self, outcome: Outcome) -> ModelSlot | None:
        """What a leader sends back to the sender of `outcome`'s snapshot: its current model,
        after a merge and after a refusal alike (so the sender carries what this host serves),
        but nothing when the sender already carries it or the snapshot named no key served
        here."""
        with self.lock:
            key = outcome.context_key
            if key is None or key not in self._slots or outcome.reason == UNCHANGED:
                return None
            return self._slots[key]

    # ---- learning

    def start_training(
        self,
        context_key: str,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        *,
        config: TrainConfig | None = None,
        data_time: float,
        distill: Distillation | None = None,
    ) -> TrainingJob:
        """A training job warm-started from the current model of `context_key`.

        `x`, `y` are time-ordered; the latest `promotion.holdout_fraction` of them are held out
        of training, and the promotion rule judges the result on them. With `distill` (see
        `distillation`) the job also trains a run towards the knowledge cache, judged first,
        as a distillation (`TrainingJob.commit`)."""
        train_x, train_y, window = split_holdout(x, y, self.settings.promotion.holdout_fraction)
        labelled = HeldOut.of(x, y)
        with self.lock:
            slot = self.slot(context_key)
            refused = self.take_refused_merge(context_key)
            return TrainingJob(
                self,
                context_key,
                Trainer(slot.spec, slot.weights, train_x, train_y, config),
                samples=int(train_y.shape[0]),
                data_time=data_time,
                window=window,
                labelled=labelled,
                fine_tuning=None
                if refused is None
                else FineTuning(
                    refused, Trainer(slot.spec, refused.weights, train_x, train_y, config)
                ),
                distilling=None
                if distill is None
                else Trainer(slot.spec, slot.weights, train_x, train_y, config, distill=distill),
            )

    def take_refused_merge(self, context_key: str) -> ModelState | None:
        """The latest merge of `context_key` the promotion rule refused since the served model
        (kept with `PromotionRule.fine_tune_refused`), for the next training to fine-tune too;
        handed out once."""
        with self.lock:
            return self._refused.pop(context_key, None)

    def train(
        self,
        context_key: str,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        *,
        config: TrainConfig | None = None,
        data_time: float,
        now: float | None = None,
        distill: Distillation | None = None,
    ) -> TrainReport:
        """Train to completion (within the config's bounds); the promotion rule decides whether
        the result becomes the next version (`decisions[context_key]`)."""
        job = self.start_training(
            context_key, x, y, config=config, data_time=data_time, distill=distill
        )
        return job.commit(now=now)

    def receive(
        self,
        data: bytes,
        *,
        guest: bool = False,
        now: float | None = None,
        evaluators: Mapping[str, Callable[[Weights], float]] | None = None,
        window: HeldOut | None = None,
    ) -> Outcome:
        """Verify a snapshot, merge it with the strategy and let the promotion rule judge the
        merge (on `window`, default the host's own); never raises for bad input.

        A merge the rule does not serve is refused `kept_current`. `evaluators` score candidate
        weights per context key for the validation gate (strategy option `gate`); without one,
        the gate scores on the promotion window when that can decide.
        """
        with self.lock:
            return self._receive(data, guest=guest, now=now, evaluators=evaluators, window=window)

    def _receive(
        self,
        data: bytes,
        *,
        guest: bool,
        now: float | None,
        evaluators: Mapping[str, Callable[[Weights], float]] | None,
        window: HeldOut | None,
    ) -> Outcome:
        now = self.settings.clock() if now is None else now
        try:
            snapshot = self._unpack_received(data, now)
        except SnapshotError as err:
            return self._reject(err.reason, str(err))
        slot = self._slots.get(snapshot.meta.context_key)
        if slot is None:
            # a known architecture this host holds no model of yet: nothing to merge into
            return self._adopt(snapshot, data, now)
        try:
            incoming = ModelSlot.from_snapshot(snapshot, data, self.settings.backend)
            held = self._held[slot.context_key]
            digest = weights_digest(incoming.weights)
            if digest in held:
                return self._held_again(snapshot, slot, current=digest == held[-1])
            held_out = self.window(slot.context_key, Change.MERGE) if window is None else window
            evaluate = (evaluators or {}).get(slot.context_key)
            if evaluate is None and self.settings.promotion.decisive(held_out):
                assert held_out is not None
                evaluate = self.evaluator(slot.context_key, held_out.x, held_out.y)
            result = self._strategy(slot).aggregate(
                slot.state(),
                [incoming.state(guest=guest)],
                now=now,
                context=AggregationContext(
                    shared=families.shared_names(slot.spec), evaluate=evaluate
                ),
            )
        except MlmuleError as err:
            return self._reject(err.reason, str(err), snapshot)
        decision = result.decisions[0]
        self._strategy_state[slot.context_key] = self._strategy(slot).state_dict()
        if not decision.accepted:
            self._record_replay(snapshot)
            return self._reject(decision.reason, f"strategy: {decision.reason}", snapshot)
        return self._promote_merge(
            slot, snapshot, incoming.state(guest=guest), result, now=now, window=held_out
        )

    def _promote_merge(
        self,
        slot: ModelSlot,
        snapshot: Snapshot,
        incoming: ModelState,
        result: AggregationResult,
        *,
        now: float,
        window: HeldOut | None,
    ) -> Outcome:
        """Serve the merge `result` if the promotion rule lets it replace the current model."""
        promotion = self.judge(
            slot.context_key, Change.MERGE, result.weights, now=now, window=window
        )
        self._record_replay(snapshot)
        merged = merged_state(
            slot.state(),
            [incoming],
            result,
            now=now,
            origin=self.identity.id,
            lineage_limit=self.settings.max_lineage,
        )
        if not promotion.served:
            if self.settings.promotion.fine_tune_refused:
                self._refused[slot.context_key] = merged
            return self._reject(
                promotion.verdict.value, promotion.describe(), snapshot, decision=promotion
            )
        new = self.commit(slot.context_key, merged)
        self.counters["merged"] += 1
        outcome = Outcome(
            accepted=True,
            reason="merged",
            context_key=slot.context_key,
            origin=snapshot.origin,
            received_version=snapshot.meta.version,
            version=new.version,
            weight=result.decisions[0].weight,
            sha256=snapshot.sha256,
            decision=promotion,
        )
        self._remember(outcome)
        self.save_state()
        return outcome

    def _held_again(self, snapshot: Snapshot, slot: ModelSlot, *, current: bool) -> Outcome:
        """One of this host's own recent models came back (a mule that adopted it offers it
        again). It holds nothing new: merging would only re-weigh what the host already has,
        so nothing is written and nothing retrains. `unchanged` when it is the current model
        (the sender needs nothing back), `held_before` when the host has moved on since."""
        reason = UNCHANGED if current else HELD_BEFORE
        self._record_replay(snapshot)
        self.counters[reason] += 1
        outcome = Outcome(
            accepted=True,
            reason=reason,
            context_key=slot.context_key,
            origin=snapshot.origin,
            received_version=snapshot.meta.version,
            version=slot.version,
            sha256=snapshot.sha256,
            detail="the current model" if current else "a model this host has since replaced",
        )
        self._remember(outcome)
        self.save_state()
        return outcome

    def adopt(
        self, data: bytes, *, now: float | None = None, window: HeldOut | None = None
    ) -> Outcome:
        """Take a received model as it is (after every check), as the next version.

        A mule adopts the merged, trained model a space hands back in fixed-data mode: it
        already contains what the mule brought, so merging it again would count that twice.
        The promotion rule judges it against the model held now (on `window`, default the
        host's own); one it does not serve is refused `kept_current`.
        """
        with self.lock:
            now = self.settings.clock() if now is None else now
            try:
                snapshot = self._unpack_received(data, now)
            except SnapshotError as err:
                return self._reject(err.reason, str(err))
            return self._adopt(snapshot, data, now, window=window)

    def _adopt(
        self, snapshot: Snapshot, data: bytes, now: float, *, window: HeldOut | None = None
    ) -> Outcome:
        try:
            incoming = ModelSlot.from_snapshot(snapshot, data, self.settings.backend)
        except MlmuleError as err:
            return self._reject(err.reason, str(err), snapshot)
        meta = snapshot.meta
        current = self._slots.get(meta.context_key)
        promotion = None
        if current is not None:
            promotion = self.judge(
                meta.context_key, Change.ADOPT, incoming.weights, now=now, window=window
            )
            if not promotion.served:
                self._record_replay(snapshot)
                return self._reject(
                    promotion.verdict.value, promotion.describe(), snapshot, decision=promotion
                )
        new = self._write(
            incoming.spec,
            incoming.schema,
            ModelState(
                weights=incoming.weights,
                created_at=now,
                data_time=meta.data_time,
                samples=meta.samples,
                version=current.version + 1 if current else 1,
                origin=self.identity.id,
                lineage=(*meta.lineage, snapshot.origin)[-self.settings.max_lineage :],
                # adopting re-signs the model: it is no fresher than its last training
                trained_at=meta.trained_at,
            ),
            context_key=meta.context_key,
        )
        self._record_replay(snapshot)
        self.counters["adopted"] += 1
        outcome = Outcome(
            accepted=True,
            reason="adopted",
            context_key=meta.context_key,
            origin=snapshot.origin,
            received_version=meta.version,
            version=new.version,
            weight=1.0,
            sha256=snapshot.sha256,
            decision=promotion,
        )
        self._remember(outcome)
        self.save_state()
        return outcome

    def _unpack_received(self, data: bytes, now: float) -> Snapshot:
        """Every check a peer's snapshot must pass before this host uses it (counts it)."""
        self.counters["received"] += 1
        snapshot = unpack(
            data,
            trust=self.trust,
            expected_arch=self.expected_arch(),
            limits=self.settings.limits,
            now=now,
            max_age=self.settings.max_age_seconds,
        )
        self.replay_guard.check(snapshot.origin, snapshot.replay_key, snapshot.meta.version)
        return snapshot

    def _record_replay(self, snapshot: Snapshot) -> None:
        # only once the outcome is stored: a crash before that must not make the phone's
        # next try look like a replay
        self.replay_guard.record(snapshot.origin, snapshot.replay_key, snapshot.meta.version)

    def export(self, context_key: str, *, compression: Compression | None = None) -> bytes:
        """The current model of `context_key` as a snapshot signed by this host."""
        with self.lock:
            slot = self.slot(context_key)
            self.counters["exported"] += 1
        chosen = self.settings.compression if compression is None else compression
        if chosen == slot.snapshot.compression:
            return slot.container
        # the slot is immutable once made: packing it needs no lock
        return pack(
            slot.snapshot.onnx_bytes,
            slot.meta,
            self.identity,
            compression=chosen,
            limits=self.settings.limits,
        )

    def rollback(self, context_key: str, to_version: int | None = None) -> ModelSlot:
        """Make an older kept version current again (it stays signed as it was)."""
        with self.lock:
            self.slot(context_key)
            try:
                self.store.rollback(context_key, to_version)
            except StoreError as err:
                raise HostError(str(err), reason="rollback") from err
            return self._load_slot(context_key)

    # ---- knowledge (knowledge.py): predictions on a proxy set instead of weights

    def expected_proxy(self) -> dict[str, str]:
        """The proxy set id of each served context key: knowledge on another one is refused."""
        with self.lock:
            return {key: proxy_set(slot.schema).id for key, slot in self._slots.items()}

    def knowledge_snapshot(
        self,
        context_key: str,
        *,
        now: float | None = None,
        compression: KnowledgeCompression = DEFAULT_KNOWLEDGE_COMPRESSION,
    ) -> bytes:
        """The current model's knowledge of `context_key`, signed by this host. Its version is
        the model's, so knowledge of one model is accepted once by each receiver."""
        with self.lock:
            slot = self.slot(context_key)
            window = self.window(context_key, Change.TRAINING)
            own_score = (
                score(slot.spec, slot.weights, window.x, window.y)
                if window is not None and self.settings.promotion.decisive(window)
                else None
            )
            self.counters["knowledge_exported"] += 1
        meta = slot.meta
        now = self.settings.clock() if now is None else now
        knowledge = knowledge_of(
            slot.spec,
            slot.weights,
            slot.schema,
            context_key,
            samples=meta.samples,
            score=own_score,
            trained_at=meta.last_trained,
            data_time=meta.data_time,
        )
        return seal_knowledge(
            knowledge,
            self.identity,
            version=slot.version,
            created_at=max(now, meta.last_trained),
            compression=compression,
            limits=self.settings.limits,
            source=self.settings.source,
        )

    def receive_knowledge(
        self,
        data: bytes,
        *,
        now: float | None = None,
        distill: bool = True,
        config: TrainConfig | None = None,
    ) -> Outcome:
        """Verify a knowledge container and cache it; with `distill` and labelled data, distil
        the current model towards the cache's ensemble at once, and let the promotion rule
        judge the result (`Change.DISTILL`); never raises for bad input.

        Outcomes: refused with the snapshot error's reason; `held_before` (the cache holds
        knowledge of that contributor as recent, or it is this host's own); `cached` (kept, no
        model changed: no labels here, or `distill` is False and the caller runs
        `start_distillation` in chunks); `distilled` (the distilled model is served); refused
        with the verdict (`kept_current`) when the rule keeps the current model, the knowledge
        staying cached. In Home Assistant, pass `distill=False` and run the chunked job."""
        with self.lock:
            now = self.settings.clock() if now is None else now
            self.counters["knowledge_received"] += 1
            try:
                received = unpack_knowledge(
                    data,
                    trust=self.trust,
                    expected_proxy=self.expected_proxy(),
                    limits=self.settings.limits,
                    now=now,
                    max_age=self.settings.max_age_seconds,
                )
                replay_key = received.replay_key
                self.replay_guard.check(received.origin, replay_key, received.meta.version)
            except SnapshotError as err:
                return self._reject(err.reason, str(err))
            self.replay_guard.record(received.origin, replay_key, received.meta.version)
            key = received.meta.context_key
            contributor = received.contributor
            added = contributor != self.identity.id and self.knowledge.add(
                contributor, received.knowledge, received_at=now, version=received.meta.version
            )
            if not added:
                return self._knowledge_outcome(received, HELD_BEFORE, "nothing newer")
            job = self.start_distillation(key, now=now, config=config) if distill else None
            if job is None:
                return self._knowledge_outcome(received, CACHED, "kept for distillation")
            job.commit(now=now)
            decision = job.decision
            assert decision is not None
            if not decision.served:
                return self._reject(
                    decision.verdict.value, decision.describe(), received, decision=decision
                )
            return self._knowledge_outcome(received, "distilled", "", decision=decision)

    def _knowledge_outcome(
        self,
        received: KnowledgeSnapshot,
        reason: str,
        detail: str,
        *,
        decision: PromotionDecision | None = None,
    ) -> Outcome:
        key = received.meta.context_key
        self.counters[f"knowledge_{reason}"] += 1
        outcome = Outcome(
            accepted=True,
            reason=reason,
            context_key=key,
            origin=received.origin,
            received_version=received.meta.version,
            version=self._slots[key].version,
            sha256=received.sha256,
            detail=detail,
            decision=decision,
        )
        self._remember(outcome)
        self.save_state()
        return outcome

    def distillation(
        self, context_key: str, *, now: float | None = None, weight: float = DISTILL_WEIGHT
    ) -> Distillation | None:
        """The distillation term of `context_key`: its proxy inputs and the knowledge cache's
        ensemble on them (freshness and score weighted, this host's own knowledge left out);
        None without cached knowledge on the key's proxy set."""
        with self.lock:
            proxy = proxy_set(self.slot(context_key).schema)
            if not self.knowledge.entries(context_key, proxy_id=proxy.id):
                return None
            now = self.settings.clock() if now is None else now
            targets = self.knowledge.ensemble(
                context_key, now=now, exclude=frozenset({self.identity.id})
            )
        return None if targets is None else Distillation(proxy.x, targets, weight)

    def start_distillation(
        self,
        context_key: str,
        *,
        now: float | None = None,
        config: TrainConfig | None = None,
        weight: float = DISTILL_WEIGHT,
        backend: BackendFactory = NumpyBackend,
    ) -> TrainingJob | None:
        """A chunked job (like `start_training`) that trains the current model on the labelled
        samples of its last training, less the held-out window, plus the distillation term
        (`distillation`). Its commit is judged by the promotion rule as `Change.DISTILL` on
        the window. None when there is nothing to distil: no labelled samples, or no cached
        knowledge on the key's proxy set. `backend`: the gradient step (a phone passes its
        torch one, `mlmule_models.train.TorchBackend`: distillation is sample weights)."""
        with self.lock:
            slot = self.slot(context_key)
            labelled = self._labelled.get(context_key)
            window = self._windows.get(context_key)
            if labelled is None or window is None or labelled.samples <= window.samples:
                return None
            distill = self.distillation(context_key, now=now, weight=weight)
            if distill is None:
                return None
            cut = labelled.samples - window.samples
            trainer = Trainer(
                slot.spec,
                slot.weights,
                labelled.x[:cut],
                labelled.y[:cut],
                config,
                backend=backend,
                distill=distill,
            )
            return TrainingJob(
                self,
                context_key,
                trainer,
                samples=cut,
                data_time=slot.meta.data_time,
                window=window,
                labelled=labelled,
                change=Change.DISTILL,
            )

    # ---- writing versions

    def commit(self, context_key: str, state: ModelState) -> ModelSlot:
        """Sign `state` as the next version of `context_key`, store it, and make it current.

        A raw write, below the promotion rule: for changes already judged, and for the
        benchmark's baselines, which have no rule."""
        with self.lock:
            slot = self.slot(context_key)
            return self._write(slot.spec, slot.schema, state, context_key=context_key)

    def _write(
        self, spec: FamilySpec, schema: FeatureSchema, state: ModelState, *, context_key: str
    ) -> ModelSlot:
        model = families.build_onnx(spec, state.weights, schema)
        meta = SnapshotMeta(
            task=spec.task,
            context_key=context_key,
            arch_hash=families.arch_hash(spec, schema),
            schema_hash=schema.schema_hash(),
            created_at=state.created_at,
            data_time=state.data_time,
            samples=state.samples,
            version=state.version,
            lineage=state.lineage[-self.settings.max_lineage :],
            extra=source_extra(self.settings.source),
            trained_at=state.trained_at,
        )
        # built once and not read back: the store gets the bytes, the slot the built model
        container, snapshot = seal(
            model,
            (spec, schema, state.weights),
            meta,
            self.identity,
            compression=self.settings.compression,
            limits=self.settings.limits,
        )
        self.store.put(context_key, state.version, container, now=state.created_at)
        return self._serve(ModelSlot.from_snapshot(snapshot, container, self.settings.backend))

    # ---- state

    def _load_slot(self, context_key: str) -> ModelSlot:
        stored = self.store.current(context_key)
        if stored is None:
            raise HostError(f"nothing stored for {context_key!r}")
        container = self.store.read(stored)
        # our own snapshots: verified against our own key, structure and canonical form
        snapshot = unpack(
            container,
            trust=self.identity,
            expected_arch=None,
            limits=self.settings.limits,
            now=self.settings.clock(),
        )
        return self._serve(ModelSlot.from_snapshot(snapshot, container, self.settings.backend))

    def _serve(self, slot: ModelSlot) -> ModelSlot:
        """Make `slot` the current model of its context key."""
        context_key = slot.context_key
        self._slots[context_key] = slot
        self._refused.pop(context_key, None)  # a merge into a model no longer served
        # the current model's digest is always the newest entry (a model held again moves up)
        held = self._held.setdefault(context_key, deque(maxlen=HELD_DIGESTS))
        digest = weights_digest(slot.weights)
        if digest in held:
            held.remove(digest)
        held.append(digest)
        return slot

    def _strategy(self, slot: ModelSlot) -> Strategy:
        strategy = self._strategies.get(slot.context_key)
        if strategy is None:
            strategy = make_strategy(self.settings.strategy, **dict(self.settings.strategy_options))
            saved = self._strategy_state.get(slot.context_key)
            if saved is not None:
                strategy.load_state_dict(saved)
            self._strategies[slot.context_key] = strategy
        return strategy

    def _reject(
        self,
        reason: str,
        message: str,
        snapshot: SnapshotHeader | None = None,
        *,
        decision: PromotionDecision | None = None,
    ) -> Outcome:
        self.counters["rejected"] += 1
        self.rejections[reason] += 1
        outcome = Outcome(
            accepted=False,
            reason=reason,
            context_key=snapshot.meta.context_key if snapshot else None,
            origin=snapshot.origin if snapshot else None,
            received_version=snapshot.meta.version if snapshot else None,
            sha256=snapshot.sha256 if snapshot else "",
            detail=message,
            decision=decision,
        )
        self._remember(outcome)
        self.save_state()
        return outcome

    def _remember(self, outcome: Outcome) -> None:
        self.last_outcomes = [*self.last_outcomes[-19:], outcome]

    def status(self) -> dict[str, Any]:
        """A JSON-able summary for diagnostics, status lines and entities."""
        with self.lock:
            return self._status()

    def _status(self) -> dict[str, Any]:
        return {
            "identity": self.identity.id,
            "counters": dict(self.counters),
            "rejections": dict(self.rejections),
            "promotions": dict(self.promotions),
            "decisions": {key: d.as_dict() for key, d in sorted(self.decisions.items())},
            "knowledge": self.knowledge.as_dict(),
            "models": {
                key: {
                    "version": slot.version,
                    "origin": slot.snapshot.origin,
                    "created_at": slot.meta.created_at,
                    "data_time": slot.meta.data_time,
                    "samples": slot.meta.samples,
                    "lineage": list(slot.meta.lineage[-5:]),
                    "size": slot.snapshot.size,
                    "sha256": slot.snapshot.sha256,
                    "backend": slot.session.backend,
                }
                for key, slot in sorted(self._slots.items())
            },
        }

    def save_state(self) -> None:
        with self.lock:
            document = {
                "version": HOST_STATE_VERSION,
                "counters": dict(self.counters),
                "rejections": dict(self.rejections),
                "promotions": dict(self.promotions),
                "decisions": {key: d.as_dict() for key, d in self.decisions.items()},
                "strategies": self._strategy_state,
                "held": {key: list(digests) for key, digests in self._held.items()},
            }
            atomic_write_text(
                # compact: written after every change (indenting costs more than the write)
                self.root / HOST_STATE_FILE,
                json.dumps(document, sort_keys=True),
            )

    def _load_state(self) -> None:
        path = self.root / HOST_STATE_FILE
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            # counters are conveniences; a damaged file must not keep the models from loading
            return
        if not isinstance(document, dict) or document.get("version") != HOST_STATE_VERSION:
            return
        self.counters.update({str(k): int(v) for k, v in document.get("counters", {}).items()})
        self.rejections.update({str(k): int(v) for k, v in document.get("rejections", {}).items()})
        self.promotions.update({str(k): int(v) for k, v in document.get("promotions", {}).items()})
        self.decisions.update(_decisions(document))
        strategies = document.get("strategies", {})
        if isinstance(strategies, dict):
            self._strategy_state = dict(strategies)
        held = document.get("held", {})
        if isinstance(held, dict):
            self._held = {
                str(key): deque((str(d) for d in digests), maxlen=HELD_DIGESTS)
                for key, digests in held.items()
                if isinstance(digests, list)
            }
