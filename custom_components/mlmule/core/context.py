"""What models are shared under: a context key is `<task>/<room kind>`, e.g. `occupancy/bedroom`."""

from __future__ import annotations

from enum import StrEnum


class RoomKind(StrEnum):
    """The kind of space; with the task it makes the context key models are shared under."""

    BEDROOM = "bedroom"
    KITCHEN = "kitchen"
    LIVING_ROOM = "living_room"
    OFFICE = "office"
    BATHROOM = "bathroom"
    HALLWAY = "hallway"
    HOME = "home"  # a whole-home space, not a room


ROOMS: tuple[RoomKind, ...] = tuple(kind for kind in RoomKind if kind is not RoomKind.HOME)
