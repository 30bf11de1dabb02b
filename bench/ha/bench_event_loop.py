"""How long training on 14 days of history stalls Home Assistant's event loop (real HA core).

Run with the HA environment (make bench does):  cd bench/ha && pytest
It replays 14 days of a world bedroom into the real recorder, then measures the event loop's
stalls with a probe that asks to wake every 5 ms: once while HA idles (the baseline, in the same
process) and once while the space trains on that history. A stall is how late the probe woke.
Figures are printed and saved to bench/results/event_loop.json.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import time
from pathlib import Path

from homeassistant.core import HomeAssistant
from mlmule_world import WorldConfig, generate_world
from pytest_homeassistant_custom_component.typing import MqttMockHAClient

from tests.support.ha_fixtures import async_replay_room, replayed_room_hub
from tests.support.world_replay import room_replay, start_days_before_now

RESULTS = Path(__file__).resolve().parents[1] / "results" / "event_loop.json"
DAYS = 14
PROBE_INTERVAL = 0.005
TARGET_STALL = 0.050


class StallProbe:
    """Wakes every PROBE_INTERVAL and records how late each wake-up was."""

    def __init__(self) -> None:
        self.stalls: list[float] = []
        self._running = False

    async def run(self) -> None:
        self._running = True
        loop = asyncio.get_running_loop()
        while self._running:
            asked = loop.time()
            await asyncio.sleep(PROBE_INTERVAL)
            self.stalls.append(loop.time() - asked - PROBE_INTERVAL)

    def stop(self) -> None:
        self._running = False

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.stalls)
        return {
            "samples": len(ordered),
            "max_ms": 1000 * ordered[-1],
            "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
            "median_ms": 1000 * statistics.median(ordered),
            "over_50ms": sum(stall > TARGET_STALL for stall in ordered),
        }


async def measure(
    coroutine_factory, seconds: float | None = None
) -> tuple[dict[str, float], float]:  # type: ignore[no-untyped-def]
    probe = StallProbe()
    task = asyncio.create_task(probe.run())
    started = time.perf_counter()
    if seconds is None:
        await coroutine_factory()
    else:
        await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    probe.stop()
    await task
    return probe.summary(), elapsed


async def test_training_on_two_weeks_of_history_never_stalls_the_loop(
    hass: HomeAssistant, mqtt_mock: MqttMockHAClient
) -> None:
    world = generate_world(WorldConfig(n_homes=3, days=DAYS, start=start_days_before_now(DAYS)), 11)
    replay = room_replay(world, 0, "bedroom")
    await async_replay_room(hass, replay, world.end)
    entry = replayed_room_hub(replay, options={"history_days": DAYS})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)
    space = entry.runtime_data.spaces["bedroom"]

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    training, train_seconds = await measure(lambda: space.async_train(reason="benchmark"))
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    idle, _ = await measure(None, seconds=train_seconds)
    summary = space.state.training["occupancy"]

    figures = {
        "history_days": DAYS,
        "history_events": len(replay.events),
        "labelled_frames": summary.frames,
        "train_seconds": train_seconds,
        "peak_rss_growth_mib": (rss_after - rss_before) / 1024,
        "while_training": training,
        "idle_baseline": idle,
        "max_stall_ratio_vs_idle": training["max_ms"] / max(idle["max_ms"], 1e-6),
        "target_max_ms": 1000 * TARGET_STALL,
        "epochs": summary.report.epochs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print("\nevent-loop stalls while a space trains on 14 days of 1-minute history (real HA core)")
    print(f"  history: {len(replay.events)} state changes, {summary.frames} labelled frames")
    growth = figures["peak_rss_growth_mib"]
    print(f"  training: {train_seconds:.1f} s, peak RSS growth {growth:.1f} MiB")
    for label, stats in (("training", training), ("idle", idle)):
        print(
            f"  {label:>8}: max {stats['max_ms']:.1f} ms, p99 {stats['p99_ms']:.1f} ms, "
            f"median {stats['median_ms']:.2f} ms, {stats['over_50ms']} stalls > 50 ms "
            f"({stats['samples']} samples)"
        )
