"""Repair issues: conditions the user must know about or fix, raised and cleared as they change."""

from __future__ import annotations

from collections.abc import Iterable

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir

from .const import DOMAIN

ISSUE_MQTT = "mqtt_not_configured"
ISSUE_FAST_RUNTIME = "fast_runtime_unavailable"
REJECTIONS_BEFORE_ISSUE = 5


@callback
def async_set_issue(
    hass: HomeAssistant,
    issue_id: str,
    active: bool,
    *,
    translation_key: str,
    severity: ir.IssueSeverity = ir.IssueSeverity.WARNING,
    placeholders: dict[str, str] | None = None,
) -> None:
    """Create the issue while `active`, delete it otherwise (both are idempotent)."""
    if active:
        ir.async_create_issue(
            hass,
            DOMAIN,
            issue_id,
            is_fixable=False,
            severity=severity,
            translation_key=translation_key,
            translation_placeholders=placeholders,
        )
    else:
        ir.async_delete_issue(hass, DOMAIN, issue_id)


@callback
def async_check_space_entities(
    hass: HomeAssistant,
    space_id: str,
    space_name: str,
    *,
    inputs: Iterable[str],
    labels: Iterable[str],
) -> None:
    """Raise (or clear) the issues of inputs and label sources that no longer exist."""
    for kind, entities in (("input_missing", inputs), ("label_source_missing", labels)):
        missing = sorted(e for e in entities if hass.states.get(e) is None)
        async_set_issue(
            hass,
            f"{kind}_{space_id}",
            bool(missing),
            translation_key=kind,
            placeholders={"space": space_name, "entities": ", ".join(missing)},
        )


class RejectionWatch:
    """Counts consecutive rejected snapshots per mule; raises an issue past a threshold."""

    def __init__(self, hass: HomeAssistant) -> None:
        self._hass = hass
        self._streaks: dict[str, int] = {}

    @callback
    def record(self, mule: str, accepted: bool, reason: str) -> None:
        streak = 0 if accepted else self._streaks.get(mule, 0) + 1
        self._streaks[mule] = streak
        if accepted or streak >= REJECTIONS_BEFORE_ISSUE:
            async_set_issue(
                self._hass,
                f"snapshots_rejected_{mule}",
                not accepted,
                translation_key="snapshots_rejected",
                severity=ir.IssueSeverity.ERROR,
                placeholders={"mule": mule, "count": str(streak), "reason": reason},
            )
