"""What a loaded hub entry holds while Home Assistant runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from homeassistant.config_entries import ConfigEntry

from .core.identity import Identity, TrustStore
from .repairs import RejectionWatch

if TYPE_CHECKING:
    from .coordinator import SpaceCoordinator
    from .exchange import Exchange


@dataclass
class MlmuleData:
    """The hub's identity, trust list, spaces and MQTT exchange."""

    home_name: str
    topic_prefix: str
    root: Path
    identity: Identity
    trust: TrustStore
    rejections: RejectionWatch
    spaces: dict[str, SpaceCoordinator] = field(default_factory=dict)
    exchange: Exchange | None = None


type MlmuleConfigEntry = ConfigEntry[MlmuleData]
