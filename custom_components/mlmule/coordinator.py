"""One coordinator per space: predictions on input changes and a timer, training on history.

The coordinator is glue: every decision lives in the HA-free core (`core.space`, `core.host`).
It feeds the core from the recorder and from live state changes, and runs every piece of model
work (feature extraction, inference, training, snapshot I/O) in an executor, training in short
chunks so that the event loop keeps running while a space learns.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import Event, EventStateChangedData, HomeAssistant, callback
from homeassistant.helpers.debounce import Debouncer
from homeassistant.helpers.event import async_track_state_change_event
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator, UpdateFailed
from homeassistant.util import dt as dt_util

from .const import (
    DOMAIN,
    LOGGER,
    Task,
)
from .core.clock import ReplayClock
from .core.errors import MlmuleError
from .core.families import DEFAULT_MODEL_SIZE, ModelSize
from .core.host import HostError, ModelHost, Outcome, TrainingJob
from .core.hysteresis import Hysteresis, HysteresisConfig
from .core.knowledge_offers import SealedKnowledge
from .core.promotion import PromotionDecision
from .core.protocol import DEFAULT_EXCHANGE_MODE, ExchangeMode, Mode, PayloadKind
from .core.space import (
    LOOKBACK_SECONDS,
    SpaceInputs,
    current_features,
    explain,
    held,
    training_set,
    unavailable_fraction,
)
from .core.train_numpy import TrainConfig, TrainReport
from .history import async_state_changes
from .knowledge import SpaceKnowledge
from .repairs import RejectionWatch, async_check_space_entities

if TYPE_CHECKING:
    from .data import MlmuleConfigEntry

PREDICT_INTERVAL = timedelta(seconds=60)
PREDICT_COOLDOWN = 10.0  # at most one prediction per this many seconds on input changes
TRAIN_CHUNK_SECONDS = 0.05  # one executor job of training; the loop runs between chunks
MIN_TRAINING_FRAMES = 120
# a space's training and distillation: warm-started, kept close to the current model, bounded
SPACE_TRAINING = TrainConfig(max_epochs=20, prox_mu=0.01, max_seconds=120.0)
PHONE_ACTIVITY = "phone_activity"  # the phones' own model, trained by mules (mobile-data mode)


@dataclass(frozen=True)
class SpaceSettings:
    """Per-space settings from its subentry."""

    space_id: str
    name: str
    room_kind: str
    tasks: tuple[str, ...]
    guests_allowed: bool
    inputs: tuple[str, ...]  # as configured, also those that have gone
    hysteresis: HysteresisConfig
    max_unavailable: float
    history_days: int
    model_size: ModelSize = DEFAULT_MODEL_SIZE  # of its tasks' models (not the phones')
    exchange_mode: ExchangeMode = DEFAULT_EXCHANGE_MODE

    def context_key(self, task: str) -> str:
        return f"{task}/{self.room_kind}"


@dataclass(frozen=True)
class PresenceTrigger:
    """The entity and state that mean "this phone is in this space"."""

    entity: str
    state: str

    def matches(self, state: str) -> bool:
        return state.strip().lower() == self.state.strip().lower()


@dataclass(frozen=True)
class SpacePrediction:
    """What the entities of a space show."""

    available: bool
    unavailable_fraction: float
    occupancy_probability: float | None = None
    occupied: bool | None = None
    activity: str | None = None
    activity_probability: float | None = None
    why: tuple[tuple[str, float], ...] = ()


@dataclass
class TrainingSummary:
    """The last training run of one task, for the accuracy sensor and the `train` action."""

    report: TrainReport
    frames: int
    finished_at: float
    version: int
    # the promotion rule's verdict on the trained model: served, or the current one kept
    decision: PromotionDecision | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "version": self.version,
            "finished_at": dt_util.utc_from_timestamp(self.finished_at).isoformat(),
            "epochs": self.report.epochs,
            "seconds": round(self.report.seconds, 3),
            "stop_reason": self.report.stop_reason,
            "val_balanced_accuracy": self.report.val_balanced_accuracy,
            "val_macro_f1": self.report.val_macro_f1,
            "promotion": None if self.decision is None else self.decision.as_dict(),
        }


@dataclass(frozen=True)
class DistillationSummary:
    """The last distillation of one context key from the knowledge cache."""

    context_key: str
    contributors: int  # cache entries the ensemble was made of
    seconds: float
    finished_at: float
    version: int  # served afterwards
    # the promotion rule's verdict on the distilled model: served, or the current one kept
    decision: PromotionDecision | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "contributors": self.contributors,
            "seconds": round(self.seconds, 3),
            "finished_at": dt_util.utc_from_timestamp(self.finished_at).isoformat(),
            "version": self.version,
            "promotion": None if self.decision is None else self.decision.as_dict(),
        }


@dataclass
class SpaceState:
    """Mutable learning state of a space that outlives single predictions."""

    training: dict[str, TrainingSummary] = field(default_factory=dict)
    distillation: dict[str, DistillationSummary] = field(default_factory=dict)  # by context key
    training_now: str | None = None  # the context key being trained right now


class SpaceClosed(Exception):
    """The space's entry is unloading: no new model work may start."""


