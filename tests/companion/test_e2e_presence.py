"""End to end: a phone that loses its home ends its encounters there.

The phone is the installed `mlmule-companion` in its own data directory; the home runs the core's
protocol over paho against a real mosquitto (see test_e2e_exchanges.py). A broker that comes back
within the protocol's retry window resumes the transfer (test_e2e_faults.py); out of reach for
longer, the home is lost, and the phone ends the encounter instead of keeping it until it times
out.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.broker import Broker
from tests.support.companion_process import CompanionProcess
from tests.support.e2e import (
    PHONE_PROTOCOL,
    answers_taken,
    bedroom_data,
    new_home,
    new_phone,
    phone,
    sessions,
)

__all__ = ["phone"]  # the fixture

RETRY_AFTER, MAX_RETRIES = 0.5, 4  # the phone's retry window: 2 s


def test_a_phone_out_of_its_homes_reach_ends_the_encounter_there(
    tmp_path: Path, mosquitto: Broker, phone: CompanionProcess
) -> None:
    home = new_home(tmp_path, mosquitto, "home")
    try:
        protocol = {**PHONE_PROTOCOL, "retry_after": RETRY_AFTER, "max_retries": MAX_RETRIES}
        mule = home.pair_mule(new_phone(phone, protocol=protocol))
        phone.pair(home.home_code())
        bedroom_data(home)
        phone.start()
        phone.wait_connected()
        home.open("bedroom", mule)
        home.wait_for(lambda: answers_taken(home) == 1)
        time.sleep(2 * RETRY_AFTER * MAX_RETRIES)
        assert sessions(phone, home) == 0  # connected, the encounter stays open

        # the phone leaves home: the broker is out of its reach for longer than the window
        assert mosquitto.process is not None
        mosquitto.process.kill()
        mosquitto.process.wait()
        mosquitto.process = None
        phone.wait_for(lambda: sessions(phone, home) == 1, 30, "the phone kept the encounter")
        mosquitto.start()
        phone.wait_connected()
        assert phone.stop() == 0
    finally:
        home.stop()
    [activity] = phone.status()["homes"]
    assert activity["sessions"] == 1
    assert activity["failed"] == 0
