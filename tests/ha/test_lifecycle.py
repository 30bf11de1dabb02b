"""The hub's life cycle on a real HA core: its work stops with it, and encounters end with presence.

Reloading an entry is unloading it and setting it up again. These tests unload mid-exchange and
mid-training, check that the old instance writes nothing afterwards, and set the entry up again
from what is on disk: the model must be intact (real ONNX models, real signed snapshots).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from homeassistant.config_entries import ConfigEntryState, ConfigSubentry
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.recorder.common import (
    async_wait_recording_done,
)
from test_exchange import (  # noqa: F401  (the hub fixture is shared)
    KEY,
    SPACE_ID,
    ScriptedMule,
    _subentry,
    hub,
    make_mule,
    start,
    walk_in,
)

from custom_components.mlmule.const import CONF_PRESENCE, DOMAIN
from custom_components.mlmule.coordinator import SpaceCoordinator
from custom_components.mlmule.core.identity import PairingCode
from tests.support.ha_fixtures import space_device

HISTORY_DAYS = 3
STEP = timedelta(minutes=5)
NIGHT_STARTS, NIGHT_ENDS = 22, 7  # hours (UTC) Alice's phone is in the bedroom
TRACKER = "device_tracker.alice_phone"

Files = dict[Path, tuple[int, bytes]]


async def async_write_history(hass: HomeAssistant, days: int = HISTORY_DAYS) -> None:
    """`days` of a bedroom into the recorder: Alice's phone there at night, the motion sensor
    moving while she is, so that the space has enough labelled minutes to train on."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    t = end - timedelta(days=days)
    while t < end:
        night = t.hour >= NIGHT_STARTS or t.hour < NIGHT_ENDS
        moving = night and (t.minute // 5) % 3 == 0
        hass.states.async_set(
            "sensor.alice_room", "bedroom" if night else "kitchen", timestamp=t.timestamp()
        )
        hass.states.async_set(
            "binary_sensor.bed_motion",
            "on" if moving else "off",
            {"device_class": "motion"},
            timestamp=t.timestamp(),
        )
        t += STEP
    hass.states.async_set("sensor.alice_room", "kitchen")
    hass.states.async_set("binary_sensor.bed_motion", "off", {"device_class": "motion"})
    await async_wait_recording_done(hass)


def store_files(root: Path) -> Files:
    """Every file of a space's store, with its modification time and bytes."""
    return {
        path.relative_to(root): (path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


async def start_followed_by_a_tracker(
    hass: HomeAssistant, entry: MockConfigEntry, tmp_path: Path
) -> ScriptedMule:
    """As `start`, but the phone's presence in the space is its device tracker at home: the
    room sensor (the occupancy label) can then change without opening an encounter."""
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    mule = make_mule(hass, tmp_path, entry.runtime_data.identity, "alice-phone")
    await hass.services.async_call(
        DOMAIN,
        "pair_mule",
        {"code": PairingCode.for_identity(mule.identity).encode()},
        blocking=True,
        return_response=True,
    )
    hass.states.async_set(TRACKER, "not_home")
    space = _subentry(mule.identity.id)
    data = {**space.data, CONF_PRESENCE: {mule.identity.id: {"entity": TRACKER, "state": "home"}}}
    hass.config_entries.async_add_subentry(
        entry,
        ConfigSubentry(
            data=data,
            subentry_type=space.subentry_type,
            title=space.title,
            unique_id=None,
            subentry_id=SPACE_ID,
        ),
    )
    await hass.async_block_till_done(wait_background_tasks=True)
    await mule.attach()
    await hass.async_block_till_done()
    return mule


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Let the loop run until `condition` holds (checked every few milliseconds)."""
    # the conditions are plain attributes of the integration's objects: nothing to wait on
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


async def unload_and_check_nothing_follows(
    hass: HomeAssistant, entry: MockConfigEntry, space: SpaceCoordinator, root: Path
) -> str:
    """Unload now; then the old instance must not write again. Returns its last model's sha."""
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert entry.state is ConfigEntryState.NOT_LOADED
    files = store_files(root)
    slot = space.host.slot(KEY)
    version, sha = slot.version, slot.snapshot.sha256
    counters = dict(space.host.counters)
    # anything the old instance left running would get its chance now
    await asyncio.sleep(0.5)
    await hass.async_block_till_done(wait_background_tasks=True)
    assert space.state.training_now is None
    assert store_files(root) == files
    assert space.host.slot(KEY).version == version
    assert dict(space.host.counters) == counters
    return sha


async def set_up_again_and_check_the_model(
    hass: HomeAssistant, entry: MockConfigEntry, sha: str
) -> None:
    """The second half of the reload: the store opens, and its model is the one left behind."""
    assert await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.LOADED
    again = entry.runtime_data.spaces[SPACE_ID]
    assert again.host.slot(KEY).snapshot.sha256 == sha
    # and it predicts with it
    await again.async_refresh()
    assert again.data is not None
    assert again.data.occupancy_probability is not None
    await hass.async_block_till_done(wait_background_tasks=True)


async def test_unloading_mid_training_writes_nothing_afterwards(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
    tmp_path: Path,
    isolated_config_dir: Path,
) -> None:
    await async_write_history(hass)
    await start(hass, hub, tmp_path)
    space = hub.runtime_data.spaces[SPACE_ID]
    assert space.state.training["occupancy"].frames > 1000  # it trained at start-up
    device = space_device(hass, SPACE_ID)
    assert device is not None
    training = hass.async_create_task(
        hass.services.async_call(
            DOMAIN, "train", {"device_id": device.id}, blocking=True, return_response=True
        )
    )
    await until(lambda: space.state.training_now is not None)

    assert space.state.training_now == KEY  # unloading starts while the model trains
    sha = await unload_and_check_nothing_follows(
        hass, hub, space, isolated_config_dir / DOMAIN / SPACE_ID
    )
    with pytest.raises(HomeAssistantError, match=r"not loaded|being unloaded"):
        await training
    await set_up_again_and_check_the_model(hass, hub, sha)


@pytest.mark.parametrize("stage", ["merging", "training after the merge"])
async def test_unloading_mid_exchange_writes_nothing_afterwards(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
    tmp_path: Path,
    isolated_config_dir: Path,
    stage: str,
) -> None:
    mule = await start_followed_by_a_tracker(hass, hub, tmp_path)
    space = hub.runtime_data.spaces[SPACE_ID]
    assert space.host.slot(KEY).version == 1  # no history at start-up: the starter model
    # history after start-up: the space has not trained on it, so a merge is served (the
    # promotion rule has no window to judge it on) and the space then trains on the history
    await async_write_history(hass)
    exchange = hub.runtime_data.exchange
    assert exchange is not None

    hass.states.async_set(TRACKER, "home")  # the phone comes home
    if stage == "merging":
        # the snapshot arrived whole: its merge is running in an executor
        await until(lambda: exchange.endpoint.stats.transfers_delivered == 1)
        assert space.host.counters["merged"] == 0
    else:
        await until(lambda: space.state.training_now is not None)
        assert space.host.counters["merged"] == 1
    assert exchange.endpoint.active_sessions()

    sha = await unload_and_check_nothing_follows(
        hass, hub, space, isolated_config_dir / DOMAIN / SPACE_ID
    )
    # the phone was told the encounter ended
    assert exchange.endpoint.active_sessions() == []
    assert mule.endpoint.active_sessions() == []
    await set_up_again_and_check_the_model(hass, hub, sha)


async def test_leaving_and_returning_starts_a_fresh_encounter(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Within the 10-minute session timeout, a phone that left and came back gets a new
    exchange: the space ends the encounter when the presence entity leaves its state."""
    mule = await start(hass, hub, tmp_path)
    exchange = hub.runtime_data.exchange
    assert exchange is not None
    await walk_in(hass)
    assert [c.accepted for c in mule.completed] == [True]
    first = {ref.session for ref in exchange.endpoint.active_sessions()}
    assert len(first) == 1
    assert {ref.session for ref in mule.endpoint.active_sessions()} == first

    hass.states.async_set("sensor.alice_room", "kitchen")  # she leaves the bedroom
    await hass.async_block_till_done(wait_background_tasks=True)
    assert exchange.endpoint.active_sessions() == []
    assert mule.endpoint.active_sessions() == []  # the phone got the space's goodbye
    assert exchange.exchanges == 1

    await walk_in(hass)  # and comes back, a minute later
    second = {ref.session for ref in exchange.endpoint.active_sessions()}
    assert len(second) == 1
    assert second.isdisjoint(first)
    assert {ref.session for ref in mule.endpoint.active_sessions()} == second


async def test_staying_in_the_state_ends_nothing(
    hass: HomeAssistant,
    hub: MockConfigEntry,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Only leaving the chosen state ends an encounter: an update that keeps it (new
    attributes) is neither an arrival nor a departure."""
    await start(hass, hub, tmp_path)
    exchange = hub.runtime_data.exchange
    assert exchange is not None
    await walk_in(hass)
    sessions = exchange.endpoint.active_sessions()
    assert len(sessions) == 1
    hass.states.async_set("sensor.alice_room", "bedroom", {"source": "ble"})  # same state
    await hass.async_block_till_done(wait_background_tasks=True)
    assert exchange.endpoint.active_sessions() == sessions
