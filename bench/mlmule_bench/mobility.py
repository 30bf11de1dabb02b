"""Who meets whom, and when: the contact opportunities every method draws on.

- A *visit* is a phone appearing in a space, as HA presence reports it (the world's room
  entries), the trigger of an ML Mule exchange. A space does not reopen an exchange with the
  same phone within the cooldown.
- A *relay visit* is a phone arriving at a shared place (an office, the gym, a cafe, a shop)
  when those places are relay spaces.
- A *meeting* is two phones starting to be at the same place at the same time: gossip's
  chance to exchange. Gossip gets the contacts ML Mule gets: meetings at the homes of the
  run's spaces, and at shared places only when they are relay spaces.
- The *affinity graph* joins two homes by the phones that visited spaces in both.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from mlmule_world import World
from mlmule_world.residents import ELSEWHERE_CODE

from .config import HOME_SPACE_TASKS, HOUR, BenchConfig
from .data import HOME_SPACE, RELAY_SPACE, TaskData


@dataclass(frozen=True, order=True)
class Visit:
    time: float
    phone: str
    home: str
    space: str


@dataclass(frozen=True, order=True)
class Meeting:
    time: float
    phone_a: str
    phone_b: str
    place: str = ""  # a home id or a shared place's name


def relay_places(config: BenchConfig, world: World) -> list[str]:
    """The shared places that are relay spaces in this run."""
    return list(world.shared_places) if config.relays else []


def exchange_places(config: BenchConfig, world: World, data: TaskData) -> set[str]:
    """Where ML Mule can exchange: homes with a space of the run, and the relay places."""
    return {home for home, _ in data.kind_of_room} | set(relay_places(config, world))


def visits(config: BenchConfig, world: World, data: TaskData, end: float) -> list[Visit]:
    """Phones entering spaces (and relay places) before `end`, at most one per (space, phone)
    per cooldown."""
    raw = _place_entries(world, end, homes=False) if config.relays else []
    if data.task in HOME_SPACE_TASKS:
        raw += _place_entries(world, end, homes=True)
    else:
        raw += [
            Visit(encounter.time, encounter.phone_id, encounter.home_id, encounter.room_id)
            for encounter in world.encounters()
            if encounter.time < end and (encounter.home_id, encounter.room_id) in data.kind_of_room
        ]
    cooldown = config.exchange_cooldown_hours * HOUR
    last: dict[tuple[str, str, str], float] = {}
    kept: list[Visit] = []
    for visit in sorted(raw):
        pair = (visit.home, visit.space, visit.phone)
        if pair in last and visit.time - last[pair] < cooldown:
            continue
        last[pair] = visit.time
        kept.append(visit)
    return kept


def _place_entries(world: World, end: float, *, homes: bool) -> list[Visit]:
    """A phone arriving at a home (`homes`) or at a shared place, from anywhere else."""
    trajectories = world.trajectories()
    phones = {person.person_id: person.phone_id for person in world.people}
    found: list[Visit] = []
    for row, person in enumerate(trajectories.person_ids):
        place = trajectories.place[row]
        wanted = place[1:] >= 0 if homes else place[1:] <= ELSEWHERE_CODE - 1
        arrived = np.flatnonzero(wanted & (place[1:] != place[:-1])) + 1
        for step in arrived.tolist():
            time = float(trajectories.times[step])
            if time < end:
                name = trajectories.place_name(int(place[step]))
                space = HOME_SPACE if homes else RELAY_SPACE
                found.append(Visit(time, phones[person], name, space))
    return found


def meetings(
    world: World, end: float, cooldown_hours: float = 0.0, places: set[str] | None = None
) -> list[Meeting]:
    """Two phones starting to be at the same tracked place (of `places`, default any) at the
    same 5-minute step, at most once per pair per cooldown."""
    trajectories = world.trajectories()
    phones = [world.person(person).phone_id for person in trajectories.person_ids]
    place = trajectories.place
    cooldown = cooldown_hours * HOUR
    last: dict[tuple[str, str], float] = {}
    found: list[Meeting] = []
    changed_steps = np.flatnonzero((place[:, 1:] != place[:, :-1]).any(axis=0)) + 1
    for step in changed_steps.tolist():
        time = float(trajectories.times[step])
        if time >= end:
            break
        now, before = place[:, step], place[:, step - 1]
        arrivals = np.flatnonzero((now != before) & (now != ELSEWHERE_CODE))
        arrived = set(arrivals.tolist())
        for person in arrivals.tolist():
            place_name = trajectories.place_name(int(now[person]))
            if places is not None and place_name not in places:
                continue
            for other in np.flatnonzero(now == now[person]).tolist():
                # two who arrive together meet once
                if other != person and (other not in arrived or other > person):
                    a, b = sorted((phones[person], phones[other]))
                    if time - last.get((a, b), -math.inf) >= cooldown:
                        last[(a, b)] = time
                        found.append(Meeting(time, a, b, place_name))
    return found


def affinity(visit_list: list[Visit]) -> dict[tuple[str, str], int]:
    """`(home a, home b) -> phones that visited spaces in both`, a < b."""
    homes_of: dict[str, set[str]] = defaultdict(set)
    for visit in visit_list:
        if visit.space != RELAY_SPACE:
            homes_of[visit.phone].add(visit.home)
    edges: dict[tuple[str, str], int] = defaultdict(int)
    for homes in homes_of.values():
        ordered = sorted(homes)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                edges[(a, b)] += 1
    return dict(edges)
