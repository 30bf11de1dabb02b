"""Fixtures for the Home Assistant tests."""

from __future__ import annotations

import logging
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(recorder_mock: Any, enable_custom_integrations: None) -> None:
    """Let every test load custom_components/mlmule, with the recorder it depends on.

    `recorder_mock` must come before `enable_custom_integrations` (the harness requires it).
    """


@pytest.fixture(autouse=True, scope="session")
def quiet_sqlalchemy() -> None:
    """The recorder's engine logs every statement at INFO; keep test output readable."""
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
