"""The encounter protocol: how a space and a mule exchange snapshots over MQTT.

`docs/protocol.md` specifies the wire format. This package is pure: endpoints take messages and
the time, and return actions (`Publish`, `Deliver`, `Completed`, `Failed`, `Closed`) that a
transport carries out, the Home Assistant MQTT integration on a space's side, paho-mqtt on a
mule's (`mule_companion.mqtt_link`).
"""

from __future__ import annotations

from ..identity import PeerKind
from .actions import Action, Closed, Completed, Deliver, EncounterRef, Failed, Publish
from .config import EndpointStats, ProtocolConfig
from .encounter import MlMulePolicy, WantPolicy
from .endpoint import Endpoint, MuleEndpoint, PeerTrust, SpaceEndpoint
from .wire import (
    DEFAULT_EXCHANGE_MODE,
    LEGACY_EXCHANGE_MODE,
    MAX_CHUNK_SIZE,
    MULE_EXCHANGE_MODE,
    MULE_OWN_EXCHANGE_MODE,
    PROTOCOL_VERSION,
    ExchangeMode,
    Mode,
    OfferEntry,
    PayloadKind,
    Signer,
    SnapshotInfo,
    Topics,
    leader_of,
)

__all__ = [
    "DEFAULT_EXCHANGE_MODE",
    "LEGACY_EXCHANGE_MODE",
    "MAX_CHUNK_SIZE",
    "MULE_EXCHANGE_MODE",
    "MULE_OWN_EXCHANGE_MODE",
    "PROTOCOL_VERSION",
    "Action",
    "Closed",
    "Completed",
    "Deliver",
    "EncounterRef",
    "Endpoint",
    "EndpointStats",
    "ExchangeMode",
    "Failed",
    "MlMulePolicy",
    "Mode",
    "MuleEndpoint",
    "OfferEntry",
    "PayloadKind",
    "PeerKind",
    "PeerTrust",
    "ProtocolConfig",
    "Publish",
    "Signer",
    "SnapshotInfo",
    "SpaceEndpoint",
    "Topics",
    "WantPolicy",
    "leader_of",
]
