"""What the demo shows while it runs, and the summary at the end.

Once a wall second (a scene minute at x60) the demo reads every space's predicted occupancy
probability from Home Assistant's REST API and compares it with the world's ground truth at that
scene minute. Accuracy is the share of seconds where `probability >= 0.5` matched the truth:
rolling over the last scene hour, and in total before and after the space's first merged
snapshot.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .scenario import Scenario, local_time

ROLLING = 60  # samples: the last scene hour at one sample per wall second and x60


@dataclass
class SpaceTrack:
    """The running record of one space."""

    home: str
    title: str
    index: int
    room_id: str
    samples: deque[bool] = field(default_factory=lambda: deque(maxlen=ROLLING))
    before: list[bool] = field(default_factory=list)
    after: list[bool] = field(default_factory=list)
    probability: float | None = None
    truth: bool | None = None
    activity: str | None = None
    version: int | None = None
    model_age: float | None = None  # scene minutes since the occupancy model's newest data
    merged: int = 0
    rejected: int = 0
    first_merge_at: float | None = None
    last_exchange: str = "-"
    last_exchange_at: float | None = None

    def record(self, probability: float | None, truth: bool) -> None:
        self.probability, self.truth = probability, truth
        if probability is None:
            return
        hit = (probability >= 0.5) == truth
        self.samples.append(hit)
        (self.after if self.first_merge_at is not None else self.before).append(hit)

    def exchange(self, merged: int, rejected: int, version: int | None, now: float) -> None:
        if merged > self.merged:
            self.last_exchange = f"merged #{merged}"
            self.last_exchange_at = now
            if self.first_merge_at is None:
                self.first_merge_at = now
        elif rejected > self.rejected:
            self.last_exchange = f"rejected #{rejected}"
            self.last_exchange_at = now
        self.merged, self.rejected = max(merged, self.merged), max(rejected, self.rejected)
        self.version = version

    @property
    def rolling(self) -> float | None:
        return _mean(self.samples)

    def summary(self) -> dict[str, Any]:
        return {
            "home": self.home,
            "space": self.title,
            "accuracy_before": _mean(self.before),
            "samples_before": len(self.before),
            "accuracy_after": _mean(self.after),
            "samples_after": len(self.after),
            "merged": self.merged,
            "rejected": self.rejected,
            "model_version": self.version,
            "model_age_minutes": None if self.model_age is None else round(self.model_age, 1),
        }


@dataclass
class RelayTrack:
    """The relay space's counters, as Home Assistant shows them."""

    home: str
    title: str
    place: str  # the shared place: the state of a phone's place sensor there
    merged: int = 0
    rejected: int = 0
    phones_seen: int = 0
    here: list[str] = field(default_factory=list)  # the companions its presence shows there

    def update(
        self, entities: dict[str, str], states: dict[str, dict[str, Any]], places: dict[str, str]
    ) -> None:
        """Read its counters; `places`: each companion's name -> its place sensor."""
        merged = _number(states.get(entities.get("snapshots_merged", "")))
        rejected = _number(states.get(entities.get("snapshots_rejected", "")))
        seen = _number(states.get(entities.get("phones_seen", "")))
        self.merged = self.merged if merged is None else int(merged)
        self.rejected = self.rejected if rejected is None else int(rejected)
        self.phones_seen = self.phones_seen if seen is None else int(seen)
        self.here = [
            name
            for name, entity in places.items()
            if (state := states.get(entity)) is not None and state["state"] == self.place
        ]

    def line(self) -> str:
        here = ", ".join(self.here) if self.here else "no companion"
        return (
            f"relay {self.title} ({self.home}): merged {self.merged}, rejected {self.rejected}, "
            f"phones seen {self.phones_seen}; {here} there now"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "home": self.home,
            "relay": self.title,
            "place": self.place,
            "merged": self.merged,
            "rejected": self.rejected,
            "phones_seen": self.phones_seen,
        }


def _mean(values: Any) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _percent(value: float | None) -> str:
    return "  -  " if value is None else f"{100 * value:4.0f}%"


def _minutes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} min" if value < 120 else f"{value / 60:.1f} h"


def _number(state: dict[str, Any] | None) -> float | None:
    if state is None:
        return None
    try:
        return float(state["state"])
    except (TypeError, ValueError):
        return None


