"""The phone's sensing data: `log-data` validation and merging, and the training sets drawn."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from mlmule_core.features import ACTIVITIES, PHONE_FEATURES, window_frames
from mlmule_core.identity import BrokerInfo, Identity, PairingCode
from mlmule_core.starter import load_starter

from mule_companion.cli import main
from mule_companion.datalog import DataStore, RowParser, read_records
from tests.support.phone_log import recent_world, write_phone_log

NOW = time.time()
T0 = int(NOW // 60 * 60) - 3 * 3600  # three hours ago, on a minute


class Phone:
    def __init__(self, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.data_dir = data_dir
        self._capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self._capsys.readouterr()
        code = main(["--data-dir", str(self.data_dir), *args])
        out, err = self._capsys.readouterr()
        return code, out, err

    def rows(self) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.data_dir / "data.sqlite") as conn:
            return conn.execute(
                "SELECT time, home, room, accel_mean, step_rate, activity, label_source "
                "FROM samples ORDER BY time"
            ).fetchall()


@pytest.fixture
def phone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Phone:
    phone = Phone(tmp_path / "phone", capsys)
    assert phone("init", "--name", "phone", "--timezone", "UTC")[0] == 0
    return phone


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_rows_are_stored_and_a_second_ingest_changes_nothing(phone: Phone, tmp_path: Path) -> None:
    csv_file = write(
        tmp_path / "a.csv",
        "time,home,room,accel_mean,step_rate,activity\n"
        f"{T0},h1,kitchen,0.5,12,cooking\n"
        f"{T0 + 60},h1,kitchen,0.7,,\n",
    )
    jsonl = write(
        tmp_path / "b.jsonl",
        json.dumps({"time": T0 + 120, "home": "h1", "room": "kitchen", "screen_on": 1}) + "\n\n",
    )
    code, out, _ = phone("log-data", str(csv_file), str(jsonl))
    assert (code, out.strip()) == (0, "Stored 3 rows (3 new).")
    assert phone("log-data", str(csv_file))[1].strip() == "Stored 2 rows (0 new)."
    assert phone.rows() == [
        (T0, "h1", "kitchen", 0.5, 12.0, "cooking", "user"),
        (T0 + 60, "h1", "kitchen", 0.7, None, None, None),
        (T0 + 120, "h1", "kitchen", None, None, None, None),
    ]


def test_labels_join_the_features_of_their_minute_and_a_user_beats_a_guess(
    phone: Phone, tmp_path: Path
) -> None:
    phone(
        "log-data",
        str(
            write(
                tmp_path / "features.csv",
                "time,home,room,accel_mean,activity,label_source\n"
                f"{T0},h1,office,0.2,working,detected\n"
                f"{T0 + 60},h1,office,0.3,eating,detected\n",
            )
        ),
    )
    phone(
        "log-data",
        str(
            write(
                tmp_path / "labels.csv",
                f"time,activity,label_source\n{T0},other,user\n{T0 + 60},working,detected\n",
            )
        ),
    )
    phone(
        "log-data",
        str(write(tmp_path / "guess.csv", f"time,activity,label_source\n{T0},cooking,detected\n")),
    )
    assert phone.rows() == [
        (T0, "h1", "office", 0.2, None, "other", "user"),  # the user's label stays
        (T0 + 60, "h1", "office", 0.3, None, "working", "detected"),  # a newer guess wins
    ]


def test_a_home_named_by_its_name_is_stored_by_its_id(phone: Phone, tmp_path: Path) -> None:
    home = Identity.generate(kind="space", name="Grandma's flat")
    code = PairingCode.for_identity(home, broker=BrokerInfo("192.0.2.1", 1883, False)).encode()
    assert phone("pair", code, "--no-password", "--no-check")[0] == 0
    phone(
        "log-data",
        str(
            write(
                tmp_path / "a.csv",
                "time,home,room,accel_mean\n"
                f"{T0},grandma's flat,kitchen,0.1\n{T0 + 60},elsewhere,,0.1\n",
            )
        ),
    )
    assert [row[1] for row in phone.rows()] == [home.id, "elsewhere"]
    document = json.loads(phone("status", "--json")[1])
    assert {(p["home"], p["room"], p["rows"]) for p in document["data"]["places"]} == {
        ("elsewhere", "", 1),
        (home.id, "kitchen", 1),
    }


def test_a_file_with_invalid_rows_is_refused_whole_with_every_reason(
    phone: Phone, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "bad.csv",
        "time,home,room,accel_mean,screen_on,activity,label_source\n"
        f"{T0},h,kitchen,0.5,1,cooking,user\n"
        f"{T0 + 60},h,kitchen,abc,,,\n"
        f"{T0 + 120},h,kitchen,0.5,2,,\n"
        f"{T0 + 180},h,kitchen,0.5,,dancing,\n"
        f"2026-01-05T10:00:00,h,kitchen,0.5,,,\n"
        f"{T0 * 1000},h,kitchen,0.5,,,\n"
        f"{NOW + 5 * 86400:.0f},h,kitchen,0.5,,,\n"
        f"{T0 + 240},h,kitchen,,,,user\n"
        f"{T0 + 300},h,living room,0.5,,,\n"
        f",h,kitchen,0.5,,,\n"
        f"{T0 + 360},h,kitchen,,,,\n",
    )
    code, _, err = phone("log-data", str(path))
    assert code == 1
    lines = err.splitlines()
    assert lines[0] == (
        "mlmule-companion: 10 invalid rows; nothing was stored "
        "(fix them, or pass --skip-invalid to store the valid rows)"
    )
    source = str(path)
    assert lines[1:] == [
        f"  {source}:3: accel_mean: 'abc' is not a number",
        f"  {source}:4: screen_on: '2' is outside [0, 1]",
        f"  {source}:5: activity: 'dancing' is not one of {', '.join(ACTIVITIES)}",
        f"  {source}:6: time: '2026-01-05T10:00:00' needs a UTC offset, e.g. +01:00 or Z",
        f"  {source}:7: time: '{T0 * 1000}' looks like milliseconds; give seconds",
        f"  {source}:8: time: '{NOW + 5 * 86400:.0f}' is in the future; check the phone's clock",
        f"  {source}:9: label_source: given without an activity",
        f"  {source}:10: room: 'living room' is not a space id or room kind (A-Z a-z 0-9 _ -)",
        f"  {source}:11: time: missing",
        f"  {source}:12: time: the row has neither a signal nor an activity",
    ]
    assert phone.rows() == []
    code, out, err = phone("log-data", "--skip-invalid", str(path))
    assert code == 0
    assert out.strip() == "Stored 1 rows (1 new), skipped 10 invalid."
    assert len(err.splitlines()) == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,acel_mean\n1,2\n", "unknown column(s) 'acel_mean'"),
        ("home,accel_mean\nh,2\n", "the column 'time' is required"),
        ("", "the CSV file is empty; it needs a header row"),
    ],
)
def test_file_level_problems_are_named(
    phone: Phone, tmp_path: Path, text: str, message: str
) -> None:
    code, _, err = phone("log-data", str(write(tmp_path / "x.csv", text)))
    assert code == 1
    assert message in err


def test_a_file_whose_format_cannot_be_told_is_refused(phone: Phone, tmp_path: Path) -> None:
    code, _, err = phone("log-data", str(write(tmp_path / "data.txt", "time\n")))
    assert (code, "pass --format csv or jsonl" in err) == (1, True)
    code, out, _ = phone("log-data", "--format", "csv", str(tmp_path / "data.txt"))
    assert (code, out.strip()) == (0, "Stored 0 rows (0 new).")  # a header and no rows


def test_jsonl_lines_are_checked_like_csv_rows(phone: Phone, tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.jsonl",
        json.dumps({"time": T0, "accel_mean": True}) + "\n" + "[1, 2]\n",
    )
    code, _, err = phone("log-data", str(path))
    assert code == 1
    assert "a.jsonl:2: expected a JSON object per line" in err


def test_rows_older_than_the_retention_are_not_kept(phone: Phone, tmp_path: Path) -> None:
    old = int(NOW - 61 * 86400)
    path = write(tmp_path / "a.csv", f"time,accel_mean\n{old},0.1\n{T0},0.2\n")
    code, out, _ = phone("log-data", str(path))
    assert (code, out.strip()) == (0, "Stored 1 rows (1 new), 1 too old to keep.")


def test_training_data_is_the_world_phone_frames_of_the_minutes_in_that_space(
    tmp_path: Path,
) -> None:
    world, shift = recent_world()
    path = tmp_path / "phone.csv"
    write_phone_log(path, world, shift, home_id="h1", spaces={"kitchen": "SPACE1"})
    store = DataStore(tmp_path / "data.sqlite")
    parser = RowParser(home_aliases={})
    with path.open() as stream:
        store.ingest(
            parser.samples(read_records(stream, "csv", "phone.csv"), "phone.csv"), keep_days=60
        )
    assert parser.problems == []
    schema = load_starter("phone_activity/kitchen").schema
    tz = world.homes[0].tz
    data = store.training_data(
        homes={"h1"},
        rooms={"SPACE1", "kitchen"},
        schema=schema,
        labels=ACTIVITIES,
        since=0.0,
        until=NOW + 60,
        max_samples=10**6,
        tz=tz,
    )
    assert data is not None
    phone_data = world.phone_data(world.people[0].person_id)
    kitchen = [room.room_id for room in world.homes[0].rooms].index("kitchen")
    available = phone_data.frames[:, PHONE_FEATURES.index("phone_available")] > 0.5
    here = (phone_data.place == 0) & (phone_data.room == kitchen) & available
    expected = window_frames(phone_data.frames, schema.window)[here]
    assert data.x.shape == expected.shape
    # the log keeps 6 significant digits of each signal
    np.testing.assert_allclose(data.x, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.y, phone_data.activity_label[here])
    assert data.data_time == phone_data.times[here][-1] + shift + 60

    latest = store.training_data(
        homes={"h1"},
        rooms={"SPACE1"},
        schema=schema,
        labels=ACTIVITIES,
        since=0.0,
        until=NOW + 60,
        max_samples=25,
        tz=tz,
    )
    assert latest is not None
    np.testing.assert_array_equal(latest.x, data.x[-25:])
    nothing = store.training_data(
        homes={"another home"},
        rooms={"SPACE1"},
        schema=schema,
        labels=ACTIVITIES,
        since=0.0,
        until=NOW + 60,
        max_samples=25,
        tz=tz,
    )
    assert nothing is None
