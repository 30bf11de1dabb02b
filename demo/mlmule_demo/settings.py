"""The demo's settings, from the environment."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .broker import BrokerAddress


@dataclass(frozen=True)
class DemoSettings:
    minutes: float | None  # DEMO_MINUTES: stop by itself after this many live minutes
    speed: float  # DEMO_SPEED: scene seconds per wall second
    history_days: int  # DEMO_HISTORY_DAYS: recorder history written before the live part
    port: int  # DEMO_PORT: the first home's Home Assistant (the next free one if taken)
    mqtt: BrokerAddress | None  # MQTT_URL: an existing broker instead of the embedded one
    cache: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> DemoSettings:
        env = dict(os.environ if env is None else env)
        minutes = _number(env, "DEMO_MINUTES", None, low=0.1)
        cache = Path(env.get("MLMULE_CACHE") or Path.home() / ".cache" / "mlmule") / "demo"
        url = env.get("MQTT_URL")
        return cls(
            minutes=minutes,
            speed=_number(env, "DEMO_SPEED", 60.0, low=1.0, high=3600.0) or 60.0,
            history_days=int(_number(env, "DEMO_HISTORY_DAYS", 7, low=1, high=30) or 7),
            port=int(_number(env, "DEMO_PORT", 8123, low=1, high=65535) or 8123),
            mqtt=BrokerAddress.from_url(url) if url else None,
            cache=cache,
        )

    @property
    def live_days(self) -> int:
        """Days of world the live part may show: enough for DEMO_MINUTES, else a week."""
        if self.minutes is None:
            return 7
        return math.ceil(self.minutes * 60 * self.speed / 86400) + 1


def _number(
    env: dict[str, str], name: str, default: float | None, *, low: float, high: float | None = None
) -> float | None:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        raise SystemExit(f"{name} must be between {low:g} and {high if high else 'any'}")
    return value
