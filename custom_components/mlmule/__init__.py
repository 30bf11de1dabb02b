"""ML Mule: spaces in this home learn from their own history and from visiting phones."""

from __future__ import annotations

from dataclasses import dataclass

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryNotReady

from .const import CONF_HOME_NAME, CONF_TOPIC_PREFIX, DOMAIN


@dataclass
class MlmuleRuntime:
    """What a loaded hub entry holds while Home Assistant runs."""

    home_name: str
    topic_prefix: str


type MlmuleConfigEntry = ConfigEntry[MlmuleRuntime]


async def async_setup_entry(hass: HomeAssistant, entry: MlmuleConfigEntry) -> bool:
    """Set up the hub once Home Assistant's MQTT client is connected."""
    if not await mqtt.async_wait_for_mqtt_client(hass):
        raise ConfigEntryNotReady(translation_domain=DOMAIN, translation_key="mqtt_unavailable")
    entry.runtime_data = MlmuleRuntime(
        home_name=entry.data[CONF_HOME_NAME],
        topic_prefix=entry.data[CONF_TOPIC_PREFIX],
    )
    return True


async def async_unload_entry(hass: HomeAssistant, entry: MlmuleConfigEntry) -> bool:
    """Unload the hub."""
    return True
