"""Repair issues: conditions the user must know about or fix, raised and cleared as they change.

Issue ids name what they are about: `<kind>_<space id>` for a space's inputs and label sources,
`snapshots_rejected_<mule id>` for a phone. An issue goes when its space, phone or hub does.
"""

from __future__ import annotations

from collections.abc import Iterable

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers import issue_registry as ir

from .const import DOMAIN

ISSUE_MQTT = "mqtt_not_configured"
ISSUE_INPUT_MISSING = "input_missing"
ISSUE_LABEL_MISSING = "label_source_missing"
ISSUE_REJECTED = "snapshots_rejected"
SPACE_ISSUES = (ISSUE_INPUT_MISSING, ISSUE_LABEL_MISSING)
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


def _entity_exists(hass: HomeAssistant, registry: er.EntityRegistry, entity_id: str) -> bool:
    # registered entities exist even while their integration is not loaded; entities without
    # a unique id (YAML) are known by their state only
    return registry.async_get(entity_id) is not None or hass.states.get(entity_id) is not None


@callback
def async_check_space_entities(
    hass: HomeAssistant,
    space_id: str,
    space_name: str,
    *,
    inputs: Iterable[str],
    labels: Iterable[str],
) -> None:
    """Raise (or clear) the issues of inputs and label sources that no longer exist.

    Call it once Home Assistant has started: before, other integrations' entities may not
    have been set up yet.
    """
    registry = er.async_get(hass)
    for kind, entities in ((ISSUE_INPUT_MISSING, inputs), (ISSUE_LABEL_MISSING, labels)):
        missing = sorted(e for e in entities if not _entity_exists(hass, registry, e))
        async_set_issue(
            hass,
            f"{kind}_{space_id}",
            bool(missing),
            translation_key=kind,
            placeholders={"space": space_name, "entities": ", ".join(missing)},
        )


@callback
def async_clear_mule_issues(hass: HomeAssistant, mule: str) -> None:
    """A phone was unpaired: its issues go with it."""
    ir.async_delete_issue(hass, DOMAIN, f"{ISSUE_REJECTED}_{mule}")


@callback
def async_clear_stale_issues(hass: HomeAssistant, *, spaces: set[str], mules: set[str]) -> None:
    """Delete the issues of spaces and phones that no longer exist."""
    current = {f"{kind}_{space}" for kind in SPACE_ISSUES for space in spaces}
    current |= {f"{ISSUE_REJECTED}_{mule}" for mule in mules}
    for domain, issue_id in list(ir.async_get(hass).issues):
        if domain == DOMAIN and issue_id != ISSUE_MQTT and issue_id not in current:
            ir.async_delete_issue(hass, DOMAIN, issue_id)


@callback
def async_clear_issues(hass: HomeAssistant) -> None:
    """The hub was deleted: every issue of the integration goes."""
    for domain, issue_id in list(ir.async_get(hass).issues):
        if domain == DOMAIN:
            ir.async_delete_issue(hass, DOMAIN, issue_id)


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
                f"{ISSUE_REJECTED}_{mule}",
                not accepted,
                translation_key=ISSUE_REJECTED,
                severity=ir.IssueSeverity.ERROR,
                placeholders={"mule": mule, "count": str(streak), "reason": reason},
            )

    @callback
    def forget(self, mule: str) -> None:
        """The phone was unpaired: its streak and its issue go."""
        self._streaks.pop(mule, None)
        async_clear_mule_issues(self._hass, mule)
