"""Errors of the companion. Each has a stable `reason`, like the core's errors it extends."""

from __future__ import annotations

from mlmule_core.errors import MlmuleError


class CompanionError(MlmuleError):
    """Something the companion cannot do; the message says what to do about it."""

    reason = "companion"


class NotInitialised(CompanionError):
    """The data directory has no identity or configuration yet."""

    reason = "not_initialised"


class ConfigError(CompanionError):
    """A configuration file that is missing a value, has an unknown key, or a bad value.

    `problems` lists each one as `(key path, reason)`, e.g. `("training.epochs", "expected int")`.
    """

    reason = "config_invalid"

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "; ".join(f"{key}: {why}" if key else why for key, why in problems)
        super().__init__(f"{source}: {lines}")


class PairingError(CompanionError):
    """A pairing code or pairing option that cannot be used."""

    reason = "pairing"


class UnknownHome(CompanionError):
    """A home that this phone has not paired with."""

    reason = "unknown_home"


class AgentRunning(CompanionError):
    """Another companion process holds the data directory (the agent is running)."""

    reason = "agent_running"


class DataError(CompanionError):
    """Sensing data that cannot be ingested: each problem names the file, line and column."""

    reason = "data_invalid"

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []
