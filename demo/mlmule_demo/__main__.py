"""`python -m mlmule_demo` (what `make demo` runs): two homes, their Home Assistants, the broker,
the phones, the live replay, the table, and the summary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import dashboard
from .broker import BrokerAddress
from .companions import Phone, companion_script
from .ha_instance import PASSWORD, USERNAME, HomeAssistantInstance, pick_port
from .processes import ProcessGroups, free_port, stop_stale, wait_exit, wait_listening
from .replay import Publisher, ReplaySchedule, current_states, run_live
from .scenario import Scenario, choose, dump_scenario, local_time
from .settings import DemoSettings
from .setup_home import (
    HomeSetup,
    configure_mqtt,
    freshness_ready,
    set_up_home,
    wait_for_entities,
)
from .table import RelayTrack, SpaceTrack, exchange_line, render, summary_text, update

# The world is aligned so that its live part starts about this long after the demo starts
# (the first guest visit is chosen to come early in it); real time passes until the origin.
PLANNED_SETUP_SECONDS = 90.0
# The replay clock's origin goes into each Home Assistant's configuration before it starts, so
# it is picked then, as the moment the rest of the set-up should be done: Home Assistant's
# start, onboarding, the flows, and the hub's reload for the model freshness sensors (Home
# Assistant waits 30 s before it reloads, then the spaces train again). That work scales with the
# machine's load, which the history step (a Home Assistant start-up and recorder writes) has
# just measured. An overrun is reported, and counted in summary.json.
ALLOWANCE_SECONDS = 35.0
ALLOWANCE_PER_HISTORY_SECOND = 0.35
ALLOWANCE_MAX_SECONDS = 240.0
PRINT_EVERY = 5.0  # seconds between tables when the output is not a terminal
PYTHON = sys.executable


@dataclass
class Demo:
    settings: DemoSettings
    run_dir: Path
    groups: ProcessGroups
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted: bool = False
    tracks: list[SpaceTrack] = field(default_factory=list)  # filled once the live part runs
    relay: RelayTrack | None = None

    def log(self, message: str) -> None:
        print(message, flush=True)


def _child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    demo = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([demo, root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


async def start_broker(demo: Demo) -> BrokerAddress:
    if demo.settings.mqtt is not None:
        demo.log(f"MQTT: the broker at {demo.settings.mqtt.host}:{demo.settings.mqtt.port}")
        return demo.settings.mqtt
    port = free_port()
    process = demo.groups.start(
        "broker",
        [PYTHON, "-m", "mlmule_demo.broker", str(port)],
        log=demo.run_dir / "logs" / "broker.log",
        env=_child_env(),
    )
    await wait_listening(port, process, 30.0, "the amqtt broker")
    demo.log(f"MQTT: embedded amqtt broker on 127.0.0.1:{port}")
    return BrokerAddress("127.0.0.1", port)


async def prefill(
    demo: Demo, scenario_file: Path, index: int, database: Path, until: float
) -> None:
    process = demo.groups.start(
        f"history-{index}",
        [
            PYTHON,
            "-m",
            "mlmule_demo.prefill",
            str(scenario_file),
            str(index),
            str(database),
            str(until),
        ],
        log=demo.run_dir / "logs" / f"history-{index}.log",
        env=_child_env(),
    )
    code = await wait_exit(process)
    if code != 0:
        raise RuntimeError(f"writing the history failed; see {demo.run_dir / 'logs'}")


async def run(demo: Demo) -> int:
    settings = demo.settings
    started = time.time()
    scenario = choose(started + PLANNED_SETUP_SECONDS, settings.history_days, settings.live_days)
    demo.log(
        f"World: seed {scenario.seed}, homes Maple and Birch in {scenario.tz}; "
        f"{settings.history_days} days of history, then x{settings.speed:g} from about "
        f"{local_time(scenario, scenario.origin)} local time"
    )
    scenario_file = demo.run_dir / "scenario.json"
    scenario_file.write_text(json.dumps(dump_scenario(scenario)))

    broker = await start_broker(demo)
    publisher = Publisher(broker, f"mlmule-demo-{os.getpid()}")
    script = companion_script()
    taken: set[int] = set()
    live = LiveRun(
        demo,
        scenario,
        broker,
        publisher,
        history_end=started,
        phones=[
            Phone(person, demo.run_dir / "phones" / person.slug, script)
            for person in scenario.companions
        ],
        homes=[
            HomeAssistantInstance(
                name=scenario.home_name(index),
                config_dir=demo.run_dir / scenario.home_slug(index) / "config",
                port=pick_port(settings.port + index, taken),
                tz=scenario.tz,
            )
            for index in range(2)
        ],
    )
    try:
        return await live.run(scenario_file)
    finally:
        publisher.close()


@dataclass
class LiveRun:
    """One run of the demo, from the history to the summary."""

    demo: Demo
    scenario: Scenario
    broker: BrokerAddress
    publisher: Publisher
    history_end: float  # the history is written up to here; the replay goes on from here
    phones: list[Phone]
    homes: list[HomeAssistantInstance]
    schedule: ReplaySchedule = field(default_factory=ReplaySchedule)
    setups: list[HomeSetup] = field(default_factory=list)

    async def run(self, scenario_file: Path) -> int:
        scenario, publisher = self.scenario, self.publisher
        for index in range(2):
            home = scenario.home_slug(index)
            publisher.announce(home, scenario.entities(index))
            for entity_id, state in current_states(scenario, index, self.history_end).items():
                publisher.set_state(home, entity_id, state)
        replay = asyncio.create_task(
            run_live(publisher, scenario, self.schedule, self.history_end, self.demo.stop)
        )
        try:
            await self._write_history(scenario_file)
            allowance = self._pick_clock()
            urls = await self._set_up()
            return await self._live(urls, allowance)
        finally:
            self.demo.stop.set()
            replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replay
            for ha in self.homes:
                await ha.close()

    async def _write_history(self, scenario_file: Path) -> None:
        """The homes' past days into their recorders, the phones' into their data logs."""
        demo, scenario = self.demo, self.scenario
        demo.log("Writing the homes' history into their recorders, and setting up the phones ...")
        await asyncio.gather(
            *(
                prefill(
                    demo,
                    scenario_file,
                    index,
                    ha.config_dir / "home-assistant_v2.db",
                    self.history_end,
                )
                for index, ha in enumerate(self.homes)
            ),
            *(phone.init(scenario) for phone in self.phones),
        )
        sensed = await asyncio.gather(
            *(phone.log_history(scenario, self.history_end) for phone in self.phones)
        )
        sensed_text = (
            f"{p.label} ({n} minutes sensed)" for p, n in zip(self.phones, sensed, strict=True)
        )
        demo.log(f"  phones: {', '.join(sensed_text)}")

    def _pick_clock(self) -> float:
        """The live part's origin: when the rest of the set-up should be done. Returns the
        seconds allowed for it."""
        history_seconds = time.time() - self.history_end
        allowance = min(
            ALLOWANCE_MAX_SECONDS,
            ALLOWANCE_SECONDS + ALLOWANCE_PER_HISTORY_SECOND * history_seconds,
        )
        scenario = self.scenario
        clock = self.schedule.choose(time.time() + allowance, self.demo.settings.speed)
        visit = scenario.first_guest_visit
        if visit is not None:
            minutes = max(0.0, clock.to_wall(visit.scene_time) - clock.origin) / 60
            self.demo.log(
                f"  {visit.person.name} (of {scenario.home_name(visit.person.home_index)}) "
                f"visits {scenario.home_name(visit.home_index)}'s "
                f"{visit.room_id.replace('_', ' ')} at {local_time(scenario, visit.scene_time)} "
                f"(about {minutes:.1f} min into the live part)"
            )
        relay = scenario.relay
        names = {person.person_id: person.name for person in scenario.companions}
        first = next(iter(relay.arrivals), None)
        when = (
            "no companion goes there in the live part"
            if first is None
            else f"{names[first[1]]} arrives first at {local_time(scenario, first[0])} (about "
            f"{max(0.0, clock.to_wall(first[0]) - clock.origin) / 60:.1f} min into the live part)"
        )
        self.demo.log(
            f"  relay space: {relay.title} (a shared place), in "
            f"{scenario.home_name(relay.home_index)}'s Home Assistant; {when}"
        )
        return allowance

    async def _set_up(self) -> list[str]:
        """Start both Home Assistants and set them up through their APIs; returns the
        dashboards' URLs once every space's sensors are there."""
        demo, scenario, homes, phones = self.demo, self.scenario, self.homes, self.phones
        clock = self.schedule.clock
        clock_config = {"origin": round(clock.origin, 3), "scale": clock.scale}
        config = scenario.config
        for phone in phones:
            phone.use_clock(clock_config)
        for ha in homes:
            ha.write_configuration(config.latitude, config.longitude, clock_config)
            ha.start(demo.groups, demo.run_dir / "logs" / f"home-assistant-{ha.name.lower()}.log")
        await asyncio.gather(*(ha.wait_ready() for ha in homes))
        await asyncio.gather(*(ha.onboard() for ha in homes))
        demo.log("Home Assistant is up; configuring MQTT, the ML Mule hubs, phones and spaces ...")
        await asyncio.gather(*(configure_mqtt(ha, self.broker) for ha in homes))
        await asyncio.gather(
            *(
                wait_for_entities(ha, {e.entity_id for e in scenario.entities(index)})
                for index, ha in enumerate(homes)
            )
        )
        self.setups = await asyncio.gather(
            *(
                set_up_home(ha, scenario, index, phones, self.broker)
                for index, ha in enumerate(homes)
            )
        )
        for setup in self.setups:
            for phone in phones:
                await phone.pair(
                    setup.home_codes[phone.person.person_id],
                    scenario.prefix(setup.index),
                    guest=phone.person.home_index != setup.index,
                )
        for phone in phones:
            phone.start(demo.groups, demo.run_dir / "logs" / f"companion-{phone.person.slug}.log")
        urls = [
            await dashboard.install(
                ha, scenario.home_name(setup.index), setup.spaces, setup.relay, scenario.companions
            )
            for ha, setup in zip(homes, self.setups, strict=True)
        ]
        _write_access(demo, homes, self.setups, urls, scenario)
        await asyncio.gather(
            *(freshness_ready(ha, setup) for ha, setup in zip(homes, self.setups, strict=True))
        )
        return urls

    async def _live(self, urls: list[str], allowance: float) -> int:
        demo, settings, clock = self.demo, self.demo.settings, self.schedule.clock
        setup_seconds = time.time() - self.history_end
        overrun = max(0.0, time.time() - clock.origin)
        demo.log("")
        for index, (ha, url) in enumerate(zip(self.homes, urls, strict=True)):
            note = "" if ha.port == settings.port + index else " (the usual port was taken)"
            demo.log(f"  {ha.name}: {ha.url}{note}   dashboard {url}")
        demo.log(f"  login: {USERNAME} / {PASSWORD}")
        demo.log(f"  set up in {setup_seconds:.0f} s; Ctrl-C stops everything")
        if overrun > 0:
            demo.log(
                f"  WARNING: the set-up overran the start of the live part by {overrun:.0f} s "
                f"(it was allowed {allowance:.0f} s after the history; the machine is busy)"
            )
        else:
            wait = clock.origin - time.time()
            demo.log(f"  the replay speeds up to x{settings.speed:g} in {wait:.0f} s")
        demo.log("")
        wall = await self._table()
        totals = _totals(self.phones)
        demo.log(summary_text(demo.tracks, totals, setup_seconds, wall, demo.relay))
        document: dict[str, Any] = {
            "setup_seconds": round(setup_seconds, 1),
            "overrun_seconds": round(overrun, 1),
            "live_seconds": round(wall, 1),
            "spaces": [track.summary() for track in demo.tracks],
            "snapshots_merged": sum(t.merged for t in demo.tracks),
            "snapshots_rejected": sum(t.rejected for t in demo.tracks),
            "phones": totals,
            "states_published": self.publisher.counters.published,
            "most_late_seconds": round(self.publisher.counters.late, 3),
            "relay": None if demo.relay is None else self._relay_summary(demo.relay, wall),
        }
        (demo.run_dir / "summary.json").write_text(json.dumps(document, indent=2))
        return 130 if demo.interrupted else 0

    def _relay_summary(self, relay: RelayTrack, wall: float) -> dict[str, Any]:
        """The relay's counters, and the companions' arrivals at its place in the live part
        (scene times: the replay ran from the clock's origin for `wall` seconds)."""
        clock, scenario = self.schedule.clock, self.scenario
        end = clock.to_scene(clock.origin + wall)
        names = {person.person_id: person.name for person in scenario.companions}
        return {
            **relay.summary(),
            "live_scene_start": clock.origin,
            "live_scene_end": end,
            "arrivals": [
                {"scene_time": t, "phone": names[person]}
                for t, person in scenario.relay.arrivals
                if t < end
            ],
        }

    async def _table(self) -> float:
        """Poll both homes once a second, show the table and publish the models' ages, until
        DEMO_MINUTES or Ctrl-C. Returns the live part's wall seconds."""
        demo, scenario, clock = self.demo, self.scenario, self.schedule.clock
        minutes = demo.settings.minutes
        watched = []
        for setup in self.setups:
            for space in setup.spaces:
                track = SpaceTrack(
                    scenario.home_name(setup.index),
                    space.plan.title,
                    setup.index,
                    space.plan.room_id,
                )
                demo.tracks.append(track)
                watched.append((track, setup.index, space))
        relay = next((setup for setup in self.setups if setup.relay is not None), None)
        places = {person.name: person.place_entity for person in scenario.companions}
        if relay is not None and relay.relay is not None:
            demo.relay = RelayTrack(
                scenario.home_name(relay.index), relay.relay.plan.title, relay.relay.plan.place
            )
        ages: dict[str, str] = {}
        tty = sys.stdout.isatty()
        last_print = 0.0
        drawn = 0
        while not demo.stop.is_set():
            now = time.time()
            live_for = now - clock.origin
            if minutes is not None and live_for >= minutes * 60:
                break
            scene_now = clock.to_scene(now)
            states = await asyncio.gather(*(ha.states() for ha in self.homes))
            for track, index, space in watched:
                update(track, space.entities, states[index], scenario, scene_now)
                age = "unavailable" if track.model_age is None else f"{track.model_age:.0f}"
                if ages.get(space.plan.model_age) != age:
                    ages[space.plan.model_age] = age
                    self.publisher.set_state(scenario.home_slug(index), space.plan.model_age, age)
            if relay is not None and relay.relay is not None and demo.relay is not None:
                demo.relay.update(relay.relay.entities, states[relay.index], places)
            if tty or now - last_print >= PRINT_EVERY:
                last_print = now
                progress = (
                    f"live for {live_for / 60:.1f} min"
                    if live_for > 0
                    else f"speeding up in {-live_for:.0f} s"
                )
                footer = [f"{exchange_line(demo.tracks, _totals(self.phones))}; {progress}"]
                if demo.relay is not None:
                    footer.insert(0, demo.relay.line())
                text = render(demo.tracks, scenario, scene_now, footer)
                if tty and drawn:
                    sys.stdout.write(f"\x1b[{drawn}F\x1b[J")
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
                drawn = text.count("\n") + 1 if tty else 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(demo.stop.wait(), max(0.0, 1.0 - (time.time() - now)))
        return max(0.0, time.time() - clock.origin)


def _totals(phones: list[Phone]) -> dict[str, int]:
    totals = {"bytes_sent": 0, "bytes_received": 0, "sessions": 0, "received": 0, "sent": 0}
    for phone in phones:
        for key, value in phone.totals().items():
            if key in totals:
                totals[key] += value
    totals["bytes_moved"] = totals["bytes_sent"] + totals["bytes_received"]
    return totals


def _write_access(
    demo: Demo,
    homes: list[HomeAssistantInstance],
    setups: list[HomeSetup],
    urls: list[str],
    scenario: Scenario,
) -> None:
    """Where the homes are and how to log in: for the dashboard test and curious users."""
    document = {
        "homes": [
            {
                **ha.auth_record(),
                "name": ha.name,
                "dashboard": url,
                "entry_id": setup.entry_id,
                "spaces": [
                    {
                        "title": space.plan.title,
                        "subentry_id": space.subentry_id,
                        "tasks": list(space.plan.tasks),
                        "truth": space.plan.truth,
                        "model_age": space.plan.model_age,
                        "entities": space.entities,
                    }
                    for space in setup.spaces
                ],
            }
            for ha, setup, url in zip(homes, setups, urls, strict=True)
        ],
        "relay": next(
            (
                {
                    "home": scenario.home_name(setup.index),
                    "title": setup.relay.plan.title,
                    "place": setup.relay.plan.place,
                    "subentry_id": setup.relay.subentry_id,
                    "entities": setup.relay.entities,
                    "places": {p.name: p.place_entity for p in scenario.companions},
                    "place_states": scenario.place_states(),
                }
                for setup in setups
                if setup.relay is not None
            ),
            None,
        ),
        "tz": scenario.tz,
    }
    path = demo.run_dir / "access.json"
    path.write_text(json.dumps(document, indent=2))
    path.chmod(0o600)


def main() -> int:
    settings = DemoSettings.from_env()
    settings.cache.mkdir(parents=True, exist_ok=True)
    pid_file = settings.cache / "processes.json"
    for stale in stop_stale(pid_file):
        print(f"stopped a previous demo's {stale}", flush=True)
    run_dir = settings.cache / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "logs").mkdir(parents=True)
    groups = ProcessGroups(pid_file)
    demo = Demo(settings, run_dir, groups)

    async def guarded() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def interrupt() -> None:
            if demo.stop.is_set() or demo.interrupted:
                if task is not None:
                    task.cancel()  # a second Ctrl-C: stop waiting for anything
                return
            demo.interrupted = True
            demo.stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt)
        runner = asyncio.ensure_future(run(demo))
        try:
            while not runner.done():
                stopping = asyncio.ensure_future(demo.stop.wait())
                await asyncio.wait([runner, stopping], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if demo.interrupted and not demo.tracks:
                    runner.cancel()  # still setting up: nothing to summarise
                    with contextlib.suppress(asyncio.CancelledError):
                        await runner
                    return 130
            return runner.result()
        finally:
            # before asyncio.run waits for its executor: nothing of ours may keep it waiting
            groups.stop_all()

    try:
        code = asyncio.run(guarded())
    except KeyboardInterrupt:
        code = 130
    finally:
        groups.stop_all()
    print(f"stopped every process the demo started (logs in {run_dir / 'logs'})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
