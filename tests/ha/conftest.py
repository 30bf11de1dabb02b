"""Fixtures for the Home Assistant tests."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from homeassistant.core import HomeAssistant


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(recorder_mock: Any, enable_custom_integrations: None) -> None:
    """Let every test load custom_components/mlmule, with the recorder it depends on.

    `recorder_mock` must come before `enable_custom_integrations` (the harness requires it).
    """


@pytest.fixture(autouse=True, scope="session")
def quiet_sqlalchemy() -> None:
    """The recorder's engine logs every statement at INFO; keep test output readable."""
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)


@pytest.fixture(autouse=True)
def isolated_config_dir(hass: HomeAssistant, tmp_path: Path) -> Path:
    """Give each test its own config directory: the harness shares one inside site-packages,
    and mlmule keeps its keys and models under `<config>/mlmule/`."""
    hass.config.config_dir = str(tmp_path)
    return tmp_path
