"""Fixtures for the benchmarks that run on a real Home Assistant core."""

pytest_plugins = ["tests.support.ha_fixtures"]
