"""What the phone senses: validated rows in a local SQLite store, and training sets drawn from it.

This is the data of mobile-data mode. It never leaves the phone: only models trained on it do.

A row is one sample of the phone's motion features (`features.PhoneSignal`, usually one per
minute), where the phone was, and optionally the activity its owner was doing:

    time                epoch seconds, or ISO 8601 with a UTC offset (2026-01-05T08:30:00+01:00)
    home                the paired home it was in: its id or its name; empty when in none
    room                the space it was in: the space's id, or its room kind (kitchen, ...)
    accel_mean ...      the six `PhoneSignal` values; empty when the phone did not measure one
    activity            what the owner was doing (one of `features.ACTIVITIES`), or empty
    label_source        who said so: `user` (the default) or `detected` (the phone's guess)

A row needs a time and at least one signal or an activity. Rows are keyed by their time: logging
the same minute again updates it (a label-only row adds a label to the features logged before),
so ingesting a file twice changes nothing, and a user's label is never replaced by a detected
one. A file is ingested in one transaction: either every row is stored or none is.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt
from mlmule_core.features import (
    ACTIVITIES,
    PHONE_FEATURES,
    PHONE_SIGNAL_RANGES,
    ChangeSeries,
    FeatureSchema,
    PhoneSignal,
    extract_phone_frames,
    window_frames,
)

from .errors import DataError

SIGNALS: Final = tuple(signal.value for signal in PhoneSignal)
COLUMNS: Final = ("time", "home", "room", *SIGNALS, "activity", "label_source")
LABEL_SOURCES: Final = ("user", "detected")
EARLIEST: Final = 946_684_800.0  # 2000-01-01: anything earlier is a unit or clock error
FUTURE_SLACK: Final = 86_400.0
MAX_LISTED_PROBLEMS: Final = 20
SCHEMA_VERSION: Final = 1
_ROOM = re.compile(r"[A-Za-z0-9_-]{1,64}")
_AVAILABLE = PHONE_FEATURES.index("phone_available")

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Sample:
    """One validated row."""

    time: float
    home: str
    room: str
    signals: tuple[float | None, ...]  # in `SIGNALS` order
    activity: str | None
    label_source: str | None


@dataclass(frozen=True)
class IngestReport:
    rows: int  # rows stored (new or updated)
    new: int
    pruned: int  # rows older than the retention period, deleted


@dataclass(frozen=True)
class PlaceSummary:
    home: str
    room: str
    rows: int
    labelled: int
    last: float


@dataclass(frozen=True)
class DataSummary:
    rows: int
    labelled: int
    first: float | None
    last: float | None
    places: list[PlaceSummary]


@dataclass(frozen=True)
class TrainingData:
    """Model inputs and labels of the minutes sensed in one space, oldest first."""

    x: FloatArray
    y: npt.NDArray[np.int64]
    data_time: float  # end of the newest labelled minute

    @property
    def samples(self) -> int:
        return int(self.y.size)


# ---------------------------------------------------------------------------------------------
# Reading files


def detect_format(name: str, explicit: str | None) -> str:
    if explicit is not None:
        return explicit
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in {".jsonl", ".ndjson", ".json"}:
        return "jsonl"
    raise DataError(f"{name}: cannot tell the format from the name; pass --format csv or jsonl")


def read_records(stream: IO[str], fmt: str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, raw record) of a CSV (with a header row) or JSON Lines stream."""
    if fmt == "csv":
        reader = csv.DictReader(stream)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        if not header:
            raise DataError(f"{source}: the CSV file is empty; it needs a header row")
        _check_columns(header, f"{source}:1")
        reader.fieldnames = header
        for record in reader:
            if None in record:
                raise DataError(f"{source}:{reader.line_num}: more values than columns")
            yield reader.line_num, {k: v for k, v in record.items() if v is not None}
        return
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise DataError(f"{source}:{number}: not valid JSON: {err.args[0]}") from err
        if not isinstance(record, dict):
            raise DataError(f"{source}:{number}: expected a JSON object per line")
        record = {str(k).strip().lower(): v for k, v in record.items()}
        _check_columns(list(record), f"{source}:{number}")
        yield number, record


def _check_columns(names: Sequence[str], where: str) -> None:
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        raise DataError(
            f"{where}: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"the columns are {', '.join(COLUMNS)}"
        )
    if "time" not in names:
        raise DataError(f"{where}: the column 'time' is required")


class _RowError(ValueError):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"{column}: {reason}")


class RowParser:
    """Validates raw records into samples; each bad row becomes one problem line.

    `home_aliases` maps each paired home's id and lower-cased name to its id, so rows may name a
    home either way; a home not paired (yet) is kept as written.
    """

    def __init__(
        self,
        *,
        home_aliases: Mapping[str, str],
        default_home: str = "",
        default_room: str = "",
        now: float | None = None,
    ) -> None:
        self.home_aliases = home_aliases
        self.default_home = default_home
        self.default_room = default_room
        self.now = time.time() if now is None else now
        self.problems: list[str] = []  # "file:line: column: reason"
        self.valid = 0

    def samples(
        self, records: Iterable[tuple[int, Mapping[str, Any]]], source: str
    ) -> Iterator[Sample]:
        """The valid rows, as they are read; the others are recorded in `problems`."""
        for line, record in records:
            try:
                sample = _sample(
                    record, self.home_aliases, self.default_home, self.default_room, self.now
                )
            except _RowError as err:
                self.problems.append(f"{source}:{line}: {err}")
                continue
            self.valid += 1
            yield sample


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _sample(
    record: Mapping[str, Any],
    home_aliases: Mapping[str, str],
    default_home: str,
    default_room: str,
    now: float,
) -> Sample:
    when = _time(record.get("time"), now)
    signals = tuple(_signal(name, record.get(name)) for name in SIGNALS)
    activity = None if _blank(record.get("activity")) else _activity(record["activity"])
    source = record.get("label_source")
    if _blank(source):
        source = "user" if activity is not None else None
    elif activity is None:
        raise _RowError("label_source", "given without an activity")
    elif source not in LABEL_SOURCES:
        raise _RowError("label_source", f"{source!r} is not one of {', '.join(LABEL_SOURCES)}")
    if activity is None and all(value is None for value in signals):
        raise _RowError("time", "the row has neither a signal nor an activity")
    home = _home(record.get("home"), default_home, home_aliases)
    room = _room(record.get("room"), default_room)
    return Sample(when, home, room, signals, activity, source)


def _time(value: Any, now: float) -> float:
    if _blank(value):
        raise _RowError("time", "missing")
    seconds: float
    if isinstance(value, bool):
        raise _RowError("time", "expected epoch seconds or an ISO 8601 time")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _iso_time(text)
    if not math.isfinite(seconds):
        raise _RowError("time", "not a finite number")
    if seconds > 1e11:
        raise _RowError("time", f"{value!r} looks like milliseconds; give seconds")
    if seconds < EARLIEST:
        raise _RowError("time", f"{value!r} is before the year 2000")
    if seconds > now + FUTURE_SLACK:
        raise _RowError("time", f"{value!r} is in the future; check the phone's clock")
    return seconds


