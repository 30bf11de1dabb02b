"""Constants shared by the mlmule integration's Home Assistant glue."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Final

from homeassistant.util.hass_dict import HassKey

from .core.clock import ReplayClock
from .core.hysteresis import HysteresisConfig
from .core.snapshot import DEFAULT_LIMITS

DOMAIN: Final = "mlmule"
LOGGER: Final = logging.getLogger(__package__)

# The scene clock spaces read "now" from; absent, they run on real time. Nothing a user configures
# sets it: the demo's own component (demo/custom_components/mlmule_replay_clock) puts a sped-up
# replay's clock here before it creates the hub.
DATA_CLOCK: HassKey[ReplayClock] = HassKey(f"{DOMAIN}_clock")

SUBENTRY_SPACE: Final = "space"
SUBENTRY_RELAY: Final = "relay"  # a relay space at a shared place: no sensors, no labels

# hub entry data
CONF_HOME_NAME: Final = "home_name"
CONF_TOPIC_PREFIX: Final = "topic_prefix"
DEFAULT_TOPIC_PREFIX: Final = "mlmule"

# space subentry data
CONF_AREA: Final = "area"
CONF_ROOM_KIND: Final = "room_kind"
CONF_TASKS: Final = "tasks"
CONF_SHARING: Final = "sharing"
CONF_INPUTS: Final = "inputs"
CONF_INPUT_ROLES: Final = "input_roles"
CONF_HOLD_ONLY: Final = "hold_only_inputs"
CONF_OCCUPANCY_LABEL: Final = "occupancy_label"
CONF_OCCUPANCY_LABEL_STATE: Final = "occupancy_label_state"
CONF_ACTIVITY_LABEL: Final = "activity_label"
CONF_PRESENCE: Final = "presence"
CONF_PRESENCE_ENTITY: Final = "entity"
CONF_PRESENCE_STATE: Final = "state"
CONF_ADVANCED: Final = "advanced"
CONF_ON_THRESHOLD: Final = "on_threshold"
CONF_OFF_THRESHOLD: Final = "off_threshold"
CONF_MIN_HOLD: Final = "min_hold_seconds"
CONF_MAX_UNAVAILABLE: Final = "max_unavailable_fraction"
CONF_MODEL_SIZE: Final = "model_size"  # which family of its tasks' models the space runs
CONF_EXCHANGE_MODE: Final = "exchange_mode"  # what the space swaps with phones

# relay subentry data (with name, tasks, sharing and presence as a space's)
CONF_ROOM_KINDS: Final = "room_kinds"

# hub options
CONF_HISTORY_DAYS: Final = "history_days"
CONF_STRATEGY: Final = "strategy"
CONF_HALF_LIFE_HOURS: Final = "half_life_hours"
CONF_GATE_EPSILON: Final = "gate_epsilon"
CONF_MAX_SNAPSHOT_MIB: Final = "max_snapshot_mib"
DEFAULT_HISTORY_DAYS: Final = 10  # the recorder's default retention
DEFAULT_STRATEGY: Final = "mlmule"
DEFAULT_GATE_EPSILON: Final = 0.02
DEFAULT_MAX_SNAPSHOT_MIB: Final = DEFAULT_LIMITS.max_bytes // 2**20

# the core's defaults, offered in the options
DEFAULT_ON_THRESHOLD: Final = HysteresisConfig().on_threshold
DEFAULT_OFF_THRESHOLD: Final = HysteresisConfig().off_threshold
DEFAULT_MIN_HOLD: Final = int(HysteresisConfig().min_hold_seconds)
DEFAULT_MAX_UNAVAILABLE: Final = 0.5


class Task(StrEnum):
    OCCUPANCY = "occupancy"
    ACTIVITY = "activity"


class Sharing(StrEnum):
    """Which paired mules may exchange models with a space."""

    OWNERS = "owners"
    GUESTS = "guests"
