"""The occupancy binary state: thresholds, minimum hold, and hold-only inputs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlmule_core.errors import MlmuleError
from mlmule_core.hysteresis import Hysteresis, HysteresisConfig

CONFIG = HysteresisConfig(on_threshold=0.6, off_threshold=0.4, min_hold_seconds=60)


def test_turns_on_above_on_and_off_below_off_only() -> None:
    h = Hysteresis(CONFIG)
    assert [h.update(p, t * 100.0) for t, p in enumerate([0.5, 0.61, 0.5, 0.41, 0.39, 0.55])] == [
        False,
        True,
        True,
        True,
        False,
        False,
    ]


def test_minimum_hold_delays_a_change() -> None:
    h = Hysteresis(CONFIG)
    assert h.update(0.9, 0.0)
    assert h.update(0.1, 30.0)  # held: changed 30 s ago
    assert not h.update(0.1, 61.0)


def test_hold_only_inputs_keep_it_on_but_never_start_it() -> None:
    h = Hysteresis(CONFIG)
    assert not h.update(0.2, 0.0, held=True)
    assert h.update(0.8, 100.0)
    assert h.update(0.1, 200.0, held=True)
    assert not h.update(0.1, 300.0, held=False)


@pytest.mark.parametrize(
    ("on", "off", "hold"), [(0.4, 0.6, 0), (0.5, 0.5, 0), (0.6, 0.4, -1), (1.2, 0.4, 0)]
)
def test_bad_configuration_is_refused(on: float, off: float, hold: float) -> None:
    with pytest.raises(MlmuleError):
        HysteresisConfig(on_threshold=on, off_threshold=off, min_hold_seconds=hold)


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=200))
def test_never_flaps_inside_the_band(probabilities: list[float]) -> None:
    """A probability strictly between the thresholds never changes the state."""
    h = Hysteresis(HysteresisConfig(0.6, 0.4, 0))
    for t, p in enumerate(probabilities):
        before = h.state
        after = h.update(p, float(t))
        if 0.4 <= p < 0.6:
            assert after == before
