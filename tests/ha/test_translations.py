"""Every string the integration shows has an English text, and every icon an entity or action.

Core's hassfest checks this for core integrations; a custom integration must do it itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from custom_components.mlmule.core.families import MODEL_SIZES
from custom_components.mlmule.core.protocol import ExchangeMode
from custom_components.mlmule.repairs import (
    ISSUE_INPUT_MISSING,
    ISSUE_LABEL_MISSING,
    ISSUE_MQTT,
    ISSUE_REJECTED,
)
from custom_components.mlmule.sensor import KNOWLEDGE_SENSORS, RELAY_SENSORS, SENSORS

INTEGRATION = Path(__file__).resolve().parents[2] / "custom_components" / "mlmule"
EN = json.loads((INTEGRATION / "translations" / "en.json").read_text())
ICONS = json.loads((INTEGRATION / "icons.json").read_text())
SERVICES = yaml.safe_load((INTEGRATION / "services.yaml").read_text())
GLUE = {path.name: path.read_text() for path in INTEGRATION.glob("*.py")}


def test_every_action_and_field_is_translated_and_has_an_icon() -> None:
    assert set(SERVICES) == set(EN["services"]) == set(ICONS["services"])
    for name, service in SERVICES.items():
        assert set(service.get("fields", {})) == set(EN["services"][name]["fields"]), name


def test_every_entity_has_a_name_and_an_icon() -> None:
    sensors = {description.key for description in (*SENSORS, *KNOWLEDGE_SENSORS, *RELAY_SENSORS)}
    assert set(EN["entity"]["sensor"]) == sensors == set(ICONS["entity"]["sensor"])
    assert (
        set(EN["entity"]["binary_sensor"]) == {"occupancy"} == set(ICONS["entity"]["binary_sensor"])
    )


def test_every_raised_exception_has_a_message() -> None:
    used = {
        key
        for source in GLUE.values()
        for key in re.findall(r'translation_key="([a-z_]+)"', source)
    }
    known = set(EN["exceptions"]) | set(EN["issues"])
    assert used <= known, used - known


def test_every_repair_issue_has_a_title_and_description() -> None:
    kinds = {ISSUE_MQTT, ISSUE_INPUT_MISSING, ISSUE_LABEL_MISSING, ISSUE_REJECTED}
    assert set(EN["issues"]) == kinds
    for issue in EN["issues"].values():
        assert issue["title"]
        assert issue["description"]


def test_every_flow_error_and_abort_is_translated() -> None:
    flow = GLUE["config_flow.py"]
    errors = set(re.findall(r'errors\[[A-Z_]+\] = "([a-z_]+)"', flow))
    errors |= set(re.findall(r'\[CONF_[A-Z_]+\] = "([a-z_]+)"', flow))
    aborts = set(re.findall(r'async_abort\(reason="([a-z_]+)"\)', flow))
    known_errors = set(EN["config"]["error"]).union(
        *(subentry["error"] for subentry in EN["config_subentries"].values())
    )
    assert errors
    assert errors <= known_errors, errors - known_errors
    assert aborts <= set(EN["config"]["abort"]), aborts


def test_every_selector_option_is_translated() -> None:
    for key, options in {
        "room_kind": ["bedroom", "kitchen", "living_room", "office", "bathroom", "hallway", "home"],
        "task": ["occupancy", "activity"],
        "relay_task": ["occupancy", "activity", "phone_activity"],
        "sharing": ["owners", "guests"],
        "strategy": ["mlmule", "fedasync", "fedavg"],
        "model_size": list(MODEL_SIZES),
        "exchange_mode": [mode.value for mode in ExchangeMode],
    }.items():
        assert set(EN["selector"][key]["options"]) == set(options), key
