"""Repairs, the recorder and the hub's reconfiguration, on a real HA core."""

from __future__ import annotations

from datetime import timedelta

from homeassistant.components.recorder import history
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.recorder import get_instance
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.recorder.common import (
    async_wait_recording_done,
)
from test_space_runtime import SPACE_ID, entity_id, hub, setup  # noqa: F401  (shared fixture)

from custom_components.mlmule.const import CONF_HOME_NAME, CONF_TOPIC_PREFIX, DOMAIN
from custom_components.mlmule.core.identity import Identity, PairingCode


def mlmule_issues(issue_registry: ir.IssueRegistry) -> set[str]:
    return {issue_id for domain, issue_id in issue_registry.issues if domain == DOMAIN}


async def test_an_input_known_to_the_registry_is_not_missing_until_removed(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
    entity_registry: er.EntityRegistry,
    issue_registry: ir.IssueRegistry,
) -> None:
    """An input whose integration has not set it up yet has no state, but is registered: no
    repair. Removing it from the registry raises one at once."""
    hass.states.async_remove("sensor.bed_co2")
    registered = entity_registry.async_get_or_create(
        "sensor",
        "airthings",
        "bedroom-co2",
        suggested_object_id="bed_co2",
        original_device_class="carbon_dioxide",
    )
    assert registered.entity_id == "sensor.bed_co2"
    await setup(hass, hub)
    assert mlmule_issues(issue_registry) == set()

    entity_registry.async_remove("sensor.bed_co2")
    await hass.async_block_till_done()
    issue = issue_registry.async_get_issue(DOMAIN, f"input_missing_{SPACE_ID}")
    assert issue is not None
    assert issue.translation_placeholders == {"space": "Bedroom", "entities": "sensor.bed_co2"}


async def test_issues_go_with_their_phone_space_and_hub(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
    issue_registry: ir.IssueRegistry,
) -> None:
    hass.states.async_remove("input_select.alice_activity")  # a label source is gone
    await setup(hass, hub)
    phone = Identity.generate(kind="mule", name="Alice's phone")
    await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(phone).encode()},
        blocking=True,
        return_response=True,
    )
    space = hub.runtime_data.spaces[SPACE_ID]
    for _ in range(5):
        await space.async_receive(b"junk", guest=False, mule=phone.id)
    assert mlmule_issues(issue_registry) == {
        f"label_source_missing_{SPACE_ID}",
        f"snapshots_rejected_{phone.id}",
    }

    await hass.services.async_call(DOMAIN, "unpair_mule", {"mule_id": phone.id}, blocking=True)
    assert mlmule_issues(issue_registry) == {f"label_source_missing_{SPACE_ID}"}

    assert hass.config_entries.async_remove_subentry(hub, SPACE_ID)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert hub.state is ConfigEntryState.LOADED
    assert mlmule_issues(issue_registry) == set()

    # whatever is left when the hub itself is deleted goes with it
    for _ in range(5):
        hub.runtime_data.rejections.record("bob-phone", False, "bad_signature")
    assert mlmule_issues(issue_registry) == {"snapshots_rejected_bob-phone"}
    await hass.config_entries.async_remove(hub.entry_id)
    await hass.async_block_till_done()
    assert mlmule_issues(issue_registry) == set()


async def test_the_recorder_keeps_no_attribute_that_changes_every_minute(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
) -> None:
    start = dt_util.utcnow() - timedelta(seconds=1)
    await setup(hass, hub)
    space = hub.runtime_data.spaces[SPACE_ID]
    assert space.always_update is False  # an unchanged prediction writes no new state
    occupancy, activity = (
        entity_id(hass, "binary_sensor", "occupancy"),
        entity_id(hass, "sensor", "activity"),
    )
    live = hass.states.get(occupancy)
    assert live is not None
    assert {"why", "probability", "model_version"} <= set(live.attributes)
    await async_wait_recording_done(hass)

    recorded = await get_instance(hass).async_add_executor_job(
        lambda: history.get_significant_states(
            hass, start, None, [occupancy, activity], significant_changes_only=False
        )
    )
    stored = recorded[occupancy][-1].attributes
    assert "why" not in stored
    assert "probability" not in stored
    assert stored["model_version"] == 1
    assert "probability" not in recorded[activity][-1].attributes


async def test_the_hub_can_be_reconfigured(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
) -> None:
    await setup(hass, hub)
    identity = hub.runtime_data.identity.id
    result = await hub.start_reconfigure_flow(hass)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "reconfigure"

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_HOME_NAME: "Oak", CONF_TOPIC_PREFIX: "home/+"}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_TOPIC_PREFIX: "invalid_topic_prefix"}

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_HOME_NAME: "Oak", CONF_TOPIC_PREFIX: "/home/ml/"}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    await hass.async_block_till_done(wait_background_tasks=True)
    assert hub.state is ConfigEntryState.LOADED
    assert dict(hub.data) == {CONF_HOME_NAME: "Oak", CONF_TOPIC_PREFIX: "home/ml"}
    assert hub.title == "Oak"
    data = hub.runtime_data
    assert (data.home_name, data.topic_prefix, data.identity.id) == ("Oak", "home/ml", identity)
    assert data.exchange is not None
    assert data.exchange.endpoint.subscriptions() == [f"home/ml/{identity}/+/mule/+"]
