"""Demo only: run this Home Assistant's mlmule spaces on the demo's replay clock.

The demo replays its world at x60, so the spaces must read features, labels and "now" on the
scene clock (`mlmule_core.clock.ReplayClock`). The shipped integration has no option for that; it
reads its clock from `hass.data[DATA_CLOCK]`, real time when absent. This component, linked into
the demo's configuration directory next to mlmule and never installed by HACS, puts the clock
there from YAML:

    mlmule_replay_clock:
      origin: 1790000000.0   # epoch seconds from which scene time runs faster
      scale: 60

It must be set up before the hub entry (the demo creates the hub once Home Assistant runs).
"""

from __future__ import annotations

import logging

import voluptuous as vol
from homeassistant.core import HomeAssistant
from homeassistant.helpers.typing import ConfigType
from homeassistant.util import dt as dt_util

from custom_components.mlmule.const import DATA_CLOCK
from custom_components.mlmule.const import DOMAIN as MLMULE
from custom_components.mlmule.core.clock import MAX_SCALE, ReplayClock

DOMAIN = "mlmule_replay_clock"
LOGGER = logging.getLogger(__name__)

CONFIG_SCHEMA = vol.Schema(
    {
        DOMAIN: vol.Schema(
            {
                vol.Required("origin"): vol.All(vol.Coerce(float), vol.Range(min=0)),
                vol.Required("scale"): vol.All(vol.Coerce(float), vol.Range(min=1, max=MAX_SCALE)),
            }
        )
    },
    extra=vol.ALLOW_EXTRA,
)


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    if hass.config_entries.async_loaded_entries(MLMULE):
        LOGGER.error("mlmule's hub is already running on real time; set up the clock before it")
        return False
    clock = ReplayClock.from_config(config[DOMAIN])
    hass.data[DATA_CLOCK] = clock
    LOGGER.warning(
        "Replay clock: from %s on, mlmule's scene time runs %gx faster than the wall clock",
        dt_util.utc_from_timestamp(clock.origin).isoformat(),
        clock.scale,
    )
    return True