def _age_minutes(state: dict[str, Any] | None, scene_now: float) -> float | None:
    """Scene minutes since a timestamp sensor's time (the model freshness sensor holds the
    scene time of the model's newest data)."""
    if state is None:
        return None
    try:
        since = datetime.fromisoformat(state["state"]).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, (scene_now - since) / 60.0)


def update(
    track: SpaceTrack,
    entities: dict[str, str],
    states: dict[str, dict[str, Any]],
    scenario: Scenario,
    scene_now: float,
) -> None:
    """Read one space's entities from a `/api/states` answer and score the prediction."""
    minute = scenario.minute_of(scene_now)
    truth = scenario.truth(track.index, track.room_id)
    percent = _number(states.get(entities.get("occupancy_probability", "")))
    if 0 <= minute < truth.size:
        track.record(None if percent is None else percent / 100.0, bool(truth[minute]))
    activity = states.get(entities.get("activity", ""))
    track.activity = None if activity is None else activity["state"]
    occupancy = states.get(entities.get("occupancy", ""))
    version = None if occupancy is None else occupancy["attributes"].get("model_version")
    track.model_age = _age_minutes(
        states.get(entities.get("occupancy_model_freshness", "")), scene_now
    )
    merged = _number(states.get(entities.get("snapshots_merged", "")))
    rejected = _number(states.get(entities.get("snapshots_rejected", "")))
    track.exchange(int(merged or 0), int(rejected or 0), version, time.time())


def render(
    tracks: list[SpaceTrack], scenario: Scenario, scene_now: float, footer: list[str]
) -> str:
    now = time.time()
    lines = [
        f"scene time {local_time(scenario, scene_now)} ({scenario.tz})",
        f"{'home':6} {'space':12} {'P(occupied)':>11} {'truth':>6} {'acc 1h':>6} "
        f"{'activity':12} {'model':>6} {'age':>7} {'merged':>6} {'rejected':>8}  last exchange",
    ]
    for t in tracks:
        probability = "-" if t.probability is None else f"{100 * t.probability:.0f}%"
        truth = "-" if t.truth is None else ("yes" if t.truth else "no")
        ago = "" if t.last_exchange_at is None else f" ({now - t.last_exchange_at:.0f} s ago)"
        lines.append(
            f"{t.home:6} {t.title:12} {probability:>11} {truth:>6} {_percent(t.rolling):>6} "
            f"{(t.activity or '-')[:12]:12} {('v' + str(t.version)) if t.version else '-':>6} "
            f"{_minutes(t.model_age):>7} {t.merged:>6} {t.rejected:>8}  {t.last_exchange}{ago}"
        )
    return "\n".join([*lines, *footer])


def summary_text(
    tracks: list[SpaceTrack],
    totals: dict[str, int],
    setup_seconds: float,
    wall: float,
    relay: RelayTrack | None = None,
) -> str:
    lines = [
        "",
        "== ML Mule demo summary",
        f"setup {setup_seconds:.0f} s, live {wall:.0f} s",
        f"{'home':6} {'space':12} {'acc before':>10} {'(n)':>5} {'acc after':>10} {'(n)':>5} "
        f"{'merged':>6} {'rejected':>8} {'model':>6}",
    ]
    for t in tracks:
        s = t.summary()
        lines.append(
            f"{t.home:6} {t.title:12} {_percent(s['accuracy_before']):>10} "
            f"{s['samples_before']:>5} {_percent(s['accuracy_after']):>10} "
            f"{s['samples_after']:>5} {t.merged:>6} {t.rejected:>8} "
            f"{('v' + str(t.version)) if t.version else '-':>6}"
        )
    if relay is not None:
        lines.append(
            f"relay {relay.title} ({relay.home}): merged {relay.merged}, "
            f"rejected {relay.rejected}, phones seen {relay.phones_seen}"
        )
    lines.append(exchange_line(tracks, totals))
    return "\n".join(lines)


def exchange_line(tracks: list[SpaceTrack], totals: dict[str, int]) -> str:
    """What moved: snapshots the phones took from the homes and gave them (the companions'
    ledgers), what the spaces made of them, and the bytes on the wire."""
    return (
        f"snapshots carried: {totals['received']} homes -> phones, "
        f"{totals['sent']} phones -> homes; spaces merged {sum(t.merged for t in tracks)}, "
        f"rejected {sum(t.rejected for t in tracks)}; {totals['bytes_moved'] / 1000:.1f} kB moved "
        f"(sent {totals['bytes_sent']} B, received {totals['bytes_received']} B)"
    )