def _iso_time(text: str) -> float:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _RowError("time", f"{text!r} is neither epoch seconds nor an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise _RowError("time", f"{text!r} needs a UTC offset, e.g. +01:00 or Z")
    return parsed.timestamp()


def _signal(name: str, value: Any) -> float | None:
    if _blank(value):
        return None
    if isinstance(value, bool):
        raise _RowError(name, "expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _RowError(name, f"{value!r} is not a number") from None
    low, high = PHONE_SIGNAL_RANGES[PhoneSignal(name)]
    if not math.isfinite(number) or not low <= number <= high:
        raise _RowError(name, f"{value!r} is outside [{low:g}, {high:g}]")
    return number


def _activity(value: Any) -> str:
    text = str(value).strip().lower().replace(" ", "_")
    if text not in ACTIVITIES:
        raise _RowError("activity", f"{value!r} is not one of {', '.join(ACTIVITIES)}")
    return text


def _home(value: Any, default: str, aliases: Mapping[str, str]) -> str:
    text = default if _blank(value) else str(value).strip()
    if not text:
        return ""
    if len(text) > 64 or not text.isprintable():
        raise _RowError("home", "expected a home id or name of at most 64 characters")
    return aliases.get(text, aliases.get(text.lower(), text))


def _room(value: Any, default: str) -> str:
    text = default if _blank(value) else str(value).strip()
    if text and not _ROOM.fullmatch(text):
        raise _RowError("room", f"{text!r} is not a space id or room kind (A-Z a-z 0-9 _ -)")
    return text


# ---------------------------------------------------------------------------------------------
# The store


_CREATE = f"""
CREATE TABLE IF NOT EXISTS samples (
    time REAL PRIMARY KEY,
    home TEXT NOT NULL,
    room TEXT NOT NULL,
    {", ".join(f"{name} REAL" for name in SIGNALS)},
    activity TEXT,
    label_source TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS samples_by_place ON samples (home, room, time);
PRAGMA user_version = {SCHEMA_VERSION};
"""
_SIGNAL_UPDATES = ",\n    ".join(f"{name} = COALESCE(excluded.{name}, {name})" for name in SIGNALS)
# A label-only row keeps the place known for that minute; a user's label beats a detected one.
_KEEP_LABEL = (
    "excluded.activity IS NULL OR (label_source = 'user' AND excluded.label_source = 'detected')"
)
_UPSERT = f"""
INSERT INTO samples (time, home, room, {", ".join(SIGNALS)}, activity, label_source)
VALUES ({", ".join("?" * (len(SIGNALS) + 5))})
ON CONFLICT (time) DO UPDATE SET
    home = CASE WHEN excluded.home != '' THEN excluded.home ELSE home END,
    room = CASE WHEN excluded.room != '' THEN excluded.room ELSE room END,
    {_SIGNAL_UPDATES},
    activity = CASE WHEN {_KEEP_LABEL} THEN activity ELSE excluded.activity END,
    label_source = CASE WHEN {_KEEP_LABEL} THEN label_source ELSE excluded.label_source END
"""  # noqa: S608 - only constant column names are interpolated


class DataStore:
    """The phone's sensing data in SQLite (WAL, fully synchronous: a crash loses no commit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # one connection per call keeps the store usable from any thread and process
        with self._connect() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in {0, SCHEMA_VERSION}:
                raise DataError(f"{path} has data format {version}; this companion reads 1")
            conn.executescript(_CREATE)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            yield conn
        finally:
            conn.close()

    def ingest(
        self,
        samples: Iterable[Sample],
        *,
        keep_days: float,
        now: float | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> IngestReport:
        """Store every sample in one transaction, then drop rows older than `keep_days`.

        Samples are streamed into the transaction as they come. `before_commit` runs last, inside
        it: raising there (e.g. because some rows were invalid) stores nothing at all.
        """
        now = time.time() if now is None else now
        horizon = now - keep_days * 86_400.0
        stored = 0

        def rows() -> Iterator[tuple[Any, ...]]:
            nonlocal stored
            for s in samples:
                if s.time >= horizon:
                    stored += 1
                    yield (s.time, s.home, s.room, *s.signals, s.activity, s.label_source)

        with self._connect() as conn, conn:
            before = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
            conn.executemany(_UPSERT, rows())
            pruned = conn.execute("DELETE FROM samples WHERE time < ?", (horizon,)).rowcount
            after = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
            if before_commit is not None:
                before_commit()
        return IngestReport(rows=stored, new=after - before + pruned, pruned=pruned)

    def summary(self) -> DataSummary:
        with self._connect() as conn:
            rows, labelled, first, last = conn.execute(
                "SELECT count(*), count(activity), min(time), max(time) FROM samples"
            ).fetchone()
            places = [
                PlaceSummary(*row)
                for row in conn.execute(
                    "SELECT home, room, count(*), count(activity), max(time) FROM samples "
                    "WHERE home != '' GROUP BY home, room ORDER BY home, room"
                )
            ]
        return DataSummary(rows, labelled, first, last, places)

    def integrity_ok(self) -> bool:
        with self._connect() as conn:
            return bool(conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def training_data(
        self,
        *,
        homes: Iterable[str],
        rooms: Iterable[str],
        schema: FeatureSchema,
        labels: Sequence[str],
        since: float,
        until: float,
        max_samples: int,
        tz: str,
    ) -> TrainingData | None:
        """The labelled minutes sensed in one space, as model inputs; None when there are none.

        A space is any of `homes` (its id and name) with any of `rooms` (its id and room kind).
        The inputs of a minute are the phone's frames at the schema's lags, wherever the phone
        was then: its motion is its own, whichever room it was in a minute earlier.
        """
        if tuple(schema.features) != PHONE_FEATURES:
            raise DataError(f"a {schema.name!r} model does not read the phone's features")
        step = schema.step_seconds
        home_list, room_list = sorted(set(homes)), sorted(set(rooms))
        with self._connect() as conn:
            labelled = conn.execute(
                f"SELECT time, activity, label_source FROM samples WHERE activity IS NOT NULL "  # noqa: S608 - only placeholders are interpolated
                f"AND time >= ? AND time < ? AND home IN ({_marks(home_list)}) "
                f"AND room IN ({_marks(room_list)}) ORDER BY time",
                (since, until, *home_list, *room_list),
            ).fetchall()
            chosen = _label_per_frame(labelled, step, labels, max_samples)
            if not chosen:
                return None
            frame_starts = np.fromiter(chosen, dtype=np.float64, count=len(chosen))
            start = float(frame_starts[0]) - max(schema.window) * step
            end = float(frame_starts[-1]) + step
            rows = conn.execute(
                f"SELECT time, {', '.join(SIGNALS)} FROM samples "  # noqa: S608 - column names are constants
                "WHERE time >= ? AND time < ? ORDER BY time",
                (start, end),
            ).fetchall()
        table = np.array(rows, dtype=np.float64).reshape(-1, len(SIGNALS) + 1)
        inputs = {
            signal: ChangeSeries(table[:, 0], table[:, 1 + i])
            for i, signal in enumerate(PhoneSignal)
        }
        frames = extract_phone_frames(inputs, start, end, step, tz)
        index = np.rint((frame_starts - start) / step).astype(np.int64)
        available = frames[index, _AVAILABLE] > 0.5
        if not available.any():
            return None
        x = window_frames(frames, schema.window)[index[available]]
        y = np.fromiter(chosen.values(), dtype=np.int64, count=len(chosen))[available]
        return TrainingData(x, y, float(frame_starts[available][-1]) + step)


def _marks(values: Sequence[str]) -> str:
    return ", ".join("?" * len(values)) or "NULL"


def _label_per_frame(
    rows: Sequence[tuple[float, str, str]], step: int, labels: Sequence[str], limit: int
) -> dict[float, int]:
    """Frame start -> class index: a user's label over a detected one, else the latest."""
    best: dict[float, tuple[int, str]] = {}
    for when, activity, source in rows:
        if activity not in labels:
            continue
        frame = math.floor(when / step) * step
        held = best.get(frame)
        if held is None or source == "user" or held[1] != "user":
            best[frame] = (labels.index(activity), source)
    latest = sorted(best)[-limit:]
    return {frame: best[frame][0] for frame in latest}


def open_text(path: str) -> IO[str]:
    """A file's text (UTF-8, BOM tolerated), or standard input for `-`."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")
