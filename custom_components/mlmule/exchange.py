"""The space side of the encounter protocol over Home Assistant's MQTT integration.

The protocol itself is the core's I/O-free state machine (`core.protocol.SpaceEndpoint`); this
adapter subscribes to the home's inbox topics, feeds messages in, publishes what it asks for in
order, ticks its timers, opens an encounter when a paired phone's presence entity reports it in a
space, and hands delivered snapshots to that space to verify and merge. In fixed-data mode the
space then trains on its own history and sends the merged, trained model back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from homeassistant.components import mqtt
from homeassistant.core import Event, EventStateChangedData, HomeAssistant, callback
from homeassistant.helpers.event import async_track_state_change_event, async_track_time_interval

from .const import LOGGER
from .core.errors import MlmuleError, ProtocolError
from .core.host import UNCHANGED
from .core.identity import Identity, TrustStore
from .core.protocol import (
    Action,
    Closed,
    Completed,
    Deliver,
    Failed,
    Mode,
    ProtocolConfig,
    Publish,
    SpaceEndpoint,
)

if TYPE_CHECKING:
    from .coordinator import SpaceCoordinator
    from .data import MlmuleConfigEntry

TICK_INTERVAL = timedelta(seconds=1)
GUEST = "guest"


class Exchange:
    """Runs every space's encounters for one hub entry."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: MlmuleConfigEntry,
        *,
        identity: Identity,
        trust: TrustStore,
        spaces: Mapping[str, SpaceCoordinator],
        config: ProtocolConfig,
    ) -> None:
        self.hass = hass
        self.entry = entry
        self.trust = trust
        self.spaces = spaces
        self.endpoint = SpaceEndpoint(identity, trust, config=config)
        # sequence numbers are signed into the messages, so they must leave in order
        self._publish_lock = asyncio.Lock()
        self.bytes_sent = 0
        self.exchanges = 0

    async def async_start(self) -> None:
        """Subscribe, serve every space's models and follow the presence entities."""
        for space in self.spaces.values():
            self.serve(space)
        for topic in self.endpoint.subscriptions():
            self.entry.async_on_unload(
                await mqtt.async_subscribe(
                    self.hass, topic, self._async_message, qos=1, encoding=None
                )
            )
        self.entry.async_on_unload(
            async_track_time_interval(self.hass, self._async_tick, TICK_INTERVAL)
        )
        for space in self.spaces.values():
            entities = {trigger.entity for trigger in space.presence.values()}
            if entities:
                self.entry.async_on_unload(
                    async_track_state_change_event(
                        self.hass, sorted(entities), self._presence_listener(space)
                    )
                )

    @callback
    def serve(self, space: SpaceCoordinator) -> None:
        """Offer the space's current models (call again whenever one changes)."""
        for context_key, mode in space.exchanged_keys().items():
            slot = space.host.slot(context_key)
            self.endpoint.serve(
                space.settings.space_id, context_key, mode, slot.offer(), slot.container
            )

    def _presence_listener(self, space: SpaceCoordinator) -> Any:
        @callback
        def presence_changed(event: Event[EventStateChangedData]) -> None:
            new_state = event.data["new_state"]
            old_state = event.data["old_state"]
            if new_state is None:
                return
            for mule, trigger in space.presence.items():
                arrived = trigger.matches(new_state.state) and not (
                    old_state is not None and trigger.matches(old_state.state)
                )
                if trigger.entity == event.data["entity_id"] and arrived:
                    self.hass.async_create_task(self.async_open(space, mule), eager_start=True)

        return presence_changed

    async def async_open(self, space: SpaceCoordinator, mule: str) -> bool:
        """Start an encounter with `mule` in `space`; False when one cannot start now."""
        if not self._may_exchange(space, mule):
            LOGGER.info("%s: not exchanging with %s (not allowed here)", space.settings.name, mule)
            return False
        try:
            actions = self.endpoint.open(space.settings.space_id, mule, time.time())
        except ProtocolError as err:
            LOGGER.warning(
                "%s: cannot start an exchange with %s: %s", space.settings.name, mule, err
            )
            return False
        if actions:
            LOGGER.info("%s: %s is here; offering models", space.settings.name, mule)
        await self._async_run(actions)
        return bool(actions)

    def _may_exchange(self, space: SpaceCoordinator, mule: str) -> bool:
        entry = self.trust.get(mule)
        if entry is None or not entry.allows(space.settings.space_id):
            return False
        return entry.role != GUEST or space.settings.guests_allowed

    @callback
    def _async_message(self, message: mqtt.ReceiveMessage) -> None:
        if message.retain:  # the protocol never retains; a retained message is not ours
            return
        payload = message.payload
        if not isinstance(payload, bytes):
            return
        try:
            actions = self.endpoint.receive(message.topic, payload, time.time())
        except ProtocolError as err:
            # duplicates and stray messages land here too: not worth more than a debug line
            LOGGER.debug("dropped a message on %s: %s", message.topic, err)
            return
        if actions:
            self.hass.async_create_task(self._async_run(actions), eager_start=True)

    async def _async_tick(self, _now: Any) -> None:
        actions = self.endpoint.tick(time.time())
        if actions:
            await self._async_run(actions)

    async def _async_run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                async with self._publish_lock:
                    await mqtt.async_publish(
                        self.hass, action.topic, action.payload, qos=action.qos, retain=False
                    )
                self.bytes_sent += len(action.payload)
            elif isinstance(action, Deliver):
                self.hass.async_create_task(self._async_deliver(action), eager_start=True)
            elif isinstance(action, Completed):
                LOGGER.info(
                    "%s: %s %s v%s (%s)",
                    action.ref.mule,
                    "took" if action.accepted else "refused",
                    action.snapshot.context_key,
                    action.snapshot.version,
                    action.reason,
                )
            elif isinstance(action, Failed):
                LOGGER.warning(
                    "exchange with %s in %s failed: %s",
                    action.ref.mule,
                    action.ref.space,
                    action.error,
                )
            elif isinstance(action, Closed):
                self.exchanges += 1
                LOGGER.debug("exchange with %s ended: %s", action.ref.mule, action.reason)

    async def _async_deliver(self, action: Deliver) -> None:
        """Verify and merge a delivered snapshot, answer, and in fixed-data mode train and reply."""
        space = self.spaces.get(action.ref.space)
        now = time.time()
        if space is None:
            await self._async_run(
                self.endpoint.settle(
                    action.ref.session,
                    action.transfer,
                    accepted=False,
                    reason="unknown_space",
                    now=now,
                )
            )
            return
        entry = self.trust.get(action.ref.mule)
        guest = entry is not None and entry.role == GUEST
        outcome = await space.async_receive(action.payload, guest=guest, mule=action.ref.mule)
        await self._async_run(
            self.endpoint.settle(
                action.ref.session,
                action.transfer,
                accepted=outcome.accepted,
                reason=outcome.reason,
                now=time.time(),
            )
        )
        if not outcome.accepted or outcome.context_key is None:
            return
        context_key = outcome.context_key
        if action.mode is Mode.FIXED and outcome.changed:
            try:
                await space.async_train_key(context_key, reason="exchange")
            except MlmuleError as err:
                LOGGER.warning("%s: training after the merge failed: %s", space.settings.name, err)
        self.serve(space)
        # the mule adopts the reply; it needs none when it already carries the current model
        if action.mode is Mode.FIXED and outcome.reason != UNCHANGED:
            slot = space.host.slot(context_key)
            await self._async_run(
                self.endpoint.reply(
                    action.ref.session,
                    slot.offer(),
                    slot.container,
                    in_reply_to=action.snapshot.sha256,
                    now=time.time(),
                )
            )
