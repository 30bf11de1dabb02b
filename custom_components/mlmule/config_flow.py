"""Config flow for the mlmule hub: one per Home Assistant instance."""

from __future__ import annotations

from typing import Any

import voluptuous as vol
from homeassistant.components.mqtt import DOMAIN as MQTT_DOMAIN
from homeassistant.config_entries import ConfigFlow, ConfigFlowResult
from homeassistant.helpers import selector

from .const import CONF_HOME_NAME, CONF_TOPIC_PREFIX, DEFAULT_TOPIC_PREFIX, DOMAIN

TOPIC_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-/")


def valid_topic_prefix(prefix: str) -> bool:
    """A prefix is lowercase MQTT topic levels without wildcards or empty levels."""
    return bool(prefix) and set(prefix) <= TOPIC_PREFIX_CHARS and all(prefix.split("/"))


class MlmuleConfigFlow(ConfigFlow, domain=DOMAIN):
    """Create the hub entry that holds this home's identity and MQTT topic prefix."""

    VERSION = 1

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for the home's name and topic prefix; MQTT must already be set up."""
        if not self.hass.config_entries.async_entries(MQTT_DOMAIN):
            return self.async_abort(reason="mqtt_not_configured")
        errors: dict[str, str] = {}
        if user_input is not None:
            prefix = user_input[CONF_TOPIC_PREFIX].strip().strip("/")
            if valid_topic_prefix(prefix):
                return self.async_create_entry(
                    title=user_input[CONF_HOME_NAME],
                    data={CONF_HOME_NAME: user_input[CONF_HOME_NAME], CONF_TOPIC_PREFIX: prefix},
                )
            errors[CONF_TOPIC_PREFIX] = "invalid_topic_prefix"
        schema = vol.Schema(
            {
                vol.Required(
                    CONF_HOME_NAME, default=self.hass.config.location_name
                ): selector.TextSelector(),
                vol.Required(
                    CONF_TOPIC_PREFIX, default=DEFAULT_TOPIC_PREFIX
                ): selector.TextSelector(),
            }
        )
        return self.async_show_form(
            step_id="user",
            data_schema=self.add_suggested_values_to_schema(schema, user_input),
            errors=errors,
        )
