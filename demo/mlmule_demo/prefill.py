"""Write a home's history into Home Assistant's recorder before the live demo starts.

`python -m mlmule_demo.prefill SCENARIO.json HOME_INDEX DATABASE UNTIL` runs Home Assistant's own
core and recorder, headless, on a scratch configuration directory whose recorder writes to the
demo's database, and sets every state the home had in its past days with its real timestamp
(`hass.states.async_set(..., timestamp=)`) up to UNTIL (epoch seconds), the way a home that had
run for those days would have recorded them. The demo's Home Assistant starts on that database
afterwards.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from homeassistant import bootstrap, runner
from homeassistant.helpers.recorder import get_instance

from .processes import free_port
from .scenario import Scenario, load_scenario

FLUSH_EVERY = 5000  # states between waits for the recorder, so its queue stays bounded


def configuration(scenario: Scenario, database: Path) -> str:
    # bootstrap always starts the HTTP server: on a free loopback port, so it disturbs nothing
    return (
        "homeassistant:\n"
        f"  time_zone: {scenario.tz}\n"
        "http:\n"
        "  server_host: 127.0.0.1\n"
        f"  server_port: {free_port()}\n"
        "recorder:\n"
        f"  db_url: sqlite:///{database}\n"
        "  commit_interval: 5\n"
        "logger:\n"
        "  default: warning\n"
    )


async def prefill(scenario: Scenario, index: int, until: float, scratch: Path) -> int:
    """Record the home's states before `until`; returns how many were written."""
    hass = await bootstrap.async_setup_hass(
        runner.RuntimeConfig(config_dir=str(scratch), skip_pip=True, safe_mode=False)
    )
    if hass is None or "recorder" not in hass.config.components:
        raise RuntimeError(f"Home Assistant could not set up the recorder in {scratch}")
    await hass.async_start()
    attributes = {entity.entity_id: entity.attributes() for entity in scenario.entities(index)}
    wanted = scenario.history_entities(index)
    recorder = get_instance(hass)
    written = 0
    for t, entity_id, state in scenario.events(index):
        if t >= until:
            break
        if entity_id not in wanted:
            continue
        hass.states.async_set(entity_id, state, attributes[entity_id], timestamp=t)
        written += 1
        if written % FLUSH_EVERY == 0:
            await recorder.async_block_till_done()
    await recorder.async_block_till_done()
    await hass.async_stop()
    return written


def main() -> None:
    scenario_file, index, database = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    until = float(sys.argv[4])
    scenario = load_scenario(json.loads(scenario_file.read_text()))
    scratch = database.parent.parent / f"prefill-{index}"
    scratch.mkdir(parents=True, exist_ok=True)
    database.parent.mkdir(parents=True, exist_ok=True)
    (scratch / "configuration.yaml").write_text(configuration(scenario, database))
    written = asyncio.run(prefill(scenario, index, until, scratch))
    print(f"history: {written} state changes of {scenario.home_name(index)} recorded", flush=True)


if __name__ == "__main__":
    main()