class PeerSettings(Protocol):
    """What the exchange needs to know of a space or a relay space."""

    @property
    def space_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def guests_allowed(self) -> bool: ...


class ExchangingCoordinator[DataT, SettingsT: PeerSettings](DataUpdateCoordinator[DataT]):
    """What a space and a relay space share: the model host that phones' snapshots merge into,
    the phones' presence triggers, and the model work that unloading waits for.

    Every executor job that reads or writes the models goes through `async_job`, so that
    unloading the entry can wait for the jobs already running and refuse new ones: a reloaded
    entry's store is never written by the instance it replaced.
    """

    config_entry: MlmuleConfigEntry

    def __init__(
        self,
        hass: HomeAssistant,
        entry: MlmuleConfigEntry,
        settings: SettingsT,
        *,
        host: ModelHost,
        knowledge: SpaceKnowledge,
        rejections: RejectionWatch,
        presence: dict[str, PresenceTrigger] | None = None,
        clock: ReplayClock | None = None,
        **coordinator_options: Any,
    ) -> None:
        super().__init__(
            hass,
            LOGGER,
            config_entry=entry,
            name=f"{DOMAIN} {settings.name}",
            **coordinator_options,
        )
        self.settings = settings
        self.host = host
        self.knowledge = knowledge
        self.rejections = rejections
        self.presence = presence or {}
        # "now" for features, labels, training windows and snapshot times
        self.clock = clock or ReplayClock()
        self._jobs: set[asyncio.Future[Any]] = set()
        self._closed = False

    async def async_job[T](self, target: Callable[..., T], *args: Any) -> T:
        """Run model work in an executor; raises `SpaceClosed` once the entry unloads.

        The job itself is shielded: a task cancelled while it runs stops waiting, but the job
        finishes (a thread cannot be interrupted) and `async_close` waits for it.
        """
        if self._closed:
            raise SpaceClosed(self.settings.name)
        job = self.hass.async_add_executor_job(target, *args)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return await asyncio.shield(job)

    async def async_close(self) -> None:
        """Refuse new model work and wait for the jobs still running (each is short)."""
        self._closed = True
        if self._jobs:
            await asyncio.wait(set(self._jobs))

    async def async_phone_exchanged(self, mule: str) -> None:
        """The paired phone `mule` took part in an exchange here: it sent a snapshot, or
        answered one."""

    async def async_after_merge(self, context_key: str) -> None:
        """A phone's snapshot changed the model of `context_key` in fixed-data mode."""

    @callback
    def async_models_changed(self) -> None:
        """Show a received snapshot's effect on the entities (counters, versions)."""
        self.async_update_listeners()

    async def async_receive(
        self, snapshot: bytes, *, guest: bool, mule: str | None = None
    ) -> Outcome:
        """Verify and merge a snapshot from a mule (in an executor); logs and counts the result.

        `mule` is the sender as the exchange knows it; a snapshot's own origin is used otherwise.
        """

        # the host judges the merge on the window its last training held out
        outcome = await self.async_job(partial(self.host.receive, snapshot, guest=guest))
        if outcome.accepted and not outcome.changed:
            LOGGER.debug(
                "%s: %s v%s from %s is a model this space held before; kept v%s",
                self.settings.name,
                outcome.context_key,
                outcome.received_version,
                outcome.origin,
                outcome.version,
            )
        elif outcome.accepted:
            LOGGER.info(
                "%s: merged %s v%s from %s (weight %.2f) -> v%s",
                self.settings.name,
                outcome.context_key,
                outcome.received_version,
                outcome.origin,
                outcome.weight,
                outcome.version,
            )
        else:
            LOGGER.warning(
                "%s: rejected a snapshot (%s): %s",
                self.settings.name,
                outcome.reason,
                outcome.detail,
            )
        self.rejections.record(
            mule or outcome.origin or "unknown", outcome.accepted, outcome.reason
        )
        self.async_models_changed()
        return outcome

    def exchange_kinds(self, context_key: str) -> frozenset[PayloadKind]:
        """What this space swaps with phones for `context_key`: weights, knowledge or both."""
        return frozenset(PayloadKind)

    async def async_knowledge_offer(
        self, context_key: str, mode: Mode, mule: str | None = None
    ) -> SealedKnowledge:
        """This space's knowledge of `context_key` for `mule` (None: any), signed (in an
        executor: it runs the model on the key's proxy set). In mobile-data mode the space
        has no labels for the key and passes on what it knows (`core/knowledge_offers.py`)."""
        return await self.async_job(
            partial(
                self.knowledge.offer,
                context_key,
                now=self.clock.now(),
                receiver=mule,
                labelled=mode is Mode.FIXED,
            )
        )

    async def async_receive_knowledge(
        self, container: bytes, *, mule: str | None = None
    ) -> Outcome:
        """Verify a knowledge snapshot from a mule and keep it in the knowledge cache (in an
        executor); logs and counts the result. Distilling from it is `async_after_knowledge`."""

        def receive() -> Outcome:
            outcome = self.host.receive_knowledge(container, now=self.clock.now(), distill=False)
            if not outcome.accepted:
                self.knowledge.count_refusal(outcome.reason)
            return outcome

        outcome = await self.async_job(receive)
        if outcome.accepted:
            LOGGER.info(
                "%s: knowledge of %s from %s: %s",
                self.settings.name,
                outcome.context_key,
                outcome.origin,
                outcome.reason,
            )
        else:
            LOGGER.warning(
                "%s: rejected a knowledge snapshot (%s): %s",
                self.settings.name,
                outcome.reason,
                outcome.detail,
            )
        self.rejections.record(
            mule or outcome.origin or "unknown", outcome.accepted, outcome.reason
        )
        self.async_models_changed()
        return outcome

    async def async_after_knowledge(self, context_key: str) -> None:
        """A phone's knowledge of `context_key` entered the cache."""


