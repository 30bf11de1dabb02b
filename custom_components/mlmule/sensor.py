"""Sensors of each space (probabilities, the predicted activity, model health) and of each relay
space (what it merged and rejected, and how many phones it has seen)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from homeassistant.components.sensor import (
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import PERCENTAGE, EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.util import dt as dt_util

from .const import Task
from .coordinator import SpaceCoordinator
from .data import MlmuleConfigEntry
from .entity import MlmuleEntity, RelayEntity
from .relay import RelayCoordinator

PARALLEL_UPDATES = 0

StateValue = float | int | str | datetime | None


@dataclass(frozen=True, kw_only=True)
class MlmuleSensorDescription(SensorEntityDescription):
    """A sensor of a space, optionally tied to one task."""

    task: Task | None = None
    value_fn: Callable[[SpaceCoordinator, str], StateValue]
    attributes_fn: Callable[[SpaceCoordinator, str], dict[str, Any]] | None = None


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 1)


def _accuracy(coordinator: SpaceCoordinator, task: str) -> float | None:
    summary = coordinator.state.training.get(task)
    if summary is None:
        return None
    report = summary.report
    score = report.val_balanced_accuracy if task == Task.OCCUPANCY else report.val_macro_f1
    return _percent(score)


def _data_time(coordinator: SpaceCoordinator, task: str) -> datetime | None:
    meta = coordinator.host.slot(coordinator.settings.context_key(task)).meta
    return dt_util.utc_from_timestamp(meta.data_time) if meta.data_time > 0 else None


def _training(coordinator: SpaceCoordinator, task: str) -> dict[str, Any]:
    summary = coordinator.state.training.get(task)
    attributes = summary.as_dict() if summary else {}
    # the promotion rule's last decision on any change of this model (training, merge, import)
    decision = coordinator.host.decisions.get(coordinator.settings.context_key(task))
    attributes["last_model_change"] = None if decision is None else decision.as_dict()
    return attributes


def _lineage(coordinator: SpaceCoordinator, task: str) -> dict[str, Any]:
    slot = coordinator.host.slot(coordinator.settings.context_key(task))
    return {"model_version": slot.version, "lineage": list(slot.meta.lineage[-5:])}


def knowledge_cache(
    coordinator: SpaceCoordinator | RelayCoordinator, context_keys: Iterable[str]
) -> dict[str, list[dict[str, Any]]]:
    """Per context key, whose knowledge the cache holds and how fresh it is: the contributor
    (a paired phone's label, else its id), its model's family, samples and own score, when it
    was trained and when it arrived. Each key's contributors are weighed by freshness and score
    when the space distils."""
    trust = coordinator.config_entry.runtime_data.trust
    return {
        key: [
            {
                "contributor": entry.label
                if (entry := trust.get(e.contributor))
                else e.contributor,
                "family": e.knowledge.family[:12],
                "samples": e.knowledge.samples,
                "score": e.knowledge.score,
                "trained_at": dt_util.utc_from_timestamp(e.knowledge.trained_at).isoformat(),
                "received_at": dt_util.utc_from_timestamp(e.received_at).isoformat(),
            }
            for e in entries
        ]
        for key in context_keys
        if (entries := coordinator.host.knowledge.entries(key))
    }


def _contributors(coordinator: SpaceCoordinator | RelayCoordinator) -> int:
    return sum(len(coordinator.host.knowledge.entries(key)) for key in coordinator.exchanged_keys())


def _space_knowledge(coordinator: SpaceCoordinator, _task: str) -> dict[str, Any]:
    return {
        "contributors": knowledge_cache(coordinator, coordinator.exchanged_keys()),
        # the promotion rule's verdict on each key's last distillation, with both scores
        "last_distillation": {
            key: summary.as_dict() for key, summary in coordinator.state.distillation.items()
        },
    }


def _knowledge_rejected(coordinator: SpaceCoordinator | RelayCoordinator) -> dict[str, Any]:
    return {"reasons": dict(coordinator.knowledge.rejections)}


def _activity_labels(coordinator: SpaceCoordinator) -> list[str]:
    slot = coordinator.host.slot(coordinator.settings.context_key(Task.ACTIVITY))
    return list(slot.spec.labels)


SENSORS: tuple[MlmuleSensorDescription, ...] = (
    MlmuleSensorDescription(
        key="occupancy_probability",
        task=Task.OCCUPANCY,
        native_unit_of_measurement=PERCENTAGE,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=0,
        value_fn=lambda c, _: _percent(c.data.occupancy_probability),
    ),
    MlmuleSensorDescription(
        key="activity",
        task=Task.ACTIVITY,
        device_class=SensorDeviceClass.ENUM,
        value_fn=lambda c, _: c.data.activity,
        attributes_fn=lambda c, _: {"probability": _percent(c.data.activity_probability)},
    ),
    *(
        MlmuleSensorDescription(
            key=f"{task}_accuracy",
            task=task,
            native_unit_of_measurement=PERCENTAGE,
            state_class=SensorStateClass.MEASUREMENT,
            entity_category=EntityCategory.DIAGNOSTIC,
            value_fn=_accuracy,
            attributes_fn=_training,
        )
        for task in Task
    ),
    *(
        MlmuleSensorDescription(
            key=f"{task}_model_freshness",
            task=task,
            device_class=SensorDeviceClass.TIMESTAMP,
            entity_category=EntityCategory.DIAGNOSTIC,
            entity_registry_enabled_default=False,
            value_fn=_data_time,
            attributes_fn=_lineage,
        )
        for task in Task
    ),
    MlmuleSensorDescription(
        key="snapshots_merged",
        state_class=SensorStateClass.TOTAL_INCREASING,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda c, _: c.host.counters["merged"],
    ),
    MlmuleSensorDescription(
        key="snapshots_rejected",
        state_class=SensorStateClass.TOTAL_INCREASING,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda c, _: c.host.counters["rejected"],
        attributes_fn=lambda c, _: {"reasons": dict(c.host.rejections)},
    ),
)

# a space that exchanges knowledge (exchange mode knowledge or both) has these too
KNOWLEDGE_SENSORS: tuple[MlmuleSensorDescription, ...] = (
    MlmuleSensorDescription(
        key="knowledge_cache",
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda c, _: _contributors(c),
        attributes_fn=_space_knowledge,
    ),
    MlmuleSensorDescription(
        key="knowledge_rejected",
        state_class=SensorStateClass.TOTAL_INCREASING,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda c, _: sum(c.knowledge.rejections.values()),
        attributes_fn=lambda c, _: _knowledge_rejected(c),
    ),
)


@dataclass(frozen=True, kw_only=True)
class RelaySensorDescription(SensorEntityDescription):
    """A sensor of a relay space."""

    value_fn: Callable[[RelayCoordinator], StateValue]
    attributes_fn: Callable[[RelayCoordinator], dict[str, Any]] | None = None


def _relayed_models(relay: RelayCoordinator) -> dict[str, Any]:
    """The version of each model the relay hands out, and the promotion rule's last decision
    on each (a relay has no labels: `undecided_no_window`, served under the guest bounds)."""
    host = relay.host
    return {
        "versions": {key: host.slot(key).version for key in relay.settings.context_keys},
        "last_model_change": {
            key: decision.as_dict()
            for key in relay.settings.context_keys
            if (decision := host.decisions.get(key)) is not None
        },
    }


RELAY_SENSORS: tuple[RelaySensorDescription, ...] = (
    RelaySensorDescription(
        key="snapshots_merged",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value_fn=lambda relay: relay.data.merged,
        attributes_fn=_relayed_models,
    ),
    RelaySensorDescription(
        key="snapshots_rejected",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value_fn=lambda relay: relay.data.rejected,
        attributes_fn=lambda relay: {"reasons": dict(relay.host.rejections)},
    ),
    RelaySensorDescription(
        key="phones_seen",
        state_class=SensorStateClass.MEASUREMENT,
        value_fn=lambda relay: relay.data.phones_seen,
    ),
    RelaySensorDescription(
        key="knowledge_cache",
        state_class=SensorStateClass.MEASUREMENT,
        value_fn=_contributors,
        attributes_fn=lambda relay: {
            "contributors": knowledge_cache(relay, relay.settings.context_keys)
        },
    ),
    RelaySensorDescription(
        key="knowledge_rejected",
        state_class=SensorStateClass.TOTAL_INCREASING,
        value_fn=lambda relay: sum(relay.knowledge.rejections.values()),
        attributes_fn=_knowledge_rejected,
    ),
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: MlmuleConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    for subentry_id, coordinator in entry.runtime_data.spaces.items():
        async_add_entities(
            [
                MlmuleSensor(coordinator, description)
                for description in (
                    *SENSORS,
                    *(KNOWLEDGE_SENSORS if coordinator.exchanges_knowledge else ()),
                )
                if description.task is None or description.task in coordinator.settings.tasks
            ],
            config_subentry_id=subentry_id,
        )
    for subentry_id, relay in entry.runtime_data.relays.items():
        async_add_entities(
            [RelaySensor(relay, description) for description in RELAY_SENSORS],
            config_subentry_id=subentry_id,
        )


class MlmuleSensor(MlmuleEntity, SensorEntity):
    entity_description: MlmuleSensorDescription
    # the activity's probability changes with every prediction; the recorder need not keep it
    _unrecorded_attributes = frozenset({"probability"})

    def __init__(self, coordinator: SpaceCoordinator, description: MlmuleSensorDescription) -> None:
        super().__init__(coordinator, description.key)
        self.entity_description = description
        self._task = description.task.value if description.task else ""
        if description.key == "activity":
            self._attr_options = _activity_labels(coordinator)

    @property
    def available(self) -> bool:
        # model health stays visible while the inputs that feed predictions are unavailable
        if self.entity_category is EntityCategory.DIAGNOSTIC:
            return self.coordinator.last_update_success or self.coordinator.data is not None
        return super().available

    @property
    def native_value(self) -> StateValue:
        return self.entity_description.value_fn(self.coordinator, self._task)

    @property
    def extra_state_attributes(self) -> dict[str, Any] | None:
        if self.entity_description.attributes_fn is None:
            return None
        return self.entity_description.attributes_fn(self.coordinator, self._task)


class RelaySensor(RelayEntity, SensorEntity):
    entity_description: RelaySensorDescription

    def __init__(self, coordinator: RelayCoordinator, description: RelaySensorDescription) -> None:
        super().__init__(coordinator, description.key)
        self.entity_description = description

    @property
    def native_value(self) -> StateValue:
        return self.entity_description.value_fn(self.coordinator)

    @property
    def extra_state_attributes(self) -> dict[str, Any] | None:
        if self.entity_description.attributes_fn is None:
            return None
        return self.entity_description.attributes_fn(self.coordinator)
