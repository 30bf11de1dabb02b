"""The occupancy binary sensor of each space: the learned probability with hysteresis."""

from __future__ import annotations

from typing import Any

from homeassistant.components.binary_sensor import BinarySensorDeviceClass, BinarySensorEntity
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .const import Task
from .data import MlmuleConfigEntry
from .entity import MlmuleEntity

PARALLEL_UPDATES = 0


async def async_setup_entry(
    hass: HomeAssistant,
    entry: MlmuleConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    for subentry_id, coordinator in entry.runtime_data.spaces.items():
        if Task.OCCUPANCY in coordinator.settings.tasks:
            async_add_entities(
                [OccupancyBinarySensor(coordinator, "occupancy")], config_subentry_id=subentry_id
            )


class OccupancyBinarySensor(MlmuleEntity, BinarySensorEntity):
    """On while the space is predicted occupied; the thresholds and hold keep it from flapping."""

    _attr_device_class = BinarySensorDeviceClass.OCCUPANCY
    # both change with every prediction; the probability has its own sensor
    _unrecorded_attributes = frozenset({"probability", "why"})

    @property
    def is_on(self) -> bool | None:
        return self.coordinator.data.occupied

    @property
    def extra_state_attributes(self) -> dict[str, Any]:
        data = self.coordinator.data
        slot = self.coordinator.host.slot(self.coordinator.settings.context_key(Task.OCCUPANCY))
        return {
            "probability": None
            if data.occupancy_probability is None
            else round(data.occupancy_probability, 4),
            "model_version": slot.version,
            "why": [{"input": role, "effect": round(effect, 4)} for role, effect in data.why],
        }
