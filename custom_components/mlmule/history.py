"""Reading training data from the recorder: bounded chunks, on the recorder's own executor."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import cast

from homeassistant.components.recorder import history
from homeassistant.const import (
    COMPRESSED_STATE_LAST_UPDATED,
    COMPRESSED_STATE_STATE,
    STATE_UNAVAILABLE,
)
from homeassistant.core import HomeAssistant, State
from homeassistant.helpers.recorder import get_instance
from homeassistant.util import dt as dt_util

from .core.clock import ReplayClock

HISTORY_CHUNK = timedelta(hours=12)

StateChanges = dict[str, list[tuple[float, str]]]


async def async_state_changes(
    hass: HomeAssistant,
    entity_ids: Iterable[str],
    start: datetime,
    end: datetime,
    *,
    chunk: timedelta = HISTORY_CHUNK,
    clock: ReplayClock | None = None,
) -> StateChanges:
    """Every state change of the entities in [start, end) as (epoch seconds, state) pairs.

    The first chunk includes each entity's state at `start`, so the series begin with a known
    value. Each chunk is one recorder query on the recorder's executor, never on the event loop;
    `unknown` and `unavailable` are kept as they are (the feature extractor flags them).
    With a replay `clock`, `start`, `end` and the returned times are scene times; the recorder
    is queried over the wall-clock span that shows them.
    """
    ids = sorted(set(entity_ids))
    changes: StateChanges = {entity_id: [] for entity_id in ids}
    if not ids:
        return changes
    clock = clock or ReplayClock()
    start = dt_util.utc_from_timestamp(clock.to_wall(start.timestamp()))
    end = dt_util.utc_from_timestamp(clock.to_wall(end.timestamp()))
    recorder = get_instance(hass)
    chunk_start = start
    while chunk_start < end:
        chunk_end = min(chunk_start + chunk, end)
        rows = await recorder.async_add_executor_job(
            partial(
                history.get_significant_states,
                hass,
                chunk_start,
                chunk_end,
                ids,
                include_start_time_state=chunk_start == start,
                significant_changes_only=False,
                minimal_response=True,
                no_attributes=True,
                compressed_state_format=True,
            )
        )
        for entity_id, states in rows.items():
            changes[entity_id].extend(_as_change(row, clock) for row in states)
        chunk_start = chunk_end
    return changes


def _as_change(row: State | dict[str, object], clock: ReplayClock) -> tuple[float, str]:
    if isinstance(row, State):
        return clock.to_scene(row.last_updated_timestamp), row.state
    # the recorder stores a removed entity as a row without a state
    state = cast(str | None, row[COMPRESSED_STATE_STATE])
    return clock.to_scene(cast(float, row[COMPRESSED_STATE_LAST_UPDATED])), (
        state or STATE_UNAVAILABLE
    )
