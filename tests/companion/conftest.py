"""Fixtures for the companion-environment tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker, start_broker


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """A real Debian mosquitto on a free loopback port, stopped after the test."""
    broker = start_broker(tmp_path)
    yield broker
    broker.stop()
