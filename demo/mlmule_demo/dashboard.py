"""The demo's Lovelace dashboard, created through the websocket API like the UI does."""

from __future__ import annotations

from typing import Any

from .ha_instance import HomeAssistantInstance
from .scenario import Person
from .setup_home import RelayEntities, SpaceEntities

URL_PATH = "mlmule-demo"
TITLE = "ML Mule demo"
GRAPH_TITLE = "Probability vs truth"


def space_cards(space: SpaceEntities) -> list[dict[str, Any]]:
    """One column per space: probability against the truth, the activity, the model's health."""
    e = space.entities
    rows: list[Any] = [
        {"entity": e["occupancy"], "name": "Predicted occupied"},
        {"entity": space.plan.truth, "name": "True occupancy"},
    ]
    if "activity" in e:
        rows.append({"entity": e["activity"], "name": "Predicted activity"})
    rows += [
        {
            "type": "attribute",
            "entity": e["occupancy"],
            "attribute": "model_version",
            "name": "Model version",
            "prefix": "v",
        },
        # scene minutes since the model's newest data (the demo's view of the model data time
        # sensor, which a browser would read on the wall clock)
        {"entity": space.plan.model_age, "name": "Model age", "icon": "mdi:timer-sand"},
        {"entity": e["occupancy_accuracy"], "name": "Occupancy accuracy"},
    ]
    if "activity_accuracy" in e:
        rows.append({"entity": e["activity_accuracy"], "name": "Activity F1"})
    rows += [
        {
            "entity": e["snapshots_merged"],
            "name": "Snapshots merged",
            "secondary_info": "last-changed",
        },
        {"entity": e["snapshots_rejected"], "name": "Snapshots rejected"},
    ]
    return [
        {"type": "heading", "heading": space.plan.title, "icon": "mdi:home-floor-1"},
        {
            "type": "history-graph",
            "title": GRAPH_TITLE,
            # 6 wall minutes: 6 scene hours at x60 (the recorder's timestamps are wall times)
            "hours_to_show": 0.1,
            "entities": [
                {"entity": e["occupancy_probability"], "name": "Probability"},
                {"entity": space.plan.truth, "name": "Truth"},
            ],
        },
        {"type": "entities", "entities": rows},
    ]


def relay_cards(relay: RelayEntities, phones: list[Person]) -> list[dict[str, Any]]:
    """The relay space's column: its counters, and where the phones are (its presence)."""
    e = relay.entities
    rows: list[Any] = [
        {
            "entity": e["snapshots_merged"],
            "name": "Merged at the relay",
            "secondary_info": "last-changed",
        },
        {"entity": e["snapshots_rejected"], "name": "Rejected at the relay"},
        {"entity": e["phones_seen"], "name": "Phones seen", "icon": "mdi:cellphone-check"},
    ]
    rows += [
        {"entity": person.place_entity, "name": f"{person.name}'s phone is at"} for person in phones
    ]
    return [
        {"type": "heading", "heading": f"Relay: {relay.plan.title}", "icon": "mdi:store"},
        {"type": "entities", "entities": rows},
    ]


def dashboard_config(
    home_name: str,
    spaces: list[SpaceEntities],
    relay: RelayEntities | None = None,
    phones: list[Person] | None = None,
) -> dict[str, Any]:
    sections: list[dict[str, Any]] = [
        {"type": "grid", "cards": space_cards(space)} for space in spaces
    ]
    if relay is not None:
        sections.append({"type": "grid", "cards": relay_cards(relay, phones or [])})
    return {
        "title": f"{TITLE}: {home_name}",
        "views": [
            {
                "title": home_name,
                "path": "spaces",
                "type": "sections",
                "max_columns": max(1, len(sections)),
                "sections": sections,
            }
        ],
    }


async def install(
    ha: HomeAssistantInstance,
    home_name: str,
    spaces: list[SpaceEntities],
    relay: RelayEntities | None = None,
    phones: list[Person] | None = None,
) -> str:
    """Create the dashboard (a storage-mode one, in the sidebar) and save its cards."""
    existing = await ha.ws({"type": "lovelace/dashboards/list"})
    if not any(d["url_path"] == URL_PATH for d in existing):
        await ha.ws(
            {
                "type": "lovelace/dashboards/create",
                "url_path": URL_PATH,
                "title": TITLE,
                "icon": "mdi:truck-delivery",
                "show_in_sidebar": True,
                "require_admin": False,
                "mode": "storage",
            }
        )
    await ha.ws(
        {
            "type": "lovelace/config/save",
            "url_path": URL_PATH,
            "config": dashboard_config(home_name, spaces, relay, phones),
        }
    )
    return f"{ha.url}/{URL_PATH}/spaces"
