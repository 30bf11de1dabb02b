"""ML Mule: spaces in this home learn from their own history and from visiting phones."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigSubentry
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant, callback
from homeassistant.exceptions import ConfigEntryNotReady
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.event import (
    async_track_entity_registry_updated_event,
    async_track_time_interval,
)
from homeassistant.helpers.start import async_at_started
from homeassistant.helpers.typing import ConfigType

from .const import (
    CONF_ACTIVITY_LABEL,
    CONF_ADVANCED,
    CONF_EXCHANGE_MODE,
    CONF_GATE_EPSILON,
    CONF_HALF_LIFE_HOURS,
    CONF_HISTORY_DAYS,
    CONF_HOLD_ONLY,
    CONF_HOME_NAME,
    CONF_INPUT_ROLES,
    CONF_INPUTS,
    CONF_MAX_SNAPSHOT_MIB,
    CONF_MAX_UNAVAILABLE,
    CONF_MIN_HOLD,
    CONF_MODEL_SIZE,
    CONF_OCCUPANCY_LABEL,
    CONF_OCCUPANCY_LABEL_STATE,
    CONF_OFF_THRESHOLD,
    CONF_ON_THRESHOLD,
    CONF_PRESENCE,
    CONF_PRESENCE_ENTITY,
    CONF_PRESENCE_STATE,
    CONF_ROOM_KIND,
    CONF_ROOM_KINDS,
    CONF_SHARING,
    CONF_STRATEGY,
    CONF_TASKS,
    CONF_TOPIC_PREFIX,
    DATA_CLOCK,
    DEFAULT_GATE_EPSILON,
    DEFAULT_HISTORY_DAYS,
    DEFAULT_MAX_SNAPSHOT_MIB,
    DEFAULT_MAX_UNAVAILABLE,
    DEFAULT_STRATEGY,
    DOMAIN,
    LOGGER,
    SUBENTRY_RELAY,
    SUBENTRY_SPACE,
    Sharing,
)
from .coordinator import (
    PHONE_ACTIVITY,
    PresenceTrigger,
    SpaceClosed,
    SpaceCoordinator,
    SpaceSettings,
)
from .core.clock import ReplayClock
from .core.errors import MlmuleError
from .core.families import DEFAULT_MODEL_SIZE, MODEL_SIZES, ModelSize, model_size_of
from .core.features import SensorRole
from .core.host import HostSettings, ModelHost
from .core.hysteresis import HysteresisConfig
from .core.identity import Identity, PeerKind, TrustStore
from .core.onnx import load_model
from .core.protocol import LEGACY_EXCHANGE_MODE, ExchangeMode, ProtocolConfig
from .core.snapshot import SnapshotLimits
from .core.space import SpaceInputs
from .core.starter import load_starter, starter_index
from .data import HubData, MlmuleConfigEntry, MlmuleData, PresenceData, RelayData, SpaceData
from .exchange import Exchange
from .inputs import input_role
from .knowledge import SpaceKnowledge
from .relay import RelayCoordinator, RelaySettings, relay_keys
from .repairs import (
    ISSUE_MQTT,
    RejectionWatch,
    async_clear_issues,
    async_clear_stale_issues,
    async_set_issue,
)
from .services import async_setup_services

# Configured through the UI only. The one YAML key is a developer option for replays (the demo):
CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)
PLATFORMS: list[Platform] = [Platform.BINARY_SENSOR, Platform.SENSOR]
TRAIN_INTERVAL = timedelta(days=1)


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register the actions (they work on whichever hub entry is loaded)."""
    async_setup_services(hass)
    return True


def replay_clock(hass: HomeAssistant) -> ReplayClock:
    """The clock spaces read "now" from: real time, unless something set up before the hub put
    a replay clock under `DATA_CLOCK` (only the demo does, see const.py)."""
    return hass.data.get(DATA_CLOCK) or ReplayClock()


