"""Turning an occupancy probability into a binary state that does not flap.

Two thresholds (on above `on`, off below `off`), a minimum time between changes, and inputs that may
hold occupancy but never start it: while one of those is active the state will not turn off.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MlmuleError


@dataclass(frozen=True)
class HysteresisConfig:
    on_threshold: float = 0.6
    off_threshold: float = 0.4
    min_hold_seconds: float = 120.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.off_threshold < self.on_threshold <= 1.0:
            raise MlmuleError(
                "thresholds must satisfy 0 <= off < on <= 1, got "
                f"off={self.off_threshold}, on={self.on_threshold}",
                reason="bad_thresholds",
            )
        if self.min_hold_seconds < 0:
            raise MlmuleError("min_hold_seconds must be >= 0", reason="bad_thresholds")


@dataclass
class Hysteresis:
    """The binary occupancy state of one space; feed it every new probability."""

    config: HysteresisConfig
    state: bool = False
    changed_at: float | None = None

    def update(self, probability: float, now: float, *, held: bool = False) -> bool:
        """The state after `probability` at `now`; `held`: a hold-only input is active."""
        holding = (
            self.changed_at is not None and now - self.changed_at < self.config.min_hold_seconds
        )
        if not holding:
            if not self.state and probability >= self.config.on_threshold:
                self._set(True, now)
            elif self.state and probability < self.config.off_threshold and not held:
                self._set(False, now)
        return self.state

    def _set(self, state: bool, now: float) -> None:
        self.state = state
        self.changed_at = now