class SpaceCoordinator(ExchangingCoordinator[SpacePrediction, SpaceSettings]):
    """Predictions and learning for one space."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: MlmuleConfigEntry,
        settings: SpaceSettings,
        *,
        inputs: SpaceInputs,
        host: ModelHost,
        knowledge: SpaceKnowledge,
        rejections: RejectionWatch,
        presence: dict[str, PresenceTrigger] | None = None,
        clock: ReplayClock | None = None,
    ) -> None:
        super().__init__(
            hass,
            entry,
            settings,
            host=host,
            knowledge=knowledge,
            rejections=rejections,
            presence=presence,
            clock=clock,
            update_interval=PREDICT_INTERVAL,
            request_refresh_debouncer=Debouncer(
                hass, LOGGER, cooldown=PREDICT_COOLDOWN, immediate=True
            ),
            # an unchanged prediction writes no new state (the recorder keeps every write)
            always_update=False,
        )
        self.inputs = inputs
        self.state = SpaceState()
        self.hysteresis = Hysteresis(settings.hysteresis)
        self._changes: dict[str, deque[tuple[float, str]]] = {}
        self._history_loaded = False
        self._train_lock = asyncio.Lock()
        self._was_available = True

    def exchanged_keys(self) -> dict[str, Mode]:
        """The context keys this space swaps with phones, and in which mode.

        The space trains its own tasks (fixed-data mode). It also hosts and merges the phones'
        own activity model of its kind of room (mobile-data mode), if there is a starter for it.
        """
        keys = {self.settings.context_key(task): Mode.FIXED for task in self.settings.tasks}
        mobile = self.settings.context_key(PHONE_ACTIVITY)
        if self.host.has(mobile):
            keys[mobile] = Mode.MOBILE
        return keys

    # ---- live inputs

    @property
    def label_sources(self) -> list[str]:
        labels = [*self.inputs.occupancy_labels]
        if self.inputs.activity_label:
            labels.append(self.inputs.activity_label)
        return labels

    @property
    def watched_entities(self) -> list[str]:
        """The entities whose removal raises a repair issue: inputs and label sources."""
        return sorted({*self.settings.inputs, *self.label_sources})

    @callback
    def async_check_entities(self) -> None:
        """Raise or clear the repair issues of inputs and label sources that are gone
        (once Home Assistant has started)."""
        async_check_space_entities(
            self.hass,
            self.settings.space_id,
            self.settings.name,
            inputs=self.settings.inputs,
            labels=self.label_sources,
        )

    @callback
    def async_start_listening(self) -> None:
        """Follow the feature inputs; the subscription ends when the entry unloads."""
        self.config_entry.async_on_unload(
            async_track_state_change_event(
                self.hass, list(self.inputs.roles), self._async_input_changed
            )
        )

    @callback
    def _async_input_changed(self, event: Event[EventStateChangedData]) -> None:
        new_state = event.data["new_state"]
        state = new_state.state if new_state is not None else STATE_UNAVAILABLE
        when = (
            self.clock.to_scene(new_state.last_updated_timestamp)
            if new_state is not None
            else self.clock.now()
        )
        self._changes.setdefault(event.data["entity_id"], deque()).append((when, state))
        self.config_entry.async_create_background_task(
            self.hass, self.async_request_refresh(), f"{self.name} refresh"
        )

    async def _async_load_recent_history(self, now: float) -> None:
        changes = await async_state_changes(
            self.hass,
            self.inputs.roles,
            dt_util.utc_from_timestamp(now - LOOKBACK_SECONDS),
            dt_util.utc_from_timestamp(now),
            clock=self.clock,
        )
        for entity_id, recorded in changes.items():
            live = self._changes.get(entity_id, deque())
            # live changes that arrived while the history query ran come after it
            newest = recorded[-1][0] if recorded else float("-inf")
            self._changes[entity_id] = deque(
                [*recorded, *(change for change in live if change[0] > newest)]
            )
        self._history_loaded = True

    def _recent_changes(self, now: float) -> dict[str, list[tuple[float, str]]]:
        horizon = now - LOOKBACK_SECONDS
        snapshot: dict[str, list[tuple[float, str]]] = {}
        for entity_id, changes in self._changes.items():
            # keep the last change before the horizon: it is the state in force at its start
            while len(changes) > 1 and changes[1][0] <= horizon:
                changes.popleft()
            snapshot[entity_id] = list(changes)
        return snapshot

    def _current_states(self) -> dict[str, str]:
        return {
            entity_id: state.state
            for entity_id in self.inputs.roles
            if (state := self.hass.states.get(entity_id)) is not None
        }

    # ---- prediction

    async def _async_update_data(self) -> SpacePrediction:
        now = self.clock.now()
        if not self._history_loaded:
            await self._async_load_recent_history(now)
        states = self._current_states()
        missing = unavailable_fraction(self.inputs, states)
        if missing > self.settings.max_unavailable:
            if self._was_available:
                LOGGER.warning(
                    "%s: %.0f%% of its inputs are unavailable; predictions are unavailable",
                    self.settings.name,
                    100 * missing,
                )
            self._was_available = False
            return SpacePrediction(available=False, unavailable_fraction=missing)
        if not self._was_available:
            LOGGER.info("%s: enough inputs are back; predicting again", self.settings.name)
        self._was_available = True
        changes = self._recent_changes(now)
        try:
            prediction = await self.async_job(
                self._predict, changes, now, held(self.inputs, states), missing
            )
        except SpaceClosed as err:
            raise UpdateFailed(
                translation_domain=DOMAIN,
                translation_key="space_closed",
                translation_placeholders={"space": self.settings.name},
            ) from err
        except MlmuleError as err:
            raise UpdateFailed(
                translation_domain=DOMAIN,
                translation_key="prediction_failed",
                translation_placeholders={"space": self.settings.name, "error": str(err)},
            ) from err
        return prediction

    def _predict(
        self, changes: dict[str, list[tuple[float, str]]], now: float, hold: bool, missing: float
    ) -> SpacePrediction:
        """Runs in an executor: features, inference and the "why" of one prediction."""
        result: dict[str, Any] = {"available": True, "unavailable_fraction": missing}
        if Task.OCCUPANCY in self.settings.tasks:
            slot = self.host.slot(self.settings.context_key(Task.OCCUPANCY))
            x = current_features(self.inputs, changes, schema=slot.schema, now=now)
            probability = float(slot.predict(x)[0, 0])
            result["occupancy_probability"] = probability
            result["occupied"] = self.hysteresis.update(probability, now, held=hold)
            result["why"] = tuple(explain(slot.predict, slot.schema, self.inputs, x))
        if Task.ACTIVITY in self.settings.tasks:
            slot = self.host.slot(self.settings.context_key(Task.ACTIVITY))
            x = current_features(self.inputs, changes, schema=slot.schema, now=now)
            probabilities = slot.predict(x)[0]
            best = int(probabilities.argmax())
            result["activity"] = slot.spec.labels[best]
            result["activity_probability"] = float(probabilities[best])
        return SpacePrediction(**result)

    # ---- learning

    async def async_train(self, *, reason: str) -> dict[str, TrainingSummary]:
        """Train every task on the recorder history, warm-started from the current models."""
        return await self._async_train(list(self.settings.tasks), reason=reason)

    async def async_train_key(self, context_key: str, *, reason: str) -> TrainingSummary | None:
        """Train the task of one context key (after a merge in fixed-data mode)."""
        task = context_key.partition("/")[0]
        return (await self._async_train([task], reason=reason)).get(task)

    async def async_after_merge(self, context_key: str) -> None:
        """Train the merged model on this space's own history, as fixed-data mode does."""
        await self.async_train_key(context_key, reason="exchange")

    @property
    def exchanges_knowledge(self) -> bool:
        return PayloadKind.KNOWLEDGE in self.settings.exchange_mode.kinds

    def exchange_kinds(self, context_key: str) -> frozenset[PayloadKind]:
        """As the space's exchange mode says, for every key it serves."""
        return self.settings.exchange_mode.kinds

    async def async_after_knowledge(self, context_key: str) -> None:
        """Distil the cache's knowledge into the space's own model (model over models)."""
        await self.async_distil(context_key)

    async def async_distil(self, context_key: str) -> DistillationSummary | None:
        """Train the model of `context_key` on the space's labelled data of its last training
        plus a term towards the knowledge cache's ensemble on the proxy set, in short executor
        chunks; the promotion rule serves the result only if it scores at least as well.
        None when there is nothing to distil from or no labelled data to judge by."""
        async with self._train_lock:
            now = self.clock.now()
            job: TrainingJob | None = await self.async_job(
                partial(self.host.start_distillation, context_key, now=now, config=SPACE_TRAINING)
            )
            if job is None:
                LOGGER.debug("%s: nothing to distil into %s", self.settings.name, context_key)
                return None
            started = time.monotonic()
            self.state.training_now = context_key
            try:
                done = False
                while not done:  # each chunk is one executor job; the loop runs between them
                    done = await self.async_job(partial(job.run, max_seconds=TRAIN_CHUNK_SECONDS))
                await self.async_job(job.commit)
            except HostError as err:
                if err.reason != "superseded":
                    raise
                LOGGER.info("%s: %s", self.settings.name, err)
                return None
            finally:
                self.state.training_now = None
            summary = DistillationSummary(
                context_key=context_key,
                contributors=len(self.host.knowledge.entries(context_key)),
                seconds=time.monotonic() - started,
                finished_at=time.time(),
                version=self.host.slot(context_key).version,
                decision=job.decision,
            )
            self.state.distillation[context_key] = summary
            LOGGER.info("%s: distilled %s: %s", self.settings.name, context_key, summary.as_dict())
        await self.async_request_refresh()
        self.async_update_listeners()
        return summary

    async def _async_train(self, tasks: list[str], *, reason: str) -> dict[str, TrainingSummary]:
        self.async_check_entities()
        async with self._train_lock:
            now = self.clock.now()
            changes = await async_state_changes(
                self.hass,
                self.inputs.entities,
                dt_util.utc_from_timestamp(now - self.settings.history_days * 86400),
                dt_util.utc_from_timestamp(now),
                clock=self.clock,
            )
            summaries: dict[str, TrainingSummary] = {}
            for task in tasks:
                summary = await self._async_train_task(task, changes, now)
                if summary is not None:
                    summaries[task] = summary
            LOGGER.info(
                "%s: trained (%s): %s",
                self.settings.name,
                reason,
                {task: s.as_dict() for task, s in summaries.items()} or "not enough labelled data",
            )
        await self.async_request_refresh()
        # the model-health entities show the training, even when the prediction is unchanged
        self.async_update_listeners()
        if self.exchanges_knowledge:
            # the labelled window is new: the cache's knowledge is distilled into the trained
            # model (and, after a change of model size, into the new size's model)
            for task in summaries:
                if self.host.knowledge.entries(self.settings.context_key(task)):
                    await self.async_distil(self.settings.context_key(task))
        return summaries

    async def _async_train_task(
        self, task: str, changes: dict[str, list[tuple[float, str]]], now: float
    ) -> TrainingSummary | None:
        context_key = self.settings.context_key(task)
        slot = self.host.slot(context_key)
        step = slot.schema.step_seconds
        end = now // step * step
        start = end - (self.settings.history_days * 86400) // step * step
        data = await self.async_job(
            lambda: training_set(
                self.inputs, changes, task=task, schema=slot.schema, start=start, end=end
            )
        )
        if data.y.size < MIN_TRAINING_FRAMES:
            LOGGER.debug(
                "%s: %d labelled %s frames, too few to train", context_key, data.y.size, task
            )
            return None
        job: TrainingJob = await self.async_job(
            lambda: self.host.start_training(
                context_key,
                data.x,
                data.y,
                config=SPACE_TRAINING,
                data_time=data.data_time,
            )
        )
        done = False
        self.state.training_now = context_key
        try:
            while not done:  # each chunk is one executor job; the loop runs between them
                done = await self.async_job(partial(job.run, max_seconds=TRAIN_CHUNK_SECONDS))
            report = await self.async_job(job.commit)
        except HostError as err:
            if err.reason != "superseded":
                raise
            # a merge landed while training ran: the merge stays, the space trains again later
            LOGGER.info("%s: %s", self.settings.name, err)
            return None
        finally:
            self.state.training_now = None
        summary = TrainingSummary(
            report,
            int(data.y.size),
            time.time(),
            self.host.slot(context_key).version,
            job.decision,
        )
        self.state.training[task] = summary
        return summary
