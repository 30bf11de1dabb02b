"""The demo's world at any start time: what `make demo` hands the companions passes their checks.

The live demo builds its world from the hour it starts, so its own test sees one start time per
run; these see a fixed spread of them (every weekday, every hour) in the companion's own parser.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mlmule_demo.scenario import choose

from mule_companion.datalog import RowParser

MONDAY = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
HISTORY_DAYS = 7  # the demo's default
LIVE_DAYS = 1
# 7-hour steps from a Monday: 24 starts, one in each hour of the day, over every weekday
STARTS = [MONDAY + 7 * 3600.0 * k for k in range(24)]


@pytest.mark.parametrize(
    "origin", STARTS, ids=lambda t: datetime.fromtimestamp(t, UTC).strftime("%a%H")
)
def test_every_companion_history_is_accepted_by_log_data(origin: float) -> None:
    scenario = choose(origin, HISTORY_DAYS, LIVE_DAYS)
    for person in scenario.companions:
        rows = list(scenario.phone_log_rows(person, origin))
        parser = RowParser(home_aliases={}, now=origin)
        accepted = sum(1 for _ in parser.samples(enumerate(rows, start=2), person.slug))
        assert parser.problems == []
        assert accepted == len(rows) == HISTORY_DAYS * 1440
