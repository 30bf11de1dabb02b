"""Constants shared by the mlmule integration's Home Assistant glue."""

from __future__ import annotations

import logging
from typing import Final

DOMAIN: Final = "mlmule"
LOGGER: Final = logging.getLogger(__package__)

CONF_HOME_NAME: Final = "home_name"
CONF_TOPIC_PREFIX: Final = "topic_prefix"

DEFAULT_TOPIC_PREFIX: Final = "mlmule"
