"""The hub's config flow, on a real Home Assistant core."""

from __future__ import annotations

import pytest
from homeassistant import config_entries
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from custom_components.mlmule import host_settings
from custom_components.mlmule.const import CONF_HOME_NAME, CONF_TOPIC_PREFIX, DOMAIN
from custom_components.mlmule.core.strategies import (
    FEDASYNC_HALF_LIFE,
    MLMULE_HALF_LIFE,
    make_strategy,
)


async def test_user_step_creates_the_hub(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_HOME_NAME: "Maple Street", CONF_TOPIC_PREFIX: " mlmule/maple/ "}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "Maple Street"
    assert result["data"] == {CONF_HOME_NAME: "Maple Street", CONF_TOPIC_PREFIX: "mlmule/maple"}


async def test_bad_topic_prefix_is_an_error_on_the_field(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient
) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    for bad in ("mlmule/#", "MLMule", "a//b", "with space"):
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {CONF_HOME_NAME: "Home", CONF_TOPIC_PREFIX: bad}
        )
        assert result["type"] is FlowResultType.FORM, bad
        assert result["errors"] == {CONF_TOPIC_PREFIX: "invalid_topic_prefix"}, bad


async def test_aborts_without_mqtt(hass: HomeAssistant) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "mqtt_not_configured"


async def test_only_one_hub_per_instance(hass: HomeAssistant, mqtt_mock: MqttMockHAClient) -> None:
    MockConfigEntry(
        domain=DOMAIN, data={CONF_HOME_NAME: "Home", CONF_TOPIC_PREFIX: "mlmule"}
    ).add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_USER}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "single_instance_allowed"


async def _set_up_hub(hass: HomeAssistant) -> MockConfigEntry:
    entry = MockConfigEntry(
        domain=DOMAIN, data={CONF_HOME_NAME: "Home", CONF_TOPIC_PREFIX: "mlmule"}
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


async def test_options_change_how_spaces_merge_and_reload_the_hub(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient
) -> None:
    entry = await _set_up_hub(hass)
    first_exchange = entry.runtime_data.exchange

    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert result["type"] is FlowResultType.FORM
    options = {
        "history_days": 7,
        "strategy": "fedasync",
        "half_life_hours": 12,
        "gate_epsilon": 0.05,
        "max_snapshot_mib": 2,
    }
    result = await hass.config_entries.options.async_configure(result["flow_id"], options)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    assert entry.options == options
    # reloaded: a new exchange, with the smaller snapshot limit
    assert entry.runtime_data.exchange is not first_exchange
    assert entry.runtime_data.exchange is not None
    assert entry.runtime_data.exchange.endpoint.config.max_payload == 2 * 2**20

    settings = host_settings(entry.options)
    assert settings.strategy == "fedasync"
    assert settings.strategy_options == {
        "gate": "guests",
        "gate_epsilon": 0.05,
        "half_life": 43200.0,
    }
    assert settings.limits.max_bytes == 2 * 2**20


@pytest.mark.parametrize(
    ("strategy", "half_life"), [("mlmule", MLMULE_HALF_LIFE), ("fedasync", FEDASYNC_HALF_LIFE)]
)
async def test_an_empty_half_life_keeps_each_strategys_calibrated_default(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient, strategy: str, half_life: float
) -> None:
    entry = await _set_up_hub(hass)

    result = await hass.config_entries.options.async_init(entry.entry_id)
    options = {
        "history_days": 10,
        "strategy": strategy,
        "gate_epsilon": 0.02,
        "max_snapshot_mib": 4,
    }
    result = await hass.config_entries.options.async_configure(result["flow_id"], options)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    assert "half_life_hours" not in entry.options

    settings = host_settings(entry.options)
    assert "half_life" not in settings.strategy_options
    described = make_strategy(settings.strategy, **settings.strategy_options).describe()
    assert (described["gate"], described["half_life"]) == ("guests", half_life)
