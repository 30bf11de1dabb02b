"""Fixtures for the Home Assistant tests."""

pytest_plugins = ["tests.support.ha_fixtures"]
