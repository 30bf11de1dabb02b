"""Diagnostics, held to a snapshot: identities, people, phones and places never appear."""

from __future__ import annotations

import json
from typing import Any

import onnxruntime
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
)
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator
from syrupy.assertion import SnapshotAssertion
from test_space_runtime import hub, setup  # noqa: F401  (the space fixture is shared)

from custom_components.mlmule.const import DOMAIN
from custom_components.mlmule.core.identity import Identity, PairingCode

# what changes from run to run: times, predictions (they depend on the time of day), and the
# onnxruntime each Home Assistant environment installs (checked on its own)
VOLATILE = frozenset(
    {
        "onnxruntime_version",
        "created_at",
        "data_time",
        "finished_at",
        "seconds",
        "size",  # the signed header holds times, whose text length varies
        "occupancy_probability",
        "occupied",
        "activity",
        "why",
    }
)


def stable(value: Any) -> Any:
    """`value` without the volatile keys, at any depth."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(item) for item in value]
    return value


async def test_diagnostics_redact_keys_people_and_places(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    hub: MockConfigEntry,  # noqa: F811
    snapshot: SnapshotAssertion,
) -> None:
    await setup(hass, hub)
    phone = Identity.generate(kind="mule", name="Alice's phone")
    await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(phone).encode(), "role": "guest", "label": "Alice"},
        blocking=True,
        return_response=True,
    )
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, hub)

    text = json.dumps(diagnostics)
    for secret in (
        phone.id,
        hub.runtime_data.identity.id,
        "Alice",
        "Maple",
        "sensor.alice_room",
        "input_select.alice_activity",
    ):
        assert secret not in text, secret
    assert diagnostics["runtime"]["backend"] == "onnxruntime"
    assert diagnostics["runtime"]["onnxruntime_version"] == onnxruntime.__version__
    assert stable(diagnostics) == snapshot
