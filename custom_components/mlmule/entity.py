"""The base of every mlmule entity: one device per space, names from translations."""

from __future__ import annotations

from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .const import DOMAIN
from .coordinator import SpaceCoordinator


class MlmuleEntity(CoordinatorEntity[SpaceCoordinator]):
    """An entity of one space; its unique id is the space id and a key."""

    _attr_has_entity_name = True

    def __init__(self, coordinator: SpaceCoordinator, key: str) -> None:
        super().__init__(coordinator)
        settings = coordinator.settings
        self._attr_translation_key = key
        self._attr_unique_id = f"{settings.space_id}_{key}"
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, settings.space_id)},
            name=settings.name,
            manufacturer="ML Mule",
            model=f"Learning space ({settings.room_kind})",
            entry_type=DeviceEntryType.SERVICE,
        )

    @property
    def available(self) -> bool:
        return (
            super().available
            and self.coordinator.data is not None
            and self.coordinator.data.available
        )
