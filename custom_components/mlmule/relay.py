"""Relay spaces: the models of shared places (an office, a club, a friend's hallway).

A relay space has no sensors and no labels. It keeps a model of each context key it relays,
merges the snapshots that visiting phones bring, and hands the merge back, so that phones from
different homes exchange what their homes learned without meeting there at the same time. It
never trains and never predicts. Its merges are judged by the same promotion rule as every
other change; with no labels the rule cannot decide and serves the merge, so what bounds a
relay is the guest bounds of the strategy (a guest's share capped, its update clipped) and the
homes' own promotion rule, which judges the relay's model on their labels before serving it
(docs/architecture.md, "Relay spaces").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from homeassistant.core import HomeAssistant, callback

from .const import LOGGER
from .coordinator import PHONE_ACTIVITY, ExchangingCoordinator, PresenceTrigger, SpaceClosed
from .core.clock import ReplayClock
from .core.host import ModelHost
from .core.protocol import Mode
from .core.storage import atomic_write_text
from .knowledge import SpaceKnowledge
from .repairs import RejectionWatch

if TYPE_CHECKING:
    from .data import MlmuleConfigEntry

# which phones have exchanged with the relay, kept next to its models
PHONES_FILE = "relay_phones.json"


@dataclass(frozen=True)
class RelaySettings:
    """Per-relay settings from its subentry."""

    space_id: str
    name: str
    context_keys: tuple[str, ...]
    guests_allowed: bool


@dataclass(frozen=True)
class RelayStatus:
    """What the entities of a relay show."""

    merged: int
    rejected: int
    phones_seen: int


def relay_keys(
    tasks: Iterable[str], room_kinds: Iterable[str], shipped: Iterable[str]
) -> list[str]:
    """The context keys a relay relays: each chosen task in each chosen kind of room, where the
    model zoo has a starter model for it (`shipped`)."""
    known = set(shipped)
    kinds = list(room_kinds)
    return [key for task in tasks for kind in kinds if (key := f"{task}/{kind}") in known]


def exchange_mode(context_key: str) -> Mode:
    """Phones train their own activity models (mobile-data mode); every other key is trained
    where the data is, in the spaces (fixed-data mode)."""
    return Mode.MOBILE if context_key.split("/", 1)[0] == PHONE_ACTIVITY else Mode.FIXED


def load_phones(root: Path) -> set[str]:
    """The phones a relay has seen, as it saved them (none if the file is missing or damaged:
    a count on an entity is never a reason not to load the relay)."""
    try:
        document = json.loads((root / PHONES_FILE).read_text())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as err:
        LOGGER.warning("%s is unreadable (%s); counting phones afresh", root / PHONES_FILE, err)
        return set()
    phones = document.get("phones") if isinstance(document, dict) else None
    return {str(phone) for phone in phones} if isinstance(phones, list) else set()


def save_phones(root: Path, phones: list[str]) -> None:
    atomic_write_text(root / PHONES_FILE, json.dumps({"phones": phones}, indent=1))


class RelayCoordinator(ExchangingCoordinator[RelayStatus, RelaySettings]):
    """The models of one relay space and its counters; nothing here predicts or trains."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: MlmuleConfigEntry,
        settings: RelaySettings,
        *,
        host: ModelHost,
        knowledge: SpaceKnowledge,
        rejections: RejectionWatch,
        presence: dict[str, PresenceTrigger],
        clock: ReplayClock,
    ) -> None:
        # no update interval: the counters change only when phones come by
        super().__init__(
            hass,
            entry,
            settings,
            host=host,
            knowledge=knowledge,
            rejections=rejections,
            presence=presence,
            clock=clock,
        )
        self.phones: set[str] = set()  # the paired phones that exchanged here

    def exchanged_keys(self) -> dict[str, Mode]:
        """Every key the relay relays, in the mode its task is exchanged in."""
        return {key: exchange_mode(key) for key in self.settings.context_keys}

    def status(self) -> RelayStatus:
        return RelayStatus(
            merged=self.host.counters["merged"],
            rejected=self.host.counters["rejected"],
            phones_seen=len(self.phones),
        )

    async def _async_update_data(self) -> RelayStatus:
        return self.status()

    async def async_load_phones(self) -> None:
        """Read the phones seen before (at setup, before the first refresh)."""
        self.phones = await self.async_job(load_phones, self.host.root)

    async def async_phone_exchanged(self, mule: str) -> None:
        """Count a phone the first time it exchanges here (the set is saved at once)."""
        if mule in self.phones:
            return
        self.phones.add(mule)
        try:
            await self.async_job(save_phones, self.host.root, sorted(self.phones))
        except SpaceClosed:
            return
        except OSError as err:
            LOGGER.warning("%s: could not save the phones seen: %s", self.settings.name, err)
        self.async_models_changed()

    @callback
    def async_models_changed(self) -> None:
        self.async_set_updated_data(self.status())
