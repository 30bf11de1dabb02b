"""The world's own error: a configuration it cannot simulate."""

from __future__ import annotations

from mlmule_core.errors import MlmuleError


class WorldConfigError(MlmuleError):
    """A synthetic-world configuration out of range, or a home, room or person it does not have."""

    reason = "world_config"
