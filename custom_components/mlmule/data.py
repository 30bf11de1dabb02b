"""What a loaded hub entry holds while Home Assistant runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

from homeassistant.config_entries import ConfigEntry

from .core.identity import Identity, TrustStore
from .repairs import RejectionWatch

if TYPE_CHECKING:
    from .coordinator import SpaceCoordinator
    from .exchange import Exchange
    from .relay import RelayCoordinator


class HubData(TypedDict):
    """The hub entry's data."""

    home_name: str
    topic_prefix: str


class AdvancedData(TypedDict, total=False):
    """The advanced section of a space: how its occupancy binary sensor switches."""

    on_threshold: float
    off_threshold: float
    min_hold_seconds: float
    max_unavailable_fraction: float


class PresenceData(TypedDict):
    """The entity and state that mean "this phone is in this space"."""

    entity: str
    state: str


class SpaceData(TypedDict):
    """A `space` subentry's data, as the subentry flow stores it (keys in `const`)."""

    name: str
    area: NotRequired[str]
    room_kind: str
    tasks: list[str]
    sharing: str
    model_size: NotRequired[str]  # a family preset; `const.DEFAULT_MODEL_SIZE` if absent
    exchange_mode: NotRequired[str]  # an `ExchangeMode`; absent: `LEGACY_EXCHANGE_MODE` (weights)
    inputs: list[str]
    input_roles: NotRequired[dict[str, str]]  # entity id -> feature role, fixed at setup
    hold_only_inputs: NotRequired[list[str]]
    occupancy_label: list[str]
    occupancy_label_state: NotRequired[str]
    activity_label: NotRequired[str]
    presence: NotRequired[dict[str, PresenceData]]  # mule id -> its presence trigger
    advanced: NotRequired[AdvancedData]


class RelayData(TypedDict):
    """A `relay` subentry's data: it relays each task in each kind of room (keys in `const`)."""

    name: str
    tasks: list[str]  # Task values and phone_activity
    room_kinds: list[str]
    sharing: str
    presence: NotRequired[dict[str, PresenceData]]  # mule id -> its presence trigger


@dataclass
class MlmuleData:
    """The hub's identity, trust list, spaces, relay spaces and MQTT exchange."""

    home_name: str
    topic_prefix: str
    root: Path
    identity: Identity
    trust: TrustStore
    rejections: RejectionWatch
    spaces: dict[str, SpaceCoordinator] = field(default_factory=dict)
    relays: dict[str, RelayCoordinator] = field(default_factory=dict)
    exchange: Exchange | None = None


type MlmuleConfigEntry = ConfigEntry[MlmuleData]