async def async_setup_entry(hass: HomeAssistant, entry: MlmuleConfigEntry) -> bool:
    """Set up the hub and its spaces once Home Assistant's MQTT client is connected."""
    if not await mqtt.async_wait_for_mqtt_client(hass):
        raise ConfigEntryNotReady(translation_domain=DOMAIN, translation_key="mqtt_unavailable")
    root = Path(hass.config.path(DOMAIN))
    hub = cast(HubData, entry.data)
    home_name = hub[CONF_HOME_NAME]
    try:
        identity, trust = await hass.async_add_executor_job(_load_identity, root, home_name)
    except MlmuleError as err:
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN,
            translation_key="identity_unreadable",
            translation_placeholders={"error": str(err)},
        ) from err
    entry.runtime_data = MlmuleData(
        home_name=home_name,
        topic_prefix=hub[CONF_TOPIC_PREFIX],
        root=root,
        identity=identity,
        trust=trust,
        rejections=RejectionWatch(hass),
    )
    async_set_issue(hass, ISSUE_MQTT, False, translation_key=ISSUE_MQTT)
    for subentry in entry.subentries.values():
        if subentry.subentry_type == SUBENTRY_SPACE:
            entry.runtime_data.spaces[subentry.subentry_id] = await _async_create_space(
                hass, entry, subentry, root=root
            )
        elif subentry.subentry_type == SUBENTRY_RELAY:
            entry.runtime_data.relays[subentry.subentry_id] = await _async_create_relay(
                hass, entry, subentry, root=root
            )
    # the issues of spaces removed and phones unpaired while the hub was not loaded
    async_clear_stale_issues(
        hass, spaces=set(entry.runtime_data.spaces), mules={peer.peer_id for peer in trust}
    )
    for coordinator in entry.runtime_data.spaces.values():
        await coordinator.async_config_entry_first_refresh()
        coordinator.async_start_listening()
    for relay in entry.runtime_data.relays.values():
        await relay.async_config_entry_first_refresh()
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    exchange = Exchange(
        hass,
        entry,
        identity=identity,
        trust=trust,
        spaces={**entry.runtime_data.spaces, **entry.runtime_data.relays},
        config=protocol_config(entry.options, entry.runtime_data.topic_prefix),
    )
    entry.runtime_data.exchange = exchange
    await exchange.async_start()

    @callback
    def _train_all(reason: str) -> None:
        for coordinator in entry.runtime_data.spaces.values():
            entry.async_create_background_task(
                hass,
                _async_train_in_background(coordinator, reason),
                f"{DOMAIN} train {coordinator.settings.name} ({reason})",
            )

    @callback
    def _after_start(_hass: HomeAssistant) -> None:
        # other integrations' entities exist only now; history training is heavy: only once
        # HA has started, never during start-up
        for coordinator in entry.runtime_data.spaces.values():
            coordinator.async_check_entities()
            entry.async_on_unload(
                async_track_entity_registry_updated_event(
                    hass, coordinator.watched_entities, _entities_changed(coordinator)
                )
            )
        _train_all("start")

    @callback
    def _train_daily(_now: datetime) -> None:
        _train_all("daily")

    entry.async_on_unload(async_at_started(hass, _after_start))
    entry.async_on_unload(async_track_time_interval(hass, _train_daily, TRAIN_INTERVAL))
    loaded = _configuration(entry)

    async def _async_reload_if_changed(hass: HomeAssistant, entry: MlmuleConfigEntry) -> None:
        # spaces added, reconfigured or removed, or options changed: rebuild the spaces
        if _configuration(entry) != loaded:
            hass.config_entries.async_schedule_reload(entry.entry_id)

    entry.async_on_unload(entry.add_update_listener(_async_reload_if_changed))
    return True


