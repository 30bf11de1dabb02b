"""The space side of the encounter protocol over Home Assistant's MQTT integration.

The protocol itself is the core's I/O-free state machine (`core.protocol.SpaceEndpoint`); this
adapter subscribes to the home's inbox topics, feeds messages in, publishes what it asks for in
order, ticks its timers, opens an encounter when a paired phone's presence entity reports it in a
space and closes it when the entity reports it gone, and hands delivered snapshots to that space
to verify and merge. In fixed-data mode the space then trains on its own history and sends the
merged, trained model back. A relay space (`relay.py`) takes part like any other space, but
sends its merge back untrained: it has no data to train on.

Every call into the state machine that verifies a signature, hashes a chunk, reassembles a
payload or signs a message runs in an executor, one call at a time and in arrival order; the
event loop only routes. All of the exchange's tasks belong to the config entry, which cancels
them when it unloads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from homeassistant.components import mqtt
from homeassistant.core import Event, EventStateChangedData, HomeAssistant, callback
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.event import async_track_state_change_event, async_track_time_interval

from .const import LOGGER
from .coordinator import SpaceClosed
from .core.errors import MlmuleError, ProtocolError
from .core.identity import Identity, TrustRole, TrustStore
from .core.protocol import (
    Action,
    Closed,
    Completed,
    Deliver,
    Failed,
    Mode,
    PayloadKind,
    ProtocolConfig,
    Publish,
    SpaceEndpoint,
)

if TYPE_CHECKING:
    from .coordinator import SpaceCoordinator
    from .core.knowledge_offers import SealedKnowledge
    from .data import MlmuleConfigEntry
    from .relay import RelayCoordinator

    type ExchangeSpace = SpaceCoordinator | RelayCoordinator

TICK_INTERVAL = timedelta(seconds=1)
LEFT = "left"  # the reason a session ends when the phone's presence entity reports it gone
UNLOADED = "unloaded"


class Exchange:
    """Runs every space's encounters for one hub entry."""

    def __init__(
        self,
        hass: HomeAssistant,
        entry: MlmuleConfigEntry,
        *,
        identity: Identity,
        trust: TrustStore,
        spaces: Mapping[str, ExchangeSpace],
        config: ProtocolConfig,
    ) -> None:
        self.hass = hass
        self.entry = entry
        self.trust = trust
        self.spaces = spaces
        self.endpoint = SpaceEndpoint(identity, trust, config=config)
        # One call into the endpoint at a time, and its messages published before the next:
        # sequence numbers are signed into the messages, so they must leave in order.
        self._endpoint_lock = asyncio.Lock()
        self._closed = False
        self.bytes_sent = 0
        self.exchanges = 0

    async def async_start(self) -> None:
        """Subscribe, serve every space's models and follow the presence entities."""
        for space in self.spaces.values():
            await self.async_serve(space)
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

    async def async_close(self) -> None:
        """Say goodbye to the phones in an encounter; nothing runs afterwards (entry unload)."""
        async with self._endpoint_lock:
            self._closed = True
            now = time.time()
            actions = [
                action
                for ref in self.endpoint.active_sessions()
                for action in self.endpoint.close(ref.session, UNLOADED, now)
            ]
            try:
                await self._async_publish(actions)
            except HomeAssistantError as err:  # MQTT may be going away at the same time
                LOGGER.debug("could not say goodbye to the phones: %s", err)

    async def async_serve(self, space: ExchangeSpace) -> None:
        """Offer the space's current models, and its knowledge where it exchanges knowledge
        (call again whenever one changes)."""
        served: list[
            tuple[str, Mode, frozenset[PayloadKind], Any, bytes, SealedKnowledge | None]
        ] = []
        for context_key, mode in space.exchanged_keys().items():
            slot = space.host.slot(context_key)
            kinds = space.exchange_kinds(context_key)
            knowledge = (
                await space.async_knowledge_offer(context_key, mode)
                if PayloadKind.KNOWLEDGE in kinds
                else None
            )
            served.append((context_key, mode, kinds, slot.offer(), slot.container, knowledge))

        def serve() -> list[Action]:
            space_id = space.settings.space_id
            for context_key, mode, kinds, offer, container, knowledge in served:
                # hashes every container
                self.endpoint.serve(space_id, context_key, mode, offer, container, kinds=kinds)
                if knowledge is not None:
                    self.endpoint.serve_knowledge(
                        space_id, context_key, knowledge.info, knowledge.container
                    )
            return []

        await self._async_call(serve)

    def _background(self, target: Any, name: str) -> None:
        """Run `target` as a task of the entry: cancelled when the entry unloads."""
        self.entry.async_create_background_task(self.hass, target, name, eager_start=True)

    def _presence_listener(
        self, space: ExchangeSpace
    ) -> Callable[[Event[EventStateChangedData]], None]:
        @callback
        def presence_changed(event: Event[EventStateChangedData]) -> None:
            new_state = event.data["new_state"]
            old_state = event.data["old_state"]
            was = {
                mule
                for mule, trigger in space.presence.items()
                if trigger.entity == event.data["entity_id"]
                and old_state is not None
                and trigger.matches(old_state.state)
            }
            now = {
                mule
                for mule, trigger in space.presence.items()
                if trigger.entity == event.data["entity_id"]
                and new_state is not None
                and trigger.matches(new_state.state)
            }
            for mule in sorted(now - was):
                self._background(self.async_open(space, mule), f"mlmule open {mule}")
            for mule in sorted(was - now):
                self._background(self.async_end(space, mule, LEFT), f"mlmule close {mule}")

        return presence_changed

    async def async_open(self, space: ExchangeSpace, mule: str) -> bool:
        """Start an encounter with `mule` in `space`; False when one cannot start now."""
        if not self._may_exchange(space, mule):
            LOGGER.info("%s: not exchanging with %s (not allowed here)", space.settings.name, mule)
            return False
        space_id = space.settings.space_id
        # the knowledge offered to this phone: without what it contributed itself
        knowledge = [
            await space.async_knowledge_offer(context_key, mode, mule)
            for context_key, mode in space.exchanged_keys().items()
            if PayloadKind.KNOWLEDGE in space.exchange_kinds(context_key)
        ]

        def open_encounter() -> list[Action]:
            for sealed in knowledge:
                self.endpoint.serve_knowledge(
                    space_id, sealed.info.context_key, sealed.info, sealed.container
                )
            return self.endpoint.open(space_id, mule, time.time())

        try:
            actions = await self._async_call(open_encounter)
        except ProtocolError as err:
            LOGGER.warning(
                "%s: cannot start an exchange with %s: %s", space.settings.name, mule, err
            )
            return False
        if actions:
            LOGGER.info("%s: %s is here; offering models", space.settings.name, mule)
        return bool(actions)

    async def async_end(self, space: ExchangeSpace, mule: str, reason: str) -> None:
        """End the encounter of `mule` in `space`, if one is going on (the phone gets `bye`),
        so that its next arrival starts a fresh one."""

        def close() -> list[Action]:
            now = time.time()
            return [
                action
                for ref in self.endpoint.active_sessions()
                if ref.space == space.settings.space_id and ref.mule == mule
                for action in self.endpoint.close(ref.session, reason, now)
            ]

        await self._async_call(close)

    def _may_exchange(self, space: ExchangeSpace, mule: str) -> bool:
        entry = self.trust.get(mule)
        if entry is None or not entry.allows(space.settings.space_id):
            return False
        return entry.role is not TrustRole.GUEST or space.settings.guests_allowed

    @callback
    def _async_message(self, message: mqtt.ReceiveMessage) -> None:
        if message.retain:  # the protocol never retains; a retained message is not ours
            return
        payload = message.payload
        if not isinstance(payload, bytes):
            return
        # eagerly started, so messages queue for the endpoint in the order they arrived
        self._background(self._async_receive(message.topic, payload), "mlmule receive")

    async def _async_receive(self, topic: str, payload: bytes) -> None:
        try:
            await self._async_call(lambda: self.endpoint.receive(topic, payload, time.time()))
        except ProtocolError as err:
            # duplicates and stray messages land here too: not worth more than a debug line
            LOGGER.debug("dropped a message on %s: %s", topic, err)

    async def _async_tick(self, _now: Any) -> None:
        async with self._endpoint_lock:
            if self._closed:
                return
            if not self.endpoint.active_sessions():
                # nothing to time out: only forgets old session ids, cheap enough for the loop
                self.endpoint.tick(time.time())
                return
        await self._async_call(lambda: self.endpoint.tick(time.time()))

    async def _async_call(self, call: Callable[[], list[Action]]) -> list[Action]:
        """Run one endpoint call in an executor and publish its messages, in order; then carry
        out the rest of its actions. Returns its actions ([] once the exchange has closed)."""
        async with self._endpoint_lock:
            if self._closed:
                return []
            actions = await self.hass.async_add_executor_job(call)
            await self._async_publish(actions)
        self._handle(actions)
        return actions

    async def _async_publish(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                await mqtt.async_publish(
                    self.hass, action.topic, action.payload, qos=action.qos, retain=False
                )
                self.bytes_sent += len(action.payload)

    def _handle(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                self._background(self._async_deliver(action), "mlmule deliver")
            elif isinstance(action, Completed):
                if (space := self.spaces.get(action.ref.space)) is not None:
                    self._background(
                        space.async_phone_exchanged(action.ref.mule), "mlmule phone exchanged"
                    )
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

    async def _async_settle(self, action: Deliver, *, accepted: bool, reason: str) -> None:
        await self._async_call(
            lambda: self.endpoint.settle(
                action.ref.session,
                action.transfer,
                accepted=accepted,
                reason=reason,
                now=time.time(),
            )
        )

    async def _async_deliver(self, action: Deliver) -> None:
        """Verify and merge a delivered snapshot, answer, and in fixed-data mode train and reply."""
        space = self.spaces.get(action.ref.space)
        if space is None:
            await self._async_settle(action, accepted=False, reason="unknown_space")
            return
        if action.snapshot.kind is PayloadKind.KNOWLEDGE:
            await self._async_deliver_knowledge(space, action)
            return
        entry = self.trust.get(action.ref.mule)
        guest = entry is not None and entry.role is TrustRole.GUEST
        try:
            await space.async_phone_exchanged(action.ref.mule)
            outcome = await space.async_receive(action.payload, guest=guest, mule=action.ref.mule)
        except SpaceClosed:
            return  # the entry is unloading; the phone's session times out
        except OSError as err:  # the model store could not be written: refuse, change nothing
            LOGGER.error("%s: could not store a snapshot: %s", space.settings.name, err)
            await self._async_settle(action, accepted=False, reason="storage_error")
            return
        await self._async_settle(action, accepted=outcome.accepted, reason=outcome.reason)
        if outcome.accepted and outcome.context_key is not None:
            if action.mode is Mode.FIXED and outcome.changed:
                try:
                    await space.async_after_merge(outcome.context_key)
                except SpaceClosed:
                    return
                except (MlmuleError, OSError) as err:
                    LOGGER.warning(
                        "%s: training after the merge failed: %s", space.settings.name, err
                    )
            await self.async_serve(space)
        # the mule adopts the reply, after a merge or a refusal alike, so that it carries what
        # the space serves (none when it carries that already: `ModelHost.answer`)
        slot = space.host.answer(outcome) if action.mode is Mode.FIXED else None
        if slot is not None:
            offer, container = slot.offer(), slot.container
            await self._async_call(
                lambda: self.endpoint.reply(
                    action.ref.session,
                    offer,
                    container,
                    in_reply_to=action.snapshot.sha256,
                    now=time.time(),
                )
            )

    async def _async_deliver_knowledge(self, space: ExchangeSpace, action: Deliver) -> None:
        """Verify and cache a phone's knowledge, answer, then distil from the cache and offer
        what the space knows now. Knowledge has no leader: nothing is sent back in reply."""
        try:
            await space.async_phone_exchanged(action.ref.mule)
            outcome = await space.async_receive_knowledge(action.payload, mule=action.ref.mule)
        except SpaceClosed:
            return
        except OSError as err:  # the cache could not be written: refuse, change nothing
            LOGGER.error("%s: could not store knowledge: %s", space.settings.name, err)
            await self._async_settle(action, accepted=False, reason="storage_error")
            return
        await self._async_settle(action, accepted=outcome.accepted, reason=outcome.reason)
        if not (outcome.accepted and outcome.changed and outcome.context_key is not None):
            return
        try:
            await space.async_after_knowledge(outcome.context_key)
        except SpaceClosed:
            return
        except (MlmuleError, OSError) as err:
            LOGGER.warning("%s: distilling failed: %s", space.settings.name, err)
        await self.async_serve(space)
