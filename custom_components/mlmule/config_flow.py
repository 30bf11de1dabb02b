"""Config flow: one hub per Home Assistant instance, a `space` subentry per room or home, and a
`relay` subentry per relay space (a shared place with no sensors of its own)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import voluptuous as vol
from homeassistant.components.mqtt import DOMAIN as MQTT_DOMAIN
from homeassistant.config_entries import (
    SOURCE_RECONFIGURE,
    ConfigEntry,
    ConfigEntryState,
    ConfigFlow,
    ConfigFlowResult,
    ConfigSubentryFlow,
    OptionsFlow,
    SubentryFlowResult,
)
from homeassistant.const import CONF_NAME
from homeassistant.core import HomeAssistant, callback
from homeassistant.data_entry_flow import section
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers import selector

from .const import (
    CONF_ACTIVITY_LABEL,
    CONF_ADVANCED,
    CONF_AREA,
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
    DEFAULT_GATE_EPSILON,
    DEFAULT_HISTORY_DAYS,
    DEFAULT_MAX_SNAPSHOT_MIB,
    DEFAULT_MAX_UNAVAILABLE,
    DEFAULT_MIN_HOLD,
    DEFAULT_OFF_THRESHOLD,
    DEFAULT_ON_THRESHOLD,
    DEFAULT_STRATEGY,
    DEFAULT_TOPIC_PREFIX,
    DOMAIN,
    SUBENTRY_RELAY,
    SUBENTRY_SPACE,
    Sharing,
    Task,
)
from .coordinator import PHONE_ACTIVITY
from .core.context import RoomKind
from .core.families import DEFAULT_MODEL_SIZE, MODEL_SIZES
from .core.identity import TrustEntry, TrustRole
from .core.protocol import DEFAULT_EXCHANGE_MODE, ExchangeMode
from .core.starter import starter_index
from .data import HubData
from .inputs import input_filters, input_role, suggested_inputs, unusable_inputs
from .relay import relay_keys
from .repairs import ISSUE_MQTT, async_set_issue

TOPIC_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-/")

PRESENCE_FILTERS = [
    selector.EntityFilterSelectorConfig(domain=["sensor", "device_tracker", "person"]),
    selector.EntityFilterSelectorConfig(domain="binary_sensor"),
]

OCCUPANCY_LABEL_FILTERS = [
    selector.EntityFilterSelectorConfig(
        domain="binary_sensor", device_class=["occupancy", "presence"]
    ),
    selector.EntityFilterSelectorConfig(
        domain="sensor"
    ),  # room-presence sensors (Bermuda, ESPresense)
    selector.EntityFilterSelectorConfig(domain=["person", "device_tracker"]),
]


def valid_topic_prefix(prefix: str) -> bool:
    """A prefix is lowercase MQTT topic levels without wildcards or empty levels."""
    return bool(prefix) and set(prefix) <= TOPIC_PREFIX_CHARS and all(prefix.split("/"))


def _choice(options: list[str], key: str, *, multiple: bool = False) -> selector.SelectSelector:
    return selector.SelectSelector(
        selector.SelectSelectorConfig(
            options=options,
            translation_key=key,
            multiple=multiple,
            mode=selector.SelectSelectorMode.LIST
            if multiple
            else selector.SelectSelectorMode.DROPDOWN,
        )
    )


def _threshold() -> selector.NumberSelector:
    return selector.NumberSelector(
        selector.NumberSelectorConfig(
            min=0.05, max=0.95, step=0.05, mode=selector.NumberSelectorMode.SLIDER
        )
    )


SPACE_SCHEMA = vol.Schema(
    {
        vol.Required(CONF_NAME): selector.TextSelector(),
        vol.Required(CONF_AREA): selector.AreaSelector(),
        vol.Required(CONF_ROOM_KIND): _choice([k.value for k in RoomKind], "room_kind"),
        vol.Required(CONF_TASKS, default=[Task.OCCUPANCY.value]): _choice(
            [t.value for t in Task], "task", multiple=True
        ),
        vol.Required(CONF_SHARING, default=Sharing.OWNERS.value): _choice(
            [s.value for s in Sharing], "sharing"
        ),
        vol.Required(CONF_MODEL_SIZE, default=DEFAULT_MODEL_SIZE): _choice(
            list(MODEL_SIZES), "model_size"
        ),
        vol.Required(CONF_EXCHANGE_MODE, default=DEFAULT_EXCHANGE_MODE.value): _choice(
            [m.value for m in ExchangeMode], "exchange_mode"
        ),
    }
)

# a relay relays each chosen task in each chosen kind of room (that has a starter model)
RELAY_SCHEMA = vol.Schema(
    {
        vol.Required(CONF_NAME): selector.TextSelector(),
        vol.Required(CONF_TASKS, default=[Task.OCCUPANCY.value, PHONE_ACTIVITY]): _choice(
            [*(t.value for t in Task), PHONE_ACTIVITY], "relay_task", multiple=True
        ),
        vol.Required(CONF_ROOM_KINDS): _choice(
            [k.value for k in RoomKind], "room_kind", multiple=True
        ),
        # a shared place exists to meet other homes' phones; each still has to be paired
        vol.Required(CONF_SHARING, default=Sharing.GUESTS.value): _choice(
            [s.value for s in Sharing], "sharing"
        ),
    }
)

ADVANCED_SCHEMA = vol.Schema(
    {
        vol.Required(CONF_ON_THRESHOLD, default=DEFAULT_ON_THRESHOLD): _threshold(),
        vol.Required(CONF_OFF_THRESHOLD, default=DEFAULT_OFF_THRESHOLD): _threshold(),
        vol.Required(CONF_MIN_HOLD, default=DEFAULT_MIN_HOLD): selector.NumberSelector(
            selector.NumberSelectorConfig(
                min=0,
                max=3600,
                step=10,
                unit_of_measurement="s",
                mode=selector.NumberSelectorMode.BOX,
            )
        ),
        vol.Required(CONF_MAX_UNAVAILABLE, default=DEFAULT_MAX_UNAVAILABLE): _threshold(),
    }
)

INPUTS_SCHEMA = vol.Schema(
    {
        vol.Required(CONF_INPUTS): selector.EntitySelector(
            selector.EntitySelectorConfig(multiple=True, filter=input_filters())
        ),
        vol.Optional(CONF_HOLD_ONLY, default=[]): selector.EntitySelector(
            selector.EntitySelectorConfig(multiple=True, filter=input_filters())
        ),
        vol.Required(CONF_OCCUPANCY_LABEL): selector.EntitySelector(
            selector.EntitySelectorConfig(multiple=True, filter=OCCUPANCY_LABEL_FILTERS)
        ),
        vol.Optional(CONF_OCCUPANCY_LABEL_STATE): selector.TextSelector(),
        vol.Optional(CONF_ACTIVITY_LABEL): selector.EntitySelector(
            selector.EntitySelectorConfig(
                filter=[
                    selector.EntityFilterSelectorConfig(domain=["input_select", "select", "sensor"])
                ]
            )
        ),
        vol.Required(CONF_ADVANCED): section(ADVANCED_SCHEMA, {"collapsed": True}),
    }
)


def validate_inputs(
    hass: HomeAssistant, user_input: Mapping[str, Any], tasks: list[str]
) -> dict[str, str]:
    """Field errors for the inputs step, keyed by field (empty when valid)."""
    errors: dict[str, str] = {}
    inputs = list(user_input.get(CONF_INPUTS, []))
    if not inputs:
        errors[CONF_INPUTS] = "no_inputs"
    elif unusable_inputs(hass, inputs):
        errors[CONF_INPUTS] = "unsupported_input"
    if not set(user_input.get(CONF_HOLD_ONLY, [])) <= set(inputs):
        errors[CONF_HOLD_ONLY] = "hold_only_not_input"
    if Task.ACTIVITY.value in tasks and not user_input.get(CONF_ACTIVITY_LABEL):
        errors[CONF_ACTIVITY_LABEL] = "activity_label_required"
    advanced = user_input.get(CONF_ADVANCED, {})
    if advanced.get(CONF_OFF_THRESHOLD, 0.0) >= advanced.get(CONF_ON_THRESHOLD, 1.0):
        errors[CONF_ADVANCED] = "thresholds_inverted"
    return errors


OPTIONS_SCHEMA = vol.Schema(
    {
        vol.Required(CONF_HISTORY_DAYS, default=DEFAULT_HISTORY_DAYS): selector.NumberSelector(
            selector.NumberSelectorConfig(
                min=1, max=60, step=1, unit_of_measurement="d", mode=selector.NumberSelectorMode.BOX
            )
        ),
        vol.Required(CONF_STRATEGY, default=DEFAULT_STRATEGY): _choice(
            ["mlmule", "fedasync", "fedavg"], "strategy"
        ),
        # empty: the strategy's own default, as the benchmark runs it (ML Mule 72 h, FedAsync 6 h)
        vol.Optional(CONF_HALF_LIFE_HOURS): selector.NumberSelector(
            selector.NumberSelectorConfig(
                min=0.5,
                max=720,
                step=0.5,
                unit_of_measurement="h",
                mode=selector.NumberSelectorMode.BOX,
            )
        ),
        vol.Required(CONF_GATE_EPSILON, default=DEFAULT_GATE_EPSILON): selector.NumberSelector(
            selector.NumberSelectorConfig(
                min=0, max=0.2, step=0.005, mode=selector.NumberSelectorMode.BOX
            )
        ),
        vol.Required(
            CONF_MAX_SNAPSHOT_MIB, default=DEFAULT_MAX_SNAPSHOT_MIB
        ): selector.NumberSelector(
            selector.NumberSelectorConfig(
                min=1,
                max=16,
                step=1,
                unit_of_measurement="MiB",
                mode=selector.NumberSelectorMode.BOX,
            )
        ),
    }
)


class MlmuleOptionsFlow(OptionsFlow):
    """How spaces learn and merge: history, strategy, freshness, guest gate, snapshot size.

    The hub's update listener reloads the entry when the options change.
    """

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        if user_input is not None:
            return self.async_create_entry(data=user_input)
        return self.async_show_form(
            step_id="init",
            data_schema=self.add_suggested_values_to_schema(
                OPTIONS_SCHEMA, self.config_entry.options
            ),
        )


class MlmuleConfigFlow(ConfigFlow, domain=DOMAIN):
    """Create the hub entry that holds this home's identity and MQTT topic prefix."""

    VERSION = 1

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry) -> MlmuleOptionsFlow:
        return MlmuleOptionsFlow()

    @classmethod
    @callback
    def async_get_supported_subentry_types(
        cls, config_entry: ConfigEntry
    ) -> dict[str, type[ConfigSubentryFlow]]:
        return {SUBENTRY_SPACE: SpaceSubentryFlow, SUBENTRY_RELAY: RelaySubentryFlow}

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """Ask for the home's name and topic prefix; MQTT must already be set up."""
        if not self.hass.config_entries.async_entries(MQTT_DOMAIN):
            async_set_issue(
                self.hass,
                ISSUE_MQTT,
                True,
                translation_key=ISSUE_MQTT,
                severity=ir.IssueSeverity.ERROR,
            )
            return self.async_abort(reason="mqtt_not_configured")
        errors: dict[str, str] = {}
        if user_input is not None:
            hub, errors = _validate_hub(user_input)
            if hub is not None:
                return self.async_create_entry(title=hub[CONF_HOME_NAME], data=hub)
        return self.async_show_form(
            step_id="user",
            data_schema=self.add_suggested_values_to_schema(
                _hub_schema(self.hass.config.location_name), user_input
            ),
            errors=errors,
        )

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Rename the home or move its topics; the entry reloads with them."""
        entry = self._get_reconfigure_entry()
        errors: dict[str, str] = {}
        if user_input is not None:
            hub, errors = _validate_hub(user_input)
            if hub is not None:
                return self.async_update_reload_and_abort(
                    entry, title=hub[CONF_HOME_NAME], data=hub
                )
        return self.async_show_form(
            step_id="reconfigure",
            data_schema=self.add_suggested_values_to_schema(
                _hub_schema(entry.data[CONF_HOME_NAME]), user_input or entry.data
            ),
            errors=errors,
        )


def _hub_schema(home_name: str) -> vol.Schema:
    return vol.Schema(
        {
            vol.Required(CONF_HOME_NAME, default=home_name): selector.TextSelector(),
            vol.Required(CONF_TOPIC_PREFIX, default=DEFAULT_TOPIC_PREFIX): selector.TextSelector(),
        }
    )


def _validate_hub(user_input: Mapping[str, Any]) -> tuple[HubData | None, dict[str, str]]:
    """The hub's data from the form, or the field errors."""
    prefix = str(user_input[CONF_TOPIC_PREFIX]).strip().strip("/")
    if not valid_topic_prefix(prefix):
        return None, {CONF_TOPIC_PREFIX: "invalid_topic_prefix"}
    return HubData(home_name=str(user_input[CONF_HOME_NAME]), topic_prefix=prefix), {}