async def _async_train_in_background(coordinator: SpaceCoordinator, reason: str) -> None:
    try:
        await coordinator.async_train(reason=reason)
    except SpaceClosed:
        pass  # the entry is unloading
    except (MlmuleError, OSError) as err:
        LOGGER.warning("%s: training (%s) failed: %s", coordinator.settings.name, reason, err)


def _entities_changed(coordinator: SpaceCoordinator) -> Any:
    @callback
    def entities_changed(_event: Any) -> None:
        # an input or label source was removed or renamed: raise (or clear) its repair
        coordinator.async_check_entities()

    return entities_changed


def _configuration(entry: MlmuleConfigEntry) -> Any:
    """What the loaded spaces were built from; a change to it needs a reload."""
    return (
        dict(entry.options),
        {
            subentry_id: (subentry.title, dict(subentry.data))
            for subentry_id, subentry in entry.subentries.items()
        },
    )


def _load_identity(root: Path, home_name: str) -> tuple[Identity, TrustStore]:
    identity = Identity.load_or_create(root / "identity.pem", kind=PeerKind.SPACE, name=home_name)
    return identity, TrustStore.load(root / "trust.json")


def space_inputs(hass: HomeAssistant, subentry: ConfigSubentry) -> SpaceInputs:
    """The space's entities and their roles, as its subentry configures them."""
    data = cast(SpaceData, subentry.data)
    stored = data.get(CONF_INPUT_ROLES, {})
    roles = {
        entity_id: SensorRole(role)
        for entity_id in data[CONF_INPUTS]
        if (role := stored.get(entity_id) or input_role(hass, entity_id)) is not None
    }
    return SpaceInputs(
        roles=roles,
        occupancy_labels=tuple(data.get(CONF_OCCUPANCY_LABEL, ())),
        occupancy_label_state=data.get(CONF_OCCUPANCY_LABEL_STATE) or None,
        activity_label=data.get(CONF_ACTIVITY_LABEL) or None,
        hold_only=frozenset(data.get(CONF_HOLD_ONLY, ())) & set(roles),
        tz=hass.config.time_zone,
    )


def host_settings(
    options: Mapping[str, Any], *, source: str = "", clock: ReplayClock | None = None
) -> HostSettings:
    """How a space's host merges and bounds snapshots, from the hub's options.

    `source` is the space id: the home's spaces share its key, and versions count per space.
    """
    strategy = options.get(CONF_STRATEGY, DEFAULT_STRATEGY)
    strategy_options: dict[str, Any] = {
        # guests' snapshots must not lower the space's accuracy on its own recent data
        "gate": "guests",
        "gate_epsilon": float(options.get(CONF_GATE_EPSILON, DEFAULT_GATE_EPSILON)),
    }
    # without a saved half-life each strategy keeps its own calibrated default
    if strategy != "fedavg" and (hours := options.get(CONF_HALF_LIFE_HOURS)) is not None:
        strategy_options["half_life"] = float(hours) * 3600.0
    max_bytes = int(options.get(CONF_MAX_SNAPSHOT_MIB, DEFAULT_MAX_SNAPSHOT_MIB)) * 2**20
    return HostSettings(
        strategy=strategy,
        strategy_options=strategy_options,
        limits=SnapshotLimits(max_bytes=max_bytes),
        source=source,
        clock=(clock or ReplayClock()).now,
    )


def protocol_config(options: Mapping[str, Any], prefix: str) -> ProtocolConfig:
    max_bytes = int(options.get(CONF_MAX_SNAPSHOT_MIB, DEFAULT_MAX_SNAPSHOT_MIB)) * 2**20
    return ProtocolConfig(prefix=prefix, max_payload=max_bytes, max_buffered_bytes=4 * max_bytes)


