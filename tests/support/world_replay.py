"""A room of a world home as the state changes Home Assistant would record (no HA imports)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mlmule_core.features import SensorRole
from mlmule_world import World

# Every test world starts here (a Monday, months from any daylight-saving change), and a test
# that replays one into Home Assistant freezes HA's clock in the world (`replay_end`): no outcome
# depends on the day a test runs.
WORLD_START = "2026-06-01T00:00:00+00:00"


@dataclass(frozen=True)
class RoomReplay:
    """The entities of one room and the phones' room-presence sensors, with their changes."""

    home_index: int
    room_id: str
    tz: str
    roles: dict[str, SensorRole]  # the room's sensor entities
    presence: tuple[str, ...]  # one room-presence sensor per resident's phone
    events: list[tuple[float, str, str]]  # (epoch seconds, entity_id, state), time-ordered

    def before(self, end: float) -> list[tuple[float, str, str]]:
        return [event for event in self.events if event[0] < end]

    def changes(self) -> dict[str, list[tuple[float, str]]]:
        grouped: dict[str, list[tuple[float, str]]] = {}
        for t, entity, state in self.events:
            grouped.setdefault(entity, []).append((t, state))
        return grouped


def presence_events(world: World, home_index: int) -> list[tuple[float, str, str]]:
    """Each resident's phone room sensor as HA would see it (Bermuda style: a room, or away)."""
    home = world.homes[home_index]
    rooms = [room.room_id for room in home.rooms]
    events: list[tuple[float, str, str]] = []
    for person in home.residents:
        phone = world.phone_data(person)
        previous = None
        for t, place, room in zip(
            phone.times.tolist(), phone.place.tolist(), phone.room.tolist(), strict=True
        ):
            state = rooms[room] if place == home_index and room >= 0 else "away"
            if state != previous:
                events.append((t, f"sensor.{person}_room", state))
                previous = state
    return events


def room_replay(world: World, home_index: int, kind: str) -> RoomReplay:
    """The first room of `kind` in the home, with every change of its sensors and phones."""
    home = world.homes[home_index]
    room = next(r for r in home.rooms if r.kind == kind)
    roles = {
        entity: role
        for entity, (room_id, role) in world.entity_roles(home.home_id).items()
        if room_id == room.room_id
    }
    presence = presence_events(world, home_index)
    sensors = [event for event in world.events(home.home_id) if event[1] in roles]
    return RoomReplay(
        home_index=home_index,
        room_id=room.room_id,
        tz=home.tz,
        roles=roles,
        presence=tuple(sorted({entity for _, entity, _ in presence})),
        events=sorted(sensors + presence),
    )


def replay_end(world: World, days: float) -> datetime:
    """The instant `days` into `world`, for a test to freeze Home Assistant's clock at: the
    replayed history then ends "now", as a live home's does."""
    return datetime.fromtimestamp(world.start + days * 86400.0, UTC)
