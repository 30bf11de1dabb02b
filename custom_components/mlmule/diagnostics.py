"""Diagnostics of the hub, its spaces and relay spaces, with keys, people, phones and places
redacted."""

from __future__ import annotations

from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.const import CONF_NAME
from homeassistant.core import HomeAssistant

from .const import (
    CONF_ACTIVITY_LABEL,
    CONF_AREA,
    CONF_HOME_NAME,
    CONF_OCCUPANCY_LABEL,
    CONF_OCCUPANCY_LABEL_STATE,
    CONF_PRESENCE,
)
from .coordinator import SpaceCoordinator
from .core.onnx import runtime_diagnostics
from .data import MlmuleConfigEntry
from .relay import RelayCoordinator

# key ids and hashes identify homes and phones; names, label sources and presence triggers
# name people, rooms and their phones
TO_REDACT = {
    CONF_HOME_NAME,
    CONF_NAME,
    CONF_AREA,
    CONF_PRESENCE,
    CONF_OCCUPANCY_LABEL,
    CONF_OCCUPANCY_LABEL_STATE,
    CONF_ACTIVITY_LABEL,
    "identity",
    "origin",
    "lineage",
    "sha256",
    "peer_id",
    "public_key",
    "label",
    "title",
    "contributor",
}


def _knowledge(
    coordinator: SpaceCoordinator | RelayCoordinator, host_status: dict[str, Any]
) -> dict[str, Any]:
    """The knowledge cache per key, taken out of the host's status (contributors as entries,
    so that their ids are redacted), and the knowledge refusals by reason."""
    cache: dict[str, dict[str, Any]] = host_status.pop("knowledge")
    return {
        "rejections": dict(coordinator.knowledge.rejections),
        "cache": {
            key: [{"contributor": name, **entry} for name, entry in entries.items()]
            for key, entries in cache.items()
        },
    }


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: MlmuleConfigEntry
) -> dict[str, Any]:
    data = entry.runtime_data
    # which runtime runs the models (onnxruntime, or the numpy fallback and why), decided on
    # first use: it may import onnxruntime, so in an executor
    runtime = await hass.async_add_executor_job(runtime_diagnostics)
    spaces: dict[str, Any] = {}
    for space_id, coordinator in data.spaces.items():
        prediction = coordinator.data
        # the status builds each model's inference session if it has none yet
        host_status = await coordinator.async_job(coordinator.host.status)
        spaces[space_id] = {
            "settings": {
                "room_kind": coordinator.settings.room_kind,
                "tasks": list(coordinator.settings.tasks),
                "guests_allowed": coordinator.settings.guests_allowed,
                "model_size": coordinator.settings.model_size,
                "exchange_mode": coordinator.settings.exchange_mode.value,
            },
            "inputs": {entity: role.value for entity, role in coordinator.inputs.roles.items()},
            "prediction": None
            if prediction is None
            else {
                "available": prediction.available,
                "unavailable_fraction": prediction.unavailable_fraction,
                "occupancy_probability": prediction.occupancy_probability,
                "occupied": prediction.occupied,
                "activity": prediction.activity,
                "why": [list(item) for item in prediction.why],
            },
            "training": {task: s.as_dict() for task, s in coordinator.state.training.items()},
            "knowledge": {
                **_knowledge(coordinator, host_status),
                "last_distillation": {
                    key: d.as_dict() for key, d in coordinator.state.distillation.items()
                },
            },
            "host": host_status,
            "recent_outcomes": [
                {"accepted": o.accepted, "reason": o.reason, "context_key": o.context_key}
                for o in coordinator.host.last_outcomes
            ],
        }
    relays: dict[str, Any] = {}
    for relay_id, relay in data.relays.items():
        relay_status = await relay.async_job(relay.host.status)
        relays[relay_id] = {
            "settings": {
                "context_keys": list(relay.settings.context_keys),
                "guests_allowed": relay.settings.guests_allowed,
            },
            "phones_seen": len(relay.phones),
            "knowledge": _knowledge(relay, relay_status),
            "host": relay_status,
            "recent_outcomes": [
                {"accepted": o.accepted, "reason": o.reason, "context_key": o.context_key}
                for o in relay.host.last_outcomes
            ],
        }
    return async_redact_data(
        {
            "entry": {"data": dict(entry.data), "options": dict(entry.options)},
            "subentries": {
                subentry_id: {"title": subentry.title, "data": dict(subentry.data)}
                for subentry_id, subentry in entry.subentries.items()
            },
            "runtime": runtime,
            "identity": data.identity.id,
            "trust": [
                {
                    "peer_id": t.peer_id,
                    "role": t.role,
                    "label": t.label,
                    "spaces": "all" if t.spaces is None else sorted(t.spaces),
                }
                for t in data.trust
            ],
            "spaces": spaces,
            "relays": relays,
        },
        TO_REDACT,
    )