async def _async_create_space(
    hass: HomeAssistant,
    entry: MlmuleConfigEntry,
    subentry: ConfigSubentry,
    *,
    root: Path,
) -> SpaceCoordinator:
    data = cast(SpaceData, subentry.data)
    advanced = data.get(CONF_ADVANCED, {})
    settings = SpaceSettings(
        space_id=subentry.subentry_id,
        name=subentry.title,
        room_kind=data[CONF_ROOM_KIND],
        tasks=tuple(data[CONF_TASKS]),
        guests_allowed=data.get(CONF_SHARING) == Sharing.GUESTS,
        inputs=tuple(data[CONF_INPUTS]),
        hysteresis=HysteresisConfig(
            on_threshold=advanced.get(CONF_ON_THRESHOLD, HysteresisConfig.on_threshold),
            off_threshold=advanced.get(CONF_OFF_THRESHOLD, HysteresisConfig.off_threshold),
            min_hold_seconds=advanced.get(CONF_MIN_HOLD, HysteresisConfig.min_hold_seconds),
        ),
        max_unavailable=advanced.get(CONF_MAX_UNAVAILABLE, DEFAULT_MAX_UNAVAILABLE),
        history_days=int(entry.options.get(CONF_HISTORY_DAYS, DEFAULT_HISTORY_DAYS)),
        model_size=model_size(data.get(CONF_MODEL_SIZE)),
        exchange_mode=ExchangeMode(data.get(CONF_EXCHANGE_MODE, LEGACY_EXCHANGE_MODE)),
    )
    inputs = space_inputs(hass, subentry)
    clock = replay_clock(hass)
    shipped = await hass.async_add_executor_job(starter_index)
    # the space's own tasks in its chosen size; the phones' model in the size phones run
    sizes: dict[str, ModelSize] = {
        settings.context_key(task): settings.model_size for task in settings.tasks
    }
    mobile = settings.context_key(PHONE_ACTIVITY)
    if mobile in shipped:
        sizes[mobile] = DEFAULT_MODEL_SIZE
    host = await _async_open_host(hass, entry, subentry, sizes, root=root, clock=clock)
    return SpaceCoordinator(
        hass,
        entry,
        settings,
        inputs=inputs,
        host=host,
        knowledge=await _async_open_knowledge(hass, subentry, host, relay=False),
        rejections=entry.runtime_data.rejections,
        clock=clock,
        presence=presence_triggers(data.get(CONF_PRESENCE, {})),
    )


async def _async_open_host(
    hass: HomeAssistant,
    entry: MlmuleConfigEntry,
    subentry: ConfigSubentry,
    sizes: Mapping[str, ModelSize],
    *,
    root: Path,
    clock: ReplayClock,
) -> ModelHost:
    """The models of a space or relay space, starting from the starter model (in the size
    `sizes` gives) of each key it serves and does not hold yet."""
    data = entry.runtime_data

    def open_host() -> ModelHost:
        host = ModelHost(
            root / subentry.subentry_id,
            data.identity,
            data.trust,
            host_settings(entry.options, source=subentry.subentry_id, clock=clock),
        )
        for context_key, model_size in sizes.items():
            held = host.slot(context_key).spec if host.has(context_key) else None
            # a model of the chosen size (or of no preset: an import) stays; another size is
            # replaced by the chosen size's starter: weights cannot cross sizes, the knowledge
            # cache (distilled after the next training) does
            if held is not None and model_size_of(held) in {model_size, None}:
                continue
            starter = load_starter(context_key, model_size=model_size)
            # the starter is this space's knowledge as of now: installed fresh, so that
            # phones do not refuse it as stale before the space has trained
            now = clock.now()
            installed = host.install(
                load_model(starter.onnx_bytes),
                context_key=context_key,
                data_time=now,
                now=now,
                replace=held is not None,
            )
            if held is not None:
                # a host just opened holds no labelled window: the promotion rule cannot
                # refuse the owner's choice (undecided_no_window)
                LOGGER.info(
                    "%s: %s now runs the %s starter model (v%s)",
                    subentry.title,
                    context_key,
                    model_size,
                    installed.version,
                )
        return host

    try:
        return await hass.async_add_executor_job(open_host)
    except MlmuleError as err:
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN,
            translation_key="space_unloadable",
            translation_placeholders={"space": subentry.title, "error": str(err)},
        ) from err


