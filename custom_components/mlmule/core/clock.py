"""The scene clock of a sped-up replay: wall-clock time in, the time the data lives in out.

Every learning feature is a window over time (motion counts over 15 and 60 minutes, the power
baseline over a day, the time of day). A simulated home replayed at x60 compresses 15 minutes
into 15 seconds, so reading such windows on the wall clock would feed the models nonsense. A
`ReplayClock` maps a wall time `t` to the scene time the replay shows:

    to_scene(t) = t                              for t <= origin
    to_scene(t) = origin + (t - origin) * scale  for t >  origin

History recorded before `origin` keeps its own timestamps; from `origin` on, one wall second is
`scale` scene seconds. Whatever reads "now" or a state's timestamp for features, labels,
training windows or a snapshot's data time goes through the clock, so the same code sees the
same frames whether the home is replayed at x60 or lived in. Protocol timers (retries, timeouts,
message freshness) measure the network and stay on the wall clock. The identity clock (scale 1)
is what every real home uses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ReplayClockError

MAX_SCALE = 10_000.0
SCENE_DECIMALS = 3


@dataclass(frozen=True)
class ReplayClock:
    """Wall time to scene time: identity before `origin`, `scale` times faster after it."""

    origin: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("origin", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ReplayClockError(f"replay clock {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ReplayClockError(f"replay clock {name} must be finite, got {value!r}")
        if not 1.0 <= self.scale <= MAX_SCALE:
            raise ReplayClockError(
                f"replay clock scale must be in [1, {MAX_SCALE:g}], got {self.scale!r}"
            )
        if self.origin < 0:
            raise ReplayClockError(f"replay clock origin must be >= 0, got {self.origin!r}")
        object.__setattr__(self, "origin", float(self.origin))
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> ReplayClock:
        """The clock of a `replay_clock: {origin: <epoch s>, scale: <x>}` setting; None is real
        time. Unknown keys are refused, so a typo cannot silently leave the clock unscaled."""
        if config is None:
            return cls()
        if not isinstance(config, Mapping):
            raise ReplayClockError(f"replay_clock must be a mapping, got {config!r}")
        unknown = sorted(set(config) - {"origin", "scale"})
        if unknown:
            raise ReplayClockError(f"replay_clock: unknown keys {', '.join(map(str, unknown))}")
        if "origin" not in config or "scale" not in config:
            raise ReplayClockError("replay_clock needs both origin and scale")
        return cls(origin=config["origin"], scale=config["scale"])

    @property
    def is_real_time(self) -> bool:
        return self.scale == 1.0

    def to_scene(self, t: float) -> float:
        """The scene time shown at wall time `t`, to the millisecond after the origin (the
        float round trip through wall time must not move a change across a frame boundary)."""
        if t <= self.origin or self.scale == 1.0:
            return t
        return round(self.origin + (t - self.origin) * self.scale, SCENE_DECIMALS)

    def to_wall(self, scene: float) -> float:
        """The wall time at which the scene shows `scene` (the inverse of `to_scene`)."""
        if scene <= self.origin:
            return scene
        return self.origin + (scene - self.origin) / self.scale

    def now(self) -> float:
        """The scene time now."""
        return self.to_scene(time.time())
