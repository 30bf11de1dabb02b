"""quality_scale.yaml names every rule of the scale, and what it does not meet says why."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from awesomeversion import AwesomeVersion

REPO = Path(__file__).resolve().parents[2]
SCALE = yaml.safe_load((REPO / "custom_components" / "mlmule" / "quality_scale.yaml").read_text())
HACS = json.loads((REPO / "hacs.json").read_text())

# hassfest's rule list (Home Assistant 2026.9); a rule missing from the file fails its check
RULES = {
    # Bronze
    "action-setup",
    "appropriate-polling",
    "brands",
    "common-modules",
    "config-flow",
    "config-flow-test-coverage",
    "dependency-transparency",
    "docs-actions",
    "docs-conditions",
    "docs-high-level-description",
    "docs-installation-instructions",
    "docs-removal-instructions",
    "docs-triggers",
    "entity-event-setup",
    "entity-unique-id",
    "has-entity-name",
    "runtime-data",
    "test-before-configure",
    "test-before-setup",
    "unique-config-entry",
    # Silver
    "action-exceptions",
    "config-entry-unloading",
    "docs-configuration-parameters",
    "docs-installation-parameters",
    "entity-unavailable",
    "integration-owner",
    "log-when-unavailable",
    "parallel-updates",
    "reauthentication-flow",
    "test-coverage",
    # Gold
    "devices",
    "diagnostics",
    "discovery",
    "discovery-update-info",
    "docs-data-update",
    "docs-examples",
    "docs-known-limitations",
    "docs-supported-devices",
    "docs-supported-functions",
    "docs-troubleshooting",
    "docs-use-cases",
    "dynamic-devices",
    "entity-category",
    "entity-device-class",
    "entity-disabled-by-default",
    "entity-translations",
    "exception-translations",
    "icon-translations",
    "reconfiguration-flow",
    "repair-issues",
    "stale-devices",
    # Platinum
    "async-dependency",
    "inject-websession",
    "strict-typing",
}


def status(rule: str) -> str:
    value = SCALE["rules"][rule]
    return value if isinstance(value, str) else value["status"]


def test_every_rule_is_there_with_a_valid_status() -> None:
    assert set(SCALE["rules"]) == RULES
    for rule in RULES:
        assert status(rule) in {"done", "todo", "exempt"}, rule


def test_what_is_not_done_says_why() -> None:
    for rule, value in SCALE["rules"].items():
        if status(rule) != "done":
            assert isinstance(value, dict), rule
            assert value.get("comment", "").strip(), rule


def test_brands_is_not_claimed_for_versions_that_do_not_read_the_brand_folder() -> None:
    # Home Assistant reads custom_components/<domain>/brand/ from 2026.3 on
    if AwesomeVersion(HACS["homeassistant"]) < AwesomeVersion("2026.3.0"):
        assert status("brands") != "done"