async def _async_open_knowledge(
    hass: HomeAssistant, subentry: ConfigSubentry, host: ModelHost, *, relay: bool
) -> SpaceKnowledge:
    """The knowledge cache beside a space's or relay's models (read in an executor)."""
    try:
        return await hass.async_add_executor_job(partial(SpaceKnowledge, host, relay=relay))
    except MlmuleError as err:
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN,
            translation_key="space_unloadable",
            translation_placeholders={"space": subentry.title, "error": str(err)},
        ) from err


async def _async_create_relay(
    hass: HomeAssistant, entry: MlmuleConfigEntry, subentry: ConfigSubentry, *, root: Path
) -> RelayCoordinator:
    data = cast(RelayData, subentry.data)
    shipped = await hass.async_add_executor_job(starter_index)
    settings = RelaySettings(
        space_id=subentry.subentry_id,
        name=subentry.title,
        context_keys=tuple(relay_keys(data[CONF_TASKS], data[CONF_ROOM_KINDS], shipped)),
        guests_allowed=data.get(CONF_SHARING) == Sharing.GUESTS,
    )
    clock = replay_clock(hass)
    # a relay relays whatever size phones carry; it keeps the size every key starts in
    host = await _async_open_host(
        hass,
        entry,
        subentry,
        dict.fromkeys(settings.context_keys, DEFAULT_MODEL_SIZE),
        root=root,
        clock=clock,
    )
    relay = RelayCoordinator(
        hass,
        entry,
        settings,
        host=host,
        knowledge=await _async_open_knowledge(hass, subentry, host, relay=True),
        rejections=entry.runtime_data.rejections,
        clock=clock,
        presence=presence_triggers(data.get(CONF_PRESENCE, {})),
    )
    await relay.async_load_phones()
    return relay


def model_size(configured: str | None) -> ModelSize:
    """A space's model size as its subentry stores it (the default if it predates the choice)."""
    return next((size for size in MODEL_SIZES if size == configured), DEFAULT_MODEL_SIZE)


def presence_triggers(configured: Mapping[str, PresenceData]) -> dict[str, PresenceTrigger]:
    """Each phone's presence trigger, as a space's or relay's subentry configures it."""
    return {
        mule: PresenceTrigger(trigger[CONF_PRESENCE_ENTITY], trigger[CONF_PRESENCE_STATE])
        for mule, trigger in configured.items()
    }


async def async_unload_entry(hass: HomeAssistant, entry: MlmuleConfigEntry) -> bool:
    """Unload the entities, end the encounters and wait for the model work still running.

    Home Assistant then cancels the entry's tasks; a task waiting on model work gets
    `SpaceClosed`, so nothing of this instance writes to the spaces' stores any more.
    """
    if not await hass.config_entries.async_unload_platforms(entry, PLATFORMS):
        return False
    data = entry.runtime_data
    if data.exchange is not None:
        await data.exchange.async_close()
    for space in data.spaces.values():
        await space.async_close()
    for relay in data.relays.values():
        await relay.async_close()
    return True


async def async_remove_entry(hass: HomeAssistant, entry: MlmuleConfigEntry) -> None:
    """The hub is deleted: none of its repair issues applies any more."""
    async_clear_issues(hass)


async def async_remove_config_entry_device(
    hass: HomeAssistant, entry: MlmuleConfigEntry, device: dr.DeviceEntry
) -> bool:
    """A space's or relay's device can be removed once its subentry is gone."""
    data = entry.runtime_data
    return not any(
        identifier[0] == DOMAIN and (identifier[1] in data.spaces or identifier[1] in data.relays)
        for identifier in device.identifiers
    )
