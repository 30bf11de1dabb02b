"""The base of every mlmule entity: one device per space or relay space, names from translations."""

from __future__ import annotations

from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .const import DOMAIN
from .coordinator import SpaceCoordinator
from .relay import RelayCoordinator


def _device(space_id: str, name: str, model: str) -> DeviceInfo:
    return DeviceInfo(
        identifiers={(DOMAIN, space_id)},
        name=name,
        manufacturer="ML Mule",
        model=model,
        entry_type=DeviceEntryType.SERVICE,
    )


class MlmuleEntity(CoordinatorEntity[SpaceCoordinator]):
    """An entity of one space; its unique id is the space id and a key."""

    _attr_has_entity_name = True

    def __init__(self, coordinator: SpaceCoordinator, key: str) -> None:
        super().__init__(coordinator)
        settings = coordinator.settings
        self._attr_translation_key = key
        self._attr_unique_id = f"{settings.space_id}_{key}"
        self._attr_device_info = _device(
            settings.space_id, settings.name, f"Learning space ({settings.room_kind})"
        )

    @property
    def available(self) -> bool:
        return (
            super().available
            and self.coordinator.data is not None
            and self.coordinator.data.available
        )


class RelayEntity(CoordinatorEntity[RelayCoordinator]):
    """An entity of one relay space; its unique id is the relay's id and a key."""

    _attr_has_entity_name = True

    def __init__(self, coordinator: RelayCoordinator, key: str) -> None:
        super().__init__(coordinator)
        settings = coordinator.settings
        self._attr_translation_key = key
        self._attr_unique_id = f"{settings.space_id}_{key}"
        self._attr_device_info = _device(settings.space_id, settings.name, "Relay space")