class PairedPhonesFlow(ConfigSubentryFlow):
    """What adding a space and a relay space share: one presence form per paired phone."""

    def __init__(self) -> None:
        self._space: dict[str, Any] = {}
        self._mules: list[TrustEntry] = []

    def _paired_mules(self) -> list[TrustEntry]:
        """Phones paired with the hub that may exchange with this space, in label order."""
        entry = self._get_entry()
        if entry.state is not ConfigEntryState.LOADED:
            return []
        space_id = (
            self._get_reconfigure_subentry().subentry_id
            if self.source == SOURCE_RECONFIGURE
            else None
        )
        guests = self._space.get(CONF_SHARING) == Sharing.GUESTS
        return sorted(
            (
                mule
                for mule in entry.runtime_data.trust
                if mule.kind == "mule"
                and (guests or mule.role is TrustRole.OWNER)
                and (space_id is None or mule.allows(space_id))
            ),
            key=lambda mule: mule.label,
        )

    async def async_step_presence(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        """One form per paired phone: which entity and state mean "this phone is here"."""
        presence: dict[str, dict[str, str]] = dict(self._space.get(CONF_PRESENCE, {}))
        if user_input is not None:
            mule = self._mules.pop(0)
            if user_input.get(CONF_PRESENCE_ENTITY):
                presence[mule.peer_id] = {
                    CONF_PRESENCE_ENTITY: user_input[CONF_PRESENCE_ENTITY],
                    CONF_PRESENCE_STATE: user_input.get(CONF_PRESENCE_STATE, "home"),
                }
            else:
                presence.pop(mule.peer_id, None)
            self._space[CONF_PRESENCE] = presence
        if not self._mules:
            return self._async_finish()
        mule = self._mules[0]
        current = presence.get(mule.peer_id, {})
        schema = vol.Schema(
            {
                vol.Optional(CONF_PRESENCE_ENTITY): selector.EntitySelector(
                    selector.EntitySelectorConfig(filter=PRESENCE_FILTERS)
                ),
                vol.Optional(
                    CONF_PRESENCE_STATE,
                    default=self._space.get(CONF_OCCUPANCY_LABEL_STATE) or "home",
                ): selector.TextSelector(),
            }
        )
        return self.async_show_form(
            step_id="presence",
            data_schema=self.add_suggested_values_to_schema(schema, current),
            description_placeholders={"mule": mule.label, "role": mule.role},
        )

    def _async_finish(self) -> SubentryFlowResult:
        title = self._space[CONF_NAME]
        if self.source == SOURCE_RECONFIGURE:
            # the hub's update listener reloads the entry for the changed space
            return self.async_update_and_abort(
                self._get_entry(), self._get_reconfigure_subentry(), title=title, data=self._space
            )
        return self.async_create_entry(title=title, data=self._space)


class SpaceSubentryFlow(PairedPhonesFlow):
    """Add or reconfigure a space: a room, or the whole home."""

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> SubentryFlowResult:
        return await self._async_space_step("user", user_input, SPACE_SCHEMA)

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        if not self._space:
            self._space = dict(self._get_reconfigure_subentry().data)
        return await self._async_space_step("reconfigure", user_input, SPACE_SCHEMA)

    async def _async_space_step(
        self, step_id: str, user_input: dict[str, Any] | None, schema: vol.Schema
    ) -> SubentryFlowResult:
        errors: dict[str, str] = {}
        if user_input is not None:
            if not user_input[CONF_TASKS]:
                errors[CONF_TASKS] = "no_task"
            elif await self._async_tasks_without_starter(user_input):
                # a space serves from a starter model until it has learned its own
                errors[CONF_TASKS] = "no_starter_model"
            else:
                self._space.update(user_input)
                return await self.async_step_inputs()
        return self.async_show_form(
            step_id=step_id,
            data_schema=self.add_suggested_values_to_schema(schema, user_input or self._space),
            errors=errors,
        )

    async def _async_tasks_without_starter(self, user_input: Mapping[str, Any]) -> list[str]:
        shipped = await self.hass.async_add_executor_job(
            partial(starter_index, model_size=user_input[CONF_MODEL_SIZE])
        )
        kind = user_input[CONF_ROOM_KIND]
        return [task for task in user_input[CONF_TASKS] if f"{task}/{kind}" not in shipped]

    async def async_step_inputs(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        """Pick the feature inputs (suggested from the area) and the label sources."""
        errors: dict[str, str] = {}
        if user_input is not None:
            errors = validate_inputs(self.hass, user_input, self._space[CONF_TASKS])
            if not errors:
                self._space.update(user_input)
                # the roles are fixed now: at start-up an input may not have a state yet
                self._space[CONF_INPUT_ROLES] = {
                    entity_id: input_role(self.hass, entity_id)
                    for entity_id in user_input[CONF_INPUTS]
                }
                self._mules = self._paired_mules()
                return await self.async_step_presence()
        suggested: Mapping[str, Any] = user_input or self._space
        if CONF_INPUTS not in suggested:
            suggested = {
                **suggested,
                CONF_INPUTS: suggested_inputs(self.hass, self._space[CONF_AREA]),
            }
        return self.async_show_form(
            step_id="inputs",
            data_schema=self.add_suggested_values_to_schema(INPUTS_SCHEMA, suggested),
            errors=errors,
        )


class RelaySubentryFlow(PairedPhonesFlow):
    """Add or reconfigure a relay space: the models of a shared place, no sensors, no labels."""

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> SubentryFlowResult:
        return await self._async_relay_step("user", user_input)

    async def async_step_reconfigure(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        if not self._space:
            self._space = dict(self._get_reconfigure_subentry().data)
        return await self._async_relay_step("reconfigure", user_input)

    async def _async_relay_step(
        self, step_id: str, user_input: dict[str, Any] | None
    ) -> SubentryFlowResult:
        errors: dict[str, str] = {}
        if user_input is not None:
            shipped = await self.hass.async_add_executor_job(starter_index)
            if not user_input[CONF_TASKS]:
                errors[CONF_TASKS] = "no_task"
            elif not user_input[CONF_ROOM_KINDS]:
                errors[CONF_ROOM_KINDS] = "no_room_kind"
            elif not relay_keys(user_input[CONF_TASKS], user_input[CONF_ROOM_KINDS], shipped):
                # a relay starts each key from its starter model
                errors[CONF_TASKS] = "no_starter_model"
            else:
                self._space.update(user_input)
                self._mules = self._paired_mules()
                return await self.async_step_presence()
        return self.async_show_form(
            step_id=step_id,
            data_schema=self.add_suggested_values_to_schema(
                RELAY_SCHEMA, user_input or self._space
            ),
            errors=errors,
        )
