"""Which Home Assistant entities can feed a space, and in which role."""

from __future__ import annotations

from collections.abc import Iterable

from homeassistant.core import HomeAssistant
from homeassistant.helpers import area_registry as ar
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.selector import EntityFilterSelectorConfig

# (domain, device class or None for any) -> feature role of the core's extractor
ROLE_BY_DOMAIN_CLASS: dict[tuple[str, str | None], str] = {
    ("binary_sensor", "motion"): "motion",
    ("binary_sensor", "occupancy"): "motion",
    ("binary_sensor", "presence"): "motion",
    ("binary_sensor", "door"): "door",
    ("binary_sensor", "window"): "door",
    ("binary_sensor", "opening"): "door",
    ("binary_sensor", "garage_door"): "door",
    ("light", None): "light",
    ("sensor", "illuminance"): "illuminance",
    ("sensor", "carbon_dioxide"): "co2",
    ("sensor", "temperature"): "temperature",
    ("sensor", "humidity"): "humidity",
    ("sensor", "power"): "power",
    ("media_player", None): "media",
}


def input_filters() -> list[EntityFilterSelectorConfig]:
    """Entity selector filters matching every supported input."""
    filters: list[EntityFilterSelectorConfig] = []
    for domain, device_class in ROLE_BY_DOMAIN_CLASS:
        if device_class is None:
            filters.append(EntityFilterSelectorConfig(domain=domain))
        else:
            filters.append(EntityFilterSelectorConfig(domain=domain, device_class=device_class))
    return filters


def entity_device_class(hass: HomeAssistant, entity_id: str) -> str | None:
    """The device class as the state reports it, else as the entity registry knows it."""
    if (state := hass.states.get(entity_id)) is not None and (
        device_class := state.attributes.get("device_class")
    ):
        return str(device_class)
    if (entry := er.async_get(hass).async_get(entity_id)) is not None:
        return entry.device_class or entry.original_device_class
    return None


def input_role(hass: HomeAssistant, entity_id: str) -> str | None:
    """The feature role an entity plays, or None when it cannot be an input."""
    domain = entity_id.split(".", 1)[0]
    if (domain, None) in ROLE_BY_DOMAIN_CLASS:
        return ROLE_BY_DOMAIN_CLASS[(domain, None)]
    return ROLE_BY_DOMAIN_CLASS.get((domain, entity_device_class(hass, entity_id)))


def suggested_inputs(hass: HomeAssistant, area_id: str | None) -> list[str]:
    """Entities in the area (directly or through their device) that can be inputs, sorted."""
    if not area_id or ar.async_get(hass).async_get_area(area_id) is None:
        return []
    entities = er.async_get(hass)
    devices = dr.async_get(hass)
    candidates: set[str] = {
        entry.entity_id for entry in er.async_entries_for_area(entities, area_id)
    }
    for device in dr.async_entries_for_area(devices, area_id):
        candidates.update(
            entry.entity_id
            for entry in er.async_entries_for_device(entities, device.id)
            if entry.area_id in (None, area_id)
        )
    return sorted(e for e in candidates if input_role(hass, e) is not None)


def unusable_inputs(hass: HomeAssistant, entity_ids: Iterable[str]) -> list[str]:
    return [entity_id for entity_id in entity_ids if input_role(hass, entity_id) is None]
