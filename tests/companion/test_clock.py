"""The replay clock (core/clock.py) and the companion's `replay_clock` setting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlmule_core.clock import ReplayClock
from mlmule_core.errors import ReplayClockError

from mule_companion.config import default_config_text, load_config
from mule_companion.errors import ConfigError

ORIGIN = 1_780_000_000.0


def test_identity_before_the_origin_and_scaled_after_it() -> None:
    clock = ReplayClock(origin=ORIGIN, scale=60)
    assert clock.to_scene(ORIGIN - 3600.0) == ORIGIN - 3600.0
    assert clock.to_scene(ORIGIN) == ORIGIN
    assert clock.to_scene(ORIGIN + 15.0) == ORIGIN + 900.0  # 15 s of wall time: 15 scene minutes
    assert clock.to_wall(ORIGIN + 900.0) == ORIGIN + 15.0
    assert not clock.is_real_time


def test_the_default_clock_is_real_time() -> None:
    clock = ReplayClock()
    assert clock.is_real_time
    assert clock.to_scene(ORIGIN + 12.5) == ORIGIN + 12.5
    assert ReplayClock.from_config(None) == clock
    # a scale of 1 is real time whatever the origin
    assert ReplayClock(origin=ORIGIN, scale=1).to_scene(ORIGIN + 7.0) == ORIGIN + 7.0


def test_now_is_scene_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlmule_core.clock.time.time", lambda: ORIGIN + 2.0)
    assert ReplayClock(origin=ORIGIN, scale=60).now() == ORIGIN + 120.0


@given(
    wall=st.floats(min_value=0.0, max_value=4e9, allow_nan=False),
    scale=st.floats(min_value=1.0, max_value=10_000.0),
)
def test_to_wall_inverts_to_scene_and_both_are_monotonic(wall: float, scale: float) -> None:
    clock = ReplayClock(origin=ORIGIN, scale=scale)
    scene = clock.to_scene(wall)
    assert math.isclose(clock.to_wall(scene), wall, rel_tol=1e-12, abs_tol=1e-3)
    assert clock.to_scene(wall + 1.0) > scene
    assert scene >= wall - 1e-3  # scene times are kept to the millisecond


@pytest.mark.parametrize(
    "config",
    [
        {"origin": ORIGIN},
        {"scale": 60},
        {"origin": ORIGIN, "scale": 60, "speed": 2},
        {"origin": ORIGIN, "scale": 0.5},
        {"origin": ORIGIN, "scale": math.inf},
        {"origin": -1.0, "scale": 60},
        {"origin": "soon", "scale": 60},
        {"origin": ORIGIN, "scale": True},
        [ORIGIN, 60],
    ],
)
def test_bad_settings_are_refused_with_a_stable_reason(config: object) -> None:
    with pytest.raises(ReplayClockError) as error:
        ReplayClock.from_config(config)  # type: ignore[arg-type]
    assert error.value.reason == "replay_clock"


def test_the_companion_reads_replay_clock_from_config_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    text = default_config_text("phone", "UTC")
    path.write_text(text)
    assert load_config(path).replay_clock.is_real_time  # `init` does not write it
    path.write_text(text + f"replay_clock: {{origin: {ORIGIN}, scale: 60}}\n")
    assert load_config(path).replay_clock == ReplayClock(origin=ORIGIN, scale=60.0)


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("{origin: 1780000000, scale: 0.5}", "replay_clock.scale"),
        ("{origin: 1780000000}", "replay_clock.scale"),
        ("{origin: 1780000000, scale: 60, skew: 1}", "replay_clock.skew"),
    ],
)
def test_a_bad_companion_replay_clock_names_the_key(tmp_path: Path, setting: str, key: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(default_config_text("phone", "UTC") + f"replay_clock: {setting}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert [problem[0] for problem in error.value.problems] == [key]
