"""End to end, with faults: a broker dying mid-transfer, the phone killed mid-write.

The phone is the installed `mlmule-companion` in its own data directory; homes run the core's
protocol and model host over paho against a real mosquitto (see test_e2e_exchanges.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from mlmule_core.features import ACTIVITIES

from tests.support.broker import Broker
from tests.support.companion_process import CompanionProcess, companion_script
from tests.support.e2e import (
    BEDROOM,
    PHONE_PROTOCOL,
    answers_taken,
    bedroom_data,
    carried,
    encounter,
    new_home,
    new_phone,
    phone,
    sessions,
)

__all__ = ["phone"]  # the fixture


def test_a_broker_killed_in_the_middle_of_a_transfer_comes_back_and_the_transfer_resumes(
    tmp_path: Path, mosquitto: Broker, phone: CompanionProcess
) -> None:
    home = new_home(tmp_path, mosquitto, "home")
    try:
        # 1 KiB chunks: the phone's ~20 kB model travels as ~20 of them
        small_chunks = {**PHONE_PROTOCOL, "chunk_size": 1024, "max_payload": 256 * 1024}
        mule = home.pair_mule(new_phone(phone, protocol=small_chunks))
        phone.pair(home.home_code())
        bedroom_data(home)
        phone.start()
        phone.wait_connected()
        encounter(home, "bedroom", mule, lambda: answers_taken(home) == 1)
        home.train(BEDROOM)  # the space moves on, so it answers the phone's next offer

        home.pause_after_chunks = 5
        home.open("bedroom", mule)
        assert home.paused.wait(30)
        # 5 chunks are in; the broker dies without a word and comes back on the same port
        assert mosquitto.process is not None
        mosquitto.process.kill()
        mosquitto.process.wait()
        mosquitto.process = None
        mosquitto.start()
        home.resume.set()

        home.wait_for(lambda: answers_taken(home) == 2, timeout=60)
        [received] = home.received
        assert received.outcome.accepted, received.outcome
        assert hashlib.sha256(received.delivery.payload).hexdigest() == (
            received.delivery.snapshot.sha256
        )
        assert home.endpoint.stats.nacks_sent >= 1  # it asked again for what the broker lost
        home.close("bedroom")
        phone.wait_for(lambda: sessions(phone, home) == 2, 10, "the phone did not see the bye")
        assert phone.stop() == 0
    finally:
        home.stop()
    [activity] = phone.status()["homes"]
    assert activity["connections"] >= 2  # it reconnected
    assert activity["failed"] == 0
    assert carried(phone, BEDROOM)["version"] == 2
    exported = tmp_path / "after.snap"
    phone.cli("snapshot", "export", BEDROOM, "-o", str(exported))
    assert phone.cli("snapshot", "verify", str(exported)).stdout.startswith("ok: ")


def test_sigkill_in_the_middle_of_log_data_stores_nothing_and_a_retry_stores_everything(
    tmp_path: Path, phone: CompanionProcess
) -> None:
    new_phone(phone)
    rows = 150_000
    log = tmp_path / "big.csv"
    now = int(time.time())
    with log.open("w") as handle:
        handle.write("time,accel_mean,step_rate,activity\n")
        for i in range(rows):  # one sample every 20 s over the last 35 days
            handle.write(f"{now - 20 * i},{0.1 + (i % 7) / 10},{i % 90},{ACTIVITIES[i % 5]}\n")
    wal = phone.data_dir / "data.sqlite-wal"
    ingest = subprocess.Popen(
        [companion_script(), "--data-dir", str(phone.data_dir), "log-data", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (wal.exists() and wal.stat().st_size > 2**20):  # the transaction is writing
        assert ingest.poll() is None, "the ingest ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ingest.kill()
    assert ingest.wait() == -signal.SIGKILL

    assert phone.status()["data"]["rows"] == 0
    assert sqlite_integrity(phone.data_dir / "data.sqlite") == "ok"
    assert f"Stored {rows} rows" in phone.cli("log-data", str(log)).stdout
    assert phone.status()["data"]["rows"] == rows


def sqlite_integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_sigkill_in_the_middle_of_a_store_write_leaves_a_valid_store(
    tmp_path: Path, mosquitto: Broker, phone: CompanionProcess
) -> None:
    home = new_home(tmp_path, mosquitto, "home")
    store = phone.data_dir / "host" / "snapshots"
    try:
        mule = home.pair_mule(new_phone(phone))
        phone.pair(home.home_code())
        bedroom_data(home)
        phone.start()
        phone.wait_connected()
        process = phone.process
        assert process is not None
        caught = threading.Event()

        def freeze_mid_write() -> None:
            """Stop the phone the moment a snapshot file is half-written (a temporary)."""
            while process.poll() is None and not caught.is_set():
                if any(store.glob("*/.*.tmp")) or any(store.glob(".*.tmp")):
                    os.kill(process.pid, signal.SIGSTOP)
                    if any(store.glob("*/.*.tmp")) or any(store.glob(".*.tmp")):
                        caught.set()
                        return
                    os.kill(process.pid, signal.SIGCONT)  # the rename beat us: keep watching

        watcher = threading.Thread(target=freeze_mid_write)
        watcher.start()
        for visit in range(1, 41):
            home.open("bedroom", mule)
            home.wait_for(lambda v=visit: caught.is_set() or answers_taken(home) == v)
            home.close("bedroom")
            if caught.is_set():
                break
        watcher.join()
        assert caught.is_set(), "no store write was caught in the middle in 40 visits"
        leftovers = [*store.glob("*/.*.tmp"), *store.glob(".*.tmp")]
        phone.kill()  # SIGKILL, still stopped in the middle of the write
        assert leftovers
        visits = answers_taken(home)
        home.train(BEDROOM)  # between visits, the space trains on its own data

        phone.start()  # the store opens, tidies up, and works on
        phone.wait_connected()
        assert not any(path.exists() for path in leftovers), leftovers
        encounter(home, "bedroom", mule, lambda: answers_taken(home) == visits + 1)
        phone.wait_for(lambda: sessions(phone, home) >= 1, 10, "the phone did not see the bye")
        assert phone.stop() == 0
    finally:
        home.stop()
    exported = tmp_path / "after.snap"
    phone.cli("snapshot", "export", BEDROOM, "-o", str(exported))
    assert phone.cli("snapshot", "verify", str(exported)).stdout.startswith("ok: ")
